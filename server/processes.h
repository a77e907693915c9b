/* Background processes: a table of records, each a command started in the sandbox (in a
 * session or not) whose output is kept, until the record is removed or the table freed. The
 * routes of container API §8 and the extensions of docs/protocol.md are processes_routes.c;
 * nothing here knows HTTP. */
#ifndef SBXD_PROCESSES_H
#define SBXD_PROCESSES_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>
#include "common/strbuf.h"
#include "server/child.h"

#define PROC_ID_MAX 128
#define PROCS_MAX 1024      /* records in one table */

struct procs;   /* the table */
struct proc;    /* a record, referenced by whoever holds it */
struct session;

enum proc_status { PROC_RUNNING, PROC_COMPLETED, PROC_FAILED, PROC_KILLED, PROC_ERROR };

/* A record as it stands. The strings are the record's own and live as long as it is
 * referenced. */
struct proc_info {
	const char *id, *command;
	const char *session_id;      /* the session it was started in, or NULL */
	pid_t pid;                   /* -1 until started */
	enum proc_status status;
	int exit_code;               /* once it is not running */
	struct timespec start, end;  /* CLOCK_REALTIME; end once it is not running */
	size_t out_size, err_size;   /* bytes of output kept */
	bool truncated;              /* more was written, and dropped */
};

/* What to start. */
struct proc_spec {
	const char *id;              /* NULL: a new one */
	const char *command;         /* for bash -c */
	const char *cwd;             /* NULL: the session's, or /workspace */
	char *const *env;            /* "K=V" over the environment store's (NULL: none) */
	int timeout_ms;              /* 0: none; then TERM, and KILL 5 s later */
	struct session *session;     /* NULL: none; held by the caller while it starts */
	const char *session_id;
};

struct procs *procs_new(void);
/* Ends every running process (TERM, then KILL) and frees the table and its records (those
 * still referenced go when their last reference does). */
void procs_free(struct procs *t);

/* A new record for spec, started: 0 with *out referenced; -EEXIST when a running record has
 * that id, -ENOSPC when the table is full, -ESHUTDOWN when it is being freed. A command that
 * cannot start makes a record all the same, whose status is "error" and whose stderr says
 * why. A finished record of that id is replaced. */
int procs_start(struct procs *t, const struct proc_spec *spec, struct proc **out);
/* The record with this id, referenced; NULL when there is none. */
struct proc *procs_get(struct procs *t, const char *id);
/* Drops a reference. */
void proc_put(struct procs *t, struct proc *p);
void proc_info(struct procs *t, struct proc *p, struct proc_info *out);
const char *proc_status_name(enum proc_status st);
/* All records, referenced: the running ones, then the finished ones, each oldest first. */
struct proc **procs_list(struct procs *t, size_t *n);
void procs_list_put(struct procs *t, struct proc **v, size_t n);

/* The output from byte offset from of each stream, as it stands. */
void proc_logs(struct procs *t, struct proc *p, size_t from, struct strbuf *out,
	       struct strbuf *err, struct proc_info *info);
/* Where a reader of the record's output is: output is replayed in the order it was read,
 * stdout and stderr interleaved. */
struct proc_cursor {
	size_t seg, segoff;
};
typedef void proc_emit_fn(void *ctx, enum child_stream which, const char *buf, size_t n);
/* Hands the output after cursor to emit (pieces of at most piece bytes, about max in all;
 * emit runs with the table locked), waiting until deadline (mono_ms) for some when there is
 * none yet. 1 while more may come; 0 once the record has ended and everything was handed
 * over (info then says how it ended). */
int proc_follow(struct procs *t, struct proc *p, struct proc_cursor *cursor, size_t piece,
		size_t max, int64_t deadline, proc_emit_fn *emit, void *ctx,
		struct proc_info *info);

/* Signals the running record (a terminating signal marks it killed); TERM is followed by KILL
 * 5 s later if it still runs, and waits (bounded) for the end. 0, or -ESRCH when it is not
 * running. */
int proc_kill(struct procs *t, struct proc *p, int sig);
/* The same for every running record; the number signalled. */
int procs_kill_all(struct procs *t, int sig);
/* Takes a finished record out of the table: 0, -ENOENT, or -EBUSY while it runs. */
int procs_remove(struct procs *t, const char *id);
/* For /api/port-watch: 0 with whether it still runs and, once it has ended, its exit code;
 * -ENOENT for an unknown id. */
int procs_state(struct procs *t, const char *id, bool *running, int *exit_code);
/* A session was deleted: its running processes get KILL, and this returns once they have
 * ended (bounded, a few seconds). */
void procs_stop_session(struct procs *t, unsigned long serial);

/* "TERM", "SIGTERM", "term" or "15"; 0 when it names no signal. */
int proc_signal_number(const char *name);
/* Whether id may name a record: it names a directory in sbxfs and a URL segment. */
bool proc_id_valid(const char *id);
#endif
