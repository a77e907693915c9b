/* The HTTP layer: request accumulation, routing, authentication, replies and SSE pumping.
 *
 * libmicrohttpd runs one thread per connection. The access handler is called once when the
 * headers are in (route lookup, token check, Content-Length check: failures are answered at
 * once and MHD drops the unread body), then once per body fragment, then once more with an
 * empty fragment: only then does the route handler run, synchronously, on the connection's
 * thread. A struct req lives from the first call until MHD's completion callback, which also
 * logs the request.
 *
 * SSE responses are pulled by MHD through a content reader that runs on the connection's
 * thread too. It asks the source for events in slices of at most one second (so a stopping
 * server is noticed quickly), and after 15 s of nothing it sends a ": keepalive" comment. The
 * reader never returns 0 bytes, which MHD would treat as "call again at once" (a busy loop).
 *
 * A client that hangs up would otherwise be noticed only when a write fails, i.e. at the second
 * keepalive, while its command keeps running. So between slices the reader peeks at the
 * connection's socket: hang-up, error or end of file means gone (pending bytes are not, they may
 * be a pipelined request). The reader then ends the response with an error so that MHD closes
 * the connection and frees the source; MHD reports that as an application error, which for a
 * departed client (or a stopping server) is expected and logged at debug level only.
 *
 * Connections. Anyone on loopback may connect without the token, and that includes code in the
 * sandbox, which shares the host's network: it connects from 127.0.0.1 like sbxfs, so a limit
 * per client address would let it use up sbxfs's share too, and idle connections by the
 * thousand (from many processes, each within its own open-file limit) would fill any total.
 * So a connection is trusted once it has carried a request with the bearer token (only the
 * token holder can write into it), and until then it is one of at most untrusted_max
 * untrusted ones: a new connection beyond that evicts the oldest untrusted one (its socket is
 * shut down). An authorised client's new connection thus always gets in, and becomes trusted
 * with its first request head, long before a flood could make it the oldest. MHD's own total
 * limit is set above that, for trusted connections. Untrusted connections also time out after
 * UNTRUSTED_IDLE_S without a byte (a half-sent request head does not hold its thread for
 * long); trusted ones never do, since MHD measures its timeout from the last byte moved and a
 * handler that runs for minutes (a command, a clone) or a quiet stream would be cut right
 * after it. Requests a hook takes over (preview URLs, whose credential is in the Host) run
 * without the timeout too, but their connections stay untrusted.
 *
 * Hook. The server may put one hook in front of the routes (server/httpd_hook.h): it sees
 * each request's head first, before routing and the bearer check, and a request it claims is
 * its own from then on, a struct req that only carries the hook's state. */
#include "server/httpd.h"
#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include "common/clock.h"
#include "common/errnames.h"
#include "common/fdio.h"
#include "common/jsonutil.h"
#include "common/log.h"
#include "server/httpd_hook.h"
#include "server/idempotency.h"
#include "server/leases.h"
#include "server/sbxd.h"

#define BODY_MAX (128u << 20)
#define SSE_SLICE_MS 1000
#define SSE_KEEPALIVE_MS 15000
#define CONNECTIONS_MAX 4096      /* in all; and at most a quarter of the open-file limit */
#define UNTRUSTED_IDLE_S 10

struct req {
	struct MHD_Connection *conn;
	struct sbxd *sbxd;
	const char *method;
	const char *path;
	const struct route *route;
	char path_arg[256];   /* the {id} segment; empty when the route has none */
	struct strbuf body;
	bool too_large;
	cJSON *json;
	bool replied;
	int status;
	int64_t start;            /* mono_ms() */
	const char *client;       /* the Sbx-Client whose lease this request renewed, or NULL */
	struct idem_entry *idem;  /* the outcome to record under the request's key */
	bool replayed;            /* the answer is a recorded one */
	bool hooked;              /* the hook's, with its state in hook_state */
	void *hook_state;
};

struct httpd {
	struct MHD_Daemon *mhd;
	struct sbxd *sbxd;
	const struct httpd_hook *hook;
};

static atomic_bool stopping;

const char *req_method(const struct req *r) { return r->method; }
const char *req_path(const struct req *r) { return r->path; }
const char *req_path_arg(const struct req *r) { return r->path_arg[0] ? r->path_arg : NULL; }
cJSON *req_json(const struct req *r) { return r->json; }
const char *req_client(const struct req *r) { return r->client; }
struct sbxd *req_sbxd(const struct req *r) { return r->sbxd; }

