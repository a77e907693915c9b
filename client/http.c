/* The HTTP client: one network thread, one CURLM, everything else talks to it through a queue.
 *
 * Threads. Any thread may submit (http_request_async, http_stream_open): the transfer is
 * allocated and fully prepared by the caller, appended to c->queue under c->lock, and the
 * network thread is woken with curl_multi_wakeup(). Everything else - the multi, the easy
 * handles, the active list, the retry timers, the handle pool - belongs to the network thread
 * alone and takes no lock. Completion callbacks and stream callbacks run on that thread, so
 * they must not block; they may submit new work (the queue lock is not held while they run).
 *
 * The loop. Each turn: take the queue; end streams that were cancelled or went idle; start
 * retries whose backoff elapsed; curl_multi_perform(); handle finished transfers (complete,
 * or schedule a retry); then curl_multi_poll() with a timeout no later than the next retry,
 * idle deadline or header deadline. Backoff never sleeps: a transfer waiting for its retry
 * sits on the timer list, detached from the multi.
 *
 * Deadlines. A request has one deadline for all its attempts. Each attempt gets
 * CURLOPT_TIMEOUT_MS = what is left of it, and a retry is only scheduled when its backoff ends
 * before the deadline, so the callback always runs by the deadline (plus scheduling noise).
 *
 * Repeats. A request is repeatable when it is idempotent or carries an idempotency key; only
 * those are retried after an attempt that may have reached the server. A 502 or 504 is
 * retried only when the sandbox API did not send it itself (api_error). libcurl itself resends
 * a request, unasked, when a reused connection turns out dead before any answer byte. To see
 * that, bodies go through a read callback: libcurl must rewind it (body_seek), which counts
 * the earlier copy as lost for a repeatable request (the fallback's "already done" checks
 * need that count) and is refused for any other, so the transfer fails rather than run twice.
 * A request without a body cannot be watched that way: a non-repeatable one other than GET
 * goes out on a fresh connection (CURLOPT_FRESH_CONNECT), where libcurl never resends.
 * Any request is retried after a failure that shows it was never sent (no connection,
 * nothing written) and after 429, which says it was not processed.
 *
 * Holding. Before each attempt (first or retry) the loop asks the liveness prober whether the
 * server is known to be down. If it is, the transfer waits on the timer list, marked held,
 * until HTTP_HOLD_MS after the server was first seen down (its deadline if sooner): the
 * prober's change of state wakes the loop, which starts held transfers at once when the
 * server is back and fails them with the prober's reason when their hold ends. So a blip
 * costs a short wait, and once an outage is that old every attempt fails at once: requests
 * that queue behind one another (the kernel serialises lookups of one name, and each waiter
 * asks again after the first failed) cannot add up. The prober keeps pinging every 200 ms
 * and is answered at once by a server that resumes. It is asked to look whenever an attempt
 * has gone unanswered for suspect_after_ms or lost its connection.
 *
 * Streams. A stream is a transfer with no total timeout whose write callback feeds an SSE
 * parser. Its owner and the network thread both hold it; it is freed by whichever lets go
 * last, decided under the stream's own lock (s->ended / s->closed). http_stream_close() from
 * another thread sets the atomic cancel flag, wakes the loop and waits for the network thread
 * to run on_end; from the network thread itself (inside any callback) it cannot wait, so it
 * only sets the flag and the network thread frees the stream after on_end. The stream lock,
 * not the client's, guards this, so a stream that already ended can be closed after the client
 * is gone; while a stream has not ended the client cannot be freed (freeing ends all streams
 * under their locks first), which is why waking the loop under the stream lock is safe.
 *
 * Shutdown. http_client_free() sets c->stopping (later submissions fail with -ECANCELED), wakes
 * and joins the thread; the thread's last act is to finish everything it still holds with
 * -ECANCELED. */
#include "client/http.h"
#include <curl/curl.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
#include <cjson/cJSON.h>
#include "client/liveness.h"
#include "common/clock.h"
#include "common/errnames.h"
#include "common/jsonutil.h"
#include "common/log.h"
#include "common/strbuf.h"

#define BACKOFF_FIRST_MS 50
#define BACKOFF_MAX_MS 2000
#define SYNC_GRACE_MS 2000
#define CANCEL_POLL_MS 250  /* how often a sync waiter looks at its caller's cancel flag */
#define STREAM_ERROR_BODY_MAX (1 << 20)
#define POOL_MAX 16
/* The prober looks when an attempt is unanswered for a sixth of the deadline (1-5 s), and gives
 * a ping a third of it (2-10 s): a sandbox that stopped answering is known down well before
 * the first deadline ends, so what queues behind that request fails fast. */
#define SUSPECT_MIN_MS 1000
#define SUSPECT_MAX_MS 5000
#define PROBE_MIN_MS 2000
#define PROBE_MAX_MS 10000

enum xfer_kind { XFER_REQUEST, XFER_STREAM };

struct xfer {
	struct http_client *c;
	enum xfer_kind kind;
	struct xfer *next, *prev;  /* queue, active list or timer list (one at a time) */
	char *method;
	char *url;
	char *body;
	size_t body_len;
	size_t body_pos;           /* how much of it libcurl took in this attempt */
	struct curl_slist *headers;
	bool repeatable;           /* idempotent, or carries an idempotency key */
	long timeout_ms;
	int64_t deadline;          /* monotonic ms */
	int attempts;
	int lost;                  /* attempts that may have reached the server unanswered */
	int64_t retry_at;
	bool held;                 /* waiting for a down server, until retry_at at most */
	int64_t attempt_at;        /* when the current attempt started */
	bool suspected;            /* the prober was asked about the current attempt */
	CURL *easy;
	struct strbuf resp;
	long status;
	char errbuf[CURL_ERROR_SIZE];

	http_done_cb cb;           /* requests */
	void *cb_arg;
	atomic_bool *cancel;       /* a sync waiter's flag, alive until cb has run */
};

struct http_stream {
	struct xfer x;             /* first: the active list holds streams as xfers */
	const struct http_stream_ops *ops;
	void *arg;
	struct sse_parser *parser;
	long idle_timeout_ms;
	int64_t last_activity;
	bool responded;            /* headers arrived: the request deadline no longer applies */
	bool opened;               /* on_open has run */
	int end_err;               /* set by the write callback when it aborts the transfer */
	bool consumer_stopped;
	atomic_bool cancel;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool ended, closed, free_on_end;
};

