/* Preview URLs: requests whose Host names an exposed port (<port>-<sandbox id>-<token>.<any>)
 * are proxied to that port on the sandbox's loopback instead of reaching the API. The proxy is
 * a hook of the HTTP layer, which hands it such requests before routing and before the bearer
 * check (the URL's token is their credential). */
#ifndef SBXD_PREVIEW_H
#define SBXD_PREVIEW_H
#include "server/httpd_hook.h"

struct ports;

/* The proxy as a hook for httpd_start(), for the exposed ports of this table. */
struct httpd_hook preview_hook(struct ports *ports);
#endif
