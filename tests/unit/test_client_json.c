/* client/http.c against a tiny HTTP/1.1 server written here with plain sockets: one thread
 * per connection, keep-alive, and a handful of scripted routes (flaky, hanging, error bodies,
 * SSE streams that trickle, heartbeat, end or never stop). */
#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "client/http.h"
#include "common/jsonutil.h"
#include "common/strbuf.h"
#include "unit.h"

#define MAX_CONNS 256

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };
	nanosleep(&ts, NULL);
}

/* ---- the server ---- */

static struct {
	int lfd;
	int port;
	pthread_t accept_thread;
	atomic_bool stop;
	atomic_int accepted;
	atomic_int flaky[8];
	pthread_mutex_t lock;
	int fds[MAX_CONNS];
	pthread_t threads[MAX_CONNS];
	int nconn;
} srv = { .lock = PTHREAD_MUTEX_INITIALIZER };

struct req {
	char method[16];
	char path[256];
	char auth[128];
	char ctype[128];
	const char *body;
	size_t body_len;
};

static bool send_all(int fd, const void *buf, size_t n)
{
	const char *p = buf;
	while (n) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
		if (w <= 0)
			return false;
		p += w;
		n -= (size_t)w;
	}
	return true;
}

static bool send_str(int fd, const char *s) { return send_all(fd, s, strlen(s)); }

static bool respond(int fd, int status, const char *extra_headers, const char *ctype,
		    const char *body)
{
	struct strbuf sb = STRBUF_INIT;
	strbuf_appendf(&sb, "HTTP/1.1 %d X\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s\r\n%s",
		       status, ctype, strlen(body), extra_headers ? extra_headers : "", body);
	bool ok = send_all(fd, sb.data, sb.len);
	strbuf_free(&sb);
	return ok;
}

static bool json_respond(int fd, int status, const char *body)
{
	return respond(fd, status, NULL, "application/json", body);
}

/* Blocks until the client hangs up (or the server stops and shuts the socket down). */
static void wait_hangup(int fd)
{
	char b[256];
	while (recv(fd, b, sizeof(b), 0) > 0)
		;
}

static bool sse_start(int fd)
{
	return send_str(fd, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
			    "Cache-Control: no-cache\r\nConnection: close\r\n\r\n");
}