struct http_client {
	char *base_url;
	char *hostport;            /* for messages: "127.0.0.1:7070" */
	char *auth_header;
	char *user_agent;
	char *ca_file;
	long connect_timeout_ms;
	long request_timeout_ms;
	long suspect_after_ms;     /* an attempt unanswered this long makes the prober look */
	int max_retries;
	bool insecure;
	char id[20];               /* http_client_id() */
	atomic_ullong next_key;
	struct liveness *live;

	CURLM *multi;
	pthread_t thread;

	pthread_mutex_t lock;      /* guards queue and stopping */
	struct xfer *queue_head, *queue_tail;
	bool stopping;

	/* network thread only */
	struct xfer *active;
	struct xfer *timers;
	CURL *pool[POOL_MAX];
	int npool;
	uint64_t rng;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void curl_init_once(void) { curl_global_init(CURL_GLOBAL_DEFAULT); }

/* snprintf for messages, where cutting a long URL short is fine. */
__attribute__((format(printf, 3, 4)))
static void fmt_msg(char *buf, size_t n, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, n, fmt, ap);
	va_end(ap);
}

static bool on_net_thread(const struct http_client *c)
{
	return pthread_equal(pthread_self(), c->thread);
}

static void list_push(struct xfer **head, struct xfer *x)
{
	x->prev = NULL;
	x->next = *head;
	if (*head)
		(*head)->prev = x;
	*head = x;
}

static void list_del(struct xfer **head, struct xfer *x)
{
	if (x->prev)
		x->prev->next = x->next;
	else
		*head = x->next;
	if (x->next)
		x->next->prev = x->prev;
	x->next = x->prev = NULL;
}

void http_response_clear(struct http_response *r)
{
	free(r->body);
	free(r->content_type);
	memset(r, 0, sizeof(*r));
}

const char *http_client_base_url(const struct http_client *c) { return c->base_url; }
const char *http_client_id(const struct http_client *c) { return c->id; }

void http_client_new_key(struct http_client *c, char key[HTTP_KEY_MAX])
{
	snprintf(key, HTTP_KEY_MAX, "%s-%llu", c->id,
		 (unsigned long long)atomic_fetch_add(&c->next_key, 1) + 1);
}

char *http_urlencode(const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	struct strbuf sb = STRBUF_INIT;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
		    (*p >= '0' && *p <= '9') || strchr("-._~", *p)) {
			strbuf_append(&sb, p, 1);
		} else {
			char e[3] = { '%', hex[*p >> 4], hex[*p & 15] };
			strbuf_append(&sb, e, 3);
		}
	}
	return strbuf_detach(&sb, NULL);
}

/* ---- transfers ---- */

static size_t request_write(char *ptr, size_t size, size_t n, void *ud)
{
	struct xfer *x = ud;
	strbuf_append(&x->resp, ptr, size * n);
	return size * n;
}

static char *join_url(const struct http_client *c, const char *path)
{
	struct strbuf sb = STRBUF_INIT;
	strbuf_appends(&sb, c->base_url);
	if (path && *path) {
		if (*path != '/')
			strbuf_append(&sb, "/", 1);
		strbuf_appends(&sb, path);
	}
	return strbuf_detach(&sb, NULL);
}

static bool header_safe(const char *s)
{
	return !strpbrk(s, "\r\n");
}

/* Copies what the easy handle needs out of the caller's request. */
static int xfer_init(struct http_client *c, struct xfer *x, enum xfer_kind kind,
		     const struct http_request *req)
{
	if (!req || !req->path || (req->body_len && !req->body))
		return -EINVAL;
	x->c = c;
	x->kind = kind;
	x->method = strdup(req->method ? req->method : "GET");
	x->url = join_url(c, req->path);
	if (!x->method || !x->url)
		return -ENOMEM;
	if (!header_safe(x->method) || strchr(x->method, ' ') || !header_safe(req->path))
		return -EINVAL;
	if (req->body_len) {
		x->body = malloc(req->body_len);
		if (!x->body)
			return -ENOMEM;
		memcpy(x->body, req->body, req->body_len);
		x->body_len = req->body_len;
	}
	x->repeatable = req->idempotent || req->idempotency_key;
	x->timeout_ms = req->timeout_ms > 0 ? req->timeout_ms : c->request_timeout_ms;

	struct strbuf h = STRBUF_INIT;
	struct curl_slist *l = NULL;
#define ADDH(...) do { \
		strbuf_reset(&h); \
		strbuf_appendf(&h, __VA_ARGS__); \
		struct curl_slist *nl = curl_slist_append(l, h.data); \
		if (!nl) { \
			strbuf_free(&h); \
			curl_slist_free_all(l); \
			return -ENOMEM; \
		} \
		l = nl; \
	} while (0)
	if (c->auth_header)
		ADDH("%s", c->auth_header);
	ADDH("Sbx-Client: %s", c->id);
	if (req->idempotency_key) {
		if (!header_safe(req->idempotency_key)) {
			strbuf_free(&h);
			curl_slist_free_all(l);
			return -EINVAL;
		}
		ADDH("Idempotency-Key: %s", req->idempotency_key);
	}
	if (x->body || strcmp(x->method, "POST") == 0 || strcmp(x->method, "PUT") == 0)
		ADDH("Content-Type: %s", req->content_type ? req->content_type : "application/json");
	/* No "Expect: 100-continue": it costs a round trip (or a 1 s wait) on large bodies. */
	ADDH("Expect:");
	if (kind == XFER_STREAM)
		ADDH("Accept: text/event-stream");
	for (size_t i = 0; i < req->n_headers; i++) {
		const struct http_header *hd = &req->headers[i];
		if (!hd->name || !hd->value || !header_safe(hd->name) || !header_safe(hd->value)) {
			strbuf_free(&h);
			curl_slist_free_all(l);
			return -EINVAL;
		}
		ADDH("%s: %s", hd->name, hd->value);
	}
#undef ADDH
	strbuf_free(&h);
	x->headers = l;
	return 0;
}

static void xfer_release(struct xfer *x)
{
	free(x->method);
	free(x->url);
	free(x->body);
	curl_slist_free_all(x->headers);
	strbuf_free(&x->resp);
}

static size_t stream_header(char *ptr, size_t size, size_t n, void *ud);

