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
#include "server/request.h"
#include "server/routes.h"
#include "server/sbxd.h"
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
	struct procs *procs;
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
	/* NOLINTNEXTLINE(cert-err34-c): three digits at the most, which an int holds */
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
		if (procs_state(w->procs, w->process_id, &running, &code) < 0) {
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

/* What the request asks for. */
struct watch_req {
	int64_t port, status_min, status_max, interval;
	const char *path, *process_id;
};

/* A path an HTTP request line can carry as it is. */
static bool request_path(const cJSON *v)
{
	const char *p = v->valuestring;
	bool ok = p[0] == '/';
	for (const char *c = p; ok && *c; c++)
		ok = (unsigned char)*c > ' ' && *c != 0x7f;
	return ok;
}

#define STR_(x) #x
#define STR(x) STR_(x)

static const struct field watch_fields[] = {
	FIELD("port", FIELD_INT, struct watch_req, port, .flags = FIELD_REQUIRED, .min = 1,
	      .max = 65535),
	FIELD("statusMin", FIELD_INT, struct watch_req, status_min, .min = 100, .max = 599),
	FIELD("statusMax", FIELD_INT, struct watch_req, status_max, .min = 100, .max = 599),
	FIELD("interval", FIELD_INT, struct watch_req, interval, .min = INT32_MIN,
	      .max = INT32_MAX),
	FIELD("path", FIELD_STRING, struct watch_req, path, .max = PATH_MAX_LEN,
	      .valid = request_path,
	      .wrong = "path must start with '/', at most " STR(PATH_MAX_LEN) " bytes without "
		       "spaces or control characters"),
	FIELD("processId", FIELD_STRING, struct watch_req, process_id, .flags = FIELD_NOT_EMPTY,
	      .wrong = "processId must be a non-empty string"),
};

void route_port_watch(struct req *r)
{
	struct watch_req x = { .status_min = 200, .status_max = 399,
			       .interval = INTERVAL_DEFAULT_MS, .path = "/" };
	if (!req_decode(r, watch_fields, FIELDS_N(watch_fields), &x))
		return;
	struct portwatch *w = calloc(1, sizeof *w);
	if (!w)
		abort();
	const char *mode = json_str(req_json(r), "mode");
	*w = (struct portwatch){
		.procs = req_sbxd(r)->procs,
		.port = (int)x.port, .status_min = (int)x.status_min,
		.status_max = (int)x.status_max,
		/* clamped, as the container does, rather than refused */
		.interval_ms = x.interval < INTERVAL_MIN_MS ? INTERVAL_MIN_MS
			       : x.interval > INTERVAL_MAX_MS ? INTERVAL_MAX_MS : (int)x.interval,
		.http = !mode || strcmp(mode, "tcp") != 0, /* the container: anything but tcp */
		.path = strdup(x.path),
		.process_id = x.process_id ? strdup(x.process_id) : NULL,
	};
	if (!w->path || (x.process_id && !w->process_id))
		abort();
	log_debug("port-watch: port %d (%s%s)", w->port, w->http ? "http " : "tcp",
		  w->http ? w->path : "");
	reply_sse(r, (struct sse_source){ .next = pw_next, .release = pw_release, .ctx = w });
}
