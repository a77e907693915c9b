/* Command sessions: an id, a start directory, an environment and the shell state (cwd,
 * exported variables, functions, aliases) that each foreground command leaves to the next.
 * There is no long-lived shell: every command is a fresh bash that loads the session's state
 * file, runs the command and saves the state again (see the essay in sessions.c). The routes
 * are sessions_routes.c; nothing here knows HTTP. */
#ifndef SBXD_SESSIONS_H
#define SBXD_SESSIONS_H
#include <stdbool.h>
#include <stddef.h>

#define SESSION_DEFAULT "default"
#define SESSION_NONE "__DISABLE_SESSION__"
#define SESSION_ID_MAX 1024     /* bytes */

struct session;

/* The session with this id, created on the spot (starting in start_cwd, NULL = /workspace)
 * when unknown, locked for one command: foreground commands of a session run one at a time.
 * Waits at most timeout_ms (< 0: as long as the running command takes) for the command
 * before it, and not beyond the hang-up of the request's client (client_fd, the socket from
 * req_client_fd(); -1: none). 0, -ETIMEDOUT, -ECONNABORTED (the client is gone), -ENOSPC
 * (too many sessions) or another negative errno. */
int session_acquire(const char *id, const char *start_cwd, int timeout_ms, int client_fd,
		    struct session **out);
/* Unlocks and drops the reference session_acquire() took. */
void session_release(struct session *s);
/* A number no other session ever has (ids are reused after a delete): what processes and
 * contexts started in the session remember, so that deleting it stops them. */
unsigned long session_serial(const struct session *s);
/* The default timeout of the session's commands (commandTimeoutMs), 0 for none. */
int session_command_timeout(const struct session *s);
/* The same for the session with this id, before taking it; 0 when there is none. */
int session_command_timeout_of(const char *id);

/* How to start a command: argv and envp for runner_spawn(), and whether the command text
 * must be written to the command's stdin (when it is too long for the environment). */
struct session_launch {
	char **argv;
	char **env;
	bool command_on_stdin;
};
/* Prepares a command in s (NULL: sessionless, no state) with the request's cwd (NULL = the
 * session's) and extra environment ("K=V" from session_env_from_json, NULL for none),
 * loading the session's state and, when save is set, saving it back when the command ends
 * (adopt it with session_commit()). */
int session_launch(struct session *s, const char *command, const char *cwd,
		   char *const *req_env, bool save, struct session_launch *out);
void session_launch_free(struct session_launch *l);
/* After a command started with save=true has ended normally: adopts the state it saved. */
void session_commit(struct session *s);


/* A new session (POST /api/session/create) in start_cwd (NULL: /workspace) with env ("K=V",
 * taken on success) and a default timeout for its commands (0: none): 0, -EEXIST, -ENOSPC
 * (too many) or another negative errno. */
int sessions_create(const char *id, const char *start_cwd, char **env, int timeout_ms);
/* The ids of all sessions, oldest first (free with strv_free(), common/strv.h). */
char **sessions_ids(void);
/* Deletes the session once its running command has ended: 0 with its serial (for whoever
 * stops what was started in it), or -ENOENT. */
int sessions_delete(const char *id, unsigned long *serial);

/* The working directory and environment that a command started in session id would have
 * now (the session's state with the env store over it), for a code context started in the
 * session: *cwd, and *env as "K=V" strings ending with NULL (free both: free(), and
 * strv_free()). The session is created when unknown, as by a command; *serial is its
 * session_serial(). Waits for the session's running command, unless client_fd (the request's
 * socket, -1: none) hangs up first: -ECONNABORTED. Else 0 or a negative errno. */
int session_snapshot(const char *id, int client_fd, char ***env, char **cwd,
		     unsigned long *serial);
#endif