/* The request body, handed to libcurl piece by piece. */
static size_t body_read(char *buf, size_t size, size_t n, void *ud)
{
	struct xfer *x = ud;
	size_t left = x->body_len - x->body_pos, k = size * n < left ? size * n : left;
	if (k)
		memcpy(buf, x->body + x->body_pos, k);
	x->body_pos += k;
	return k;
}

/* libcurl rewinds the body to send the request again by itself (a reused connection died
 * before any answer): the copy it had sent may have reached the server. A repeatable request
 * counts it as lost; any other refuses, so the transfer fails instead of running twice. */
static int body_seek(void *ud, curl_off_t offset, int origin)
{
	struct xfer *x = ud;
	if (origin != SEEK_SET || offset < 0 || (size_t)offset > x->body_len)
		return CURL_SEEKFUNC_FAIL;
	if (x->body_pos > 0) {
		if (!x->repeatable)
			return CURL_SEEKFUNC_CANTSEEK;
		x->lost++;
	}
	x->body_pos = (size_t)offset;
	return CURL_SEEKFUNC_OK;
}

/* Network thread: an easy handle configured for x (pooled ones are reset first). */
static CURL *easy_setup(struct http_client *c, struct xfer *x, curl_write_callback write_cb)
{
	CURL *e;
	if (c->npool) {
		e = c->pool[--c->npool];
		curl_easy_reset(e);
	} else {
		e = curl_easy_init();
		if (!e)
			return NULL;
	}
	curl_easy_setopt(e, CURLOPT_URL, x->url);
	curl_easy_setopt(e, CURLOPT_PRIVATE, x);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, x->errbuf);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, x->headers);
	curl_easy_setopt(e, CURLOPT_USERAGENT, c->user_agent);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, c->connect_timeout_ms);
	curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
	/* see "Repeats" at the top */
	if (!x->repeatable && !x->body_len && strcmp(x->method, "GET") != 0)
		curl_easy_setopt(e, CURLOPT_FRESH_CONNECT, 1L);
	if (c->insecure) {
		curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
		curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
	}
	if (c->ca_file)
		curl_easy_setopt(e, CURLOPT_CAINFO, c->ca_file);

	bool post = strcmp(x->method, "POST") == 0;
	if (x->body || post) {
		/* through callbacks, not CURLOPT_POSTFIELDS: see "Repeats" at the top */
		curl_easy_setopt(e, CURLOPT_POST, 1L);
		curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)x->body_len);
		curl_easy_setopt(e, CURLOPT_READFUNCTION, body_read);
		curl_easy_setopt(e, CURLOPT_READDATA, x);
		curl_easy_setopt(e, CURLOPT_SEEKFUNCTION, body_seek);
		curl_easy_setopt(e, CURLOPT_SEEKDATA, x);
		if (!post)
			curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, x->method);
	} else if (strcmp(x->method, "GET") == 0) {
		curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
	} else if (strcmp(x->method, "HEAD") == 0) {
		curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
	} else {
		curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, x->method);
	}
	if (x->kind == XFER_STREAM) {
		curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
		curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, stream_header);
		curl_easy_setopt(e, CURLOPT_HEADERDATA, x);
	}
	return e;
}

static void easy_recycle(struct http_client *c, CURL *e)
{
	if (!e)
		return;
	if (c->npool < POOL_MAX)
		c->pool[c->npool++] = e;
	else
		curl_easy_cleanup(e);
}

/* Turns a transport failure into a negative errno and a readable message. */
static int map_curl_error(struct xfer *x, CURLcode rc, char *msg, size_t n)
{
	struct http_client *c = x->c;
	long os_err = 0;
	const char *detail = x->errbuf[0] ? x->errbuf : curl_easy_strerror(rc);
	if (x->easy)
		curl_easy_getinfo(x->easy, CURLINFO_OS_ERRNO, &os_err);
	switch (rc) {
	case CURLE_OPERATION_TIMEDOUT:
		if (mono_ms() + 5 >= x->deadline || x->kind == XFER_STREAM)
			fmt_msg(msg, n, "%s %s: no answer within %ld ms", x->method, x->url,
				x->timeout_ms);
		else
			fmt_msg(msg, n, "connect to %s timed out", c->hostport);
		return -ETIMEDOUT;
	case CURLE_COULDNT_CONNECT:
		fmt_msg(msg, n, "connect to %s failed: %s", c->hostport,
			os_err ? strerror((int)os_err) : detail);
		return -ENOTCONN;
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_RESOLVE_PROXY:
		fmt_msg(msg, n, "cannot resolve %s: %s", c->hostport, detail);
		return -ENOTCONN;
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_PARTIAL_FILE:
		fmt_msg(msg, n, "%s %s: connection to %s lost: %s", x->method, x->url,
			c->hostport, detail);
		return -ENOTCONN;
	default:
		fmt_msg(msg, n, "%s %s: %s", x->method, x->url, detail);
		return -EIO;
	}
}

static bool retryable_status(long s)
{
	return s == 429 || s == 502 || s == 503 || s == 504 || (s >= 520 && s <= 527);
}

static bool retryable_curl(CURLcode rc)
{
	switch (rc) {
	case CURLE_COULDNT_CONNECT:
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_PARTIAL_FILE:
	case CURLE_OPERATION_TIMEDOUT:  /* a connect timeout; the deadline is checked below */
		return true;
	default:
		return false;
	}
}

static uint64_t rng_next(struct http_client *c)
{
	c->rng ^= c->rng << 13;
	c->rng ^= c->rng >> 7;
	c->rng ^= c->rng << 17;
	return c->rng;
}

/* Network thread: (re)attaches x to the multi for one attempt. */
static int attempt_start(struct http_client *c, struct xfer *x)
{
	x->attempt_at = mono_ms();
	x->suspected = false;
	if (x->kind == XFER_STREAM)
		((struct http_stream *)x)->last_activity = x->attempt_at;
	int64_t left = x->deadline - x->attempt_at;
	if (x->kind == XFER_REQUEST) {
		if (left < 1)
			left = 1;
		curl_easy_setopt(x->easy, CURLOPT_TIMEOUT_MS, (long)left);
	}
	strbuf_reset(&x->resp);
	x->errbuf[0] = '\0';
	x->status = 0;
	x->body_pos = 0;
	x->attempts++;
	if (curl_multi_add_handle(c->multi, x->easy) != CURLM_OK)
		return -EIO;
	list_push(&c->active, x);
	return 0;
}

