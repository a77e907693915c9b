/* Exposed ports: which sandbox ports have a preview URL, and with which token. The table lives
 * in memory for one sbxd run; the routes (POST/GET /api/x/ports, DELETE /api/x/ports/{port})
 * are in ports.c, the proxy that serves the URLs in preview.c. */
#ifndef SBXD_PORTS_H
#define SBXD_PORTS_H
#include <stdbool.h>
#include <stddef.h>

#define PORTS_TOKEN_LEN 16 /* 12 random bytes in base64 */

/* Whether port is exposed with exactly this token (compared in constant time). */
bool ports_match(int port, const char *token, size_t token_len);
/* The port sbxd itself answers on, learnt by the HTTP layer from the first request (a listen
 * address with port 0 is only resolved by the kernel). Used in URLs and refused as a target. */
void ports_set_server_port(int port);
#endif
