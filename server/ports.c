/* The table of exposed ports behind server/ports.h, and their preview URLs.
 *
 * A preview URL is <scheme>://<port>-<sandbox id>-<token>.<host>/, built like the SDK's: the token is
 * 12 random bytes in base64 with '+' and '/' turned into '_', lower-cased (16 characters of
 * [a-z0-9_], so it never contains the '-' that separates the label's parts). The token is the
 * only credential of a preview URL, so it is compared in constant time.
 *
 * With --preview-base, <scheme>://<host> is that public base: sbxd behind something that owns
 * a wildcard name and forwards it (a Worker in front of a container, a reverse proxy), which
 * sbxd cannot know from its own address nor from the Host of requests the forwarder makes.
 * Otherwise the scheme is http and <host> is "localhost:<sbxd port>" (every *.localhost name
 * resolves to loopback) when sbxd listens on a loopback address. On any other address the URL
 * is meant for other machines, so it uses the host and port the caller reached sbxd by (its
 * Host header); serving it then needs a wildcard DNS entry for that name. A Host that is an IP
 * address cannot carry a name in front of it, so such callers get the localhost form too and
 * must send the Host header themselves.
 *
 * The table is small (at most PORTS_MAX entries) and guarded by one mutex. */
#include "server/ports.h"
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include "common/base64.h"
#include "server/sbxd.h"

struct exposed {
	int port;
	char token[PORTS_TOKEN_LEN + 1];
	char *name; /* NULL when none was given */
};

struct ports {
	const struct sbxd_config *cfg;
	bool listen_loopback;       /* the listen address is a loopback one */
	atomic_int server_port;
	pthread_mutex_t lock;
	struct exposed table[PORTS_MAX];
	size_t n_exposed;
};

void ports_set_server_port(struct ports *t, int port)
{
	atomic_store(&t->server_port, port);
}

int ports_server_port(struct ports *t)
{
	return atomic_load(&t->server_port);
}

static struct exposed *find(struct ports *t, int port)
{
	for (size_t i = 0; i < t->n_exposed; i++)
		if (t->table[i].port == port)
			return &t->table[i];
	return NULL;
}

bool ports_match(struct ports *t, int port, const char *token, size_t token_len)
{
	bool ok = false;
	pthread_mutex_lock(&t->lock);
	const struct exposed *e = find(t, port);
	if (e && token_len == PORTS_TOKEN_LEN) {
		unsigned char diff = 0;
		for (size_t i = 0; i < PORTS_TOKEN_LEN; i++)
			diff |= (unsigned char)e->token[i] ^ (unsigned char)tolower(token[i]);
		ok = diff == 0;
	}
	pthread_mutex_unlock(&t->lock);
	return ok;
}

static int make_token(char out[PORTS_TOKEN_LEN + 1])
{
	unsigned char raw[12];
	char b64[32];
	if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw)
		return -EIO;
	base64_encode(raw, sizeof raw, b64);
	for (size_t i = 0; i < PORTS_TOKEN_LEN; i++)
		out[i] = b64[i] == '+' || b64[i] == '/' ? '_' : (char)tolower((unsigned char)b64[i]);
	out[PORTS_TOKEN_LEN] = '\0';
	return 0;
}

static void info_of(const struct exposed *e, struct port_info *out)
{
	*out = (struct port_info){ .port = e->port, .named = e->name != NULL };
	memcpy(out->token, e->token, sizeof out->token);
	snprintf(out->name, sizeof out->name, "%s", e->name ? e->name : "");
}

int ports_expose(struct ports *t, int port, const char *name, struct port_info *out)
{
	int err = 0;
	pthread_mutex_lock(&t->lock);
	struct exposed *e = find(t, port);
	if (!e && t->n_exposed == PORTS_MAX) {
		err = -ENOSPC;
	} else if (!e) {
		e = &t->table[t->n_exposed];
		*e = (struct exposed){ .port = port };
		err = make_token(e->token);
		if (!err)
			t->n_exposed++;
	}
	/* Exposing again keeps the token (and the URL); a name given again replaces the old. */
	char *copy = !err && name ? strndup(name, PORTS_NAME_MAX) : NULL;
	if (copy) {
		free(e->name);
		e->name = copy;
	}
	if (!err)
		info_of(e, out);
	pthread_mutex_unlock(&t->lock);
	return err;
}