static void request_complete(struct http_client *c, struct xfer *x, int err, const char *msg)
{
	struct http_response r = { .status = x->status, .err = err, .lost = x->lost };
	if (err) {
		r.status = 0;
		fmt_msg(r.errmsg, sizeof(r.errmsg), "%s", msg ? msg : strerror(-err));
		if (err != -ECANCELED)
			log_debug("http: %s", r.errmsg);
	}
	if (!err) {
		char *ct = NULL;
		if (x->easy)
			curl_easy_getinfo(x->easy, CURLINFO_CONTENT_TYPE, &ct);
		r.content_type = ct ? strdup(ct) : NULL;
		r.body = strbuf_detach(&x->resp, &r.body_len);
	} else {
		r.body = strdup("");
	}
	easy_recycle(c, x->easy);
	x->easy = NULL;
	if (x->cb)
		x->cb(x->cb_arg, &r);
	http_response_clear(&r);
	xfer_release(x);
	free(x);
}

/* Network thread: the stream is over; tell its owner and let go of it. */
static void stream_finish(struct http_client *c, struct http_stream *s, int err)
{
	struct xfer *x = &s->x;
	if (x->easy) {
		curl_multi_remove_handle(c->multi, x->easy);
		/* A stream connection that was cut mid-body is not reused by curl anyway; the
		 * handle itself can be. */
		easy_recycle(c, x->easy);
		x->easy = NULL;
	}
	bool error_body = x->status && x->status != 200;
	if (s->ops->on_end)
		s->ops->on_end(s->arg, err, x->status, error_body ? x->resp.data : NULL,
			       error_body ? x->resp.len : 0);
	pthread_mutex_lock(&s->lock);
	s->ended = true;
	bool free_now = s->free_on_end;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	if (free_now) {
		xfer_release(x);
		sse_parser_free(s->parser);
		pthread_mutex_destroy(&s->lock);
		pthread_cond_destroy(&s->cond);
		free(s);
	}
}

static bool attempt_sent(struct xfer *x, CURLcode rc);
static long backoff_ms(struct http_client *c, int attempts);

static void stream_done(struct http_client *c, struct http_stream *s, CURLcode rc)
{
	int err = 0;
	char msg[256];
	if (atomic_load(&s->cancel))
		err = -ECANCELED;
	else if (s->end_err)
		err = s->end_err;
	else if (s->consumer_stopped)
		err = 0;
	else if (rc != CURLE_OK) {
		err = map_curl_error(&s->x, rc, msg, sizeof(msg));
		liveness_suspect(c->live);
		/* Nothing came back yet: a stream may be opened again as a request would be. */
		struct xfer *x = &s->x;
		bool sent = attempt_sent(x, rc);
		x->lost += sent;
		if (!s->responded && retryable_curl(rc) && (x->repeatable || !sent) &&
		    x->attempts <= c->max_retries) {
			long delay = backoff_ms(c, x->attempts);
			if (mono_ms() + delay + 10 < x->deadline) {
				log_debug("http: stream %s, retry %d in %ld ms", msg, x->attempts,
					  delay);
				x->retry_at = mono_ms() + delay;
				list_push(&c->timers, x);
				return;
			}
		}
		log_debug("http: stream %s", msg);
	}
	if (!s->x.status)
		curl_easy_getinfo(s->x.easy, CURLINFO_RESPONSE_CODE, &s->x.status);
	stream_finish(c, s, err);
}

/* Whether a sync waiter, its caller interrupted, wants request x ended now. */
static bool cancel_wanted(const struct xfer *x)
{
	return x->cancel && atomic_load(x->cancel);
}

static void finish_cancelled(struct http_client *c, struct xfer *x)
{
	char msg[256];
	fmt_msg(msg, sizeof(msg), "%s %s: interrupted", x->method, x->url);
	request_complete(c, x, -ECANCELED, msg);
}

/* Whether a 502 or 504 comes from the sandbox API itself (its JSON error shape, with a
 * "code"): then it is the request's outcome (sbxd's 502 GIT_NETWORK_ERROR: the clone's own
 * server failed), not a gateway's "could not deliver it", and is not retried. A 503 means
 * "try again" whoever says it. */
static bool api_error(const struct xfer *x)
{
	if ((x->status != 502 && x->status != 504) || !x->resp.len || x->resp.data[0] != '{')
		return false;
	cJSON *j = cJSON_ParseWithLength(x->resp.data, x->resp.len);
	bool api = json_str(j, "code") != NULL;
	cJSON_Delete(j);
	return api;
}

/* Exponential, with jitter: BACKOFF_FIRST_MS doubling up to BACKOFF_MAX_MS. */
static long backoff_ms(struct http_client *c, int attempts)
{
	long d = BACKOFF_FIRST_MS << (attempts - 1 < 6 ? attempts - 1 : 6);
	if (d > BACKOFF_MAX_MS)
		d = BACKOFF_MAX_MS;
	return d / 2 + (long)(rng_next(c) % (uint64_t)(d / 2 + 1));
}

/* Whether a failed attempt may have reached the server: something of it was written. */
static bool attempt_sent(struct xfer *x, CURLcode rc)
{
	if (rc == CURLE_COULDNT_CONNECT || rc == CURLE_COULDNT_RESOLVE_HOST ||
	    rc == CURLE_COULDNT_RESOLVE_PROXY)
		return false;
	long sent = 0;
	curl_easy_getinfo(x->easy, CURLINFO_REQUEST_SIZE, &sent);
	return sent > 0;
}

/* Network thread: one attempt of x ended (it is already off the multi). */
static void request_done(struct http_client *c, struct xfer *x, CURLcode rc)
{
	char msg[256] = "";
	int err = 0;
	long delay = -1;  /* >= 0: worth another attempt, after this many ms (0: backoff) */
	bool sent = true;
	int64_t now = mono_ms();
	if (rc == CURLE_OK) {
		curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &x->status);
		if (retryable_status(x->status) && !api_error(x)) {
			curl_off_t ra = 0;
			curl_easy_getinfo(x->easy, CURLINFO_RETRY_AFTER, &ra);
			delay = ra > 0 ? (long)ra * 1000 : 0;
			/* 429 says the request was not processed; a gateway cannot tell */
			sent = x->status != 429;
			x->lost += sent;
		}
	} else {
		err = map_curl_error(x, rc, msg, sizeof(msg));
		sent = attempt_sent(x, rc);
		x->lost += sent;
		if (retryable_curl(rc))
			delay = 0;
		liveness_suspect(c->live);
	}
	if (delay >= 0 && (x->repeatable || !sent) && x->attempts <= c->max_retries) {
		if (!delay)
			delay = backoff_ms(c, x->attempts);
		/* Only worth it when the next attempt starts with some time left to run. */
		if (now + delay + 10 < x->deadline) {
			if (err)
				log_debug("http: %s, retry %d in %ld ms", msg, x->attempts, delay);
			else
				log_debug("http: %s %s: HTTP %ld, retry %d in %ld ms", x->method,
					  x->url, x->status, x->attempts, delay);
			x->retry_at = now + delay;
			list_push(&c->timers, x);
			return;
		}
	}
	request_complete(c, x, err, msg);
}

