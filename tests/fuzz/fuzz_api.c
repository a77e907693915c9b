/* libFuzzer target: sbxd's request handling, end to end. sbxd runs in this process on a
 * loopback port with a scratch workspace; each input is one request: the first byte picks a
 * route (those that only touch the workspace and in-memory state: nothing here starts
 * commands) or a preview URL (the proxy, a hook in front of the routes: one of a port nobody
 * exposed, one of an exposed port where a small server of this process answers), the rest is
 * the body, sent over a real connection. A crash, a sanitizer report or an answer that is not
 * HTTP aborts; so does a hang, through libFuzzer's -timeout. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>
#include "server/httpd.h"
#include "server/journal.h"
#include "server/ports.h"
#include "server/preview.h"
#include "server/processes.h"
#include "server/server.h"
#include "server/watch.h"
#include "server/workspace.h"

/* long enough that no preview Host holds it by chance (the proxy refuses any that does) */
#define TOKEN "sbxd-fuzz-token-5f2c1a"

static char preview_host[128];   /* an exposed port's preview URL, made by start() */

static const struct {
	const char *method, *path;
} targets[] = {
	{ "POST", "/api/read" }, { "POST", "/api/write" }, { "POST", "/api/delete" },
	{ "POST", "/api/rename" }, { "POST", "/api/move" }, { "POST", "/api/mkdir" },
	{ "POST", "/api/list-files" }, { "POST", "/api/exists" }, { "POST", "/api/x/stat" },
	{ "POST", "/api/x/readdir" }, { "POST", "/api/x/mkdir" }, { "POST", "/api/x/unlink" },
	{ "POST", "/api/x/rmdir" }, { "POST", "/api/x/rename" }, { "POST", "/api/x/symlink" },
	{ "POST", "/api/x/readlink" }, { "POST", "/api/x/link" }, { "POST", "/api/x/setattr" },
	{ "POST", "/api/x/statfs" }, { "POST", "/api/x/open" }, { "POST", "/api/x/pread" },
	{ "PUT", "/api/x/pwrite" }, { "POST", "/api/x/fsync" }, { "POST", "/api/x/close" },
	{ "POST", "/api/x/env" }, { "GET", "/api/x/env" }, { "POST", "/api/x/ports" },
	{ "GET", "/api/x/ports" }, { "POST", "/api/session/create" },
	{ "POST", "/api/session/delete" }, { "GET", "/api/session/list" },
	{ "POST", "/api/read/stream" }, { "GET", "/api/ping" }, { "GET", "/api/x/capabilities" },
	{ "POST", "/api/x/journal" },
};
#define N_TARGETS (sizeof targets / sizeof targets[0])

/* Preview URLs: the proxy, in front of the routes. */
static const struct {
	const char *method, *path, *host;
} previews[] = {
	{ "POST", "/a/b?c=d", "2000-fuzz-aaaaaaaaaaaaaaaa.localhost" }, /* nobody exposed it */
	{ "POST", "/echo?x=1", preview_host },
};
#define N_PREVIEWS (sizeof previews / sizeof previews[0])

static struct sbxd_config cfg;
static struct sbxd sbxd;
static struct httpd *server; /* lives as long as the fuzzer */
static int port;

/* The service behind the exposed port: reads a request (head and Content-Length body) and
 * answers 200 with a short body, one connection at a time. */
static void *upstream_main(void *arg)
{
	int lfd = (int)(intptr_t)arg;
	for (;;) {
		int fd = accept(lfd, NULL, NULL);
		if (fd < 0)
			continue;
		struct timeval tv = { 5, 0 };
		setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
		char buf[65536];
		size_t len = 0;
		ssize_t n;
		char *end = NULL;
		while (!end && len < sizeof buf - 1 && (n = recv(fd, buf + len, sizeof buf - 1 - len,
								  0)) > 0) {
			len += (size_t)n;
			buf[len] = '\0';
			end = strstr(buf, "\r\n\r\n");
		}
		const char *cl = end ? strcasestr(buf, "\r\ncontent-length:") : NULL;
		long body = cl && cl < end ? strtol(cl + 17, NULL, 10) : 0;
		long have = end ? (long)(len - (size_t)(end + 4 - buf)) : 0;
		while (have < body && (n = recv(fd, buf, sizeof buf, 0)) > 0)
			have += n;
		static const char answer[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
					     "Connection: close\r\n\r\nok";
		send(fd, answer, sizeof answer - 1, MSG_NOSIGNAL);
		close(fd);
	}
	return NULL;
}

/* Starts the upstream service and exposes its port; the preview URL's host into
 * preview_host. */
static void expose_upstream(void)
{
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET };
	socklen_t sl = sizeof sa;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	pthread_t t;
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof sa) || listen(lfd, 16) ||
	    getsockname(lfd, (struct sockaddr *)&sa, &sl) ||
	    pthread_create(&t, NULL, upstream_main, (void *)(intptr_t)lfd))
		abort();
	struct port_info info;
	if (ports_expose(sbxd.ports, ntohs(sa.sin_port), NULL, &info))
		abort();
	snprintf(preview_host, sizeof preview_host, "%d-fuzz-%s.localhost", info.port,
		 info.token);
}