int ports_unexpose(struct ports *t, int port)
{
	pthread_mutex_lock(&t->lock);
	struct exposed *e = find(t, port);
	if (e) {
		free(e->name);
		*e = t->table[--t->n_exposed];
	}
	pthread_mutex_unlock(&t->lock);
	return e ? 0 : -ENOENT;
}

static int by_port(const void *a, const void *b)
{
	return ((const struct exposed *)a)->port - ((const struct exposed *)b)->port;
}

size_t ports_list(struct ports *t, struct port_info *out, size_t max)
{
	pthread_mutex_lock(&t->lock);
	if (t->n_exposed > 1)
		qsort(t->table, t->n_exposed, sizeof t->table[0], by_port);
	size_t n = t->n_exposed < max ? t->n_exposed : max;
	for (size_t i = 0; i < n; i++)
		info_of(&t->table[i], &out[i]);
	pthread_mutex_unlock(&t->lock);
	return n;
}

/* ---- where the URL points ---- */

static bool listens_on_loopback(const struct sbxd_config *cfg)
{
	const char *listen = cfg && cfg->listen ? cfg->listen : "127.0.0.1:7070";
	char host[256];
	const char *start = listen, *end = strrchr(listen, ':');
	bool loopback = false;
	if (listen[0] == '[') {
		start = listen + 1;
		end = strchr(listen, ']');
	}
	if (!end || (size_t)(end - start) >= sizeof host)
		return false;
	memcpy(host, start, (size_t)(end - start));
	host[end - start] = '\0';
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai;
	if (getaddrinfo(host, NULL, &hints, &ai))
		return false;
	const struct sockaddr *sa = ai->ai_addr;
	if (sa->sa_family == AF_INET) {
		loopback = ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24 == 127;
	} else if (sa->sa_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
		loopback = IN6_IS_ADDR_LOOPBACK(a) ||
			   (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
	}
	freeaddrinfo(ai);
	return loopback;
}

/* The part after "<port>-<id>-<token>.": see the essay above. */
static void url_host(struct ports *t, const char *h, char *out, size_t outlen)
{
	if (!t->listen_loopback && h && *h && h[0] != '[' && strlen(h) < outlen &&
	    strspn(h, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:") ==
		    strlen(h)) {
		char name[256];
		snprintf(name, sizeof name, "%.*s", (int)strcspn(h, ":"), h);
		struct in_addr a;
		if (inet_pton(AF_INET, name, &a) != 1) {
			for (size_t i = 0; h[i]; i++)
				out[i] = (char)tolower((unsigned char)h[i]);
			out[strlen(h)] = '\0';
			return;
		}
	}
	snprintf(out, outlen, "localhost:%d", ports_server_port(t));
}

char *ports_url(struct ports *t, const struct port_info *p, const char *host_header)
{
	char host[300], *url;
	const char *scheme = "http", *base = t->cfg ? t->cfg->preview_base : NULL;
	int scheme_len = 4;
	if (base) {
		/* checked by sbxd's option parsing: "http[s]://name[:port]" */
		const char *sep = strstr(base, "://");
		scheme = base;
		scheme_len = (int)(sep - base);
		snprintf(host, sizeof host, "%s", sep + 3);
	} else {
		url_host(t, host_header, host, sizeof host);
	}
	const char *id = t->cfg && t->cfg->sandbox_id ? t->cfg->sandbox_id : "local";
	int start;
	if (asprintf(&url, "%.*s://%n%d-%s-%s.%s/", scheme_len, scheme, &start, p->port, id,
		     p->token, host) < 0)
		return NULL;
	/* The id goes in lower-cased: host names are compared that way. */
	for (char *c = url + start; *c && *c != '/'; c++)
		*c = (char)tolower((unsigned char)*c);
	return url;
}

/* ---- the table ---- */

struct ports *ports_new(const struct sbxd_config *cfg)
{
	struct ports *t = calloc(1, sizeof *t);
	if (!t)
		abort();
	t->cfg = cfg;
	t->listen_loopback = listens_on_loopback(cfg);
	pthread_mutex_init(&t->lock, NULL);
	return t;
}

void ports_free(struct ports *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->n_exposed; i++)
		free(t->table[i].name);
	pthread_mutex_destroy(&t->lock);
	free(t);
}
