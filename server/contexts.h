/* Code contexts: persistent Python and JavaScript/TypeScript interpreters (container API §11),
 * each with its queue of executions. The routes are contexts_routes.c; nothing here knows
 * HTTP. An execution's events come out as server-sent events ("data: <json>\n\n"), the shape
 * of /api/execute/code's answer, which the interpreters' own messages already have. */
#ifndef SBXD_CONTEXTS_H
#define SBXD_CONTEXTS_H
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>
#include "common/strbuf.h"

#define CONTEXT_ID_LEN 36       /* a UUID */

struct language {
	const char *name;
	int kernel;                 /* which interpreter runs it */
	bool typescript;
	const char *missing_code;   /* the container's code when the interpreter cannot start */
};

/* The language a name or alias ("python3", "js", "ts"...) stands for; NULL if none. */
const struct language *context_language(const char *name);
/* Python, the default. */
const struct language *context_default_language(void);

/* What a new context starts with. */
struct context_spec {
	const struct language *lang;
	const char *cwd;
	cJSON *env;                 /* its whole environment, an object of strings; taken */
	const char *session_id;     /* the session it was created in, or NULL */
	unsigned long session_serial;
};

/* Why a context could not be created. */
enum context_failure {
	CONTEXT_NO_INTERPRETER,     /* none could be started: err */
	CONTEXT_INTERPRETER_DIED,   /* it died while starting: message, its last words */
	CONTEXT_NOT_READY,          /* it did not start in time */
	CONTEXT_INIT_REFUSED,       /* it refused the directory or environment: err, message */
	CONTEXT_INIT_DIED,          /* it died while taking them */
	CONTEXT_INIT_SILENT,        /* it did not answer */
};
struct context_error {
	enum context_failure kind;
	int err;                    /* positive errno */
	char message[512];
};
#define CONTEXT_READY_TIMEOUT_MS 60000  /* an interpreter's start (importing IPython) */

/* A new context: 0 with its id, or -1 with *e saying why. */
int contexts_create(const struct context_spec *spec, char id[CONTEXT_ID_LEN + 1],
		    struct context_error *e);

/* A context as it stands; the strings live for the call of each. */
struct context_info {
	const char *id, *language, *cwd, *session_id, *state;
};
/* Calls each for every context, in the order they were made. */
void contexts_list(void (*each)(void *arg, const struct context_info *info), void *arg);
/* Deletes the context: its interpreter is killed, a running execution ends with
 * InterpreterDied. 0 or -ENOENT. */
int contexts_delete(const char *id);
/* Interrupts the running execution, if any (*running says whether there was one). 0 or
 * -ENOENT. */
int contexts_interrupt(const char *id, bool *running);

/* An execution of code in a context: queued behind the context's running one. */
struct execution;
/* Queues code (language, when not NULL, must be the context's): 0 with *out; -ENOENT (no such
 * context), -EPIPE (its interpreter has died), -EINVAL (another language: *lang is the
 * context's), -ENOMEM. timeout_ms: 0 for none; then an interrupt, and KILL 2 s later. */
int contexts_execute(const char *id, const char *code, const char *language,
		     int64_t timeout_ms, struct execution **out, const char **lang);
/* Moves the execution's events to out, waiting at most timeout_ms for some: 1 while more may
 * come, 0 once its terminal event is out (the contract of an sse_source's next()). */
int execution_next(struct execution *e, struct strbuf *out, int timeout_ms);
/* Its reader is done: an execution not yet finished is interrupted (or dropped from the
 * queue) and its further events discarded. */
void execution_release(struct execution *e);

/* A session was deleted: the contexts created in it are deleted (their interpreters killed,
 * a running execution ends with InterpreterDied). */
void contexts_stop_session(unsigned long serial);
/* Kills every interpreter (contexts and warm spares) and waits until they are reaped. Call
 * after the HTTP server has stopped; later context requests fail. */
void contexts_shutdown(void);
#endif
