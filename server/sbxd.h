/* What one sbxd is: its configuration, and the engines whose state is theirs. */
#ifndef SBXD_SBXD_H
#define SBXD_SBXD_H
#include <stdbool.h>

struct sbxd_config {
	const char *listen;     /* "127.0.0.1:7070", "[::1]:7070", "0.0.0.0:7070" */
	const char *workspace;  /* host directory backing the sandbox's /workspace */
	const char *token;      /* bearer token every route but /api/ping requires */
	const char *state_dir;  /* sbxd's private state (sessions); never visible to commands */
	const char *sandbox_id; /* used in preview URLs and capabilities */
	const char *preview_base; /* "https://name[:port]": public base of preview URLs; NULL:
				   * from the listen address and the Host (server/ports.c) */
	bool no_extensions;     /* serve only the container's standard routes */
	long lease_seconds;     /* how long a silent client keeps its handles (leases.h) */
	bool verbose;
};

/* The configuration in force, for the route handlers (set by sbxd_serve). */
extern const struct sbxd_config *sbxd_cfg;

/* The engines of one sbxd whose state is theirs rather than a file's: made by sbxd_serve() in
 * dependency order, freed in reverse, and handed to every request (req_sbxd()). */
struct sbxd {
	const struct sbxd_config *cfg;
	struct procs *procs;    /* background processes (processes.h) */
	struct ports *ports;    /* exposed ports (ports.h) */
	struct journals *journals; /* the journals' watermarks (journal.h) */
};
#endif
