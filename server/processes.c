/* The table of background processes behind server/processes.h.
 *
 * A record (struct proc) lives in its table, in memory only, until it is removed or the table
 * freed. Each running process has a collector thread that runs it under the pump
 * (server/child.h): what the process writes is appended to the record, and when the leader
 * has exited what is left of its group is killed (a process tree dies with its leader, as with
 * the pid namespace the runner gives each spawn), the leader is reaped, what the pipes still
 * hold is read (at most DRAIN_MAX_MS more) and only then is the record marked finished. So
 * "finished" always means "all output is in": a reader that sees a final status has the whole
 * log.
 *
 * Output is kept as two byte logs (offsets into them are what /logs?offset= takes) plus a
 * list of segments saying which log each successive piece came from; followers replay the
 * segments, so stdout and stderr stay in the order sbxd read them. That order is the order of
 * writing except for writes to both pipes closer together than one of the pump's rounds (two
 * pipes carry no common clock). Each log keeps at most LOG_MAX bytes (the pump's bound);
 * beyond that the output is read and dropped, and the record says it was truncated.
 *
 * Locking: the table's lock guards the table and every record's fields, and its condition
 * variable is broadcast whenever output arrives or a process ends (followers and killers wait
 * on it). The pump orders signals against the reap, so a kill can never reach a recycled pid.
 * Records are reference-counted (table, collector, each caller that holds one), so a removed
 * record stays valid for a follower still reading it. */
#include "server/processes.h"
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "common/clock.h"
#include "common/log.h"
#include "common/strv.h"
#include "server/envstore.h"
#include "server/runner.h"
#include "server/sessions.h"
#include "server/workspace.h"

#define LOG_MAX ((size_t)64 << 20)  /* per stream and record */
#define KILL_GRACE_MS 5000          /* TERM, then KILL this much later (as the container) */
#define DRAIN_MAX_MS 1000           /* after the exit: reading what the pipes still hold */
#define PROBE_TIMEOUT_MS 10000
#define SIGNAL_RETRY_MS 2000

enum { OUT = CHILD_OUT, ERR = CHILD_ERR };

static const char *const status_names[] = { "running", "completed", "failed", "killed", "error" };

struct seg {
	int which;
	size_t off, len;
};

struct proc {
	struct proc *next;
	struct procs *t;
	int refs;
	bool in_table;
	char *id, *command;
	char *session_id;            /* the session it was started in, or NULL */
	unsigned long session_serial;
	enum proc_status status;
	int exit_code;
	struct timespec start, end;  /* CLOCK_REALTIME */
	bool kill_requested;         /* a terminating signal came through the API */
	int timeout_ms;              /* 0: none */
	pid_t pid;                   /* as reported; -1 until started */
	struct strbuf log[2];
	bool truncated;
	struct seg *segs;
	size_t nsegs, segcap;
	struct child child;          /* the running process, under its collector */
};

struct procs {
	pthread_mutex_t lock;
	pthread_cond_t changed;      /* output arrived, or a process ended */
	struct proc *table;          /* newest first */
	size_t n_records;
	int n_collectors;
	bool shutting_down;
};

/* ---- ids and signal names ---- */

int proc_signal_number(const char *s)
{
	if (!s || !*s)
		return 0;
	if (isdigit((unsigned char)*s)) {
		char *end;
		long n = strtol(s, &end, 10);
		return *end || n < 1 || n > SIGRTMAX ? 0 : (int)n;
	}
	if (strncasecmp(s, "SIG", 3) == 0)
		s += 3;
	for (int i = 1; i < SIGRTMIN; i++) {
		const char *name = sigabbrev_np(i);
		if (name && strcasecmp(name, s) == 0)
			return i;
	}
	return 0;
}

/* Signals that do not ask a process to end (it may well go on running). */
static bool terminating(int sig)
{
	return sig != SIGCONT && sig != SIGSTOP && sig != SIGTSTP && sig != SIGTTIN &&
	       sig != SIGTTOU && sig != SIGCHLD && sig != SIGURG && sig != SIGWINCH;
}

bool proc_id_valid(const char *id)
{
	size_t n = strlen(id);
	if (n == 0 || n > PROC_ID_MAX || id[0] == '.' || strcmp(id, "list") == 0 ||
	    strcmp(id, "kill-all") == 0)
		return false;
	for (const char *p = id; *p; p++)
		if (!isalnum((unsigned char)*p) && !strchr("_-.:@+", *p))
			return false;
	return true;
}