int req_client_fd(const struct req *r)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
	return ci ? ci->connect_fd : -1;
}

const char *req_query(const struct req *r, const char *name)
{
	return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, name);
}

const char *req_header(const struct req *r, const char *name)
{
	return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

const char *req_body(const struct req *r, size_t *len)
{
	if (len)
		*len = r->body.len;
	return r->body.data ? r->body.data : "";
}

/* ---- replies ---- */

static void queue(struct req *r, int status, struct MHD_Response *resp, const char *ctype)
{
	if (r->replied) {
		log_error("%s %s: second reply ignored", r->method, r->path);
		MHD_destroy_response(resp);
		return;
	}
	if (ctype)
		MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
	if (r->replayed)
		MHD_add_response_header(resp, "Idempotent-Replayed", "true");
	if (MHD_queue_response(r->conn, (unsigned)status, resp) != MHD_YES)
		log_error("%s %s: could not queue the response", r->method, r->path);
	MHD_destroy_response(resp);
	r->replied = true;
	r->status = status;
}

void reply_bytes(struct req *r, int status, const char *content_type, char *data, size_t len)
{
	if (r->idem && !r->replied) {
		idem_complete(r->idem, status, content_type, data, len);
		r->idem = NULL;
	}
	struct MHD_Response *resp = MHD_create_response_from_buffer(len, data ? data : (char *)"",
								    data ? MHD_RESPMEM_MUST_FREE
									 : MHD_RESPMEM_PERSISTENT);
	queue(r, status, resp, content_type);
}

void reply_json(struct req *r, int status, cJSON *body)
{
	char *text = json_print(body);
	cJSON_Delete(body);
	if (!text) {
		log_error("out of memory printing a reply");
		reply_bytes(r, 500, "text/plain", NULL, 0);
		return;
	}
	reply_bytes(r, status, "application/json", text, strlen(text));
}

void reply_ok(struct req *r, cJSON *body)
{
	char ts[32];
	cJSON *out = cJSON_CreateObject();
	cJSON_AddTrueToObject(out, "success");
	/* Move the fields over in order; an object's items carry their keys. */
	while (body && body->child) {
		cJSON *item = cJSON_DetachItemViaPointer(body, body->child);
		cJSON_AddItemToArray(out, item);
	}
	cJSON_Delete(body);
	cJSON_AddStringToObject(out, "timestamp", json_timestamp(ts));
	reply_json(r, 200, out);
}

cJSON *error_object(int status, const char *code, int err, cJSON *context, const char *message)
{
	char ts[32];
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "code", code);
	cJSON_AddStringToObject(o, "message", message);
	cJSON_AddItemToObject(o, "context", context ? context : cJSON_CreateObject());
	cJSON_AddNumberToObject(o, "httpStatus", status);
	if (err) {
		const char *name = errno_name(err);
		if (name)
			cJSON_AddStringToObject(o, "errno", name);
	}
	cJSON_AddStringToObject(o, "timestamp", json_timestamp(ts));
	return o;
}

static void reply_verror(struct req *r, int status, const char *code, int err, cJSON *context,
			 const char *fmt, va_list ap)
{
	char msg[1024];
	vsnprintf(msg, sizeof msg, fmt, ap);
	reply_json(r, status, error_object(status, code, err, context, msg));
}

void reply_error(struct req *r, int status, const char *code, int err, cJSON *context,
		 const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	reply_verror(r, status, code, err, context, fmt, ap);
	va_end(ap);
}

void reply_errno(struct req *r, int err, const char *path, const char *fmt, ...)
{
	int status;
	if (err < 0)
		err = -err;
	const char *code = errno_to_code(err, &status);
	cJSON *ctx = cJSON_CreateObject();
	if (path)
		cJSON_AddStringToObject(ctx, "path", path);
	va_list ap;
	va_start(ap, fmt);
	reply_verror(r, status, code, err, ctx, fmt, ap);
	va_end(ap);
}

/* ---- SSE ---- */

struct sse_stream {
	struct sse_source src;
	struct strbuf buf;
	size_t off;
	int fd;    /* the connection's socket, only peeked at; -1 if MHD did not tell */
	bool done; /* next() returned 0: serve what is buffered, then end */
};

