/* Execution sessions (container-api.md §6.1, docs/sessions.md): a session is a shell state
 * (working directory, exported environment) that commands, processes and, with sbxd, code
 * contexts started in it begin from; deleting it stops what was started in it.
 *
 * The standard routes work on both backends: session/create, list, delete, and /api/execute
 * with a sessionId, whose `cd` and `export` last in the session. Processes are started in a
 * session with sbx_process_start_in() (client/processes.h), contexts with
 * sbx_context_create_in() (client/contexts.h). Every call blocks for at most the client's
 * deadline. */
#ifndef SBX_SESSIONS_H
#define SBX_SESSIONS_H
#include <stdbool.h>
#include <stddef.h>

struct sbx;
struct sbx_exec_result;

/* Creates a session: id NULL for one the server names; cwd NULL for /workspace; env NULL or
 * "NAME=VALUE" strings ending with NULL. *out receives its id (caller frees). -EEXIST when
 * the id is taken. */
int sbx_session_create(struct sbx *s, const char *id, const char *cwd, const char *const *env,
		       char **out);
/* The sessions' ids in creation order (caller frees each and the array). */
int sbx_session_list(struct sbx *s, char ***ids, size_t *n);
void sbx_session_ids_free(char **ids, size_t n);
/* 0 when the session exists, -ENOENT when not. */
int sbx_session_exists(struct sbx *s, const char *id);
/* Deletes it, stopping its processes (and, with sbxd, its code contexts). -ENOENT when
 * unknown. */
int sbx_session_delete(struct sbx *s, const char *id);
/* Runs command in the session as its foreground command: what it changes (cd, export)
 * stays for the session's later commands. Output as sbx_exec() gives it (with a plain
 * container: text, the last trailing newline dropped). repeatable: the command does the same
 * when run twice (it may then be sent again after a lost answer). */
int sbx_session_exec(struct sbx *s, const char *id, const char *command, bool repeatable,
		     struct sbx_exec_result *r);
#endif
