/* The preview proxy: serves http://<port>-<sandbox id>-<token>.<host>/ by forwarding the request
 * to the sandbox's port on loopback (the sandbox shares the host's network namespace), as the
 * Cloudflare SDK's proxyToSandbox does through the platform.
 *
 * Which requests: the proxy is a hook of the HTTP layer (server/httpd_hook.h), which asks it
 * about every request before routing. A Host whose first label looks
 * like "<digits>-<something>-<something>" (or that starts with "<digits>-<sandbox id>-") is a
 * preview request whether or not it matches an exposed port: a wrong token, an unexposed port or
 * another sandbox's id gets "404 preview URL not found", never the API behind it.
 *
 * The upstream client is a plain HTTP/1.1 client on one socket rather than libcurl. MHD pulls a
 * response body through a content reader, one buffer at a time, on the connection's own thread
 * (sbxd runs a thread per connection); a socket read maps onto that directly, so a large or slow
 * answer streams through without being held whole. libcurl pushes data through its own
 * callbacks instead (needing the multi interface and pausing, or another thread and a queue) and
 * cannot hand over its socket for a WebSocket tunnel. Upstream is loopback, plain HTTP, one
 * request per connection ("Connection: close"), so the client stays small: a request head, the
 * body passed through as MHD delivers it (re-chunked when the client sent it chunked), then a
 * response head and a body framed by Content-Length, chunks or the end of the connection.
 *
 * Upstream is code in the sandbox, hostile as far as sbxd is concerned: whatever it sends must
 * cost sbxd bounded memory and CPU, and nothing may wait on it without a bound. Its answer is
 * parsed by server/http_response.c, which holds the bounds of the head (RESP_HEAD_MAX_BYTES and
 * RESP_HEAD_MAX_LINES for all heads of one answer together, RESP_MAX_INTERIM 1xx answers) and
 * refuses framings that could be read two ways (a Content-Length that is not plain digits or
 * disagrees with another, one beside Transfer-Encoding, a coding other than chunked): each is
 * a 502. The body streams through buf, never held whole.
 *
 * Timing: one access-handler call per body fragment writes that fragment upstream (blocking,
 * at most SEND_TIMEOUT_S without progress), so a request body is never held whole either. Every
 * wait for upstream also polls the client's socket for its hang-up and the stop eventfd, so a
 * departed client or a stopping server ends it at once, even while upstream keeps sending. An
 * upstream silent for IDLE_MS before or within its answer is given up on (504 before the head);
 * a head must be complete HEAD_MS after its first byte (504), so a head dripped a line at a
 * time cannot hold the client for longer.
 *
 * sbxd's own token never reaches upstream: a request header that carries it in any spelling is
 * dropped, and a request line, Host or Upgrade that carries it is refused (400), see
 * carries_server_token().
 *
 * WebSocket (any "Connection: upgrade"): the upgrade request is forwarded; a 101 answer becomes
 * an MHD upgrade response (the daemon runs with MHD_ALLOW_UPGRADE) whose handler, on the
 * connection's thread, copies bytes both ways until both sides have closed (or the server
 * stops: MHD would wait for an upgraded connection forever).
 *
 * MHD hands the access handler a percent-decoded path without its query, so the raw request
 * target is taken from the URI log callback, which runs on the same connection thread just
 * before (kept per thread, tagged with the connection).
 *
 * A preview request's state (struct preview) is the hook state that httpd keeps for the
 * request, from its first call to its completion. */
#include "server/preview.h"
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include "common/base64.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/strbuf.h"
#include "server/http_response.h"
#include "server/ports.h"
#include "server/sbxd.h"

#define BUF_SIZE (64 * 1024)
#define SLICE_MS 1000
#define IDLE_MS (120 * 1000)
#define HEAD_MS (30 * 1000)
#define SEND_TIMEOUT_S 30
#define RAW_URI_MAX 8192