/* Returns whether the connection stays open for another request. */
static bool handle(int fd, const struct req *r)
{
	const char *p = r->path;
	if (strncmp(p, "/prefix/", 8) == 0)
		p += 7;
	if (strcmp(p, "/ok") == 0)
		return json_respond(fd, 200, "{\"ok\":true}");
	if (strcmp(p, "/echo") == 0) {
		uint32_t sum = 0;
		for (size_t i = 0; i < r->body_len; i++)
			sum = sum * 31 + (unsigned char)r->body[i];
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "method", r->method);
		cJSON_AddStringToObject(o, "path", r->path);
		cJSON_AddStringToObject(o, "auth", r->auth);
		cJSON_AddStringToObject(o, "ctype", r->ctype);
		json_add_int(o, "len", (int64_t)r->body_len);
		json_add_int(o, "sum", sum);
		char *s = cJSON_PrintUnformatted(o);
		bool ok = json_respond(fd, 200, s);
		free(s);
		cJSON_Delete(o);
		return ok;
	}
	if (strncmp(p, "/flaky/", 7) == 0) {
		int n = atomic_fetch_add(&srv.flaky[strtol(p + 7, NULL, 10) & 7], 1) + 1;
		if (n <= 2)
			return json_respond(fd, 503, "{\"code\":\"UNAVAILABLE\",\"message\":\"busy\"}");
		char body[64];
		snprintf(body, sizeof(body), "{\"attempt\":%d}", n);
		return json_respond(fd, 200, body);
	}
	if (strcmp(p, "/retry-after") == 0) {
		int n = atomic_fetch_add(&srv.flaky[7], 1) + 1;
		if (n == 1 || n == 3)
			return respond(fd, 503, "Retry-After: 1\r\n", "application/json", "{}");
		return json_respond(fd, 200, "{\"ok\":true}");
	}
	if (strcmp(p, "/hang") == 0) {
		wait_hangup(fd);
		return false;
	}
	if (strcmp(p, "/enotempty") == 0)
		return json_respond(fd, 409, "{\"code\":\"FILE_EXISTS\",\"message\":\"Directory not "
				    "empty\",\"errno\":\"ENOTEMPTY\",\"httpStatus\":409}");
	if (strcmp(p, "/missing") == 0)
		return json_respond(fd, 404, "{\"code\":\"FILE_NOT_FOUND\",\"message\":\"File not "
				    "found: /workspace/nope\",\"context\":{},\"httpStatus\":404}");
	if (strcmp(p, "/exec-error") == 0)
		return json_respond(fd, 404, "{\"error\":\"Context nope not found\","
				    "\"code\":\"CONTEXT_NOT_FOUND\"}");
	if (strcmp(p, "/text") == 0)
		return respond(fd, 200, NULL, "text/plain", "not json");
	if (strcmp(p, "/sse-split") == 0) {
		static const char *pieces[] = { "da", "ta: one\n", "\n", "event: two\r\ndata: t",
						"wo\r\n\r", "\n" };
		bool ok = sse_start(fd);
		for (size_t i = 0; ok && i < sizeof(pieces) / sizeof(pieces[0]); i++) {
			ok = send_str(fd, pieces[i]);
			sleep_ms(20);
		}
		for (int i = 0; ok && i < 7; i++) {
			sleep_ms(100);
			ok = send_str(fd, ": keepalive\n");
		}
		if (ok)
			send_str(fd, "data: three\n\n");
		wait_hangup(fd);
		return false;
	}
	if (strcmp(p, "/sse-end") == 0) {
		if (sse_start(fd))
			send_str(fd, "data: a\n\nid: 9\ndata: b\n\n");
		return false;
	}
	if (strcmp(p, "/sse-ticks") == 0) {
		bool ok = sse_start(fd);
		for (int i = 0; ok && !atomic_load(&srv.stop); i++) {
			char line[64];
			snprintf(line, sizeof(line), "data: tick %d\n\n", i);
			ok = send_str(fd, line);
			sleep_ms(30);
		}
		return false;
	}
	if (strcmp(p, "/sse-quiet") == 0) {
		if (sse_start(fd))
			wait_hangup(fd);
		return false;
	}
	if (strcmp(p, "/sse-404") == 0)
		return json_respond(fd, 404, "{\"code\":\"FILE_NOT_FOUND\",\"message\":\"no such "
				    "stream\"}");
	return json_respond(fd, 404, "{\"code\":\"UNKNOWN_ERROR\"}");
}

static void header_value(const char *h, size_t hlen, const char *name, char *out, size_t n)
{
	size_t nl = strlen(name);
	out[0] = '\0';
	for (const char *l = h; l < h + hlen;) {
		const char *e = memmem(l, (size_t)(h + hlen - l), "\r\n", 2);
		if (!e)
			e = h + hlen;
		if ((size_t)(e - l) > nl && strncasecmp(l, name, nl) == 0 && l[nl] == ':') {
			const char *v = l + nl + 1;
			while (*v == ' ')
				v++;
			size_t vl = (size_t)(e - v) < n - 1 ? (size_t)(e - v) : n - 1;
			memcpy(out, v, vl);
			out[vl] = '\0';
			return;
		}
		l = e + 2;
	}
}

