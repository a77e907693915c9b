/* The HTTP layer of sbxd, on libmicrohttpd in thread-per-connection mode: each connection has
 * its own thread, so a handler may block (run a command, wait for an event) without stalling
 * other clients. A route handler receives a fully read request and answers with exactly one
 * reply_* call. Streaming responses are pulled: the handler hands over an sse_source whose
 * next() is called from the connection's thread until it reports the end; httpd inserts a
 * ": keepalive" comment whenever next() produced nothing for 15 s, and frees the source when
 * the response ends or the client goes away. */
#ifndef SBXD_HTTPD_H
#define SBXD_HTTPD_H
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include "common/jsonutil.h"
#include "common/strbuf.h"

struct req;

const char *req_method(const struct req *r);
const char *req_path(const struct req *r);       /* without the query string */
/* The {id} segment of a route such as /api/contexts/{id}; NULL if the route has none. */
const char *req_path_arg(const struct req *r);
const char *req_query(const struct req *r, const char *name); /* decoded, or NULL */
const char *req_header(const struct req *r, const char *name);
const char *req_body(const struct req *r, size_t *len);       /* raw body, NUL-terminated */
/* The parsed JSON body for routes flagged ROUTE_JSON (httpd answers 400 itself when the body
 * is not a JSON object). An empty body gives an empty object. Owned by the request. */
cJSON *req_json(const struct req *r);
/* The client (its "Sbx-Client" header) whose lease this request renewed, or NULL: what the
 * request opens for it lives by that lease (server/leases.h). */
const char *req_client(const struct req *r);
/* The sbxd whose HTTP server took the request: its engines. */
struct sbxd *req_sbxd(const struct req *r);
/* The client's socket, for a handler that runs long: poll it for POLLRDHUP to notice the
 * client hanging up (never read or write it). -1 if unknown. */
int req_client_fd(const struct req *r);

/* {"success":true, ...fields of body..., "timestamp":ts}; takes ownership of body (NULL = {}). */
void reply_ok(struct req *r, cJSON *body);
/* Any JSON body, as is, with this status; takes ownership. */
void reply_json(struct req *r, int status, cJSON *body);
/* The container's standard error shape: code, message, context (owned; NULL = {}),
 * httpStatus, timestamp; plus "errno" when err != 0. */
void reply_error(struct req *r, int status, const char *code, int err, cJSON *context,
		 const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* The body reply_error sends, as an object (for an answer that holds errors of its own). */
cJSON *error_object(int status, const char *code, int err, cJSON *context, const char *message);
/* Standard error for an errno, status and code from common/errnames.h; context gets "path"
 * when path is not NULL. */
void reply_errno(struct req *r, int err, const char *path, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
/* Raw bytes (e.g. application/octet-stream); takes ownership of data (freed with free()). */
void reply_bytes(struct req *r, int status, const char *content_type, char *data, size_t len);

struct sse_source {
	/* Appends zero or more complete events to out (use sse_append), waiting at most
	 * timeout_ms for something to send. Returns 1 while more may come, 0 once the terminal
	 * event has been appended, -1 to abort the stream. */
	int (*next)(void *ctx, struct strbuf *out, int timeout_ms);
	/* Called exactly once when the response is finished or the client went away. */
	void (*release)(void *ctx);
	void *ctx;
};
/* 200 text/event-stream fed by src (whose events sse_append() of common/jsonutil.h makes). */
void reply_sse(struct req *r, struct sse_source src);

/* Routing table entry (see routes.c). */
enum route_flags {
	ROUTE_JSON = 1 << 0,      /* parse the body as a JSON object before calling */
	ROUTE_PUBLIC = 1 << 1,    /* no bearer token needed (only /api/ping) */
	ROUTE_EXTENSION = 1 << 2, /* absent with --no-extensions */
};
struct route {
	const char *method;
	const char *path;         /* exact, or with "{id}" for one variable segment */
	void (*handler)(struct req *r);
	unsigned flags;
};
extern const struct route routes[];
extern const size_t n_routes;

/* Starts serving (MHD daemon) on sbxd->cfg->listen for sbxd, with hook (NULL: none) in front
 * of the routes (server/httpd_hook.h); returns NULL and logs on failure. */
struct sbxd;
struct httpd;
struct httpd_hook;
struct httpd *httpd_start(struct sbxd *sbxd, const struct httpd_hook *hook);
/* The port actually bound (useful with port 0). */
int httpd_port(const struct httpd *h);
void httpd_stop(struct httpd *h);
#endif