/* Stream write callback: any byte is activity; a non-200 answer is collected as the body. */
static size_t stream_write(char *ptr, size_t size, size_t n, void *ud)
{
	struct http_stream *s = ud;
	size_t len = size * n;
	s->last_activity = mono_ms();
	s->responded = true;
	if (!s->x.status)
		curl_easy_getinfo(s->x.easy, CURLINFO_RESPONSE_CODE, &s->x.status);
	if (s->x.status != 200) {
		if (s->x.resp.len < STREAM_ERROR_BODY_MAX)
			strbuf_append(&s->x.resp, ptr, len);
		return len;
	}
	if (atomic_load(&s->cancel))
		return 0;
	int r = sse_parser_feed(s->parser, ptr, len);
	if (r == -1 && !s->consumer_stopped) {
		log_warn("http: stream %s: SSE line too long", s->x.url);
		s->end_err = -EPROTO;
	}
	if (!r && !atomic_load(&s->cancel) && s->ops->on_pause)
		s->ops->on_pause(s->arg);
	return r || atomic_load(&s->cancel) ? 0 : len;
}

/* Headers count as activity too: a quiet stream that answered is alive, not late. */
static size_t stream_header(char *ptr, size_t size, size_t n, void *ud)
{
	struct http_stream *s = ud;
	size_t len = size * n;
	s->last_activity = mono_ms();
	s->responded = true;
	/* The blank line ends a header block; a 1xx block (100 Continue) is not the answer. */
	bool blank = (len == 2 && ptr[0] == '\r') || (len == 1 && ptr[0] == '\n');
	if (blank && s->ops->on_open && !s->opened) {
		long status = 0;
		curl_easy_getinfo(s->x.easy, CURLINFO_RESPONSE_CODE, &status);
		if (status >= 200) {
			s->opened = true;
			s->ops->on_open(s->arg, status);
		}
	}
	return len;
}

static int stream_event(void *arg, const struct sse_event *ev)
{
	struct http_stream *s = arg;
	if (s->ops->on_event && s->ops->on_event(s->arg, ev)) {
		s->consumer_stopped = true;
		return 1;
	}
	return atomic_load(&s->cancel) ? 1 : 0;
}

/* Network thread: x cannot go on; it ends with err. */
static void xfer_fail(struct http_client *c, struct xfer *x, int err, const char *msg)
{
	if (x->kind == XFER_STREAM) {
		log_debug("http: stream %s", msg);
		stream_finish(c, (struct http_stream *)x, err);
	} else {
		request_complete(c, x, err, msg);
	}
}

/* Network thread: starts the next attempt of x, or holds it while the server is known to be
 * down (see "Holding" at the top). */
static void attempt_or_hold(struct http_client *c, struct xfer *x)
{
	char why[160], msg[256];
	int64_t now = mono_ms();
	int64_t since = 0;
	int down = liveness_down(c->live, why, sizeof why, &since);
	if (down) {
		if (!x->held) {
			/* the first HTTP_HOLD_MS of an outage may be a blip; after that, no wait */
			int64_t until = since + HTTP_HOLD_MS;
			x->held = true;
			x->retry_at = until < x->deadline ? until : x->deadline;
		}
		if (now < x->retry_at) {
			list_push(&c->timers, x);
			return;
		}
		fmt_msg(msg, sizeof(msg), "%s", why);
		xfer_fail(c, x, down, msg);
		return;
	}
	x->held = false;
	if (attempt_start(c, x) < 0) {
		fmt_msg(msg, sizeof(msg), "%s %s: cannot start transfer", x->method, x->url);
		xfer_fail(c, x, -EIO, msg);
	}
}

/* Whether the owner of x has given up on it. */
static bool xfer_cancelled(const struct xfer *x)
{
	if (x->kind == XFER_STREAM)
		return atomic_load(&((const struct http_stream *)x)->cancel);
	return cancel_wanted(x);
}

/* Network thread: the first attempt of something just taken off the queue. */
static void xfer_start(struct http_client *c, struct xfer *x)
{
	char msg[256];
	if (xfer_cancelled(x)) {
		if (x->kind == XFER_STREAM)
			stream_finish(c, (struct http_stream *)x, -ECANCELED);
		else
			finish_cancelled(c, x);
		return;
	}
	if (x->kind == XFER_STREAM)
		((struct http_stream *)x)->last_activity = mono_ms();
	x->easy = easy_setup(c, x, x->kind == XFER_STREAM ? stream_write : request_write);
	if (!x->easy) {
		fmt_msg(msg, sizeof(msg), "%s %s: cannot start transfer", x->method, x->url);
		xfer_fail(c, x, -EIO, msg);
		return;
	}
	attempt_or_hold(c, x);
}

/* Network thread: asks the prober to look when an attempt has gone unanswered for a while;
 * returns when that will be, for one not due yet. */
static int64_t check_unanswered(struct http_client *c, struct xfer *x, int64_t now)
{
	int64_t due = x->attempt_at + c->suspect_after_ms;
	if (x->suspected)
		return INT64_MAX;
	if (now < due)
		return due;
	x->suspected = true;
	liveness_suspect(c->live);
	return INT64_MAX;
}

/* Network thread: cancelled requests; cancelled, idle and header-less streams; returns the
 * next check due. */