static void *conn_main(void *arg)
{
	int slot = (int)(intptr_t)arg;
	int fd = srv.fds[slot];
	struct strbuf in = STRBUF_INIT;
	char buf[65536];
	for (;;) {
		const char *hend;
		while (!in.len || !(hend = memmem(in.data, in.len, "\r\n\r\n", 4))) {
			ssize_t n = recv(fd, buf, sizeof(buf), 0);
			if (n <= 0)
				goto out;
			strbuf_append(&in, buf, (size_t)n);
		}
		size_t hlen = (size_t)(hend - in.data) + 4;
		struct req r = { 0 };
		char clen[32];
		if (sscanf(in.data, "%15s %255s", r.method, r.path) != 2)
			goto out;
		header_value(in.data, hlen, "content-length", clen, sizeof(clen));
		header_value(in.data, hlen, "authorization", r.auth, sizeof(r.auth));
		header_value(in.data, hlen, "content-type", r.ctype, sizeof(r.ctype));
		size_t blen = (size_t)strtoul(clen, NULL, 10);
		while (in.len < hlen + blen) {
			ssize_t n = recv(fd, buf, sizeof(buf), 0);
			if (n <= 0)
				goto out;
			strbuf_append(&in, buf, (size_t)n);
		}
		r.body = in.data + hlen;
		r.body_len = blen;
		bool keep = handle(fd, &r);
		strbuf_consume(&in, hlen + blen);
		if (!keep)
			break;
	}
out:
	strbuf_free(&in);
	pthread_mutex_lock(&srv.lock);
	close(fd);
	srv.fds[slot] = -1;
	pthread_mutex_unlock(&srv.lock);
	return NULL;
}

static void *accept_main(void *arg)
{
	while (!atomic_load(&srv.stop)) {
		struct pollfd pfd = { srv.lfd, POLLIN, 0 };
		if (poll(&pfd, 1, 50) <= 0)
			continue;
		int fd = accept(srv.lfd, NULL, NULL);
		if (fd < 0)
			continue;
		atomic_fetch_add(&srv.accepted, 1);
		pthread_mutex_lock(&srv.lock);
		if (srv.nconn == MAX_CONNS) {
			pthread_mutex_unlock(&srv.lock);
			close(fd);
			continue;
		}
		int slot = srv.nconn++;
		srv.fds[slot] = fd;
		pthread_create(&srv.threads[slot], NULL, conn_main, (void *)(intptr_t)slot);
		pthread_mutex_unlock(&srv.lock);
	}
	return NULL;
}

static int listen_local(int *port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof(a);
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 64) < 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &al) < 0) {
		printf("Bail out! a listening socket on 127.0.0.1: %s\n", strerror(errno));
		exit(1);
	}
	*port = ntohs(a.sin_port);
	return fd;
}

static void server_start(void)
{
	srv.lfd = listen_local(&srv.port);
	pthread_create(&srv.accept_thread, NULL, accept_main, NULL);
}

static void server_stop(void)
{
	atomic_store(&srv.stop, true);
	pthread_join(srv.accept_thread, NULL);
	pthread_mutex_lock(&srv.lock);
	for (int i = 0; i < srv.nconn; i++)
		if (srv.fds[i] >= 0)
			shutdown(srv.fds[i], SHUT_RDWR);
	int n = srv.nconn;
	pthread_mutex_unlock(&srv.lock);
	for (int i = 0; i < n; i++)
		pthread_join(srv.threads[i], NULL);
	close(srv.lfd);
}

/* ---- helpers ---- */

static struct http_client *client_for(int port, const char *prefix, const char *token)
{
	char url[128];
	snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, prefix);
	struct http_client_opts o = { .base_url = url, .token = token };
	return http_client_new(&o);
}

/* ---- requests ---- */

