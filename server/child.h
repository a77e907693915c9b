/* The pump: the one loop that looks after a child process of the runner while it runs. It reads
 * stdout and stderr as they come and hands the bytes to the caller, feeds stdin, enforces a
 * deadline (TERM, then KILL a grace period later), stops the child when the client that asked
 * for it hangs up, bounds what the child may say, notices the exit and reaps it, always in
 * the same order (see child.c). Commands (exec.c), background processes (processes.c), git
 * (git.c), interpreters (contexts.c) and the probe of a session's state (sessions.c) are
 * children of this pump; what differs between them is a struct child_policy and the
 * callbacks of struct child_ops.
 *
 * A child is driven by one thread, its owner: child_step() and child_run() are called by that
 * thread only. child_signal() and child_wake() may be called from any thread. */
#ifndef SBXD_CHILD_H
#define SBXD_CHILD_H
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "server/runner.h"

enum child_stream { CHILD_OUT, CHILD_ERR };

struct child_ops {
	/* n bytes the child wrote to which (at most policy.output_max of each stream in all), or
	 * n == 0 once that stream has ended. Returning false ends the child at once (KILL) and
	 * stops reading that stream: for what a child must not say. */
	bool (*output)(void *ctx, enum child_stream which, const char *buf, size_t n);
	/* NULL, or whether stdout may be read now: false holds the child back (its writes block)
	 * until child_wake(). Not asked once the child has exited. */
	bool (*may_read)(void *ctx);
	/* NULL, or the caller's own timers: called at every round with the time (mono_ms), on the
	 * owner's thread; returns when it wants to be called next, -1 for no wish. */
	int64_t (*tick)(void *ctx, int64_t now);
};

struct child_policy {
	int timeout_ms;       /* 0: none; else TERM once it has passed (timed_out) */
	int grace_ms;         /* from a TERM of the pump's to its KILL */
	size_t output_max;    /* bytes of each stream handed to output(); 0: no bound */
	bool kill_over_max;   /* beyond output_max: KILL the child (overflow) instead of dropping
			       * the rest (truncated) */
	bool group_survives;  /* what the child left running in its process group outlives it
			       * (a command's background jobs, as in a shell); else the group dies
			       * with the child, as a bubblewrap spawn's pid namespace does */
	int drain_ms;         /* after the exit: how long what still holds the pipes may keep the
			       * end waiting */
};

struct child {
	struct run_proc p;
	struct child_policy policy;
	const struct child_ops *ops;
	void *ctx;
	int client_fd;          /* watched for a hang-up; -1: none */
	const char *input;      /* for stdin, closed when fed; NULL: stdin is the caller's */
	size_t input_len, input_off;
	int wake_fd;            /* eventfd: child_wake() */
	pthread_mutex_t lock;   /* orders signals against the reap */
	bool reaped;            /* under lock */
	bool closed[2];         /* the stream ended, or was refused */
	size_t got[2];
	int64_t deadline, kill_at, drain_until; /* mono_ms(), -1: none */
	bool exited;
	/* the outcome: what child_step() left when it said the child was finished */
	int status;             /* wait status (255 << 8 when it could not be reaped) */
	bool finished;          /* exited and reaped, and the pipes read */
	bool timed_out;         /* the deadline passed: TERMed (and KILLed) */
	bool client_gone;       /* the client hung up: TERMed (and KILLed) */
	bool killed;            /* signalled by the pump, for any reason: not to be kept */
	bool truncated[2];      /* more than output_max, dropped */
	bool overflow[2];       /* more than output_max, with kill_over_max: KILLed */
};

/* An empty child: no process, child_signal() says -ESRCH, child_finish() and child_free() do
 * nothing harmful. */
void child_init(struct child *c);
/* Starts the command with the runner and takes charge of it; 0, or a negative errno with c
 * left empty. */
int child_start(struct child *c, const struct run_spec *spec, const struct child_policy *policy,
		const struct child_ops *ops, void *ctx);
/* Takes charge of a process started otherwise (the unit tests' own); as child_start. */
int child_adopt(struct child *c, const struct run_proc *p, const struct child_policy *policy,
		const struct child_ops *ops, void *ctx);
/* Writes input (which must live until the child is finished) to the child's stdin as it takes
 * it, then closes stdin. */
void child_feed(struct child *c, const char *input, size_t len);
/* Stops the child (TERM, KILL grace_ms later) when the peer of this socket hangs up. */
void child_watch_client(struct child *c, int fd);

/* One round: waits at most wait_ms (< 0: as long as nothing happens) for output, room on
 * stdin, a timer, the client's hang-up or the exit, and acts on what happened. True once the
 * child is finished: exited, reaped, and what it wrote read. */
bool child_step(struct child *c, int wait_ms);
/* Steps until the child is finished. */
void child_run(struct child *c);
/* Ends the child if it still runs (TERM, KILL after grace_ms), reaps it and closes the pipes
 * the pump reads (stdin stays open when the caller writes it). Call once, from the owner. */
void child_finish(struct child *c);
/* Frees what is left (stdin included); after child_finish, once no thread may signal it. */
void child_free(struct child *c);

/* Signals the child's process group (runner_kill); -ESRCH once it has been reaped, so that a
 * signal can never reach a recycled pid. Any thread. */
int child_signal(struct child *c, int sig);
/* Whether the child has been reaped. Any thread. */
bool child_reaped(struct child *c);
/* Makes the owner's child_step() look again at once (at may_read and tick). Any thread. */
void child_wake(struct child *c);
/* The shell's view of the status: the exit code, or 128 + the signal. */
int child_exit_code(const struct child *c);
#endif