static int64_t check_active(struct http_client *c, int64_t now)
{
	int64_t next = INT64_MAX;
	struct xfer *x = c->active, *nx;
	for (; x; x = nx) {
		nx = x->next;
		if (x->kind != XFER_STREAM) {
			if (cancel_wanted(x)) {
				list_del(&c->active, x);
				curl_multi_remove_handle(c->multi, x->easy);
				finish_cancelled(c, x);
			} else {
				int64_t due = check_unanswered(c, x, now);
				if (due < next)
					next = due;
			}
			continue;
		}
		struct http_stream *s = (struct http_stream *)x;
		int err = 0;
		int64_t due = INT64_MAX;
		if (!s->responded) {
			int64_t d = check_unanswered(c, x, now);
			if (d < next)
				next = d;
		}
		if (atomic_load(&s->cancel)) {
			err = -ECANCELED;
		} else {
			if (s->idle_timeout_ms)
				due = s->last_activity + s->idle_timeout_ms;
			if (!s->responded && x->deadline < due)
				due = x->deadline;
			if (now >= due)
				err = -ETIMEDOUT;
		}
		if (err) {
			if (err == -ETIMEDOUT)
				log_debug("http: stream %s went silent", x->url);
			list_del(&c->active, x);
			if (!x->status && x->easy)
				curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &x->status);
			stream_finish(c, s, err);
			/* Callbacks cannot unlink other transfers (closing a stream from this
			 * thread only flags it), so nx is still valid. */
			continue;
		}
		if (due < next)
			next = due;
	}
	return next;
}

/* Network thread: starts retries whose backoff ended and held transfers whose server is back,
 * fails held ones whose hold ended; returns the next moment something is due. */
static int64_t run_timers(struct http_client *c, int64_t now)
{
	bool up = !liveness_down(c->live, NULL, 0, NULL);
	struct xfer *due = NULL, *x, *nx;
	for (x = c->timers; x; x = nx) {
		nx = x->next;
		if (xfer_cancelled(x) || x->retry_at <= now || (x->held && up)) {
			list_del(&c->timers, x);
			list_push(&due, x);
		}
	}
	/* Apart from the list walk: attempt_or_hold may put a transfer back on it. */
	for (x = due; x; x = nx) {
		nx = x->next;
		x->next = x->prev = NULL;
		if (!xfer_cancelled(x))
			attempt_or_hold(c, x);
		else if (x->kind == XFER_STREAM)
			stream_finish(c, (struct http_stream *)x, -ECANCELED);
		else
			finish_cancelled(c, x);
	}
	int64_t next = INT64_MAX;
	for (x = c->timers; x; x = x->next)
		if (x->retry_at < next)
			next = x->retry_at;
	return next;
}

static void read_infos(struct http_client *c)
{
	CURLMsg *m;
	int left;
	while ((m = curl_multi_info_read(c->multi, &left))) {
		if (m->msg != CURLMSG_DONE)
			continue;
		struct xfer *x = NULL;
		CURL *e = m->easy_handle;
		CURLcode rc = m->data.result;
		curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&x);
		list_del(&c->active, x);
		curl_multi_remove_handle(c->multi, e);
		if (x->kind == XFER_STREAM)
			stream_done(c, (struct http_stream *)x, rc);
		else
			request_done(c, x, rc);
	}
}

static void cancel_one(struct http_client *c, struct xfer *x)
{
	if (x->kind == XFER_STREAM) {
		stream_finish(c, (struct http_stream *)x, -ECANCELED);
	} else {
		char msg[256];
		fmt_msg(msg, sizeof(msg), "%s %s: cancelled (client shutting down)", x->method,
			x->url);
		request_complete(c, x, -ECANCELED, msg);
	}
}

static void shutdown_all(struct http_client *c)
{
	struct xfer *x;
	while ((x = c->active)) {
		list_del(&c->active, x);
		if (x->kind == XFER_REQUEST && x->easy)
			curl_multi_remove_handle(c->multi, x->easy);
		cancel_one(c, x);
	}
	while ((x = c->timers)) {
		list_del(&c->timers, x);
		cancel_one(c, x);
	}
	/* c->stopping is set, so callbacks above could not queue more; drain what was there. */
	pthread_mutex_lock(&c->lock);
	x = c->queue_head;
	c->queue_head = c->queue_tail = NULL;
	pthread_mutex_unlock(&c->lock);
	while (x) {
		struct xfer *nx = x->next;
		x->next = NULL;
		cancel_one(c, x);
		x = nx;
	}
}

static void *net_thread(void *arg)
{
	struct http_client *c = arg;
	for (;;) {
		pthread_mutex_lock(&c->lock);
		struct xfer *q = c->queue_head;
		c->queue_head = c->queue_tail = NULL;
		bool stopping = c->stopping;
		pthread_mutex_unlock(&c->lock);
		while (q) {
			struct xfer *nx = q->next;
			q->next = NULL;
			if (stopping)
				cancel_one(c, q);
			else
				xfer_start(c, q);
			q = nx;
		}
		if (stopping)
			break;

		int running;
		curl_multi_perform(c->multi, &running);
		read_infos(c);

		int64_t now = mono_ms();
		int64_t next = check_active(c, now);
		int64_t t = run_timers(c, now);
		if (t < next)
			next = t;

		/* curl_multi_poll() also honours curl's own timers (a retry just added has one). */
		int timeout = 1000;
		if (next != INT64_MAX) {
			int64_t d = next - mono_ms();
			timeout = d < 0 ? 0 : d < 1000 ? (int)d : 1000;
		}
		curl_multi_poll(c->multi, NULL, 0, timeout, NULL);
	}
	shutdown_all(c);
	return NULL;
}

/* ---- client ---- */

static void client_destroy(struct http_client *c)
{
	for (int i = 0; i < c->npool; i++)
		curl_easy_cleanup(c->pool[i]);
	if (c->multi)
		curl_multi_cleanup(c->multi);
	pthread_mutex_destroy(&c->lock);
	free(c->base_url);
	free(c->hostport);
	free(c->auth_header);
	free(c->user_agent);
	free(c->ca_file);
	free(c);
}

static long clamp_ms(long v, long lo, long hi)
{
	return v < lo ? lo : v > hi ? hi : v;
}

/* The prober's change of state: held transfers start or fail. */
static void wake_loop(void *arg)
{
	struct http_client *c = arg;
	curl_multi_wakeup(c->multi);
}

/* "host:port" of the base URL, for error messages. */
static char *url_hostport(const char *url)
{
	CURLU *u = curl_url();
	char *host = NULL, *port = NULL, *out = NULL;
	if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
	    curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK) {
		struct strbuf sb = STRBUF_INIT;
		strbuf_appendf(&sb, "%s:%s", host, port);
		out = strbuf_detach(&sb, NULL);
	}
	curl_free(host);
	curl_free(port);
	curl_url_cleanup(u);
	return out;
}

