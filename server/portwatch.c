/* POST /api/port-watch (container-api.md §9): an SSE stream that says when something in the
 * sandbox listens on a port, behind the SDK's Process.waitForPort().
 *
 * The container's loop, step for step: "watching" first; then, every `interval` ms, the
 * process named by processId (if any) is looked at (ended: "process_exited", unknown:
 * "error") and the port is probed, by a TCP connect or an HTTP GET whose status must fall in
 * [statusMin, statusMax] ("ready", with statusCode for http). Each terminal event ends the
 * stream; with nothing listening it goes on until the client leaves (httpd notices that
 * between slices, and its keepalives keep proxies from cutting a long wait).
 *
 * The sandbox shares the host's network namespace (docs/security.md), so sbxd probes
 * 127.0.0.1 (then [::1], for services bound to an IPv6 localhost) itself. A probe is bounded
 * by PROBE_MS, as the container's; the SSE source runs on its connection's own thread, so a
 * slow probe holds nothing else. */
#include "server/processes.h"
#include "server/routes.h"
#include "common/clock.h"
#include "common/jsonutil.h"
#include "common/log.h"
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PROBE_MS 5000
#define INTERVAL_DEFAULT_MS 500
#define INTERVAL_MIN_MS 100
#define INTERVAL_MAX_MS 10000
#define PATH_MAX_LEN 2048

struct portwatch {
	int port;
	bool http;
	char *path;
	int status_min, status_max;
	char *process_id; /* NULL: none */
	int interval_ms;
	bool announced;
	int64_t next_probe;
};

static void sleep_ms(int64_t ms)
{
	struct timespec ts = { (time_t)(ms / 1000), (long)(ms % 1000) * 1000000 };
	while (ms > 0 && nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/* Waits for fd to become ready for events, until deadline; false when it did not. */
static bool wait_fd(int fd, short events, int64_t deadline)
{
	for (;;) {
		int64_t left = deadline - mono_ms();
		if (left <= 0)
			return false;
		struct pollfd p = { fd, events, 0 };
		int n = poll(&p, 1, (int)left);
		if (n > 0)
			return true;
		if (n == 0 || errno != EINTR)
			return false;
	}
}

/* A connected socket to the port on a loopback address, or -1. */
static int connect_local(int port, int64_t deadline)
{
	struct sockaddr_in v4 = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct sockaddr_in6 v6 = { .sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port),
				   .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	const struct sockaddr *addrs[] = { (const struct sockaddr *)&v4,
					   (const struct sockaddr *)&v6 };
	const socklen_t lens[] = { sizeof v4, sizeof v6 };
	for (int i = 0; i < 2; i++) {
		int fd = socket(addrs[i]->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fd < 0)
			continue;
		int err = 0;
		socklen_t elen = sizeof err;
		if (connect(fd, addrs[i], lens[i]) == 0 ||
		    (errno == EINPROGRESS && wait_fd(fd, POLLOUT, deadline) &&
		     getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) == 0 && err == 0))
			return fd;
		close(fd);
	}
	return -1;
}

/* An HTTP GET of the watched path: its status code, or 0 when no HTTP answer came. */
static int http_status(int fd, const struct portwatch *w, int64_t deadline)
{
	char req[PATH_MAX_LEN + 128];
	int n = snprintf(req, sizeof req,
			 "GET %s HTTP/1.1\r\nHost: localhost:%d\r\nUser-Agent: sbxd-port-watch\r\n"
			 "Connection: close\r\n\r\n", w->path, w->port);
	for (int off = 0; off < n;) {
		if (!wait_fd(fd, POLLOUT, deadline))
			return 0;
		ssize_t k = send(fd, req + off, (size_t)(n - off), MSG_NOSIGNAL);
		if (k < 0 && errno != EAGAIN && errno != EINTR)
			return 0;
		if (k > 0)
			off += (int)k;
	}
	/* "HTTP/1.1 200 ..." : the status line is all we need */
	char head[64];
	size_t got = 0;
	while (got < sizeof head - 1 && !memchr(head, '\n', got)) {
		if (!wait_fd(fd, POLLIN, deadline))
			return 0;
		ssize_t k = recv(fd, head + got, sizeof head - 1 - got, 0);
		if (k == 0)
			break;
		if (k < 0 && errno != EAGAIN && errno != EINTR)
			return 0;
		if (k > 0)
			got += (size_t)k;
	}
	head[got] = '\0';
	int status = 0;
	if (strncmp(head, "HTTP/1.", 7) != 0 || sscanf(head + 8, " %3d", &status) != 1)
		return 0;
	return status;
}

/* Whether the port is ready; *status gets the HTTP status (http mode). */
static bool probe(const struct portwatch *w, int *status)
{
	int64_t deadline = mono_ms() + PROBE_MS;
	int fd = connect_local(w->port, deadline);
	if (fd < 0)
		return false;
	bool ready = true;
	if (w->http) {
		*status = http_status(fd, w, deadline);
		ready = *status >= w->status_min && *status <= w->status_max;
	}
	close(fd);
	return ready;
}

/* An event of this watch: its type and port first, as the container sends them. */
static cJSON *event(const struct portwatch *w, const char *type)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "type", type);
	cJSON_AddNumberToObject(o, "port", w->port);
	return o;
}

