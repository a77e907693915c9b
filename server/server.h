/* sbxd's lifecycle: the entry point the program calls. */
#ifndef SBXD_SERVER_H
#define SBXD_SERVER_H
#include "server/sbxd.h"

/* Serves until SIGINT or SIGTERM; returns the process exit status. */
int sbxd_serve(const struct sbxd_config *cfg);
#endif