static char *new_id(void)
{
	static const char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
	unsigned char rnd[6];
	char suffix[7], *id;
	struct timespec now;
	if (getrandom(rnd, sizeof rnd, 0) != sizeof rnd)
		for (size_t i = 0; i < sizeof rnd; i++)
			/* only if getrandom fails; an id must be unique, it grants nothing (every
			 * request needs the token) */
			/* NOLINTNEXTLINE(cert-msc30-c,cert-msc50-cpp) */
			rnd[i] = (unsigned char)rand();
	for (size_t i = 0; i < sizeof rnd; i++)
		suffix[i] = digits[rnd[i] % 36];
	suffix[6] = '\0';
	clock_gettime(CLOCK_REALTIME, &now);
	if (asprintf(&id, "proc_%lld_%s", (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000,
		     suffix) < 0)
		abort();
	return id;
}

const char *proc_status_name(enum proc_status st)
{
	return status_names[st];
}

/* ---- records (lock held) ---- */

static struct proc *find_locked(struct procs *t, const char *id)
{
	for (struct proc *p = t->table; p; p = p->next)
		if (strcmp(p->id, id) == 0)
			return p;
	return NULL;
}

static void unlink_locked(struct procs *t, struct proc *p)
{
	for (struct proc **pp = &t->table; *pp; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			p->in_table = false;
			t->n_records--;
			return;
		}
}

static void put_locked(struct proc *p)
{
	if (--p->refs > 0)
		return;
	strbuf_free(&p->log[OUT]);
	strbuf_free(&p->log[ERR]);
	free(p->segs);
	free(p->id);
	free(p->command);
	free(p->session_id);
	child_free(&p->child);
	free(p);
}

void proc_put(struct procs *t, struct proc *p)
{
	pthread_mutex_lock(&t->lock);
	put_locked(p);
	pthread_mutex_unlock(&t->lock);
}

struct proc *procs_get(struct procs *t, const char *id)
{
	pthread_mutex_lock(&t->lock);
	struct proc *p = id ? find_locked(t, id) : NULL;
	if (p)
		p->refs++;
	pthread_mutex_unlock(&t->lock);
	return p;
}

static void info_locked(const struct proc *p, struct proc_info *out)
{
	*out = (struct proc_info){
		.id = p->id, .command = p->command, .session_id = p->session_id,
		.pid = p->pid, .status = p->status, .exit_code = p->exit_code,
		.start = p->start, .end = p->end, .out_size = p->log[OUT].len,
		.err_size = p->log[ERR].len, .truncated = p->truncated,
	};
}

void proc_info(struct procs *t, struct proc *p, struct proc_info *out)
{
	pthread_mutex_lock(&t->lock);
	info_locked(p, out);
	pthread_mutex_unlock(&t->lock);
}

/* Appends output. */
static void append_locked(struct proc *p, int which, const char *buf, size_t n)
{
	struct strbuf *log = &p->log[which];
	if (!n)
		return;
	if (p->nsegs && p->segs[p->nsegs - 1].which == which) {
		p->segs[p->nsegs - 1].len += n;
	} else {
		if (p->nsegs == p->segcap) {
			p->segcap = p->segcap ? p->segcap * 2 : 16;
			p->segs = realloc(p->segs, p->segcap * sizeof *p->segs);
			if (!p->segs)
				abort();
		}
		p->segs[p->nsegs++] = (struct seg){ .which = which, .off = log->len, .len = n };
	}
	strbuf_append(log, buf, n);
}

/* Ends the record: from now on its output is complete. */
static void finish_locked(struct proc *p, enum proc_status st, int code)
{
	p->status = st;
	p->exit_code = code;
	clock_gettime(CLOCK_REALTIME, &p->end);
	pthread_cond_broadcast(&p->t->changed);
}

/* The command's group may not exist yet right after the start (the sandbox's init is still
 * setting up): a signal that finds no group while the process lives is retried for a while. */
static int signal_proc(struct proc *p, int sig)
{
	int64_t give_up = mono_ms() + SIGNAL_RETRY_MS;
	for (;;) {
		int err = child_signal(&p->child, sig);
		if (err != -ESRCH || child_reaped(&p->child) || mono_ms() >= give_up)
			return err;
		struct timespec ts = { 0, 10 * 1000000 };
		nanosleep(&ts, NULL);
	}
}

/* ---- the collector ---- */

/* Output, as the pump hands it over (at most LOG_MAX of each stream). */
static bool record_output(void *ctx, enum child_stream which, const char *buf, size_t n)
{
	struct proc *p = ctx;
	pthread_mutex_lock(&p->t->lock);
	append_locked(p, which, buf, n);
	p->truncated |= p->child.truncated[which];
	pthread_cond_broadcast(&p->t->changed);
	pthread_mutex_unlock(&p->t->lock);
	return true;
}

static const struct child_ops record_ops = { .output = record_output };

static const struct child_policy record_policy = {
	.grace_ms = KILL_GRACE_MS,
	.output_max = LOG_MAX,
	.drain_ms = DRAIN_MAX_MS,
};

/* Ends the record with what the process came to. */
static void collect_end_locked(struct proc *p)
{
	const struct child *c = &p->child;
	int code = child_exit_code(c);
	enum proc_status st;
	p->truncated |= c->truncated[OUT] || c->truncated[ERR];
	if (c->timed_out) {
		char msg[64];
		int n = snprintf(msg, sizeof msg, "Command timed out after %dms\n", p->timeout_ms);
		append_locked(p, ERR, msg, (size_t)n);
		code = 124;
		st = PROC_FAILED;
	} else if (p->kill_requested || WIFSIGNALED(c->status) || code == 137 || code == 143) {
		st = PROC_KILLED;
	} else {
		st = code == 0 ? PROC_COMPLETED : PROC_FAILED;
	}
	finish_locked(p, st, code);
}

/* The process's own thread: "finished" is set only once all its output is in. */
static void *collector_main(void *arg)
{
	struct proc *p = arg;
	struct procs *t = p->t;
	child_run(&p->child);
	child_finish(&p->child);
	pthread_mutex_lock(&t->lock);
	collect_end_locked(p);
	t->n_collectors--;
	pthread_cond_broadcast(&t->changed);
	put_locked(p);
	pthread_mutex_unlock(&t->lock);
	return NULL;
}

/* Hands the running process to a collector thread; 0 or a negative errno. */
static int start_collector(struct proc *p)
{
	struct procs *t = p->t;
	pthread_t thread;
	pthread_attr_t a;
	pthread_attr_init(&a);
	pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
	pthread_mutex_lock(&t->lock);
	p->pid = p->child.p.pid;
	p->refs++;
	t->n_collectors++;
	pthread_mutex_unlock(&t->lock);
	int err = pthread_create(&thread, &a, collector_main, p);
	pthread_attr_destroy(&a);
	if (!err)
		return 0;
	pthread_mutex_lock(&t->lock);
	p->refs--;
	t->n_collectors--;
	pthread_mutex_unlock(&t->lock);
	child_signal(&p->child, SIGKILL);
	child_finish(&p->child);
	return -err;
}

/* ---- starting ---- */

/* Is dir a directory inside the sandbox? Asked of the sandbox itself (`test -d`), whose view
 * of paths outside /workspace is not the host's. */
static int probe_dir(const char *dir)
{
	const char *argv[] = { "test", "-d", dir, NULL };
	struct run_spec spec = { .argv = argv, .stdin_null = true };
	struct run_proc rp;
	int status = 0;
	int err = runner_spawn(&spec, &rp);
	if (err)
		return err;
	err = runner_wait(&rp, &status, PROBE_TIMEOUT_MS);
	if (err == -ETIMEDOUT) {
		runner_kill(&rp, SIGKILL);
		runner_wait(&rp, &status, -1);
	}
	runner_close(&rp);
	return err ? err : WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -ENOENT;
}

/* Whether the sandbox has the directory: checked beforehand, so that a bad cwd makes a
 * record with status "error" rather than a failure of the command. 0 or a negative errno;
 * the directory to start in (inside the sandbox) goes to out. */
static int check_cwd(const char *cwd, char *out, size_t outlen)
{
	char rel[WS_PATH_MAX + 1];
	struct stat st;
	int err = ws_normalize(cwd, rel, sizeof rel);
	if (!err) {
		ws_api_path(rel, out, outlen);
		err = ws_stat(out, &st, true);
		if (!err && !S_ISDIR(st.st_mode))
			err = -ENOTDIR;
	} else if (err == -EACCES && cwd[0] == '/') {
		snprintf(out, outlen, "%s", cwd);
		err = probe_dir(cwd);
	}
	return err;
}

/* Starts the record's command in dir (NULL: the default) and session s (NULL: none; loading
 * its cwd and exported environment, as a command of the session would, without saving
 * anything back); 0 or a negative errno. */
static int spawn_command(struct proc *p, const char *dir, char *const *req_env,
			 struct session *s)
{
	const char *argv[] = { "bash", "-c", p->command, NULL };
	struct session_launch l = { 0 };
	char **env = NULL;
	struct run_spec spec = { .argv = argv, .cwd = dir, .stdin_null = true };
	if (s) {
		/* the store's variables and the request's go over the session's state */
		char **overlay = envstore_overlay((const char *const *)req_env);
		session_launch(s, p->command, dir, overlay, false, &l);
		strv_free(overlay);
		spec = (struct run_spec){ .argv = (const char *const *)l.argv,
					  .env = (const char *const *)l.env,
					  .stdin_null = !l.command_on_stdin };
	} else {
		env = envstore_build((const char *const *)req_env);
		spec.env = (const char *const *)env;
	}
	struct child_policy policy = record_policy;
	policy.timeout_ms = p->timeout_ms;
	int err = child_start(&p->child, &spec, &policy, &record_ops, p);
	/* a command too long for the environment goes to the session wrapper's stdin */
	if (!err && l.command_on_stdin)
		child_feed(&p->child, p->command, strlen(p->command));
	session_launch_free(&l);
	strv_free(env);
	return err;
}

/* Starts the record's command and hands it to a collector; or ends the record as "error" with
 * the reason in its stderr. */
static void launch(struct proc *p, const char *cwd, char *const *req_env, struct session *s)
{
	char dir[WS_PATH_MAX + 64];
	char why[WS_PATH_MAX + 256];
	int code = 127;
	int err = cwd ? check_cwd(cwd, dir, sizeof dir) : 0;
	if (err) {
		snprintf(why, sizeof why, "Failed to change directory to '%s': %s\n", cwd,
			 strerror(-err));
		code = 1;
	} else if ((err = spawn_command(p, cwd ? dir : NULL, req_env, s))) {
		if (err == -ENOTSUP && runner_unavailable())
			snprintf(why, sizeof why, "cannot run commands: %s\n", runner_unavailable());
		else
			snprintf(why, sizeof why, "cannot start the command: %s\n", strerror(-err));
	} else if ((err = start_collector(p))) {
		snprintf(why, sizeof why, "cannot collect the output: %s\n", strerror(-err));
	}
	if (!err)
		return;
	pthread_mutex_lock(&p->t->lock);
	append_locked(p, ERR, why, strlen(why));
	finish_locked(p, PROC_ERROR, code);
	pthread_mutex_unlock(&p->t->lock);
}

static struct proc *new_record(struct procs *t, const struct proc_spec *spec)
{
	struct proc *p = calloc(1, sizeof *p);
	if (!p)
		abort();
	p->t = t;
	p->id = spec->id ? strdup(spec->id) : new_id();
	p->command = strdup(spec->command);
	if (!p->id || !p->command)
		abort();
	if (spec->session) {
		if (!(p->session_id = strdup(spec->session_id)))
			abort();
		p->session_serial = session_serial(spec->session);
	}
	p->refs = 1; /* the caller's */
	p->timeout_ms = spec->timeout_ms;
	p->pid = -1;
	child_init(&p->child);
	clock_gettime(CLOCK_REALTIME, &p->start);
	return p;
}

/* Puts p in the table unless its id is taken by a running record or the table is full;
 * 0 or a negative errno. */
static int insert(struct procs *t, struct proc *p)
{
	pthread_mutex_lock(&t->lock);
	struct proc *old = find_locked(t, p->id);
	int err = t->shutting_down ? -ESHUTDOWN
		  : old && old->status == PROC_RUNNING ? -EEXIST
		  : t->n_records - (old != NULL) >= PROCS_MAX ? -ENOSPC : 0;
	if (!err) {
		if (old) {
			/* a finished record of that id is replaced, as in the container */
			unlink_locked(t, old);
			put_locked(old);
		}
		p->next = t->table;
		t->table = p;
		p->in_table = true;
		p->refs++;
		t->n_records++;
	}
	pthread_mutex_unlock(&t->lock);
	return err;
}

int procs_start(struct procs *t, const struct proc_spec *spec, struct proc **out)
{
	struct proc *p = new_record(t, spec);
	/* the id is taken before the command starts, so a concurrent duplicate sees it */
	int err = insert(t, p);
	if (err) {
		proc_put(t, p);
		return err;
	}
	launch(p, spec->cwd, spec->env, spec->session);
	*out = p;
	return 0;
}

/* ---- reading ---- */

struct proc **procs_list(struct procs *t, size_t *n)
{
	pthread_mutex_lock(&t->lock);
	struct proc **v = calloc(t->n_records + 1, sizeof *v);
	if (!v)
		abort();
	*n = 0;
	/* running ones first, then finished ones, each oldest first (the table is newest first) */
	for (int finished = 0; finished < 2; finished++) {
		size_t from = *n;
		for (struct proc *p = t->table; p; p = p->next)
			if ((p->status != PROC_RUNNING) == finished) {
				p->refs++;
				v[(*n)++] = p;
			}
		for (size_t i = from, j = *n; i + 1 < j; i++, j--) {
			struct proc *x = v[i];
			v[i] = v[j - 1];
			v[j - 1] = x;
		}
	}
	pthread_mutex_unlock(&t->lock);
	return v;
}

void procs_list_put(struct procs *t, struct proc **v, size_t n)
{
	pthread_mutex_lock(&t->lock);
	for (size_t i = 0; i < n; i++)
		put_locked(v[i]);
	pthread_mutex_unlock(&t->lock);
	free(v);
}

void proc_logs(struct procs *t, struct proc *p, size_t from, struct strbuf *out,
	       struct strbuf *err, struct proc_info *info)
{
	pthread_mutex_lock(&t->lock);
	if (from < p->log[OUT].len)
		strbuf_append(out, p->log[OUT].data + from, p->log[OUT].len - from);
	if (from < p->log[ERR].len)
		strbuf_append(err, p->log[ERR].data + from, p->log[ERR].len - from);
	info_locked(p, info);
	pthread_mutex_unlock(&t->lock);
}

/* Hands over what is new; the number of bytes. */
static size_t follow_locked(struct proc *p, struct proc_cursor *c, size_t piece, size_t max,
			    proc_emit_fn *emit, void *ctx)
{
	size_t sent = 0;
	while (c->seg < p->nsegs && sent < max) {
		const struct seg *g = &p->segs[c->seg];
		size_t n = g->len - c->segoff;
		if (n > piece)
			n = piece;
		if (n) {
			emit(ctx, g->which, p->log[g->which].data + g->off + c->segoff, n);
			c->segoff += n;
			sent += n;
		}
		if (c->segoff < g->len || c->seg + 1 == p->nsegs)
			break; /* more of it, or the last segment, which may still grow */
		c->seg++;
		c->segoff = 0;
	}
	return sent;
}

static bool caught_up(const struct proc *p, const struct proc_cursor *c)
{
	return p->nsegs == 0 || (c->seg + 1 >= p->nsegs && c->segoff == p->segs[c->seg].len);
}

int proc_follow(struct procs *t, struct proc *p, struct proc_cursor *cursor, size_t piece,
		size_t max, int64_t deadline, proc_emit_fn *emit, void *ctx,
		struct proc_info *info)
{
	int rc = 1;
	pthread_mutex_lock(&t->lock);
	for (;;) {
		/* the status is read before the output: a finished record's output is complete */
		bool finished = p->status != PROC_RUNNING;
		if (follow_locked(p, cursor, piece, max, emit, ctx))
			break;
		if (finished && caught_up(p, cursor)) {
			rc = 0;
			break;
		}
		if (!mono_cond_wait_until(&t->changed, &t->lock, deadline))
			break;
	}
	info_locked(p, info);
	pthread_mutex_unlock(&t->lock);
	return rc;
}

/* ---- signals ---- */

/* Waits (lock held) until none of v runs, or deadline. */
static void wait_ended_locked(struct procs *t, struct proc **v, size_t n, int64_t deadline)
{
	for (size_t i = 0; i < n; i++)
		while (v[i]->status == PROC_RUNNING && mono_cond_wait_until(&t->changed, &t->lock,
									    deadline))
			;
}

/* Sends sig to each running record of v (referenced); TERM is followed by KILL for those
 * still running KILL_GRACE_MS later, and then waits (bounded) for them to end. The number
 * of records signalled. */
static int kill_records(struct procs *t, struct proc **v, size_t n, int sig)
{
	int done = 0;
	for (size_t i = 0; i < n; i++) {
		pthread_mutex_lock(&t->lock);
		bool running = v[i]->status == PROC_RUNNING;
		if (running && terminating(sig))
			v[i]->kill_requested = true;
		pthread_mutex_unlock(&t->lock);
		if (running && signal_proc(v[i], sig) == 0)
			done++;
	}
	if (sig != SIGTERM)
		return done;
	pthread_mutex_lock(&t->lock);
	wait_ended_locked(t, v, n, mono_ms() + KILL_GRACE_MS);
	pthread_mutex_unlock(&t->lock);
	for (size_t i = 0; i < n; i++)
		signal_proc(v[i], SIGKILL); /* no-op for those that ended */
	pthread_mutex_lock(&t->lock);
	wait_ended_locked(t, v, n, mono_ms() + KILL_GRACE_MS);
	pthread_mutex_unlock(&t->lock);
	return done;
}

int proc_kill(struct procs *t, struct proc *p, int sig)
{
	return kill_records(t, &p, 1, sig) ? 0 : -ESRCH;
}

/* The running records (of the session with this serial, when it is not 0), referenced. */
static struct proc **running_records(struct procs *t, unsigned long serial, size_t *n)
{
	pthread_mutex_lock(&t->lock);
	struct proc **v = calloc(t->n_records + 1, sizeof *v);
	if (!v)
		abort();
	*n = 0;
	for (struct proc *p = t->table; p; p = p->next)
		if (p->status == PROC_RUNNING &&
		    (!serial || (p->session_id && p->session_serial == serial))) {
			p->refs++;
			v[(*n)++] = p;
		}
	pthread_mutex_unlock(&t->lock);
	return v;
}

int procs_kill_all(struct procs *t, int sig)
{
	size_t n;
	struct proc **v = running_records(t, 0, &n);
	int done = kill_records(t, v, n, sig);
	procs_list_put(t, v, n);
	return done;
}

int procs_remove(struct procs *t, const char *id)
{
	pthread_mutex_lock(&t->lock);
	struct proc *p = find_locked(t, id);
	int err = !p ? -ENOENT : p->status == PROC_RUNNING ? -EBUSY : 0;
	if (!err) {
		unlink_locked(t, p);
		put_locked(p); /* the table's reference */
	}
	pthread_mutex_unlock(&t->lock);
	return err;
}

int procs_state(struct procs *t, const char *id, bool *running, int *exit_code)
{
	pthread_mutex_lock(&t->lock);
	struct proc *p = find_locked(t, id);
	if (p) {
		*running = p->status == PROC_RUNNING;
		*exit_code = p->exit_code;
	}
	pthread_mutex_unlock(&t->lock);
	return p ? 0 : -ENOENT;
}

void procs_stop_session(struct procs *t, unsigned long serial)
{
	size_t n;
	struct proc **v = running_records(t, serial, &n);
	if (n)
		log_info("stopping %zu process%s of a deleted session", n, n == 1 ? "" : "es");
	kill_records(t, v, n, SIGKILL);
	/* KILL cannot be ignored: the collectors see the exits at once */
	pthread_mutex_lock(&t->lock);
	wait_ended_locked(t, v, n, mono_ms() + KILL_GRACE_MS);
	pthread_mutex_unlock(&t->lock);
	procs_list_put(t, v, n);
}

/* ---- the table ---- */

struct procs *procs_new(void)
{
	struct procs *t = calloc(1, sizeof *t);
	if (!t)
		abort();
	pthread_mutex_init(&t->lock, NULL);
	mono_cond_init(&t->changed);
	return t;
}

void procs_free(struct procs *t)
{
	if (!t)
		return;
	pthread_mutex_lock(&t->lock);
	t->shutting_down = true;
	pthread_mutex_unlock(&t->lock);
	size_t n;
	struct proc **v = running_records(t, 0, &n);
	if (n)
		log_info("stopping %zu background process%s", n, n == 1 ? "" : "es");
	kill_records(t, v, n, SIGTERM);
	procs_list_put(t, v, n);

	/* the collectors end within DRAIN_MAX_MS of the KILL; bounded all the same */
	int64_t deadline = mono_ms() + 2 * DRAIN_MAX_MS + 1000;
	pthread_mutex_lock(&t->lock);
	while (t->n_collectors > 0 && mono_cond_wait_until(&t->changed, &t->lock, deadline))
		;
	int left = t->n_collectors;
	while (t->table) {
		struct proc *p = t->table;
		unlink_locked(t, p);
		put_locked(p);
	}
	pthread_mutex_unlock(&t->lock);
	if (left > 0) {
		/* their records (and so the table) stay theirs: freeing it would pull it away */
		log_warn("processes: %d collector%s did not end", left, left == 1 ? "" : "s");
		return;
	}
	pthread_cond_destroy(&t->changed);
	pthread_mutex_destroy(&t->lock);
	free(t);
}