/* Set by the content reader of this connection's thread just before it ends a stream on
 * purpose, read by mhd_log when MHD reports that ending (on the same thread). */
static _Thread_local bool expected_abort;

static ssize_t end_on_purpose(void)
{
	expected_abort = true;
	return MHD_CONTENT_READER_END_WITH_ERROR;
}

static ssize_t sse_read(void *cls, uint64_t pos, char *out, size_t max)
{
	struct sse_stream *s = cls;
	(void)pos;
	if (s->off >= s->buf.len) {
		strbuf_reset(&s->buf);
		s->off = 0;
		if (s->done)
			return MHD_CONTENT_READER_END_OF_STREAM;
		int64_t start = mono_ms();
		while (s->buf.len == 0) {
			if (atomic_load(&stopping))
				return end_on_purpose();
			if (fd_peer_gone(s->fd)) {
				log_debug("stream: the client went away");
				return end_on_purpose();
			}
			int64_t left = SSE_KEEPALIVE_MS - (mono_ms() - start);
			if (left <= 0) {
				strbuf_appends(&s->buf, ": keepalive\n\n");
				break;
			}
			int rc = s->src.next(s->src.ctx, &s->buf,
					     left < SSE_SLICE_MS ? (int)left : SSE_SLICE_MS);
			if (rc < 0)
				return MHD_CONTENT_READER_END_WITH_ERROR;
			if (rc == 0) {
				s->done = true;
				if (s->buf.len == 0)
					return MHD_CONTENT_READER_END_OF_STREAM;
			}
		}
	}
	size_t n = s->buf.len - s->off;
	if (n > max)
		n = max;
	memcpy(out, s->buf.data + s->off, n);
	s->off += n;
	return (ssize_t)n;
}

static void sse_free(void *cls)
{
	struct sse_stream *s = cls;
	if (s->src.release)
		s->src.release(s->src.ctx);
	strbuf_free(&s->buf);
	free(s);
}

void reply_sse(struct req *r, struct sse_source src)
{
	if (r->idem && !r->replied) {
		idem_streamed(r->idem);
		r->idem = NULL;
	}
	struct sse_stream *s = calloc(1, sizeof *s);
	if (!s) {
		if (src.release)
			src.release(src.ctx);
		reply_error(r, 500, "INTERNAL_ERROR", ENOMEM, NULL, "out of memory");
		return;
	}
	s->src = src;
	s->fd = req_client_fd(r);
	struct MHD_Response *resp =
		MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 64 * 1024, sse_read, s, sse_free);
	if (!resp) {
		sse_free(s);
		reply_error(r, 500, "INTERNAL_ERROR", ENOMEM, NULL, "cannot create a stream");
		return;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
	queue(r, 200, resp, "text/event-stream");
}

/* ---- connection accounting (see the top) ---- */

struct conn {
	int fd;
	bool trusted;            /* only ever set, and read, by the connection's own thread */
	bool listed;             /* among the untrusted (conn_lock) */
	struct conn *prev, *next;
};

static pthread_mutex_t conn_lock = PTHREAD_MUTEX_INITIALIZER;
static struct conn *untrusted_head, *untrusted_tail; /* oldest first */
static unsigned n_untrusted, untrusted_max;

static void unlist(struct conn *c)
{
	*(c->prev ? &c->prev->next : &untrusted_head) = c->next;
	*(c->next ? &c->next->prev : &untrusted_tail) = c->prev;
	c->prev = c->next = NULL;
	c->listed = false;
	n_untrusted--;
}

/* MHD_OPTION_NOTIFY_CONNECTION, on the daemon's thread. MHD closes a socket only after the
 * CLOSED notice, so under conn_lock a listed connection's descriptor is still its own. */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
			  enum MHD_ConnectionNotificationCode code)
{
	struct conn *c = *socket_context;
	(void)cls;
	if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
		if (!c)
			return;
		pthread_mutex_lock(&conn_lock);
		if (c->listed)
			unlist(c);
		pthread_mutex_unlock(&conn_lock);
		free(c);
		*socket_context = NULL;
		return;
	}
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
	if (!ci || !(c = calloc(1, sizeof *c)))
		return; /* untracked: it stays with the idle timeout alone */
	c->fd = ci->connect_fd;
	*socket_context = c;
	pthread_mutex_lock(&conn_lock);
	c->prev = untrusted_tail;
	*(untrusted_tail ? &untrusted_tail->next : &untrusted_head) = c;
	untrusted_tail = c;
	c->listed = true;
	if (++n_untrusted > untrusted_max) {
		struct conn *oldest = untrusted_head;
		unlist(oldest);
		shutdown(oldest->fd, SHUT_RDWR); /* its thread sees the end and closes it */
		log_debug("httpd: %u connections without a token: closing the oldest",
			  untrusted_max);
	}
	pthread_mutex_unlock(&conn_lock);
}