struct http_client *http_client_new(const struct http_client_opts *opts)
{
	if (!opts || !opts->base_url || (strncmp(opts->base_url, "http://", 7) != 0 &&
					 strncmp(opts->base_url, "https://", 8) != 0) ||
	    (opts->token && !header_safe(opts->token))) {
		errno = EINVAL;
		return NULL;
	}
	pthread_once(&curl_once, curl_init_once);
	struct http_client *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	pthread_mutex_init(&c->lock, NULL);
	size_t n = strlen(opts->base_url);
	while (n > 0 && opts->base_url[n - 1] == '/')
		n--;
	c->base_url = strndup(opts->base_url, n);
	c->hostport = c->base_url ? url_hostport(c->base_url) : NULL;
	if (!c->hostport) {
		client_destroy(c);
		errno = EINVAL;
		return NULL;
	}
	if (opts->token && *opts->token) {
		struct strbuf sb = STRBUF_INIT;
		strbuf_appendf(&sb, "Authorization: Bearer %s", opts->token);
		c->auth_header = strbuf_detach(&sb, NULL);
	}
	c->user_agent = strdup(opts->user_agent ? opts->user_agent : "sbxfs/" SBXFS_VERSION);
	c->ca_file = opts->ca_file ? strdup(opts->ca_file) : NULL;
	c->connect_timeout_ms = opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : 5000;
	c->request_timeout_ms = opts->request_timeout_ms > 0 ? opts->request_timeout_ms : 30000;
	c->max_retries = opts->max_retries < 0 ? 0 : opts->max_retries ? opts->max_retries : INT_MAX;
	c->suspect_after_ms = clamp_ms(c->request_timeout_ms / 6, SUSPECT_MIN_MS, SUSPECT_MAX_MS);
	c->insecure = opts->insecure;
	uint64_t r;
	if (getrandom(&r, sizeof r, 0) != sizeof r)
		r = (uint64_t)mono_ms() * 0x9e3779b97f4a7c15ULL ^ (uint64_t)getpid();
	snprintf(c->id, sizeof c->id, "%016llx", (unsigned long long)r);
	c->rng = r | 1;
	long maxconn = opts->max_connections > 0 ? opts->max_connections : 16;

	c->multi = curl_multi_init();
	if (!c->user_agent || (opts->ca_file && !c->ca_file) || !c->multi) {
		client_destroy(c);
		errno = ENOMEM;
		return NULL;
	}
	curl_multi_setopt(c->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, maxconn);
	curl_multi_setopt(c->multi, CURLMOPT_MAX_HOST_CONNECTIONS, maxconn);
	curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, maxconn);
	char *ping = join_url(c, "/api/ping");
	struct liveness_opts lo = {
		.url = ping,
		.hostport = c->hostport,
		.auth_header = c->auth_header,
		.user_agent = c->user_agent,
		.ca_file = c->ca_file,
		.insecure = c->insecure,
		.connect_timeout_ms = c->connect_timeout_ms,
		.probe_timeout_ms = clamp_ms(c->request_timeout_ms / 3, PROBE_MIN_MS, PROBE_MAX_MS),
		.on_change = wake_loop,
		.arg = c,
	};
	c->live = liveness_start(&lo);
	free(ping);
	if (!c->live) {
		client_destroy(c);
		errno = ENOMEM;
		return NULL;
	}
	int rc = pthread_create(&c->thread, NULL, net_thread, c);
	if (rc) {
		liveness_stop(c->live);
		client_destroy(c);
		errno = rc;
		return NULL;
	}
	return c;
}

void http_client_free(struct http_client *c)
{
	if (!c)
		return;
	pthread_mutex_lock(&c->lock);
	c->stopping = true;
	pthread_mutex_unlock(&c->lock);
	curl_multi_wakeup(c->multi);
	pthread_join(c->thread, NULL);
	/* only now: the loop asks the liveness until its end (its on_change still finds the
	 * multi handle, which client_destroy frees) */
	liveness_stop(c->live);
	client_destroy(c);
}

static int submit(struct http_client *c, struct xfer *x)
{
	x->deadline = mono_ms() + x->timeout_ms;
	pthread_mutex_lock(&c->lock);
	if (c->stopping) {
		pthread_mutex_unlock(&c->lock);
		return -ECANCELED;
	}
	x->next = NULL;
	if (c->queue_tail)
		c->queue_tail->next = x;
	else
		c->queue_head = x;
	c->queue_tail = x;
	pthread_mutex_unlock(&c->lock);
	curl_multi_wakeup(c->multi);
	return 0;
}

static int request_submit(struct http_client *c, const struct http_request *req,
			  http_done_cb cb, void *arg, atomic_bool *cancel)
{
	struct xfer *x = calloc(1, sizeof(*x));
	if (!x)
		return -ENOMEM;
	int rc = xfer_init(c, x, XFER_REQUEST, req);
	if (!rc) {
		x->cb = cb;
		x->cb_arg = arg;
		x->cancel = cancel;
		rc = submit(c, x);
	}
	if (rc) {
		xfer_release(x);
		free(x);
	}
	return rc;
}

int http_request_async(struct http_client *c, const struct http_request *req, http_done_cb cb,
		       void *arg)
{
	return request_submit(c, req, cb, arg, NULL);
}

static bool ts_before(const struct timespec *a, const struct timespec *b)
{
	return a->tv_sec < b->tv_sec || (a->tv_sec == b->tv_sec && a->tv_nsec < b->tv_nsec);
}

/* The waiter and the network thread share this; the last one to let go frees it, so a waiter
 * that gives up (which the deadline should make impossible) leaves nothing dangling. */
struct sync_wait {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int refs;
	bool done;
	atomic_bool cancel; /* the caller's cancel flag, relayed: the request keeps no pointer
			       into the caller's memory, which may be gone if the waiter gives up */
	struct http_response resp;
};

static void sync_put(struct sync_wait *w)
{
	bool last = --w->refs == 0;
	pthread_mutex_unlock(&w->lock);
	if (last) {
		http_response_clear(&w->resp);
		pthread_mutex_destroy(&w->lock);
		pthread_cond_destroy(&w->cond);
		free(w);
	}
}

static void sync_done(void *arg, struct http_response *r)
{
	struct sync_wait *w = arg;
	pthread_mutex_lock(&w->lock);
	w->resp = *r;
	r->body = r->content_type = NULL;
	w->done = true;
	pthread_cond_signal(&w->cond);
	sync_put(w);
}

