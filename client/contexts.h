/* Code contexts over the sandbox API (container-api.md §11, docs/protocol.md "Code contexts"):
 * create, list and delete contexts, run code in one as a stream of events, interrupt it.
 *
 * The standard routes work on both backends. Interrupting is sbxd's extension and fails on a
 * plain container with -EOPNOTSUPP and a readable reason. A plain container sends an
 * execution's events only when it has finished, ignores a context's cwd (code runs in
 * /workspace) and its environment, and takes an unknown language for python: the language is
 * therefore checked here, the same way for both. */
#ifndef SBX_CONTEXTS_H
#define SBX_CONTEXTS_H
#include <stdbool.h>
#include <stddef.h>

struct sbx;

struct sbx_context {
	char *id;
	char *language; /* "python", "javascript", "typescript" */
	char *cwd;      /* "" when the server gave none */
	char *state;    /* "ready", "busy", "dead" (sbxd); NULL when the server does not say */
	char *session;  /* the session it was created in (sbxd), or NULL */
};
void sbx_context_clear(struct sbx_context *c);
void sbx_contexts_free(struct sbx_context *v, size_t n);

/* The canonical name of a language or one of its aliases (python3, js, node, ts), else NULL. */
const char *sbx_language_canonical(const char *name);

/* Creates a context. language NULL: python; cwd NULL: the server's default (/workspace); env
 * NULL or "NAME=VALUE" strings ending with NULL. *id receives the new id (caller frees).
 * Starting an interpreter can take a while: the call waits up to a minute or the client's
 * deadline, whichever is longer. */
int sbx_context_create(struct sbx *s, const char *language, const char *cwd,
		       const char *const *env, char **id);
/* The same in a session (NULL: none): the context starts from the session's working
 * directory and exported environment (cwd and env go over them) and is deleted with the
 * session. sbxd only: -EOPNOTSUPP on a plain container, whose contexts know no sessions. */
int sbx_context_create_in(struct sbx *s, const char *session, const char *language,
			  const char *cwd, const char *const *env, char **id);
int sbx_context_list(struct sbx *s, struct sbx_context **v, size_t *n);
/* -ENOENT (with a reason) when no context has this id. */
int sbx_context_get(struct sbx *s, const char *id, struct sbx_context *c);
int sbx_context_delete(struct sbx *s, const char *id);
/* Interrupts the execution running in the context (none running: nothing happens).
 * -EOPNOTSUPP on a plain container. */
int sbx_context_interrupt(struct sbx *s, const char *id);

/* An execution: POST /api/execute/code as a stream. Callbacks run on the network thread and
 * must not block. on_event gets each event's JSON text (one line, NUL-terminated) and its
 * parse (NULL if it was not JSON); on_end runs once, after the last event: err 0 when the
 * execution's terminal event (execution_complete or error) arrived, else a negative errno
 * and a readable reason (the server refused the code: unknown context, dead context; the
 * connection broke) -- unless sbx_execution_close() came first. */
struct cJSON;
struct sbx_execution_ops {
	void (*on_event)(void *arg, const char *json, size_t len, const struct cJSON *ev);
	void (*on_end)(void *arg, int err, const char *reason);
};
struct sbx_execution;
/* Sends code (len bytes; no NUL inside) to run in context id and waits until the server has
 * taken it (its answer's headers came) or refused it: NULL with errno and sbx_last_error()
 * set when it could not be started (-ENOENT unknown context, -EIO dead context, -ENOTCONN or
 * -ETIMEDOUT backend down...). Then on_end is not called. Events may arrive (and on_end may
 * run) before this returns. */
struct sbx_execution *sbx_execution_start(struct sbx *s, const char *id, const char *code,
					  size_t len, const struct sbx_execution_ops *ops,
					  void *arg);
/* Stops receiving (the server interrupts an execution whose client went away); no callback
 * runs once this returns. Call it from outside the callbacks, once. */
void sbx_execution_close(struct sbx_execution *x);
#endif
