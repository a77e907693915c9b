/* The one HTTP client everything uses.
 *
 * One network thread owns a CURLM. Callers (FUSE worker threads, the event watcher, ...) hand it
 * requests through a queue and wake it with curl_multi_wakeup(). Every request has a deadline;
 * requests that are safe to repeat (idempotent ones, and mutations carrying an idempotency key
 * that the server honours) are retried with backoff on 429, gateway errors (502-504) and lost
 * connections as often as the deadline allows. A mutation without a key is never repeated,
 * not even by libcurl's own resend on a reused connection (it gets a fresh connection), unless
 * it provably never reached the server. Connections are reused (one multi, one connection
 * cache). Completion is reported by a callback that runs on the network thread;
 * http_request_sync() wraps that in a condition variable for callers that may block (never use
 * it for a stream).
 *
 * Circuit breaker (client/liveness.h): when a request goes unanswered for a while or loses its
 * connection, a prober pings the server; while the pings fail, attempts are held back for at
 * most HTTP_HOLD_MS and then fail with the prober's error, so nothing queues behind a dead or
 * stopped server for a whole deadline each.
 *
 * Streams (SSE) are long-lived requests on the same multi: each received event is handed to a
 * callback on the network thread, and an idle timeout ends a stream that went silent. */
#ifndef SBX_HTTP_H
#define SBX_HTTP_H
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include "client/sse.h"

struct http_client;

struct http_client_opts {
	const char *base_url;     /* "http://127.0.0.1:7070" or "https://host/sandbox/ID" (a path
				     prefix is kept; trailing '/' ignored) */
	const char *token;        /* bearer token; NULL or "" for none */
	long connect_timeout_ms;  /* 0 = 5000 */
	long request_timeout_ms;  /* default deadline of a request; 0 = 30000 */
	int max_retries;          /* for repeatable requests; 0 = as many as the deadline allows,
				     -1 = none */
	bool insecure;            /* skip TLS verification (never the default) */
	const char *ca_file;      /* extra CA bundle, may be NULL */
	int max_connections;      /* 0 = 16 */
	const char *user_agent;   /* NULL = "sbxfs/VERSION" */
};

struct http_header {
	const char *name;
	const char *value;
};

struct http_request {
	const char *method;       /* "GET", "POST", "PUT", "DELETE" */
	const char *path;         /* appended to base_url, e.g. "/api/x/pread" or
				     "/api/x/pwrite?handle=h1&offset=0" (caller URL-encodes) */
	const char *content_type; /* NULL = "application/json" when there is a body */
	const void *body;         /* copied at submit time; may be NULL */
	size_t body_len;
	const struct http_header *headers; /* extra headers, may be NULL */
	size_t n_headers;
	long timeout_ms;          /* total deadline, retries included; 0 = client default */
	bool idempotent;          /* may be repeated as it is (reads, and writes that set
				     absolute values) */
	/* A mutation's "Idempotency-Key" (docs/protocol.md): the server carries out a key once
	 * and answers repeats with the first outcome, so the request is retried like an
	 * idempotent one. NULL: no key (then a non-idempotent request is sent once). Only for a
	 * server that honours keys. */
	const char *idempotency_key;
	/* http_request_sync only: when *cancel turns true the request is abandoned (its
	 * connection closed, so the server sees the client go) and ends with -ECANCELED within
	 * about a quarter of a second. Read only while the call waits. */
	const atomic_bool *cancel;
};

struct http_response {
	long status;              /* HTTP status; 0 when no response arrived */
	int err;                  /* 0, or a negative errno: -ETIMEDOUT (deadline), -ENOTCONN
				     (connection refused/reset, DNS), -ECANCELED, -EIO (other) */
	char *body;               /* NUL-terminated (the NUL is not counted in body_len) */
	size_t body_len;
	char *content_type;       /* may be NULL */
	char errmsg[256];         /* readable reason for err != 0 */
	/* Attempts of this request that may have reached the server without their answer
	 * reaching us (connection lost after sending, a gateway error): when non-zero and the
	 * request is not idempotent, the server may have carried it out more than once. */
	int lost;
};