struct preview {
	struct ports *ports;
	struct MHD_Connection *conn;
	int port;
	int up;        /* upstream socket, -1 when none */
	int client_fd; /* only polled, to notice a departed client; -1 if MHD did not tell */
	bool head_request, upgrade, chunked_body, send_failed, replied;
	struct resp_head head; /* upstream's answer head */
	enum resp_framing framing;
	uint64_t left;          /* bytes left in a Content-Length body */
	struct chunked chunks;  /* the state of a chunked body */
	size_t start, end;      /* unread upstream bytes in buf */
	char buf[BUF_SIZE];
};

/* Stopping: a flag, and an eventfd that becomes readable for good, polled with upstream so
 * that waits end at once. Tunnels are counted so that preview_stop() can let them close before
 * MHD, which would wait for an upgraded connection forever, stops. */
static atomic_bool stopping;
static atomic_int open_tunnels;
static int stop_fd = -1;
static pthread_once_t stop_fd_once = PTHREAD_ONCE_INIT;

static void make_stop_fd(void)
{
	stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

static void proxy_stop(void *arg)
{
	(void)arg;
	pthread_once(&stop_fd_once, make_stop_fd);
	atomic_store(&stopping, true);
	if (stop_fd >= 0 && eventfd_write(stop_fd, 1))
		log_debug("preview: cannot signal the stop: %s", strerror(errno));
	for (int i = 0; i < 200 && atomic_load(&open_tunnels); i++)
		usleep(10 * 1000);
}

static _Thread_local struct {
	struct MHD_Connection *conn;
	bool too_long;
	char uri[RAW_URI_MAX];
} raw_target;

static void note_uri(void *arg, const char *uri, struct MHD_Connection *conn)
{
	(void)arg;
	size_t n = strlen(uri);
	raw_target.conn = conn;
	raw_target.too_long = n >= sizeof raw_target.uri;
	if (!raw_target.too_long)
		memcpy(raw_target.uri, uri, n + 1);
}

/* ---- which requests are previews ---- */

static const char *sandbox_id(void)
{
	return sbxd_cfg && sbxd_cfg->sandbox_id ? sbxd_cfg->sandbox_id : "local";
}

static bool preview_shaped(const char *host)
{
	size_t digits = strspn(host, "0123456789");
	if (digits == 0 || digits > 5 || host[digits] != '-')
		return false;
	const char *rest = host + digits + 1;
	const char *dash = memchr(rest, '-', strcspn(rest, ".:"));
	size_t idl = strlen(sandbox_id());
	return dash || (strncasecmp(rest, sandbox_id(), idl) == 0 && rest[idl] == '-');
}

/* The exposed port a preview Host names with the right sandbox id and token, or 0. */
static int preview_target(struct ports *ports, const char *host)
{
	char *end;
	unsigned long port = strtoul(host, &end, 10);
	if (end == host || *end != '-' || port == 0 || port > 65535)
		return 0;
	const char *id = sandbox_id();
	size_t idl = strlen(id);
	if (strncasecmp(end + 1, id, idl) != 0 || end[1 + idl] != '-')
		return 0;
	const char *token = end + 2 + idl;
	size_t tl = strcspn(token, ".:");
	return ports_match(ports, (int)port, token, tl) ? (int)port : 0;
}

/* A Host of a preview URL's shape (matching an exposed port or not) is the proxy's. */
static bool proxy_claims(void *arg, struct MHD_Connection *conn)
{
	(void)arg;
	pthread_once(&stop_fd_once, make_stop_fd);
	const char *host = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Host");
	return host && preview_shaped(host);
}

/* ---- answers of the proxy itself ---- */

static void reply_text(struct preview *p, unsigned status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void reply_text(struct preview *p, unsigned status, const char *fmt, ...)
{
	char *text;
	va_list ap;
	va_start(ap, fmt);
	int n = vasprintf(&text, fmt, ap);
	va_end(ap);
	if (n < 0)
		text = NULL;
	struct MHD_Response *resp = MHD_create_response_from_buffer(
		text ? (size_t)n : 0, text ? text : (char *)"",
		text ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
	if (!resp) {
		free(text);
		return; /* not replied: MHD closes the connection */
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; charset=utf-8");
	p->replied = MHD_queue_response(p->conn, status, resp) == MHD_YES;
	MHD_destroy_response(resp);
	log_debug("preview port %d: %u %s", p->port, status, text ? text : "");
}

/* ---- the upstream connection ---- */

/* Connects to the port on 127.0.0.1, or on ::1 for services bound to an IPv6 "localhost". */
static int connect_upstream(int port)
{
	struct sockaddr_in v4 = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct sockaddr_in6 v6 = { .sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port),
				   .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	const struct sockaddr *addrs[] = { (struct sockaddr *)&v4, (struct sockaddr *)&v6 };
	const socklen_t lens[] = { sizeof v4, sizeof v6 };
	struct timeval tv = { .tv_sec = SEND_TIMEOUT_S };
	int err = ECONNREFUSED;
	for (size_t i = 0; i < 2; i++) {
		int fd = socket(addrs[i]->sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (fd < 0)
			return -errno;
		/* Bounds connect() (a full backlog) and every send. */
		setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
		if (connect(fd, addrs[i], lens[i]) == 0)
			return fd;
		err = errno;
		close(fd);
		if (err != ECONNREFUSED && err != EADDRNOTAVAIL && err != EAFNOSUPPORT)
			break;
	}
	return -err;
}

static int send_all(int fd, const void *data, size_t len)
{
	const char *p = data;
	while (len) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			struct pollfd pf = { .fd = fd, .events = POLLOUT };
			if (poll(&pf, 1, SEND_TIMEOUT_S * 1000) <= 0)
				return -ETIMEDOUT;
			continue;
		}
		if (n < 0)
			return -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Reads more upstream bytes into buf: 1, or 0 at the end of the connection, or -errno:
 * -ECONNABORTED when the client left or the server stops, -ETIMEDOUT after IDLE_MS without a
 * byte or at deadline (a mono_ms() time; 0: none). The client's socket is polled along with
 * upstream for its hang-up only (pipelined bytes must not wake us), and before upstream's
 * data, so that an upstream that never stops sending cannot hide a departed client. */
static int fill(struct preview *p, int64_t deadline)
{
	if (p->start == p->end) {
		p->start = p->end = 0;
	} else if (p->end == sizeof p->buf) {
		memmove(p->buf, p->buf + p->start, p->end - p->start);
		p->end -= p->start;
		p->start = 0;
	}
	if (p->end == sizeof p->buf)
		return -E2BIG;
	int64_t idle_end = mono_ms() + IDLE_MS;
	int64_t end = deadline && deadline < idle_end ? deadline : idle_end;
	for (;;) {
		int64_t now = mono_ms();
		if (now >= end)
			return -ETIMEDOUT;
		struct pollfd pf[3] = { { .fd = p->up, .events = POLLIN },
					{ .fd = stop_fd, .events = POLLIN },
					{ .fd = p->client_fd, .events = POLLRDHUP } };
		int n = poll(pf, 3, (int)(end - now));
		if (n < 0 && errno != EINTR)
			return -errno;
		if (n <= 0)
			continue;
		if (pf[1].revents || pf[2].revents || atomic_load(&stopping))
			return -ECONNABORTED;
		if (pf[0].revents) {
			ssize_t got = recv(p->up, p->buf + p->end, sizeof p->buf - p->end, 0);
			if (got > 0) {
				p->end += (size_t)got;
				return 1;
			}
			if (got == 0)
				return 0;
			if (errno != EINTR && errno != EAGAIN)
				return -errno;
		}
	}
}

static size_t take(struct preview *p, char *out, size_t max)
{
	size_t n = p->end - p->start;
	if (n > max)
		n = max;
	memcpy(out, p->buf + p->start, n);
	p->start += n;
	return n;
}

/* ---- the request, upstream ---- */

static bool hop_by_hop(const char *name)
{
	static const char *const names[] = {
		"Connection", "Keep-Alive", "Proxy-Connection", "TE", "Trailer",
		"Transfer-Encoding", "Upgrade", "Content-Length", "Expect", "Host",
		"X-Forwarded-Host", "X-Forwarded-Proto", "X-Original-URL",
	};
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		if (strcasecmp(name, names[i]) == 0)
			return true;
	return false;
}

/* ---- sbxd's token never goes to the sandbox ---- */

static unsigned char lower(unsigned char c)
{
	return (unsigned char)(c + (((unsigned)(c - 'A') < 26u) << 5));
}

/* Whether want occurs in s[0..n), case ignored. Constant time in the content of both (only
 * the lengths show): every position is compared in full. */
static bool contains(const char *s, size_t n, const char *want, size_t wl)
{
	unsigned char found = 0;
	for (size_t i = 0; wl && i + wl <= n; i++) {
		unsigned char diff = 0;
		for (size_t j = 0; j < wl; j++)
			diff |= lower((unsigned char)s[i + j]) ^ lower((unsigned char)want[j]);
		found |= diff == 0;
	}
	return found;
}

/* Whether s carries sbxd's token in any spelling that gives it away: anywhere in it, in any
 * case, with spaces or tabs inserted anywhere ("Bearer <token>", "bearer\t<token> ",
 * "token=<token>"), or base64-encoded in Basic credentials. A client that sends it to a
 * preview URL by mistake must not hand the sandbox the key to its own server. */
static bool carries_server_token(const char *s)
{
	const char *want = sbxd_cfg ? sbxd_cfg->token : NULL;
	if (!want || !*want || !s)
		return false;
	size_t n = strlen(s), wl = strlen(want), m = 0;
	char *squeezed = malloc(n + 1);
	if (!squeezed)
		return true; /* when in doubt, leave it out */
	for (size_t i = 0; i < n; i++)
		if (s[i] != ' ' && s[i] != '\t')
			squeezed[m++] = s[i];
	squeezed[m] = '\0';
	bool found = contains(squeezed, m, want, wl);
	if (!found && m > 5 && strncasecmp(squeezed, "basic", 5) == 0) {
		char *plain = malloc(base64_decoded_max(m - 5) + 1);
		ssize_t pl = plain ? base64_decode(squeezed + 5, m - 5, plain) : -1;
		found = pl > 0 && contains(plain, (size_t)pl, want, wl);
		free(plain);
	}
	free(squeezed);
	return found;
}

static enum MHD_Result copy_header(void *cls, enum MHD_ValueKind kind, const char *key,
				   const char *value)
{
	struct strbuf *head = cls;
	(void)kind;
	if (!key || hop_by_hop(key))
		return MHD_YES;
	if (carries_server_token(key) || carries_server_token(value)) {
		log_debug("preview: a request header not passed on: it carries sbxd's token");
		return MHD_YES;
	}
	strbuf_appendf(head, "%s: %s\r\n", key, value ? value : "");
	return MHD_YES;
}

static bool has_token(const char *list, const char *token)
{
	size_t tl = strlen(token);
	for (const char *s = list; s && *s;) {
		s += strspn(s, " \t,");
		size_t n = strcspn(s, ",");
		size_t m = n;
		while (m && (s[m - 1] == ' ' || s[m - 1] == '\t'))
			m--;
		if (m == tl && strncasecmp(s, token, tl) == 0)
			return true;
		s += n;
	}
	return false;
}

static const char *header(const struct preview *p, const char *name)
{
	return MHD_lookup_connection_value(p->conn, MHD_HEADER_KIND, name);
}

static void begin(struct preview *p, const char *url, const char *method)
{
	const char *host = header(p, "Host");
	p->port = preview_target(p->ports, host);
	if (!p->port) {
		reply_text(p, 404, "preview URL not found\n");
		return;
	}
	const char *target = url;
	if (raw_target.conn == p->conn) {
		if (raw_target.too_long) {
			reply_text(p, 414, "request target longer than %d bytes\n", RAW_URI_MAX - 1);
			return;
		}
		target = raw_target.uri;
	}
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(p->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
	p->client_fd = ci ? ci->connect_fd : -1;
	p->head_request = strcmp(method, "HEAD") == 0;
	const char *upgrade = header(p, "Upgrade");
	p->upgrade = upgrade && has_token(header(p, "Connection"), "upgrade");
	/* Headers that carry the token are dropped; where it cannot be taken out, refuse. */
	if (carries_server_token(method) || carries_server_token(target) ||
	    carries_server_token(host) || (p->upgrade && carries_server_token(upgrade))) {
		reply_text(p, 400, "the request carries sbxd's token in its request line, Host or "
				   "Upgrade: it is not passed to the sandbox\n");
		return;
	}
	resp_head_init(&p->head, p->upgrade);
	const char *te = header(p, "Transfer-Encoding");
	const char *length = header(p, "Content-Length");
	p->chunked_body = te && has_token(te, "chunked");

	p->up = connect_upstream(p->port);
	if (p->up < 0) {
		reply_text(p, 502, "nothing answers on port %d in the sandbox (%s)\n", p->port,
			   strerror(-p->up));
		return;
	}
	struct strbuf head = STRBUF_INIT;
	strbuf_appendf(&head, "%s %s HTTP/1.1\r\nHost: localhost:%d\r\n", method, target, p->port);
	MHD_get_connection_values(p->conn, MHD_HEADER_KIND, copy_header, &head);
	strbuf_appendf(&head, "X-Forwarded-Host: %s\r\nX-Forwarded-Proto: http\r\n"
			      "X-Original-URL: http://%s%s\r\n", host, host, target);
	if (p->upgrade)
		strbuf_appendf(&head, "Connection: Upgrade\r\nUpgrade: %s\r\n", upgrade);
	else
		strbuf_appends(&head, "Connection: close\r\n");
	if (p->chunked_body)
		strbuf_appends(&head, "Transfer-Encoding: chunked\r\n");
	else if (length)
		strbuf_appendf(&head, "Content-Length: %s\r\n", length);
	strbuf_appends(&head, "\r\n");
	int err = send_all(p->up, head.data, head.len);
	strbuf_free(&head);
	if (err)
		reply_text(p, 502, "cannot send the request to port %d in the sandbox (%s)\n",
			   p->port, strerror(-err));
}

static void forward_body(struct preview *p, const char *data, size_t len)
{
	if (p->replied || p->send_failed)
		return;
	char size[32];
	int err = 0;
	if (p->chunked_body) {
		snprintf(size, sizeof size, "%zx\r\n", len);
		err = send_all(p->up, size, strlen(size));
	}
	if (!err)
		err = send_all(p->up, data, len);
	if (!err && p->chunked_body)
		err = send_all(p->up, "\r\n", 2);
	if (err) {
		/* It may still answer (413, say): the answer is read at the end of the body. */
		log_debug("preview port %d: upstream stopped taking the body: %s", p->port,
			  strerror(-err));
		p->send_failed = true;
	}
}

/* ---- the response, downstream ---- */

static ssize_t read_body(void *cls, uint64_t pos, char *out, size_t max)
{
	struct preview *p = cls;
	int rc;
	(void)pos;
	switch (p->framing) {
	case RESP_BY_CLOSE:
		if (p->start == p->end && (rc = fill(p, 0)) <= 0)
			return rc == 0 ? MHD_CONTENT_READER_END_OF_STREAM
				       : MHD_CONTENT_READER_END_WITH_ERROR;
		return (ssize_t)take(p, out, max);
	case RESP_BY_LENGTH:
		if (p->left == 0)
			return MHD_CONTENT_READER_END_OF_STREAM;
		if (p->start == p->end && fill(p, 0) <= 0)
			return MHD_CONTENT_READER_END_WITH_ERROR; /* cut short */
		rc = (int)take(p, out, p->left < max ? (size_t)p->left : max);
		p->left -= (uint64_t)rc;
		return rc;
	case RESP_BY_CHUNKS:
		break;
	}
	while (!chunked_done(&p->chunks)) {
		size_t at, n;
		if (p->start == p->end && fill(p, 0) <= 0)
			return MHD_CONTENT_READER_END_WITH_ERROR; /* cut short */
		ssize_t used = chunked_decode(&p->chunks, p->buf + p->start, p->end - p->start, max,
					      &at, &n);
		if (used < 0) {
			log_debug("preview port %d: bad chunk framing (%s)", p->port,
				  strerror((int)-used));
			return MHD_CONTENT_READER_END_WITH_ERROR;
		}
		memcpy(out, p->buf + p->start + at, n);
		p->start += (size_t)used;
		if (n)
			return (ssize_t)n;
	}
	return MHD_CONTENT_READER_END_OF_STREAM;
}

/* Upstream's final answer head (1xx interim answers dropped): its status, or -errno; -ETIME
 * when a head was not complete HEAD_MS after its first byte. Between heads, and before the
 * first, upstream may think for IDLE_MS. */
static int read_head(struct preview *p)
{
	int64_t deadline = 0;
	for (;;) {
		int rc = RESP_MORE;
		if (p->start < p->end) {
			size_t used;
			if (!p->head.in_head)
				deadline = mono_ms() + HEAD_MS;
			rc = resp_head_feed(&p->head, p->buf + p->start, p->end - p->start, &used);
			p->start += used;
		}
		if (rc < 0 || rc == RESP_FINAL)
			return rc < 0 ? rc : p->head.status;
		if (rc == RESP_INTERIM)
			continue;
		rc = fill(p, p->head.in_head ? deadline : 0);
		if (rc == -ETIMEDOUT && p->head.in_head && mono_ms() >= deadline)
			return -ETIME;
		if (rc <= 0)
			return rc == 0 ? -ECONNRESET : rc;
	}
}

static void pump(int from, int to, char *buf, size_t size, bool *open)
{
	ssize_t n = recv(from, buf, size, MSG_DONTWAIT);
	if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
		return;
	if (n <= 0 || send_all(to, buf, (size_t)n)) {
		*open = false;
		shutdown(to, SHUT_WR);
	}
}

/* The WebSocket (or other upgraded protocol) tunnel, on the connection's thread. */
static void tunnel(void *cls, struct MHD_Connection *conn, void *con_cls, const char *extra_in,
		   size_t extra_in_size, MHD_socket sock, struct MHD_UpgradeResponseHandle *urh)
{
	struct preview *p = cls;
	char buf[16 * 1024];
	bool down_open = true, up_open = true; /* client -> upstream, upstream -> client */
	(void)conn;
	(void)con_cls;
	atomic_fetch_add(&open_tunnels, 1);
	if ((extra_in_size && send_all(p->up, extra_in, extra_in_size)) ||
	    (p->end > p->start && send_all(sock, p->buf + p->start, p->end - p->start)))
		down_open = up_open = false;
	p->start = p->end = 0;
	while ((down_open || up_open) && !atomic_load(&stopping)) {
		struct pollfd pf[3] = { { .fd = down_open ? sock : -1, .events = POLLIN },
					{ .fd = up_open ? p->up : -1, .events = POLLIN },
					{ .fd = stop_fd, .events = POLLIN } };
		int n = poll(pf, 3, SLICE_MS);
		if (n < 0 && errno != EINTR)
			break;
		if (n > 0 && pf[0].revents)
			pump(sock, p->up, buf, sizeof buf, &down_open);
		if (n > 0 && pf[1].revents)
			pump(p->up, sock, buf, sizeof buf, &up_open);
	}
	log_debug("preview port %d: tunnel closed", p->port);
	close(p->up);
	p->up = -1;
	MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE);
	atomic_fetch_sub(&open_tunnels, 1);
}

/* Answers the client when upstream gave no usable head. */
static void reply_head_error(struct preview *p, int err)
{
	switch (err) {
	case -ECONNABORTED:
		return; /* the client left (or sbxd stops): MHD closes the connection */
	case -ETIME:
		reply_text(p, 504, "the service on port %d in the sandbox did not complete its "
				   "answer's head within %d s\n", p->port, HEAD_MS / 1000);
		return;
	case -ETIMEDOUT:
		reply_text(p, 504, "the service on port %d in the sandbox was silent for %d s\n",
			   p->port, IDLE_MS / 1000);
		return;
	case -EMSGSIZE:
		reply_text(p, 502, "the service on port %d in the sandbox sent an answer head over "
				   "the bounds (%d KiB, %d lines, %d interim answers)\n", p->port,
			   RESP_HEAD_MAX_BYTES / 1024, RESP_HEAD_MAX_LINES, RESP_MAX_INTERIM);
		return;
	default:
		reply_text(p, 502, "the service on port %d in the sandbox gave no valid answer "
				   "(%s)\n", p->port, strerror(-err));
	}
}

/* The headers of the service's answer that are about its connection to sbxd, not the
 * client's; Upgrade stays in a 101, which switches the client's protocol. */
static bool answer_hop_by_hop(const char *name, int status)
{
	static const char *const names[] = {
		"Connection", "Keep-Alive", "Transfer-Encoding", "Content-Length", "Trailer",
		"Proxy-Connection",
	};
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		if (strcasecmp(name, names[i]) == 0)
			return true;
	return status != 101 && strcasecmp(name, "Upgrade") == 0;
}

static void finish(struct preview *p)
{
	if (p->chunked_body && !p->send_failed && send_all(p->up, "0\r\n\r\n", 5))
		p->send_failed = true;
	int status = read_head(p);
	if (status < 0) {
		reply_head_error(p, status);
		return;
	}
	uint64_t size = MHD_SIZE_UNKNOWN;
	struct MHD_Response *resp;
	if (status == 101) {
		resp = MHD_create_response_for_upgrade(tunnel, p);
	} else {
		int framing = resp_framing(&p->head, &p->left);
		if (framing < 0) {
			reply_text(p, 502, "the service on port %d in the sandbox sent a bad "
					   "Content-Length or Transfer-Encoding\n", p->port);
			return;
		}
		p->framing = (enum resp_framing)framing;
		if (p->framing == RESP_BY_LENGTH)
			size = p->left;
		else if (p->framing == RESP_BY_CHUNKS)
			chunked_init(&p->chunks);
		/* No body, but a HEAD answer keeps the length a GET would have. */
		if (p->head_request || status == 204 || status == 304) {
			p->framing = RESP_BY_LENGTH;
			p->left = 0;
			if (!p->head_request)
				size = 0;
		}
		resp = MHD_create_response_from_callback(size, 64 * 1024, read_body, p, NULL);
	}
	if (!resp) {
		reply_text(p, 500, "out of memory\n");
		return;
	}
	const char *name, *value;
	for (size_t pos = 0; resp_head_next(&p->head, &pos, &name, &value);) {
		if (!answer_hop_by_hop(name, status))
			MHD_add_response_header(resp, name, value);
	}
	p->replied = MHD_queue_response(p->conn, (unsigned)status, resp) == MHD_YES;
	if (!p->replied)
		log_warn("preview port %d: could not queue the %d answer", p->port, status);
	MHD_destroy_response(resp);
	log_debug("preview port %d: %d", p->port, status);
}

/* ---- MHD's side ---- */

static enum MHD_Result proxy_access(void *arg, struct MHD_Connection *conn, const char *url,
				    const char *method, const char *upload_data,
				    size_t *upload_data_size, void **state)
{
	struct preview *p = *state;
	if (!p) {
		p = calloc(1, sizeof *p);
		if (!p)
			return MHD_NO;
		p->ports = arg;
		p->conn = conn;
		p->up = -1;
		*state = p;
		begin(p, url, method);
		/* Neither an answer nor an upstream: MHD could not take the answer, so close. */
		return p->replied || p->up >= 0 ? MHD_YES : MHD_NO;
	}
	if (*upload_data_size) {
		forward_body(p, upload_data, *upload_data_size);
		*upload_data_size = 0;
		return MHD_YES;
	}
	if (!p->replied && p->up >= 0)
		finish(p);
	return p->replied ? MHD_YES : MHD_NO;
}

static void proxy_completed(void *arg, void *state)
{
	struct preview *p = state;
	(void)arg;
	if (!p)
		return;
	if (p->up >= 0)
		close(p->up);
	resp_head_free(&p->head);
	free(p);
}

struct httpd_hook preview_hook(struct ports *ports)
{
	return (struct httpd_hook){ .claims = proxy_claims, .access = proxy_access,
				    .completed = proxy_completed, .note_uri = note_uri,
				    .stop = proxy_stop, .arg = ports };
}