static void test_basic(struct http_client *c)
{
	cJSON *j = NULL;
	long status = 0;
	CHECK(http_json(c, NULL, "/echo", NULL, 0, true, &j, &status) == 0);
	CHECK(status == 200);
	CHECK_STR(json_str(j, "method"), "GET");
	CHECK_STR(json_str(j, "path"), "/prefix/echo");
	CHECK_STR(json_str(j, "auth"), "Bearer sekrit");
	cJSON_Delete(j);

	cJSON *body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "path", "/workspace/a b");
	char *text = cJSON_PrintUnformatted(body);
	CHECK(http_json(c, NULL, "echo", body, 0, false, &j, &status) == 0);
	CHECK_STR(json_str(j, "method"), "POST");
	CHECK_STR(json_str(j, "path"), "/prefix/echo");
	CHECK_STR(json_str(j, "ctype"), "application/json");
	CHECK(json_int(j, "len", -1) == (int64_t)strlen(text));
	free(text);
	cJSON_Delete(j);
	CHECK(http_json(c, "DELETE", "/echo", body, 0, false, &j, NULL) == 0);
	CHECK_STR(json_str(j, "method"), "DELETE");
	cJSON_Delete(j);
	CHECK(http_json(c, "GET", "/echo", body, 0, true, &j, NULL) == 0);
	CHECK_STR(json_str(j, "method"), "GET");
	CHECK(json_int(j, "len", 0) > 0);
	cJSON_Delete(j);
	cJSON_Delete(body);

	char base[64];
	snprintf(base, sizeof(base), "http://127.0.0.1:%d/prefix", srv.port);
	CHECK_STR(http_client_base_url(c), base);

	/* Raw: a response is a success of the transport whatever its status. */
	struct http_request req = { .method = "GET", .path = "/missing", .idempotent = true };
	struct http_response r;
	CHECK(http_request_sync(c, &req, &r) == 0);
	CHECK(r.status == 404 && r.err == 0);
	CHECK(r.body && strstr(r.body, "FILE_NOT_FOUND") && r.body_len == strlen(r.body));
	CHECK_STR(r.content_type, "application/json");
	http_response_clear(&r);

	char *e = http_urlencode("a b/é?&=~x");
	CHECK_STR(e, "a%20b%2F%C3%A9%3F%26%3D~x");
	free(e);
}

static void test_api_errors(struct http_client *c)
{
	cJSON *j = NULL;
	long status = 0;
	CHECK(http_json(c, NULL, "/missing", NULL, 0, true, &j, &status) == -ENOENT);
	CHECK(status == 404);
	CHECK_STR(json_str(j, "code"), "FILE_NOT_FOUND");
	cJSON_Delete(j);
	CHECK(http_json(c, "POST", "/enotempty", NULL, 0, false, &j, &status) == -ENOTEMPTY);
	CHECK(status == 409);
	cJSON_Delete(j);
	/* The /api/execute/code error shape. */
	CHECK(http_json(c, "POST", "/exec-error", NULL, 0, false, &j, NULL) == -ENOENT);
	CHECK_STR(json_str(j, "error"), "Context nope not found");
	cJSON_Delete(j);
	CHECK(http_json(c, NULL, "/text", NULL, 0, true, &j, &status) == -EPROTO);
	CHECK(j == NULL && status == 200);
	CHECK(http_json(c, NULL, "/missing", NULL, 0, true, NULL, NULL) == -ENOENT);
}

static void test_retries(struct http_client *c)
{
	cJSON *j = NULL;
	long status = 0;
	int64_t t0 = now_ms();
	CHECK(http_json(c, NULL, "/flaky/0", NULL, 0, true, &j, &status) == 0);
	CHECK(json_int(j, "attempt", 0) == 3);
	CHECK(atomic_load(&srv.flaky[0]) == 3);
	printf("# idempotent: 2 retries in %lld ms\n", (long long)(now_ms() - t0));
	cJSON_Delete(j);

	CHECK(http_json(c, "POST", "/flaky/1", NULL, 0, false, &j, &status) == -EAGAIN);
	CHECK(status == 503);
	CHECK(atomic_load(&srv.flaky[1]) == 1);
	cJSON_Delete(j);

	/* Retry-After: 1 is honoured when the deadline allows it ... */
	t0 = now_ms();
	CHECK(http_json(c, NULL, "/retry-after", NULL, 3000, true, &j, &status) == 0);
	int64_t el = now_ms() - t0;
	CHECK(el >= 950 && el < 2000);
	cJSON_Delete(j);
	/* ... and ends the request at once when it does not. */
	t0 = now_ms();
	CHECK(http_json(c, NULL, "/retry-after", NULL, 500, true, &j, &status) == -EAGAIN);
	CHECK(now_ms() - t0 < 400);
	cJSON_Delete(j);
}