void http_response_clear(struct http_response *r);

struct http_client *http_client_new(const struct http_client_opts *opts);
/* Cancels what is pending (callbacks get -ECANCELED), stops the thread, frees. */
void http_client_free(struct http_client *c);
const char *http_client_base_url(const struct http_client *c);
/* This client's random id: sent with every request as "Sbx-Client", so the server can tie
 * what it holds for us (open files) to our lease, and the prefix of our idempotency keys. */
const char *http_client_id(const struct http_client *c);
/* A fresh idempotency key ("<client id>-<n>"), unique for this client's life. */
#define HTTP_KEY_MAX 48
void http_client_new_key(struct http_client *c, char key[HTTP_KEY_MAX]);
/* How long into an outage an attempt still waits for the server to answer again (a blip)
 * before failing; later attempts fail at once. */
#define HTTP_HOLD_MS 1000

/* Called once on the network thread when the request is done; owns nothing of resp after
 * returning (resp is cleared by the client afterwards). Must not block. */
typedef void (*http_done_cb)(void *arg, struct http_response *resp);
/* Queues a request; 0 or a negative errno (then cb is not called). */
int http_request_async(struct http_client *c, const struct http_request *req, http_done_cb cb,
		       void *arg);
/* Submits and waits (bounded by the request's deadline). Returns 0 when an HTTP response
 * arrived, whatever its status (check out->status), else resp->err. out must be cleared with
 * http_response_clear(). */
int http_request_sync(struct http_client *c, const struct http_request *req,
		      struct http_response *out);

/* Convenience for JSON APIs: POSTs (or GETs when body is NULL and method is NULL) and parses the
 * answer. Returns 0 and sets *json (caller frees with cJSON_Delete) for a 2xx response; a
 * negative errno otherwise. For an API error (non-2xx) the errno comes from
 * errno_from_api_error() and *json holds the parsed error body when it was JSON (may be NULL). */
struct cJSON;
int http_json(struct http_client *c, const char *method, const char *path,
	      const struct cJSON *body, long timeout_ms, bool idempotent, struct cJSON **json,
	      long *status);

/* Streams. on_event runs on the network thread for every SSE event; returning non-zero closes
 * the stream. on_end runs exactly once when the stream ends for any reason: err == 0 when the
 * server closed it normally, -ETIMEDOUT when nothing (not even a heartbeat comment) arrived for
 * idle_timeout_ms, -ECANCELED after http_stream_close(), or the transport error; status is the
 * HTTP status (a non-200 status carries the error body in body). */
struct http_stream;
struct http_stream_ops {
	int (*on_event)(void *arg, const struct sse_event *ev);
	void (*on_end)(void *arg, int err, long status, const char *body, size_t body_len);
	/* Optional: the response's headers are complete (status is final, not 1xx); runs once,
	 * before any on_event, so a caller can tell "the server took it" from "still connecting"
	 * while the body stays silent. */
	void (*on_open)(void *arg, long status);
	/* Optional: the events of the bytes received so far have all been delivered, and no
	 * more bytes are there yet (a consumer pairing adjacent events stops waiting here). */
	void (*on_pause)(void *arg);
};
/* Starts a stream; NULL on failure (errno set). idle_timeout_ms 0 = no idle timeout. */
struct http_stream *http_stream_open(struct http_client *c, const struct http_request *req,
				     const struct http_stream_ops *ops, void *arg,
				     long idle_timeout_ms);
/* Stops a stream; on_end has been called (from the network thread) when this returns, unless
 * it is called from the network thread itself (then on_end runs before the stream is freed).
 * Safe to call once, from any thread, also after the stream ended. */
void http_stream_close(struct http_stream *s);

/* Percent-encodes s for use in a query string; caller frees. */
char *http_urlencode(const char *s);
#endif
