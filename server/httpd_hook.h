/* A front door of the HTTP layer: a hook looks at the head of every request before routing
 * and authentication, and may take the request over whole, at libmicrohttpd's own level: its
 * body as it arrives, its raw target, an upgrade to another protocol. The preview proxy
 * (preview.c) is one: a request for a preview URL is proxied, whatever its path. The server
 * (server.c) gives the HTTP layer its hook when it starts it. */
#ifndef SBXD_HTTPD_HOOK_H
#define SBXD_HTTPD_HOOK_H
#include <microhttpd.h>
#include <stdbool.h>
#include <stddef.h>

struct httpd_hook {
	/* Whether the request whose head conn has is the hook's (called once per request). */
	bool (*claims)(void *arg, struct MHD_Connection *conn);
	/* The access handler of a claimed request, with MHD's contract; *state is the hook's
	 * own (NULL at the first call of a request). */
	enum MHD_Result (*access)(void *arg, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *upload_data,
				  size_t *upload_data_size, void **state);
	/* A claimed request is done (answered, cut or abandoned): frees state. */
	void (*completed)(void *arg, void *state);
	/* MHD_OPTION_URI_LOG_CALLBACK: the raw request target of each request, before claims(),
	 * on the connection's thread. NULL: not wanted. */
	void (*note_uri)(void *arg, const char *uri, struct MHD_Connection *conn);
	/* The server stops: before MHD does, which waits for upgraded connections forever. */
	void (*stop)(void *arg);
	void *arg;
};
#endif
