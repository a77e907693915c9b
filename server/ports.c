/* Exposed ports and their preview URLs (an sbxd extension: the container has no such routes,
 * the Cloudflare SDK keeps this table in its Durable Object).
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
#include "server/routes.h"
#include "server/server.h"

#define PORTS_MAX 256

struct exposed {
	int port;
	char token[PORTS_TOKEN_LEN + 1];
	char *name; /* NULL when none was given */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct exposed table[PORTS_MAX];
static size_t n_exposed;
static atomic_int server_port;

void ports_set_server_port(int port)
{
	atomic_store(&server_port, port);
}

static struct exposed *find(int port)
{
	for (size_t i = 0; i < n_exposed; i++)
		if (table[i].port == port)
			return &table[i];
	return NULL;
}

bool ports_match(int port, const char *token, size_t token_len)
{
	bool ok = false;
	pthread_mutex_lock(&lock);
	const struct exposed *e = find(port);
	if (e && token_len == PORTS_TOKEN_LEN) {
		unsigned char diff = 0;
		for (size_t i = 0; i < PORTS_TOKEN_LEN; i++)
			diff |= (unsigned char)e->token[i] ^ (unsigned char)tolower(token[i]);
		ok = diff == 0;
	}
	pthread_mutex_unlock(&lock);
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

/* ---- where the URL points ---- */

static bool listen_loopback;

static void check_listen_address(void)
{
	const char *listen = sbxd_cfg && sbxd_cfg->listen ? sbxd_cfg->listen : "127.0.0.1:7070";
	char host[256];
	const char *start = listen, *end = strrchr(listen, ':');
	if (listen[0] == '[') {
		start = listen + 1;
		end = strchr(listen, ']');
	}
	if (!end || (size_t)(end - start) >= sizeof host)
		return;
	memcpy(host, start, (size_t)(end - start));
	host[end - start] = '\0';
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai;
	if (getaddrinfo(host, NULL, &hints, &ai))
		return;
	const struct sockaddr *sa = ai->ai_addr;
	if (sa->sa_family == AF_INET) {
		listen_loopback = ntohl(((const struct sockaddr_in *)sa)->sin_addr.s_addr) >> 24 == 127;
	} else if (sa->sa_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
		listen_loopback = IN6_IS_ADDR_LOOPBACK(a) ||
				  (IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127);
	}
	freeaddrinfo(ai);
}

/* The part after "<port>-<id>-<token>.": see the essay above. */
static void url_host(struct req *r, char *out, size_t outlen)
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;
	pthread_once(&once, check_listen_address);
	const char *h = req_header(r, "Host");
	if (!listen_loopback && h && *h && h[0] != '[' && strlen(h) < outlen &&
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
	snprintf(out, outlen, "localhost:%d", atomic_load(&server_port));
}

static char *preview_url(struct req *r, const struct exposed *e)
{
	char host[300], *url;
	const char *scheme = "http", *base = sbxd_cfg ? sbxd_cfg->preview_base : NULL;
	int scheme_len = 4;
	if (base) {
		/* checked by sbxd's option parsing: "http[s]://name[:port]" */
		const char *sep = strstr(base, "://");
		scheme = base;
		scheme_len = (int)(sep - base);
		snprintf(host, sizeof host, "%s", sep + 3);
	} else {
		url_host(r, host, sizeof host);
	}
	const char *id = sbxd_cfg && sbxd_cfg->sandbox_id ? sbxd_cfg->sandbox_id : "local";
	int start;
	if (asprintf(&url, "%.*s://%n%d-%s-%s.%s/", scheme_len, scheme, &start, e->port, id,
		     e->token, host) < 0)
		return NULL;
	/* The id goes in lower-cased: host names are compared that way. */
	for (char *p = url + start; *p && *p != '/'; p++)
		*p = (char)tolower((unsigned char)*p);
	return url;
}

static cJSON *describe(struct req *r, const struct exposed *e, bool listing)
{
	cJSON *o = cJSON_CreateObject();
	char *url = preview_url(r, e);
	cJSON_AddNumberToObject(o, "port", e->port);
	cJSON_AddStringToObject(o, "url", url ? url : "");
	if (e->name)
		cJSON_AddStringToObject(o, "name", e->name);
	else
		cJSON_AddNullToObject(o, "name");
	if (listing)
		cJSON_AddStringToObject(o, "status", "active");
	free(url);
	return o;
}

/* ---- routes ---- */

static bool sandbox_id_usable(const char *id)
{
	return *id && strspn(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") ==
			      strlen(id);
}

void route_x_ports_expose(struct req *r)
{
	cJSON *body = req_json(r);
	const cJSON *jp = cJSON_GetObjectItemCaseSensitive(body, "port");
	const cJSON *jn = cJSON_GetObjectItemCaseSensitive(body, "name");
	const char *id = sbxd_cfg && sbxd_cfg->sandbox_id ? sbxd_cfg->sandbox_id : "local";
	int own = atomic_load(&server_port);
	if (!cJSON_IsNumber(jp) || jp->valuedouble != (double)(int)jp->valuedouble ||
	    jp->valueint < 1024 || jp->valueint > 65535) {
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
			    "port must be an integer from 1024 to 65535");
		return;
	}
	int port = jp->valueint;
	if (port == own) {
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
			    "port %d is sbxd's own port and cannot be exposed", port);
		return;
	}
	if (jn && !cJSON_IsNull(jn) && (!cJSON_IsString(jn) || strlen(jn->valuestring) > 256)) {
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
			    "name must be a string of at most 256 bytes");
		return;
	}
	if (!sandbox_id_usable(id)) {
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
			    "sandbox id '%s' cannot be part of a host name (use letters, digits, "
			    "'.', '_' and '-' in sbxd --sandbox-id)", id);
		return;
	}
	const char *name = cJSON_IsString(jn) ? jn->valuestring : NULL;

	pthread_mutex_lock(&lock);
	struct exposed *e = find(port);
	if (!e) {
		if (n_exposed == PORTS_MAX) {
			pthread_mutex_unlock(&lock);
			reply_error(r, 507, "NO_SPACE", ENOSPC, NULL,
				    "at most %d ports can be exposed at once", PORTS_MAX);
			return;
		}
		e = &table[n_exposed];
		*e = (struct exposed){ .port = port };
		if (make_token(e->token)) {
			pthread_mutex_unlock(&lock);
			reply_error(r, 500, "INTERNAL_ERROR", EIO, NULL, "no random bytes for a token");
			return;
		}
		n_exposed++;
	}
	/* Exposing again keeps the token (and the URL); a name given again replaces the old. */
	if (name) {
		char *copy = strdup(name);
		if (copy) {
			free(e->name);
			e->name = copy;
		}
	}
	cJSON *out = describe(r, e, false);
	pthread_mutex_unlock(&lock);
	reply_ok(r, out);
}