static void start(void)
{
	static char ws[] = "/tmp/sbx-fuzz-api-XXXXXX";
	if (!mkdtemp(ws))
		abort();
	char p[sizeof ws + 32];
	snprintf(p, sizeof p, "%s/state", ws);
	mkdir(p, 0700);
	static char state[sizeof p];
	memcpy(state, p, sizeof p);
	cfg = (struct sbxd_config){ .listen = "127.0.0.1:0", .workspace = ws, .token = TOKEN,
				    .state_dir = state, .sandbox_id = "fuzz" };
	sbxd_cfg = &cfg;
	signal(SIGPIPE, SIG_IGN);
	if (ws_init(ws))
		abort();
	snprintf(p, sizeof p, "%s/a", ws);
	mkdir(p, 0755);
	snprintf(p, sizeof p, "%s/out", ws);
	symlink("/", p);
	watch_init();
	int err;
	sbxd = (struct sbxd){ .cfg = &cfg, .procs = procs_new(), .ports = ports_new(&cfg),
			      .journals = journals_new(state, &err) };
	if (!sbxd.journals)
		abort();
	static struct httpd_hook preview;
	preview = preview_hook(sbxd.ports);
	server = httpd_start(&sbxd, &preview);
	if (!server)
		abort();
	port = httpd_port(server);
	ports_set_server_port(sbxd.ports, port);
	expose_upstream();
}

static int connect_server(void)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	struct timeval tv = { 10, 0 };
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int err;
	while ((err = fd < 0 ? -1 : connect(fd, (struct sockaddr *)&sa, sizeof sa)) < 0 &&
	       errno == EINTR)
		;
	if (err < 0) {
		perror("connect");
		abort();
	}
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
	return fd;
}

static void send_all(int fd, const void *buf, size_t len)
{
	for (const char *p = buf; len;) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return; /* the server may answer (413) and close before the body is in */
		p += n;
		len -= (size_t)n;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!port)
		start();
	if (size < 1)
		return 0;
	unsigned t = data[0] % (N_TARGETS + N_PREVIEWS);
	const char *method = t < N_TARGETS ? targets[t].method : previews[t - N_TARGETS].method;
	const char *path = t < N_TARGETS ? targets[t].path : previews[t - N_TARGETS].path;
	const char *host = t < N_TARGETS ? "127.0.0.1" : previews[t - N_TARGETS].host;
	char head[512];
	int n = snprintf(head, sizeof head,
			 "%s %s HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer " TOKEN "\r\n"
			 "Content-Type: application/json\r\nContent-Length: %zu\r\n"
			 "Connection: close\r\n\r\n", method, path, host, size - 1);
	int fd = connect_server();
	send_all(fd, head, (size_t)n);
	send_all(fd, data + 1, size - 1);
	/* the head and the start of the body; the rest is read and dropped */
	char first[8192], sink[4096];
	size_t got = 0;
	ssize_t r;
	/* EINTR: libFuzzer's -timeout is a SIGALRM every second */
	while ((r = got < sizeof first - 1 ? recv(fd, first + got, sizeof first - 1 - got, 0)
					  : recv(fd, sink, sizeof sink, 0)) > 0 ||
	       (r < 0 && errno == EINTR))
		if (r > 0 && got < sizeof first - 1)
			got += (size_t)r;
	close(fd);
	first[got] = '\0';
	if (r < 0 && errno == EAGAIN) {
		fprintf(stderr, "no answer within 10 s\n");
		abort();
	}
	/* A 5xx is a bug unless it is the API's answer for an errno (the container's
	 * FILESYSTEM_ERROR of a failed mkdir, or ENOSPC of a table at its bound): then its body
	 * names the errno. A handler that gave no reply at all is a bug whatever httpd made of
	 * it. */
	if (got < 12 || memcmp(first, "HTTP/1.1 ", 9) != 0 ||
	    (first[9] == '5' && (!strstr(first, "\"errno\":\"E") ||
				 strstr(first, "\"message\":\"no reply\"")))) {
		fprintf(stderr, "bad answer (%zd, %s): %.*s\n", r, r < 0 ? strerror(errno) : "",
			(int)(got < 600 ? got : 600), first);
		abort();
	}
	return 0;
}
