/* Preview URLs: requests whose Host names an exposed port (<port>-<sandbox id>-<token>.<any>)
 * are proxied to that port on the sandbox's loopback instead of reaching the API. httpd hands
 * such requests over before routing and before the bearer check (the URL's token is their
 * credential). */
#ifndef SBXD_PREVIEW_H
#define SBXD_PREVIEW_H
#include <microhttpd.h>
#include <stdbool.h>

/* MHD_OPTION_URI_LOG_CALLBACK: remembers the raw request target (MHD decodes the path it hands
 * to the access handler, and a proxy must pass it on as sent). Returns NULL. */
void *preview_note_uri(void *cls, const char *uri, struct MHD_Connection *conn);
/* Whether this access handler call belongs to a preview request: on the first call, whether
 * the Host header has the form of a preview URL (matching or not); later, whether *con_cls is
 * a preview's. */
bool preview_claims(struct MHD_Connection *conn, void *const *con_cls);
/* The access handler for claimed requests (same contract as MHD's). */
enum MHD_Result preview_access(struct MHD_Connection *conn, const char *url, const char *method,
			       const char *upload_data, size_t *upload_data_size,
			       void **con_cls);
/* The server is stopping (for this process's life): open tunnels and waits for upstream end
 * within a second. */
void preview_stop(void);
/* MHD's completion notice: frees *con_cls and returns true if it is a preview's. */
bool preview_completed(void **con_cls);
#endif
