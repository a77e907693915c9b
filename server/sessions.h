/* Command sessions: an id, a start directory, an environment and the shell state (cwd,
 * exported variables, functions, aliases) that each foreground command leaves to the next.
 * There is no long-lived shell: every command is a fresh bash that loads the session's state
 * file, runs the command and saves the state again (see the essay in sessions.c). */
#ifndef SBXD_SESSIONS_H
#define SBXD_SESSIONS_H
#include <stdbool.h>
#include <stddef.h>
#include "server/httpd.h"

#define SESSION_DEFAULT "default"
#define SESSION_NONE "__DISABLE_SESSION__"

struct session;

/* The session id a command request names: body "sessionId" (an empty string counts as
 * absent), then the X-Session-Id header, then ?session= or ?sessionId=, else "default". Never
 * the Authorization header (our bearer token). *given tells whether the request named one.
 * NULL after answering the request with an error (an id that is blank, too long or not
 * UTF-8). */
const char *session_id_of_request(struct req *r, bool *given);

/* The same from the body's "sessionId" only (the container's rule for /api/process/start and
 * the file routes): SESSION_NONE when it names none (or names SESSION_NONE). */
const char *session_id_of_body(struct req *r, bool *given);

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

/* "K=V" strings from a request's env object: names must match [A-Za-z_][A-Za-z0-9_]*, null
 * values are skipped, numbers and booleans become their text. NULL after answering 400. */
char **session_env_from_json(struct req *r, const cJSON *obj);
void session_free_env(char **env);
#endif