static void test_timeout(struct http_client *c)
{
	cJSON *j = NULL;
	int64_t t0 = now_ms();
	CHECK(http_json(c, NULL, "/hang", NULL, 500, true, &j, NULL) == -ETIMEDOUT);
	int64_t el = now_ms() - t0;
	printf("# timed out after %lld ms\n", (long long)el);
	CHECK(el >= 450 && el < 1500);
	CHECK(j == NULL);

	struct http_request req = { .method = "POST", .path = "/hang", .timeout_ms = 300 };
	struct http_response r;
	CHECK(http_request_sync(c, &req, &r) == -ETIMEDOUT);
	CHECK(r.status == 0 && r.err == -ETIMEDOUT && strstr(r.errmsg, "300 ms"));
	printf("# %s\n", r.errmsg);
	http_response_clear(&r);
}

static void test_refused(void)
{
	int port;
	int fd = listen_local(&port);
	close(fd);
	struct http_client *c = client_for(port, "", NULL);
	struct http_request req = { .method = "POST", .path = "/api/x/ping" };
	struct http_response r;
	CHECK(http_request_sync(c, &req, &r) == -ENOTCONN);
	char want[96];
	snprintf(want, sizeof(want), "connect to 127.0.0.1:%d failed: Connection refused", port);
	printf("# %s\n", r.errmsg);
	CHECK_STR(r.errmsg, want);
	http_response_clear(&r);

	int64_t t0 = now_ms();
	cJSON *j = NULL;
	CHECK(http_json(c, NULL, "/x", NULL, 0, true, &j, NULL) == -ENOTCONN);
	printf("# refused, idempotent with retries: %lld ms\n", (long long)(now_ms() - t0));
	CHECK(now_ms() - t0 < 3000);
	http_client_free(c);
}

static void test_reuse(void)
{
	struct http_client *c = client_for(srv.port, "", NULL);
	int before = atomic_load(&srv.accepted);
	int bad = 0;
	for (int i = 0; i < 20; i++) {
		cJSON *j = NULL;
		if (http_json(c, NULL, "/ok", NULL, 0, true, &j, NULL) != 0)
			bad++;
		cJSON_Delete(j);
	}
	CHECK(bad == 0);
	CHECK(atomic_load(&srv.accepted) - before == 1);
	http_client_free(c);
}

struct async_wait {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int calls;
	int err;
	long status;
	char *body;
};

static void async_done(void *arg, struct http_response *r)
{
	struct async_wait *w = arg;
	pthread_mutex_lock(&w->lock);
	w->calls++;
	w->err = r->err;
	w->status = r->status;
	w->body = r->body ? strdup(r->body) : NULL;
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

static void async_wait_done(struct async_wait *w)
{
	pthread_mutex_lock(&w->lock);
	while (!w->calls)
		pthread_cond_wait(&w->cond, &w->lock);
	pthread_mutex_unlock(&w->lock);
}

static void test_large_body(struct http_client *c)
{
	size_t n = 3 << 20;
	char *big = malloc(n);
	uint32_t sum = 0;
	for (size_t i = 0; i < n; i++) {
		big[i] = (char)(i * 7 + (i >> 11));
		sum = sum * 31 + (unsigned char)big[i];
	}
	struct async_wait w = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };
	struct http_request req = { .method = "PUT", .path = "/echo",
				    .content_type = "application/octet-stream", .body = big,
				    .body_len = n };
	CHECK(http_request_async(c, &req, async_done, &w) == 0);
	memset(big, 0, n); /* the body was copied at submission */
	free(big);
	async_wait_done(&w);
	cJSON *j = cJSON_Parse(w.body);
	CHECK(w.err == 0 && w.status == 200);
	CHECK(json_int(j, "len", 0) == (int64_t)n);
	CHECK((uint32_t)json_int(j, "sum", 0) == sum);
	CHECK_STR(json_str(j, "ctype"), "application/octet-stream");
	CHECK_STR(json_str(j, "method"), "PUT");
	cJSON_Delete(j);
	free(w.body);
}

