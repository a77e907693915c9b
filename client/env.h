/* The sandbox-wide environment (sbxd's /api/x/env, docs/protocol.md "Environment"): variables
 * everything started afterwards gets (commands, processes, interpreters). A plain container has
 * no such store: both calls fail there with -EOPNOTSUPP and a readable reason. */
#ifndef SBX_ENV_H
#define SBX_ENV_H
#include <stddef.h>

struct sbx;

/* The variables set so far as "K=V" strings, in the server's order; free with sbx_env_free. */
int sbx_env_get(struct sbx *s, char ***vars, size_t *n);
void sbx_env_free(char **vars, size_t n);
/* Sets the "K=V" strings of set and removes the names of unset, all or nothing (the server
 * validates the whole request first). A name must not be in both. */
int sbx_env_update(struct sbx *s, const char *const *set, size_t nset, const char *const *unset,
		   size_t nunset);
#endif