int http_request_sync(struct http_client *c, const struct http_request *req,
		      struct http_response *out)
{
	memset(out, 0, sizeof(*out));
	if (on_net_thread(c)) {
		out->err = -EDEADLK;
		fmt_msg(out->errmsg, sizeof(out->errmsg),
			"synchronous request from the network thread");
		return out->err;
	}
	struct sync_wait *w = calloc(1, sizeof(*w));
	if (!w) {
		out->err = -ENOMEM;
		return out->err;
	}
	mono_cond_init(&w->cond);
	pthread_mutex_init(&w->lock, NULL);
	w->refs = 2;

	atomic_init(&w->cancel, false);
	int rc = request_submit(c, req, sync_done, w, &w->cancel);
	if (rc) {
		pthread_mutex_lock(&w->lock);
		w->refs = 1;
		sync_put(w);
		out->err = rc;
		fmt_msg(out->errmsg, sizeof(out->errmsg), "%s %s: %s",
			req && req->method ? req->method : "GET", req && req->path ? req->path : "",
			strerror(-rc));
		return rc;
	}
	long timeout = req->timeout_ms > 0 ? req->timeout_ms : c->request_timeout_ms;
	struct timespec ts = mono_after_ms(timeout + SYNC_GRACE_MS);

	pthread_mutex_lock(&w->lock);
	while (!w->done) {
		/* with a cancel flag to watch, wake four times a second to look at it */
		struct timespec until = ts;
		if (req->cancel && !atomic_load(&w->cancel)) {
			struct timespec soon = mono_after_ms(CANCEL_POLL_MS);
			if (ts_before(&soon, &until))
				until = soon;
		}
		pthread_cond_timedwait(&w->cond, &w->lock, &until);
		if (w->done)
			break;
		if (req->cancel && atomic_load(req->cancel) && !atomic_load(&w->cancel)) {
			atomic_store(&w->cancel, true); /* the network thread ends it now */
			curl_multi_wakeup(c->multi);
		} else {
			struct timespec now = mono_after_ms(0);
			if (!ts_before(&now, &ts))
				break;
		}
	}
	if (w->done) {
		*out = w->resp;
		memset(&w->resp, 0, sizeof(w->resp));
	} else {
		out->err = -ETIMEDOUT;
		fmt_msg(out->errmsg, sizeof(out->errmsg), "%s %s: no answer within %ld ms",
			req->method ? req->method : "GET", req->path, timeout);
		log_warn("http: %s (network thread stalled)", out->errmsg);
	}
	sync_put(w);
	return out->err;
}

int http_json(struct http_client *c, const char *method, const char *path,
	      const struct cJSON *body, long timeout_ms, bool idempotent, struct cJSON **json,
	      long *status)
{
	if (json)
		*json = NULL;
	if (status)
		*status = 0;
	char *text = NULL;
	if (body && !(text = cJSON_PrintUnformatted(body)))
		return -ENOMEM;
	struct http_request req = {
		.method = method ? method : body ? "POST" : "GET",
		.path = path,
		.content_type = "application/json",
		.body = text,
		.body_len = text ? strlen(text) : 0,
		.timeout_ms = timeout_ms,
		.idempotent = idempotent,
	};
	struct http_header accept = { "Accept", "application/json" };
	req.headers = &accept;
	req.n_headers = 1;
	struct http_response r;
	int rc = http_request_sync(c, &req, &r);
	free(text);
	if (rc) {
		log_debug("http: %s", r.errmsg);
		http_response_clear(&r);
		return rc;
	}
	if (status)
		*status = r.status;
	cJSON *j = r.body_len ? cJSON_ParseWithLength(r.body, r.body_len) : NULL;
	if (r.status >= 200 && r.status < 300) {
		if (!j && r.body_len) {
			log_warn("http: %s %s: answer is not JSON", req.method, path);
			rc = -EPROTO;
		} else if (!j) {
			j = cJSON_CreateObject();
		}
	} else {
		rc = -errno_from_api_error(json_str(j, "errno"), json_str(j, "code"), r.status);
		if (log_enabled(LOG_LVL_DEBUG)) {
			const char *m = json_str(j, "message");
			if (!m)
				m = json_str(j, "error");
			log_debug("http: %s %s: %ld %s", req.method, path, r.status,
				  m ? m : "(no message)");
		}
	}
	http_response_clear(&r);
	if (json)
		*json = j;
	else
		cJSON_Delete(j);
	return rc;
}

/* ---- streams ---- */

struct http_stream *http_stream_open(struct http_client *c, const struct http_request *req,
				     const struct http_stream_ops *ops, void *arg,
				     long idle_timeout_ms)
{
	if (!ops) {
		errno = EINVAL;
		return NULL;
	}
	struct http_stream *s = calloc(1, sizeof(*s));
	if (!s) {
		errno = ENOMEM;
		return NULL;
	}
	int rc = xfer_init(c, &s->x, XFER_STREAM, req);
	if (!rc) {
		s->parser = sse_parser_new(stream_event, NULL, s);
		if (!s->parser)
			rc = -ENOMEM;
	}
	if (rc) {
		xfer_release(&s->x);
		sse_parser_free(s->parser);
		free(s);
		errno = -rc;
		return NULL;
	}
	s->ops = ops;
	s->arg = arg;
	s->idle_timeout_ms = idle_timeout_ms > 0 ? idle_timeout_ms : 0;
	atomic_init(&s->cancel, false);
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	rc = submit(c, &s->x);
	if (rc) {
		xfer_release(&s->x);
		sse_parser_free(s->parser);
		pthread_mutex_destroy(&s->lock);
		pthread_cond_destroy(&s->cond);
		free(s);
		errno = -rc;
		return NULL;
	}
	return s;
}

void http_stream_close(struct http_stream *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	s->closed = true;
	if (!s->ended) {
		atomic_store(&s->cancel, true);
		/* Safe: the client cannot be freed before this stream ended, which needs s->lock. */
		curl_multi_wakeup(s->x.c->multi);
		if (on_net_thread(s->x.c)) {
			s->free_on_end = true;
			pthread_mutex_unlock(&s->lock);
			return;
		}
		while (!s->ended)
			pthread_cond_wait(&s->cond, &s->lock);
	}
	pthread_mutex_unlock(&s->lock);
	xfer_release(&s->x);
	sse_parser_free(s->parser);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->cond);
	free(s);
}