static atomic_int concurrent_bad;

static void *hammer(void *arg)
{
	struct http_client *c = arg;
	for (int i = 0; i < 25; i++) {
		cJSON *j = NULL;
		if (http_json(c, NULL, "/ok", NULL, 0, true, &j, NULL) != 0 ||
		    !json_bool(j, "ok", false))
			atomic_fetch_add(&concurrent_bad, 1);
		cJSON_Delete(j);
	}
	return NULL;
}

static void test_concurrent(struct http_client *c)
{
	pthread_t t[8];
	for (int i = 0; i < 8; i++)
		pthread_create(&t[i], NULL, hammer, c);
	for (int i = 0; i < 8; i++)
		pthread_join(t[i], NULL);
	CHECK(atomic_load(&concurrent_bad) == 0);
}

/* ---- streams ---- */

struct srec {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct strbuf events;
	int nevents;
	int end_calls;
	int end_err;
	long end_status;
	struct strbuf end_body;
	int stop_after;                    /* return non-zero from this event on */
	bool close_self;                   /* http_stream_close() from inside on_event */
	struct http_stream *_Atomic self;
	int64_t end_at;
};

static void srec_init(struct srec *r)
{
	memset(r, 0, sizeof(*r));
	pthread_mutex_init(&r->lock, NULL);
	pthread_cond_init(&r->cond, NULL);
}

static void srec_free(struct srec *r)
{
	strbuf_free(&r->events);
	strbuf_free(&r->end_body);
	pthread_mutex_destroy(&r->lock);
	pthread_cond_destroy(&r->cond);
}

static int s_event(void *arg, const struct sse_event *ev)
{
	struct srec *r = arg;
	pthread_mutex_lock(&r->lock);
	r->nevents++;
	strbuf_appendf(&r->events, "%s|%s|%s\n", ev->event, ev->id, ev->data);
	int n = r->nevents;
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
	struct http_stream *s = atomic_load(&r->self);
	if (r->close_self && s) {
		atomic_store(&r->self, NULL);
		http_stream_close(s);
	}
	return r->stop_after && n >= r->stop_after;
}

static void s_end(void *arg, int err, long status, const char *body, size_t len)
{
	struct srec *r = arg;
	pthread_mutex_lock(&r->lock);
	r->end_calls++;
	r->end_err = err;
	r->end_status = status;
	r->end_at = now_ms();
	if (body)
		strbuf_append(&r->end_body, body, len);
	pthread_cond_broadcast(&r->cond);
	pthread_mutex_unlock(&r->lock);
}

static const struct http_stream_ops sops = { .on_event = s_event, .on_end = s_end };

static bool srec_wait(struct srec *r, int min_events, bool want_end, long timeout_ms)
{
	int64_t until = now_ms() + timeout_ms;
	pthread_mutex_lock(&r->lock);
	while ((r->nevents < min_events || (want_end && !r->end_calls)) && now_ms() < until) {
		pthread_mutex_unlock(&r->lock);
		sleep_ms(5);
		pthread_mutex_lock(&r->lock);
	}
	bool ok = r->nevents >= min_events && (!want_end || r->end_calls);
	pthread_mutex_unlock(&r->lock);
	return ok;
}

