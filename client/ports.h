/* Exposed ports and their preview URLs (sbxd's /api/x/ports, docs/protocol.md "Ports and
 * preview URLs"). A plain container has no such routes (the SDK's Worker keeps them): there
 * every call fails with -EOPNOTSUPP and a readable reason, except sbx_ports_list, which answers
 * an empty list so that listings stay quiet. */
#ifndef SBX_PORTS_H
#define SBX_PORTS_H
#include <stddef.h>

struct sbx;

struct sbx_port {
	int port;
	char *url;
	char *name; /* NULL when none was given */
};

/* The range sbxd accepts (it also refuses its own port). */
#define SBX_PORT_MIN 1024
#define SBX_PORT_MAX 65535

/* Exposes port (again: same URL; a name given replaces the old one; name may be NULL). url
 * (may be NULL) receives the preview URL, caller frees. */
int sbx_port_expose(struct sbx *s, int port, const char *name, char **url);
/* -ENOENT when the port is not exposed. */
int sbx_port_unexpose(struct sbx *s, int port);
/* Every exposed port, by port number. */
int sbx_ports_list(struct sbx *s, struct sbx_port **ports, size_t *n);
void sbx_ports_free(struct sbx_port *ports, size_t n);
#endif
