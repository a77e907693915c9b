/* What exec.c (POST /api/execute and /api/execute/stream) offers other routes. */
#ifndef SBXD_EXEC_H
#define SBXD_EXEC_H

/* The working directory and environment that a command started in session id would have
 * now (the session's state with the env store over it), for a code context started in the
 * session: *cwd, and *env as "K=V" strings ending with NULL (free both: free(), and
 * session_free_env()). The session is created when unknown, as by a command; *serial is its
 * session_serial(). Waits for the session's running command, unless client_fd (the request's
 * socket, -1: none) hangs up first: -ECONNABORTED. Else 0 or a negative errno. */
int exec_session_snapshot(const char *id, int client_fd, char ***env, char **cwd,
			  unsigned long *serial);
#endif