static struct conn *conn_of(struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	return ci ? ci->socket_context : NULL;
}

/* The connection carried the bearer token: never evicted nor timed out from now on. */
static void trust(struct MHD_Connection *conn)
{
	struct conn *c = conn_of(conn);
	if (c && c->trusted)
		return;
	if (c) {
		pthread_mutex_lock(&conn_lock);
		if (c->listed)
			unlist(c);
		pthread_mutex_unlock(&conn_lock);
		c->trusted = true;
	}
	MHD_set_connection_option(conn, MHD_CONNECTION_OPTION_TIMEOUT, 0u);
}

/* ---- routing and authentication ---- */

/* Does path match the route's path? "{id}" stands for any one non-empty segment (of fewer
 * than argsize bytes), copied to arg. */
static bool route_matches(const char *pattern, const char *path, char *arg, size_t argsize)
{
	const char *var = strstr(pattern, "{id}");
	if (!var)
		return strcmp(path, pattern) == 0;
	size_t pl = (size_t)(var - pattern);
	if (strncmp(path, pattern, pl) != 0)
		return false;
	const char *seg = path + pl, *end = strchrnul(seg, '/');
	size_t n = (size_t)(end - seg);
	if (n == 0 || n >= argsize || strcmp(end, var + 4) != 0)
		return false;
	memcpy(arg, seg, n);
	arg[n] = '\0';
	return true;
}

/* Exact routes win over "{id}" routes ("/api/process/list" is not process "list"). A wrong
 * method on a known path is "not found" too, as in the container. */
static const struct route *find_route(const struct sbxd_config *cfg, const char *method,
				      const char *path, char *arg, size_t argsize)
{
	for (int pass = 0; pass < 2; pass++) {
		for (size_t i = 0; i < n_routes; i++) {
			const struct route *rt = &routes[i];
			if (rt->flags & ROUTE_EXTENSION && cfg->no_extensions)
				continue;
			if ((strstr(rt->path, "{id}") != NULL) != (pass == 1))
				continue;
			arg[0] = '\0';
			if (route_matches(rt->path, path, arg, argsize) &&
			    strcmp(method, rt->method) == 0)
				return rt;
		}
	}
	arg[0] = '\0';
	return NULL;
}

/* Constant time in the token's content (only the lengths may leak). */
static bool token_ok(const char *want, const char *given)
{
	if (!want || !given)
		return false;
	size_t gl = strlen(given), wl = strlen(want);
	unsigned char diff = gl != wl;
	for (size_t i = 0; i < wl; i++)
		diff |= (unsigned char)want[i] ^ (unsigned char)(i < gl ? given[i] : 0);
	return diff == 0;
}

static bool authorized(struct req *r)
{
	const char *h = req_header(r, MHD_HTTP_HEADER_AUTHORIZATION);
	if (!h || strncasecmp(h, "Bearer ", 7) != 0)
		return false;
	h += 7;
	while (*h == ' ')
		h++;
	return token_ok(r->sbxd->cfg->token, h);
}

static void reply_not_found(struct req *r)
{
	reply_error(r, 404, "UNKNOWN_ERROR", 0, NULL, "The requested endpoint was not found");
}

/* cJSON keeps strings NUL-terminated, so "a\u0000b" would silently become "a": a path or
 * a session id naming something else, file content cut short. Such bodies are refused. */
static bool json_has_nul(const char *s, size_t n)
{
	if (memchr(s, '\0', n))
		return true;
	if (!memmem(s, n, "\\u0000", 6))
		return false; /* the usual case, in one fast pass */
	bool in_string = false;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '"') {
			in_string = !in_string;
		} else if (in_string && s[i] == '\\' && i + 1 < n) {
			if (s[i + 1] == 'u' && i + 5 < n && memcmp(s + i + 2, "0000", 4) == 0)
				return true;
			i++; /* the escaped character cannot end the string */
		}
	}
	return false;
}