static struct http_stream *open_stream(struct http_client *c, const char *path, struct srec *r,
				       long idle)
{
	struct http_request req = { .method = "GET", .path = path };
	return http_stream_open(c, &req, &sops, r, idle);
}

static void test_stream_split_idle(struct http_client *c)
{
	struct srec r;
	srec_init(&r);
	int64_t t0 = now_ms();
	struct http_stream *s = open_stream(c, "/sse-split", &r, 300);
	CHECK(s != NULL);
	CHECK(srec_wait(&r, 3, true, 5000));
	int64_t el = r.end_at - t0;
	printf("# stream went silent, ended after %lld ms\n", (long long)el);
	CHECK_STR(r.events.data, "message||one\ntwo||two\nmessage||three\n");
	CHECK(r.end_calls == 1 && r.end_err == -ETIMEDOUT && r.end_status == 200);
	/* Heartbeats for 700 ms kept it alive past the 300 ms idle timeout. */
	CHECK(el >= 1000 && el < 2500);
	http_stream_close(s);
	CHECK(r.end_calls == 1);
	srec_free(&r);
}

static void test_stream_end_and_errors(struct http_client *c)
{
	struct srec r;
	srec_init(&r);
	struct http_stream *s = open_stream(c, "/sse-end", &r, 2000);
	CHECK(srec_wait(&r, 2, true, 3000));
	CHECK_STR(r.events.data, "message||a\nmessage|9|b\n");
	CHECK(r.end_err == 0 && r.end_status == 200 && r.end_body.len == 0);
	http_stream_close(s);
	srec_free(&r);

	srec_init(&r);
	s = open_stream(c, "/sse-404", &r, 2000);
	CHECK(srec_wait(&r, 0, true, 3000));
	CHECK(r.nevents == 0 && r.end_err == 0 && r.end_status == 404);
	CHECK(r.end_body.data && strstr(r.end_body.data, "FILE_NOT_FOUND"));
	http_stream_close(s);
	srec_free(&r);

	/* The consumer ends a stream by returning non-zero. */
	srec_init(&r);
	r.stop_after = 3;
	s = open_stream(c, "/sse-ticks", &r, 2000);
	CHECK(srec_wait(&r, 3, true, 3000));
	sleep_ms(100);
	CHECK(r.nevents == 3 && r.end_calls == 1 && r.end_err == 0);
	http_stream_close(s);
	srec_free(&r);

	/* The request deadline bounds the wait for an answer, not a quiet stream that answered. */
	struct http_request req = { .method = "GET", .path = "/hang", .timeout_ms = 200 };
	srec_init(&r);
	int64_t t0 = now_ms();
	s = http_stream_open(c, &req, &sops, &r, 0);
	CHECK(srec_wait(&r, 0, true, 3000));
	CHECK(r.end_err == -ETIMEDOUT && r.end_at - t0 >= 190 && r.end_at - t0 < 1000);
	http_stream_close(s);
	srec_free(&r);
	req.path = "/sse-quiet";
	srec_init(&r);
	s = http_stream_open(c, &req, &sops, &r, 0);
	sleep_ms(500);
	CHECK(r.end_calls == 0);
	http_stream_close(s);
	CHECK(r.end_calls == 1 && r.end_err == -ECANCELED && r.end_status == 200);
	srec_free(&r);

	int port;
	close(listen_local(&port));
	struct http_client *dead = client_for(port, "", NULL);
	srec_init(&r);
	s = open_stream(dead, "/sse-ticks", &r, 2000);
	CHECK(srec_wait(&r, 0, true, 3000));
	CHECK(r.end_err == -ENOTCONN && r.end_status == 0);
	http_stream_close(s);
	http_client_free(dead);
	srec_free(&r);
}