static void send_event(struct strbuf *out, cJSON *o)
{
	sse_append(out, o);
	cJSON_Delete(o);
}

static int pw_next(void *ctx, struct strbuf *out, int timeout_ms)
{
	struct portwatch *w = ctx;
	if (!w->announced) {
		w->announced = true;
		w->next_probe = mono_ms();
		send_event(out, event(w, "watching"));
		return 1;
	}
	int64_t wait = w->next_probe - mono_ms();
	if (wait > timeout_ms) {
		sleep_ms(timeout_ms);
		return 1;
	}
	sleep_ms(wait);
	if (w->process_id) {
		bool running;
		int code;
		if (processes_state(w->process_id, &running, &code) < 0) {
			cJSON *e = event(w, "error");
			cJSON_AddStringToObject(e, "error", "Process not found");
			send_event(out, e);
			return 0;
		}
		if (!running) {
			cJSON *e = event(w, "process_exited");
			cJSON_AddNumberToObject(e, "exitCode", code);
			send_event(out, e);
			return 0;
		}
	}
	int status = 0;
	if (probe(w, &status)) {
		cJSON *e = event(w, "ready");
		if (w->http)
			cJSON_AddNumberToObject(e, "statusCode", status);
		send_event(out, e);
		return 0;
	}
	w->next_probe = mono_ms() + w->interval_ms;
	return 1;
}

static void pw_release(void *ctx)
{
	struct portwatch *w = ctx;
	free(w->path);
	free(w->process_id);
	free(w);
}

/* An integer field in [lo, hi], or dflt when absent; false after answering 400. */
static bool int_field(struct req *r, const char *name, int lo, int hi, int dflt, int *out)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(req_json(r), name);
	*out = dflt;
	if (!v || cJSON_IsNull(v))
		return true;
	if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int64_t)v->valuedouble ||
	    v->valuedouble < lo || v->valuedouble > hi) {
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
			    "%s must be an integer from %d to %d", name, lo, hi);
		return false;
	}
	*out = (int)v->valuedouble;
	return true;
}

void route_port_watch(struct req *r)
{
	const cJSON *body = req_json(r);
	struct portwatch w = { 0 };
	const cJSON *port = cJSON_GetObjectItemCaseSensitive(body, "port");
	if (!port || cJSON_IsNull(port))
		return reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL, "port is required");
	if (!int_field(r, "port", 1, 65535, 0, &w.port) ||
	    !int_field(r, "statusMin", 100, 599, 200, &w.status_min) ||
	    !int_field(r, "statusMax", 100, 599, 399, &w.status_max) ||
	    !int_field(r, "interval", INT32_MIN, INT32_MAX, INTERVAL_DEFAULT_MS, &w.interval_ms))
		return;
	/* clamped, as the container does, rather than refused */
	if (w.interval_ms < INTERVAL_MIN_MS)
		w.interval_ms = INTERVAL_MIN_MS;
	if (w.interval_ms > INTERVAL_MAX_MS)
		w.interval_ms = INTERVAL_MAX_MS;
	const char *mode = json_str(body, "mode");
	w.http = !mode || strcmp(mode, "tcp") != 0; /* the container: anything but tcp is http */
	const cJSON *path = cJSON_GetObjectItemCaseSensitive(body, "path");
	const char *p = "/";
	if (path && !cJSON_IsNull(path)) {
		p = cJSON_IsString(path) ? path->valuestring : "";
		bool ok = p[0] == '/' && strlen(p) <= PATH_MAX_LEN;
		for (const char *c = p; ok && *c; c++)
			ok = (unsigned char)*c > ' ' && *c != 0x7f;
		if (!ok)
			return reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
					   "path must start with '/', at most %d bytes without "
					   "spaces or control characters", PATH_MAX_LEN);
	}
	const cJSON *pid = cJSON_GetObjectItemCaseSensitive(body, "processId");
	if (pid && !cJSON_IsNull(pid) && !(cJSON_IsString(pid) && pid->valuestring[0]))
		return reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
				   "processId must be a non-empty string");
	struct portwatch *pw = malloc(sizeof *pw);
	if (!pw)
		abort();
	*pw = w;
	pw->path = strdup(p);
	pw->process_id = cJSON_IsString(pid) ? strdup(pid->valuestring) : NULL;
	if (!pw->path || (cJSON_IsString(pid) && !pw->process_id))
		abort();
	log_debug("port-watch: port %d (%s%s)", pw->port, pw->http ? "http " : "tcp",
		  pw->http ? pw->path : "");
	reply_sse(r, (struct sse_source){ .next = pw_next, .release = pw_release, .ctx = pw });
}