/* ---- idempotency keys ---- */

static enum MHD_Result hash_arg(void *cls, enum MHD_ValueKind kind, const char *key,
				const char *value)
{
	uint64_t *h = cls;
	(void)kind;
	*h = idem_hash(*h, key, strlen(key) + 1);
	if (value)
		*h = idem_hash(*h, value, strlen(value) + 1);
	return MHD_YES;
}

/* What a key must stand for: the same method, path, query and body. */
static uint64_t fingerprint(const struct req *r)
{
	uint64_t h = idem_hash(IDEM_HASH_INIT, r->method, strlen(r->method) + 1);
	h = idem_hash(h, r->path, strlen(r->path) + 1);
	MHD_get_connection_values(r->conn, MHD_GET_ARGUMENT_KIND, hash_arg, &h);
	return idem_hash(h, r->body.data ? r->body.data : "", r->body.len);
}

static int client_gone(void *arg)
{
	return fd_peer_gone(req_client_fd(arg));
}

/* Before the handler of a request that may carry an Idempotency-Key: true when the request
 * has been answered here (a repeat, or a key that cannot be honoured). GETs change nothing,
 * and a server without extensions is a plain container, which knows no keys. */
static bool answered_by_key(struct req *r)
{
	const char *key = req_header(r, "Idempotency-Key");
	if (!key || r->sbxd->cfg->no_extensions || strcmp(r->method, "GET") == 0)
		return false;
	if (!idem_key_valid(key)) {
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
			    "Idempotency-Key must be 1 to %d visible ASCII characters",
			    IDEM_KEY_MAX - 1);
		return true;
	}
	struct idem_answer a;
	switch (idem_begin(key, fingerprint(r), client_gone, r, &r->idem, &a)) {
	case IDEM_RUN:
		return false;
	case IDEM_REPLAY:
		log_debug("%s %s: repeat of key %s, answered with the first outcome", r->method,
			  r->path, key);
		r->replayed = true;
		reply_bytes(r, a.status, a.content_type, a.body, a.len);
		free(a.content_type);
		return true;
	case IDEM_REUSED:
		reply_error(r, 422, "IDEMPOTENCY_KEY_REUSED", EINVAL, NULL,
			    "Idempotency-Key %s was used for a different request", key);
		return true;
	case IDEM_STREAMED:
		reply_error(r, 409, "IDEMPOTENT_STREAM_STARTED", EIO, NULL,
			    "the request with Idempotency-Key %s already ran and streamed its "
			    "answer on an earlier connection, which cannot be replayed", key);
		return true;
	case IDEM_GONE:
		reply_error(r, 499, "CLIENT_CLOSED_REQUEST", ECANCELED, NULL,
			    "the client left while the first request with this key ran");
		return true;
	}
	return false;
}

static void run_handler(struct req *r)
{
	if (r->too_large) {
		reply_bytes(r, 413, NULL, NULL, 0);
		return;
	}
	if (r->route->flags & ROUTE_JSON) {
		if (r->body.len == 0) {
			r->json = cJSON_CreateObject();
		} else {
			r->json = cJSON_ParseWithLength(r->body.data, r->body.len);
			if (!cJSON_IsObject(r->json)) {
				reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
					    "invalid JSON body");
				return;
			}
			if (json_has_nul(r->body.data, r->body.len)) {
				reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
					    "a string in the body holds a NUL character (\\u0000), "
					    "which no path, id or command can contain; send file "
					    "content with \"encoding\":\"base64\"");
				return;
			}
		}
	}
	if (answered_by_key(r))
		return;
	r->route->handler(r);
	if (!r->replied) {
		log_error("%s %s: handler gave no reply", r->method, r->path);
		reply_error(r, 500, "INTERNAL_ERROR", EIO, NULL, "no reply");
	}
}

/* The first call for a request: its head is in. Routing, the token, the lease, the length;
 * failures are answered at once. */