static void test_stream_close(struct http_client *c)
{
	struct srec r;
	srec_init(&r);
	struct http_stream *s = open_stream(c, "/sse-ticks", &r, 2000);
	CHECK(srec_wait(&r, 2, false, 3000));
	int64_t t0 = now_ms();
	http_stream_close(s);
	int64_t el = now_ms() - t0;
	printf("# http_stream_close took %lld ms\n", (long long)el);
	CHECK(el < 500);
	CHECK(r.end_calls == 1 && r.end_err == -ECANCELED);
	int n = r.nevents;
	sleep_ms(100);
	CHECK(r.nevents == n && r.end_calls == 1);
	srec_free(&r);

	/* From inside on_event, i.e. on the network thread: no deadlock, freed after on_end. */
	srec_init(&r);
	r.close_self = true;
	s = open_stream(c, "/sse-ticks", &r, 2000);
	atomic_store(&r.self, s);
	CHECK(srec_wait(&r, 1, true, 3000));
	sleep_ms(50);
	CHECK(r.end_calls == 1 && r.end_err == -ECANCELED);
	srec_free(&r);

	/* Closed before the network thread even started it. */
	srec_init(&r);
	s = open_stream(c, "/sse-ticks", &r, 2000);
	http_stream_close(s);
	CHECK(r.end_calls == 1 && r.end_err == -ECANCELED);
	srec_free(&r);
}

static void test_free_with_pending(void)
{
	struct http_client *c = client_for(srv.port, "", NULL);
	struct srec r;
	srec_init(&r);
	struct http_stream *s = open_stream(c, "/sse-ticks", &r, 2000);
	CHECK(srec_wait(&r, 1, false, 3000));
	struct async_wait w = { .lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER };
	struct http_request req = { .method = "GET", .path = "/hang", .timeout_ms = 10000 };
	CHECK(http_request_async(c, &req, async_done, &w) == 0);
	sleep_ms(50);
	int64_t t0 = now_ms();
	http_client_free(c);
	CHECK(now_ms() - t0 < 500);
	CHECK(w.calls == 1 && w.err == -ECANCELED && w.status == 0);
	CHECK(r.end_calls == 1 && r.end_err == -ECANCELED);
	/* The stream handle outlives its client until closed. */
	http_stream_close(s);
	free(w.body);
	srec_free(&r);
}

static void test_bad_input(struct http_client *c)
{
	struct http_client_opts o = { .base_url = "ftp://x" };
	errno = 0;
	CHECK(http_client_new(&o) == NULL && errno == EINVAL);
	o.base_url = "http://127.0.0.1:1";
	o.token = "a\r\nX-Evil: 1";
	CHECK(http_client_new(&o) == NULL && errno == EINVAL);
	struct http_header h = { "X-Bad", "v\r\nX-Evil: 1" };
	struct http_request req = { .method = "GET", .path = "/ok", .headers = &h, .n_headers = 1 };
	CHECK(http_request_async(c, &req, async_done, NULL) == -EINVAL);
	struct http_response r;
	CHECK(http_request_sync(c, &req, &r) == -EINVAL);
	http_response_clear(&r);
}

int main(void)
{
	server_start();
	int64_t t0 = now_ms();
	struct http_client *c = client_for(srv.port, "/prefix/", "sekrit");
	CHECK(c != NULL);
	test_basic(c);
	test_api_errors(c);
	test_retries(c);
	test_timeout(c);
	test_refused();
	test_reuse();
	test_large_body(c);
	test_concurrent(c);
	test_bad_input(c);
	http_client_free(c);

	c = client_for(srv.port, "", NULL);
	test_stream_split_idle(c);
	test_stream_end_and_errors(c);
	test_stream_close(c);
	http_client_free(c);
	test_free_with_pending();
	printf("# total %lld ms\n", (long long)(now_ms() - t0));
	server_stop();
	return UNIT_DONE();
}
