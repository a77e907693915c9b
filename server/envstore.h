/* The sandbox-wide environment: variables set through POST /api/x/env that everything started
 * afterwards gets (commands, processes, interpreters). Lives in memory only. */
#ifndef SBXD_ENVSTORE_H
#define SBXD_ENVSTORE_H

/* A new environment: runner_default_env(), then the store, then extra ("K=V", may be NULL);
 * a later definition of a name replaces an earlier one. Malloc'd, NULL-terminated; free it
 * with envstore_free(). */
char **envstore_build(const char *const *extra);
/* The store's variables then extra, without the defaults (for the session wrapper, which
 * layers them over a session's own state). Same ownership as envstore_build(). */
char **envstore_overlay(const char *const *extra);
void envstore_free(char **env);
#endif