static void request_head(struct req *r)
{
	const struct sbxd_config *cfg = r->sbxd->cfg;
	r->route = find_route(cfg, r->method, r->path, r->path_arg, sizeof r->path_arg);
	/* The token is checked before "not found": without it nothing about the server shows
	 * (and a client probing an absent extension learns its token is wrong). */
	bool authed = authorized(r);
	bool public = r->route && (r->route->flags & ROUTE_PUBLIC);
	if (!public && !authed)
		return reply_error(r, 401, "UNAUTHORIZED", EACCES, NULL,
				   "missing or invalid bearer token");
	if (!public)
		trust(r->conn);
	const char *client = req_header(r, "Sbx-Client");
	if (authed && client && !cfg->no_extensions && leases_renew(client))
		r->client = client;
	if (!r->route)
		return reply_not_found(r);
	const char *cl = req_header(r, MHD_HTTP_HEADER_CONTENT_LENGTH);
	if (cl && strtoull(cl, NULL, 10) > BODY_MAX)
		reply_bytes(r, 413, NULL, NULL, 0);
}

/* A fragment of the body. */
static void request_body(struct req *r, const char *data, size_t n)
{
	if (r->replied || r->too_large)
		return;
	if (r->body.len + n > BODY_MAX) {
		r->too_large = true;
		strbuf_free(&r->body);
		return;
	}
	strbuf_append(&r->body, data, n);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version,
				  const char *upload_data, size_t *upload_data_size,
				  void **con_cls)
{
	struct req *r = *con_cls;
	struct httpd *h = cls;
	const struct httpd_hook *hook = h->hook;
	(void)version;
	if (!r) {
		r = calloc(1, sizeof *r);
		if (!r)
			return MHD_NO;
		*r = (struct req){ .conn = conn, .sbxd = h->sbxd, .method = method, .path = url,
				   .start = mono_ms() };
		*con_cls = r;
		r->hooked = hook && hook->claims(hook->arg, conn);
		if (!r->hooked) {
			request_head(r);
			return MHD_YES;
		}
		/* an upstream may take its time (on_completed puts the timeout back) */
		MHD_set_connection_option(conn, MHD_CONNECTION_OPTION_TIMEOUT, 0u);
	}
	if (r->hooked)
		return hook->access(hook->arg, conn, url, method, upload_data, upload_data_size,
				    &r->hook_state);
	if (*upload_data_size) {
		request_body(r, upload_data, *upload_data_size);
		*upload_data_size = 0;
		return MHD_YES;
	}
	if (!r->replied)
		run_handler(r);
	return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct req *r = *con_cls;
	struct httpd *h = cls;
	struct conn *c = conn_of(conn);
	if (!(c && c->trusted))
		MHD_set_connection_option(conn, MHD_CONNECTION_OPTION_TIMEOUT,
					  (unsigned)UNTRUSTED_IDLE_S);
	if (!r)
		return;
	*con_cls = NULL;
	if (r->hooked) {
		h->hook->completed(h->hook->arg, r->hook_state);
		free(r);
		return;
	}
	log_debug("%s %s %d %lldms%s", r->method, r->path, r->status,
		  (long long)(mono_ms() - r->start),
		  toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (cut)");
	strbuf_free(&r->body);
	cJSON_Delete(r->json);
	free(r);
}

/* MHD_OPTION_URI_LOG_CALLBACK, for the hook. */
static void *note_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
	struct httpd *h = cls;
	if (h->hook && h->hook->note_uri)
		h->hook->note_uri(h->hook->arg, uri, conn);
	return NULL;
}

/* MHD's messages about one connection that its client broke (hung up, sent garbage). */
static const char *const peer_trouble[] = {
	"Connection was closed by remote side",
	"Connection socket is closed when reading",
	"Socket has been disconnected when reading",
	"Failed to send data",
	"Failed to send the",
	"Error processing request (HTTP response code is 4",
	"Received HTTP/1.1 request without `Host' header",
	"Failed to parse `Content-Length' header",
	"Too large value of 'Content-Length' header",
};

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	char line[512];
	(void)cls;
	vsnprintf(line, sizeof line, fmt, ap);
	size_t n = strlen(line);
	while (n && line[n - 1] == '\n')
		line[--n] = '\0';
	if (expected_abort && strncmp(line, "Closing connection (application ", 32) == 0) {
		expected_abort = false;
		log_debug("httpd: %s", line);
		return;
	}
	/* what a client did to its own connection: anyone on loopback could flood the log */
	for (size_t i = 0; i < sizeof peer_trouble / sizeof peer_trouble[0]; i++)
		if (strncmp(line, peer_trouble[i], strlen(peer_trouble[i])) == 0) {
			log_debug("httpd: %s", line);
			return;
		}
	log_warn("httpd: %s", line);
}

