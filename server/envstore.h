/* The sandbox-wide environment: variables set through POST /api/x/env (env_routes.c) that
 * everything started afterwards gets (commands, processes, interpreters), over the defaults
 * every command has. Lives in memory only; nothing here knows HTTP. */
#ifndef SBXD_ENVSTORE_H
#define SBXD_ENVSTORE_H

#define ENVSTORE_MAX_VARS 1024

/* The default environment of commands (PATH, HOME=/root, LANG=C.UTF-8, TERM=dumb). */
const char *const *envstore_defaults(void);
/* A new environment: the defaults, then the store, then extra ("K=V", may be NULL); a later
 * definition of a name replaces an earlier one. Free it with strv_free() (common/strv.h). */
char **envstore_build(const char *const *extra);
/* The store's variables then extra, without the defaults (for the session wrapper, which
 * layers them over a session's own state). Same ownership as envstore_build(). */
char **envstore_overlay(const char *const *extra);
/* The store's variables, "K=V" in the order they were first set. */
char **envstore_list(void);
/* Sets "K=V" of set and removes the names of unset (both NULL-terminated, may be NULL), as one
 * change; -ENOSPC (and nothing changed) when the store would hold more than
 * ENVSTORE_MAX_VARS. The names are the caller's to check. */
int envstore_update(const char *const *set, const char *const *unset);
#endif