void route_x_ports_unexpose(struct req *r)
{
	const char *arg = req_path_arg(r);
	char *end;
	long port = arg ? strtol(arg, &end, 10) : -1;
	if (!arg || !*arg || *end || port < 1 || port > 65535) {
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL, "'%s' is not a port number",
			    arg ? arg : "");
		return;
	}
	pthread_mutex_lock(&lock);
	struct exposed *e = find((int)port);
	if (e) {
		free(e->name);
		*e = table[--n_exposed];
	}
	pthread_mutex_unlock(&lock);
	if (!e) {
		cJSON *ctx = cJSON_CreateObject();
		cJSON_AddNumberToObject(ctx, "port", (double)port);
		reply_error(r, 404, "PORT_NOT_EXPOSED", ENOENT, ctx, "port %ld is not exposed", port);
		return;
	}
	cJSON *o = cJSON_CreateObject();
	cJSON_AddNumberToObject(o, "port", (double)port);
	reply_ok(r, o);
}

static int by_port(const void *a, const void *b)
{
	return ((const struct exposed *)a)->port - ((const struct exposed *)b)->port;
}

void route_x_ports_list(struct req *r)
{
	cJSON *o = cJSON_CreateObject();
	cJSON *list = cJSON_AddArrayToObject(o, "ports");
	pthread_mutex_lock(&lock);
	if (n_exposed > 1)
		qsort(table, n_exposed, sizeof table[0], by_port);
	for (size_t i = 0; i < n_exposed; i++)
		cJSON_AddItemToArray(list, describe(r, &table[i], true));
	pthread_mutex_unlock(&lock);
	reply_ok(r, o);
}
