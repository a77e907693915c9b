/* Exposed ports: which sandbox ports have a preview URL, and with which token (an sbxd
 * extension: the container has no such routes, the Cloudflare SDK keeps this table in its
 * Durable Object). The table lives in memory for one sbxd run; its routes are
 * ports_routes.c, the proxy that serves the URLs preview.c. Nothing here knows HTTP. */
#ifndef SBXD_PORTS_H
#define SBXD_PORTS_H
#include <stdbool.h>
#include <stddef.h>

#define PORTS_TOKEN_LEN 16 /* 12 random bytes in base64 */
#define PORTS_NAME_MAX 256
#define PORTS_MAX 256

struct ports;
struct sbxd_config;

/* An exposed port as it stands. */
struct port_info {
	int port;
	char token[PORTS_TOKEN_LEN + 1];
	char name[PORTS_NAME_MAX + 1];
	bool named;
};

/* A table for the server that cfg configures (its listen address, sandbox id and preview
 * base make the URLs). */
struct ports *ports_new(const struct sbxd_config *cfg);
void ports_free(struct ports *t);
/* Exposes port (again: the token, and so the URL, stay; a name given replaces the old): 0
 * with *out, -ENOSPC when PORTS_MAX are exposed, -EIO without random bytes for a token. */
int ports_expose(struct ports *t, int port, const char *name, struct port_info *out);
/* 0, or -ENOENT when the port is not exposed. */
int ports_unexpose(struct ports *t, int port);
/* The exposed ports by number, at most max of them into out; how many. */
size_t ports_list(struct ports *t, struct port_info *out, size_t max);
/* Whether port is exposed with exactly this token (compared in constant time). */
bool ports_match(struct ports *t, int port, const char *token, size_t token_len);
/* The port sbxd itself answers on (a listen address with port 0 is only resolved by the
 * kernel): used in URLs, and refused as a port to expose. */
void ports_set_server_port(struct ports *t, int port);
int ports_server_port(struct ports *t);
/* The preview URL of an exposed port, malloc'd; host: the Host header the caller reached
 * sbxd by (NULL: none). */
char *ports_url(struct ports *t, const struct port_info *p, const char *host);
#endif
