/* Background processes of the sandbox (container-api.md §8, docs/protocol.md "Processes"):
 * start, list, inspect, read logs, signal, remove, and follow a process's output live.
 *
 * The standard routes work on both backends. What only sbxd has fails on a plain container
 * with -EOPNOTSUPP and a readable reason: a signal other than TERM (the container's DELETE
 * always sends TERM, then KILL after 5 s) and removing a finished record. Every call blocks
 * for at most the client's deadline, except a stream, which is asynchronous. */
#ifndef SBX_PROCESSES_H
#define SBX_PROCESSES_H
#include <stdbool.h>
#include <stddef.h>

struct sbx;

struct sbx_process {
	char *id;
	char *command;
	char *status;     /* "running", "completed", "failed", "killed", "error" */
	bool has_exit_code;
	int exit_code;
	long pid;         /* 0 when the server gave none */
	char *start_time; /* ISO-8601, or NULL */
	char *end_time;
	char *session;    /* the session it was started in, when the server says (sbxd), or NULL */
	char *json;       /* the record as the server sent it, pretty-printed */
};
void sbx_process_clear(struct sbx_process *p);
void sbx_processes_free(struct sbx_process *v, size_t n);

/* Starts command (run by the sandbox's shell) in cwd (NULL: the server's default) with env
 * (NULL, or "NAME=VALUE" strings ending with NULL) added; *id receives the new id (caller
 * frees). An empty or blank command is -EINVAL without asking the server. */
int sbx_process_start(struct sbx *s, const char *command, const char *cwd,
		      const char *const *env, char **id);
/* The same in a session (NULL: none): the process starts from the session's working
 * directory and exported environment (cwd and env go over them), and stops when the session
 * is deleted. */
int sbx_process_start_in(struct sbx *s, const char *session, const char *command,
			 const char *cwd, const char *const *env, char **id);
int sbx_process_list(struct sbx *s, struct sbx_process **v, size_t *n);
/* -ENOENT for an unknown id. */
int sbx_process_get(struct sbx *s, const char *id, struct sbx_process *p);
/* Everything output so far (caller frees both; NUL-terminated). */
int sbx_process_logs(struct sbx *s, const char *id, char **out, size_t *out_len, char **err,
		     size_t *err_len);

/* The signal named by text: "INT", "SIGINT", "int", "2"; an empty or blank text is SIGTERM.
 * -EINVAL (with a reason) for anything else. */
int sbx_signal_parse(const char *text);
/* Signals a running process and its whole tree. -ESRCH when it has already ended, -ENOENT when
 * the id is unknown. */
int sbx_process_kill(struct sbx *s, const char *id, int sig);
/* Signals every running process; *count (may be NULL) receives how many. */
int sbx_process_kill_all(struct sbx *s, int sig, int *count);
/* Forgets a finished process's record: -EBUSY while it runs, -ENOENT when unknown. */
int sbx_process_remove(struct sbx *s, const char *id);

/* A live view of a process's output (GET /api/process/{id}/stream). Callbacks run on the
 * network thread and must not block. on_output gets stdout and stderr in the order the server
 * sent them, each byte once: when the server ends the stream before the process ended (the
 * container's idle cut, a connection that went silent) it is reopened by itself and the replay
 * of what was already delivered is skipped. on_end runs once: err 0 when the process ended
 * (exit_code is its exit code, -1 when unknown), else a negative errno (unknown id, backend
 * gone), unless the stream was closed first. */
struct sbx_process_stream_ops {
	void (*on_output)(void *arg, bool is_stderr, const char *data, size_t len);
	void (*on_end)(void *arg, int err, int exit_code);
};
struct sbx_process_stream;
/* NULL (with a reason) when the stream cannot be started at all. */
struct sbx_process_stream *sbx_process_stream_open(struct sbx *s, const char *id,
						   const struct sbx_process_stream_ops *ops,
						   void *arg);
/* Stops the stream; no callback runs once this returns. Call it from outside the callbacks. */
void sbx_process_stream_close(struct sbx_process_stream *ps);
#endif