/* ---- daemon ---- */

static int split_listen(const char *listen, char *host, size_t hostlen, char *port,
			size_t portlen)
{
	const char *colon;
	const char *h = listen;
	size_t hl;
	if (listen[0] == '[') {
		const char *end = strchr(listen, ']');
		if (!end || end[1] != ':')
			return -1;
		h = listen + 1;
		hl = (size_t)(end - h);
		colon = end + 1;
	} else {
		colon = strrchr(listen, ':');
		if (!colon)
			return -1;
		hl = (size_t)(colon - listen);
	}
	if (hl == 0 || hl >= hostlen || !colon[1] || strlen(colon + 1) >= portlen ||
	    strspn(colon + 1, "0123456789") != strlen(colon + 1))
		return -1;
	memcpy(host, h, hl);
	host[hl] = '\0';
	strcpy(port, colon + 1);
	return strtol(port, NULL, 10) <= 65535 ? 0 : -1;  /* saturates, unlike atoi */
}

static bool is_loopback(const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24) == 127;
	if (sa->sa_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
		return IN6_IS_ADDR_LOOPBACK(a) ||
		       (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
	}
	return false;
}

struct httpd *httpd_start(struct sbxd *sbxd, const struct httpd_hook *hook)
{
	const struct sbxd_config *cfg = sbxd->cfg;
	char host[256], port[16];
	const char *listen = cfg->listen ? cfg->listen : "127.0.0.1:7070";
	if (split_listen(listen, host, sizeof host, port, sizeof port)) {
		log_error("bad listen address '%s' (want HOST:PORT or [V6]:PORT)", listen);
		return NULL;
	}
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
	struct addrinfo *ai;
	int gerr = getaddrinfo(host, port, &hints, &ai);
	if (gerr) {
		log_error("cannot resolve '%s': %s", host, gai_strerror(gerr));
		return NULL;
	}
	if (!is_loopback(ai->ai_addr))
		log_warn("listening on %s, which is NOT a loopback address: anyone who can reach "
			 "it and knows the token controls the sandbox", listen);
	unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
			 MHD_USE_POLL | MHD_USE_ERROR_LOG | MHD_ALLOW_UPGRADE;
	if (ai->ai_family == AF_INET6)
		flags |= MHD_USE_DUAL_STACK;
	struct httpd *h = calloc(1, sizeof *h);
	if (!h) {
		freeaddrinfo(ai);
		return NULL;
	}
	h->sbxd = sbxd;
	h->hook = hook;
	atomic_store(&stopping, false);
	/* sbxd raised its open-file limit to the hard one before (server.c) */
	unsigned connections = CONNECTIONS_MAX;
	struct rlimit nofile;
	if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur / 4 < connections)
		connections = nofile.rlim_cur / 4 > 64 ? (unsigned)(nofile.rlim_cur / 4) : 64;
	untrusted_max = connections / 4;
	h->mhd = MHD_start_daemon(flags, (uint16_t)strtol(port, NULL, 10), NULL, NULL, on_request, h,
				  MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
				  MHD_OPTION_SOCK_ADDR, ai->ai_addr,
				  MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
				  MHD_OPTION_NOTIFY_CONNECTION, on_connection, NULL,
				  MHD_OPTION_CONNECTION_LIMIT, connections,
				  MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)UNTRUSTED_IDLE_S,
				  MHD_OPTION_URI_LOG_CALLBACK, note_uri, h,
				  MHD_OPTION_END);
	freeaddrinfo(ai);
	if (!h->mhd) {
		log_error("cannot listen on %s: %s", listen, strerror(errno));
		free(h);
		return NULL;
	}
	return h;
}

int httpd_port(const struct httpd *h)
{
	const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_BIND_PORT);
	return info ? info->port : -1;
}

void httpd_stop(struct httpd *h)
{
	if (!h)
		return;
	atomic_store(&stopping, true);
	if (h->hook && h->hook->stop)
		h->hook->stop(h->hook->arg); /* MHD waits for upgraded connections forever */
	MHD_stop_daemon(h->mhd);
	free(h);
}
