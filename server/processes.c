/* Background processes: POST /api/process/start and the routes that watch, signal and remove
 * them.
 *
 * A record (struct proc) lives in one table, in memory only, until POST /api/x/process/remove
 * takes it out or sbxd stops. Each running process has a collector thread that runs it under
 * the pump (server/child.h): what the process writes is appended to the record, and when the
 * leader has exited what is left of its group is killed (a process tree dies with its leader,
 * as with the pid namespace the runner gives each spawn), the leader is reaped, what the pipes
 * still hold is read (at most DRAIN_MAX_MS more) and only then is the record marked finished.
 * So "finished" always means "all output is in": a reader that sees a final status has the
 * whole log.
 *
 * Output is kept as two byte logs (offsets into them are what /logs?offset= takes) plus a
 * list of segments saying which log each successive piece came from; the stream replays and
 * follows the segments, so stdout and stderr stay in the order sbxd read them. That order is
 * the order of writing except for writes to both pipes closer together than one turn of the
 * pump's rounds (two pipes carry no common clock). Each log keeps at most LOG_MAX bytes (the
 * pump's bound); beyond that the output is read and dropped, and the record says
 * "outputTruncated".
 *
 * Locking: table_lock guards the table and every record's fields, and records_changed is
 * broadcast whenever output arrives or a process ends (streams and killers wait on it). The
 * pump orders signals against the reap, so a kill can never reach a recycled pid. Records are reference-counted (table, collector, each request or
 * stream that holds one), so a removed record stays valid for a stream still reading it. */
#include "server/processes.h"
#include "server/child.h"
#include "server/envstore.h"
#include "server/routes.h"
#include "server/runner.h"
#include "server/sessions.h"
#include "server/utf8.h"
#include "server/workspace.h"
#include "common/clock.h"
#include "common/jsonutil.h"
#include "common/log.h"
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_PROCS 1024
#define ID_MAX 128
#define LOG_MAX ((size_t)64 << 20)  /* per stream and record */
#define KILL_GRACE_MS 5000          /* TERM, then KILL this much later (as the container) */
#define DRAIN_MAX_MS 1000           /* after the exit: reading what the pipes still hold */
#define EVENT_BYTES 65536           /* output per stream event */
#define STREAM_ROUND_BYTES (1024 * 1024)
#define PROBE_TIMEOUT_MS 10000
#define SIGNAL_RETRY_MS 2000

enum { OUT, ERR };
enum pstatus { P_RUNNING, P_COMPLETED, P_FAILED, P_KILLED, P_ERROR };
static const char *const status_names[] = { "running", "completed", "failed", "killed", "error" };

struct seg {
	int which;
	size_t off, len;
};

struct proc {
	struct proc *next;
	int refs;
	bool in_table;
	char *id, *command;
	char *session_id;            /* the session it was started in, or NULL */
	unsigned long session_serial;
	enum pstatus status;
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

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t records_changed = PTHREAD_COND_INITIALIZER;
static struct proc *table;
static size_t n_records;
static int n_collectors;
static bool shutting_down;

/* ---- helpers ---- */

static const char *iso_time(const struct timespec *t, char buf[32])
{
	struct tm tm;
	gmtime_r(&t->tv_sec, &tm);
	size_t n = strftime(buf, 32, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf + n, 32 - n, ".%03ldZ", t->tv_nsec / 1000000);
	return buf;
}

/* Waits on records_changed (table_lock held) until deadline (monotonic ms). */
static void wait_change_until(int64_t deadline)
{
	int64_t left = deadline - mono_ms();
	if (left <= 0)
		return;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += left / 1000;
	ts.tv_nsec += (left % 1000) * 1000000;
	if (ts.tv_nsec >= 1000000000) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000;
	}
	pthread_cond_timedwait(&records_changed, &table_lock, &ts);
}

/* "TERM", "SIGTERM", "term" or "15"; 0 when it names no signal. */
static int parse_signal(const char *s)
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

/* An id the client may choose: it names a directory in sbxfs and a URL segment. */
static bool valid_id(const char *id)
{
	size_t n = strlen(id);
	if (n == 0 || n > ID_MAX || id[0] == '.' || strcmp(id, "list") == 0 ||
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

/* ---- records ---- */

static struct proc *find_locked(const char *id)
{
	for (struct proc *p = table; p; p = p->next)
		if (strcmp(p->id, id) == 0)
			return p;
	return NULL;
}

static void unlink_locked(struct proc *p)
{
	for (struct proc **pp = &table; *pp; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			p->in_table = false;
			n_records--;
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

static void proc_put(struct proc *p)
{
	pthread_mutex_lock(&table_lock);
	put_locked(p);
	pthread_mutex_unlock(&table_lock);
}

/* The record with this id, referenced; NULL after answering 404. */
static struct proc *proc_get(struct req *r, const char *id)
{
	pthread_mutex_lock(&table_lock);
	struct proc *p = id ? find_locked(id) : NULL;
	if (p)
		p->refs++;
	pthread_mutex_unlock(&table_lock);
	if (!p) {
		cJSON *ctx = cJSON_CreateObject();
		cJSON_AddStringToObject(ctx, "processId", id ? id : "");
		reply_error(r, 404, "PROCESS_NOT_FOUND", ENOENT, ctx, "Process %s not found",
			    id ? id : "");
	}
	return p;
}

/* Appends output (table_lock held). */
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

/* Ends the record (table_lock held): from now on its output is complete. */
static void finish_locked(struct proc *p, enum pstatus st, int code)
{
	p->status = st;
	p->exit_code = code;
	clock_gettime(CLOCK_REALTIME, &p->end);
	pthread_cond_broadcast(&records_changed);
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
	pthread_mutex_lock(&table_lock);
	append_locked(p, which, buf, n);
	p->truncated |= p->child.truncated[which];
	pthread_cond_broadcast(&records_changed);
	pthread_mutex_unlock(&table_lock);
	return true;
}

static const struct child_ops record_ops = { .output = record_output };

static const struct child_policy record_policy = {
	.grace_ms = KILL_GRACE_MS,
	.output_max = LOG_MAX,
	.drain_ms = DRAIN_MAX_MS,
};

/* Ends the record with what the process came to (table_lock held). */
static void collect_end_locked(struct proc *p)
{
	const struct child *c = &p->child;
	int code = child_exit_code(c);
	enum pstatus st;
	p->truncated |= c->truncated[OUT] || c->truncated[ERR];
	if (c->timed_out) {
		char msg[64];
		int n = snprintf(msg, sizeof msg, "Command timed out after %dms\n", p->timeout_ms);
		append_locked(p, ERR, msg, (size_t)n);
		code = 124;
		st = P_FAILED;
	} else if (p->kill_requested || WIFSIGNALED(c->status) || code == 137 || code == 143) {
		st = P_KILLED;
	} else {
		st = code == 0 ? P_COMPLETED : P_FAILED;
	}
	finish_locked(p, st, code);
}

/* The process's own thread: "finished" is set only once all its output is in. */
static void *collector_main(void *arg)
{
	struct proc *p = arg;
	child_run(&p->child);
	child_finish(&p->child);
	pthread_mutex_lock(&table_lock);
	collect_end_locked(p);
	n_collectors--;
	pthread_cond_broadcast(&records_changed);
	put_locked(p);
	pthread_mutex_unlock(&table_lock);
	return NULL;
}

/* ---- POST /api/process/start ---- */

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

/* Spawns the record's command (in session s, when not NULL: loading its cwd and exported
 * environment, as a command of the session would, without saving anything back) and hands
 * it to a collector; or ends the record as "error" with the reason in its stderr. */
static void launch(struct proc *p, const char *cwd, char *const *req_env, struct session *s)
{
	char dir[WS_PATH_MAX + 64];
	char why[WS_PATH_MAX + 256];
	int code = 127;
	int err = 0;

	why[0] = '\0';
	if (cwd) {
		err = check_cwd(cwd, dir, sizeof dir);
		if (err) {
			snprintf(why, sizeof why, "Failed to change directory to '%s': %s\n", cwd,
				 strerror(-err));
			code = 1;
		}
	}
	if (!err) {
		const char *argv[] = { "bash", "-c", p->command, NULL };
		struct session_launch l = { 0 };
		char **env = NULL;
		struct run_spec spec = { .argv = argv, .cwd = cwd ? dir : NULL, .stdin_null = true };
		if (s) {
			/* the store's variables and the request's go over the session's state */
			char **overlay = envstore_overlay((const char *const *)req_env);
			session_launch(s, p->command, cwd ? dir : NULL, overlay, false, &l);
			envstore_free(overlay);
			spec = (struct run_spec){ .argv = (const char *const *)l.argv,
						  .env = (const char *const *)l.env,
						  .stdin_null = !l.command_on_stdin };
		} else {
			env = envstore_build((const char *const *)req_env);
			spec.env = (const char *const *)env;
		}
		struct child_policy policy = record_policy;
		policy.timeout_ms = p->timeout_ms;
		err = child_start(&p->child, &spec, &policy, &record_ops, p);
		/* a command too long for the environment goes to the session wrapper's stdin */
		if (!err && l.command_on_stdin)
			child_feed(&p->child, p->command, strlen(p->command));
		session_launch_free(&l);
		envstore_free(env);
		if (err == -ENOTSUP && runner_unavailable())
			snprintf(why, sizeof why, "cannot run commands: %s\n", runner_unavailable());
		else if (err)
			snprintf(why, sizeof why, "cannot start the command: %s\n", strerror(-err));
	}
	if (!err) {
		pthread_t t;
		pthread_mutex_lock(&table_lock);
		p->pid = p->child.p.pid;
		pthread_mutex_unlock(&table_lock);
		pthread_attr_t a;
		pthread_attr_init(&a);
		pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
		pthread_mutex_lock(&table_lock);
		p->refs++;
		n_collectors++;
		pthread_mutex_unlock(&table_lock);
		err = -pthread_create(&t, &a, collector_main, p);
		pthread_attr_destroy(&a);
		if (!err)
			return;
		pthread_mutex_lock(&table_lock);
		p->refs--;
		n_collectors--;
		pthread_mutex_unlock(&table_lock);
		child_signal(&p->child, SIGKILL);
		child_finish(&p->child);
		snprintf(why, sizeof why, "cannot collect the output: %s\n", strerror(-err));
	}
	pthread_mutex_lock(&table_lock);
	append_locked(p, ERR, why, strlen(why));
	finish_locked(p, P_ERROR, code);
	pthread_mutex_unlock(&table_lock);
}

void route_process_start(struct req *r)
{
	cJSON *body = req_json(r);
	const cJSON *cmd = cJSON_GetObjectItemCaseSensitive(body, "command");
	const cJSON *cwd = cJSON_GetObjectItemCaseSensitive(body, "cwd");
	const cJSON *tmo = cJSON_GetObjectItemCaseSensitive(body, "timeoutMs");
	const cJSON *pid = cJSON_GetObjectItemCaseSensitive(body, "processId");
	int timeout_ms = 0;

	if (!cJSON_IsString(cmd) ||
	    strspn(cmd->valuestring, " \t\r\n\v\f") == strlen(cmd->valuestring))
		return reply_error(r, 400, "INVALID_COMMAND", EINVAL, NULL,
				   "Invalid command: empty command provided");
	if (cwd && !cJSON_IsNull(cwd) && !cJSON_IsString(cwd))
		return reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
				   "cwd must be a string");
	if (tmo && !cJSON_IsNull(tmo)) {
		if (!cJSON_IsNumber(tmo) || tmo->valuedouble < 0 || tmo->valuedouble > INT_MAX)
			return reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
					   "timeoutMs must be a number of milliseconds");
		timeout_ms = (int)tmo->valuedouble;
	}
	if (pid && !cJSON_IsNull(pid) && !(cJSON_IsString(pid) && valid_id(pid->valuestring)))
		return reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
				   "processId must be 1 to %d letters, digits or _-.:@+ (not "
				   "starting with '.', not 'list' or 'kill-all')", ID_MAX);
	bool session_given;
	const char *session_id = session_id_of_body(r, &session_given);
	if (!session_id)
		return;
	char **req_env = session_env_from_json(r, cJSON_GetObjectItemCaseSensitive(body, "env"));
	if (!req_env)
		return;
	/* In a session (named in the body, as the container has it), the process starts from
	 * the session's state; like the container's background commands it takes the session
	 * only to start, after the session's running command, for as long as its client waits. */
	struct session *s = NULL;
	if (strcmp(session_id, SESSION_NONE) != 0) {
		int err = session_acquire(session_id, NULL, -1, req_client_fd(r), &s);
		if (err) {
			session_free_env(req_env);
			if (err == -ECONNABORTED)
				return reply_error(r, 499, "CLIENT_CLOSED_REQUEST", ECANCELED, NULL,
						   "the client hung up; the process was not "
						   "started");
			return reply_error(r, 500, "INTERNAL_ERROR", -err, NULL, "session '%s': %s",
					   session_id, err == -ENOSPC ? "too many sessions"
								 : strerror(-err));
		}
	}

	struct proc *p = calloc(1, sizeof *p);
	if (!p)
		abort();
	p->id = cJSON_IsString(pid) ? strdup(pid->valuestring) : new_id();
	p->command = strdup(cmd->valuestring);
	if (!p->id || !p->command)
		abort();
	if (s) {
		p->session_id = strdup(session_id);
		if (!p->session_id)
			abort();
		p->session_serial = session_serial(s);
	}
	p->refs = 1; /* ours, until the answer */
	p->timeout_ms = timeout_ms;
	p->pid = -1;
	child_init(&p->child);
	clock_gettime(CLOCK_REALTIME, &p->start);

	/* the id is taken before the command starts, so a concurrent duplicate sees it */
	pthread_mutex_lock(&table_lock);
	struct proc *old = find_locked(p->id);
	int busy = shutting_down ? ESHUTDOWN
		   : old && old->status == P_RUNNING ? EEXIST
		   : n_records - (old != NULL) >= MAX_PROCS ? ENOSPC : 0;
	if (!busy) {
		if (old) {
			/* a finished record of that id is replaced, as in the container */
			unlink_locked(old);
			put_locked(old);
		}
		p->next = table;
		table = p;
		p->in_table = true;
		p->refs++;
		n_records++;
	}
	pthread_mutex_unlock(&table_lock);
	if (busy) {
		cJSON *ctx = cJSON_CreateObject();
		cJSON_AddStringToObject(ctx, "processId", p->id);
		if (busy == EEXIST)
			reply_error(r, 409, "PROCESS_ALREADY_EXISTS", EEXIST, ctx,
				    "Process %s already exists and is running", p->id);
		else if (busy == ENOSPC)
			reply_error(r, 500, "PROCESS_ERROR", ENOSPC, ctx,
				    "too many process records (%d): remove finished ones",
				    MAX_PROCS);
		else
			reply_error(r, 503, "PROCESS_ERROR", ESHUTDOWN, ctx, "sbxd is stopping");
		session_free_env(req_env);
		if (s)
			session_release(s);
		proc_put(p);
		return;
	}
	launch(p, cJSON_IsString(cwd) && *cwd->valuestring ? cwd->valuestring : NULL, req_env, s);
	if (s)
		session_release(s);
	session_free_env(req_env);

	cJSON *out = cJSON_CreateObject();
	cJSON_AddStringToObject(out, "processId", p->id);
	pthread_mutex_lock(&table_lock);
	if (p->pid > 0)
		cJSON_AddNumberToObject(out, "pid", p->pid);
	pthread_mutex_unlock(&table_lock);
	cJSON_AddStringToObject(out, "command", p->command);
	proc_put(p);
	reply_ok(r, out);
}

/* ---- reading records ---- */

/* The record as the API shows it (table_lock held). */
static cJSON *record_json(const struct proc *p)
{
	char ts[32];
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "id", p->id);
	if (p->pid > 0)
		cJSON_AddNumberToObject(o, "pid", p->pid);
	cJSON_AddStringToObject(o, "command", p->command);
	cJSON_AddStringToObject(o, "status", status_names[p->status]);
	if (p->session_id)
		cJSON_AddStringToObject(o, "sessionId", p->session_id);
	cJSON_AddStringToObject(o, "startTime", iso_time(&p->start, ts));
	if (p->status != P_RUNNING) {
		cJSON_AddStringToObject(o, "endTime", iso_time(&p->end, ts));
		cJSON_AddNumberToObject(o, "exitCode", p->exit_code);
	}
	json_add_int(o, "stdoutSize", (int64_t)p->log[OUT].len);
	json_add_int(o, "stderrSize", (int64_t)p->log[ERR].len);
	if (p->truncated)
		cJSON_AddTrueToObject(o, "outputTruncated");
	return o;
}

void route_process_list(struct req *r)
{
	const char *want = req_query(r, "status");
	cJSON *list = cJSON_CreateArray();
	pthread_mutex_lock(&table_lock);
	/* running ones first, then finished ones, each oldest first (the table is newest first) */
	for (int finished = 0; finished < 2; finished++) {
		size_t n = 0;
		for (struct proc *p = table; p; p = p->next)
			n++;
		struct proc **v = calloc(n + 1, sizeof *v);
		if (!v)
			abort();
		n = 0;
		for (struct proc *p = table; p; p = p->next)
			if ((p->status != P_RUNNING) == finished &&
			    (!want || strcmp(want, status_names[p->status]) == 0))
				v[n++] = p;
		while (n)
			cJSON_AddItemToArray(list, record_json(v[--n]));
		free(v);
	}
	pthread_mutex_unlock(&table_lock);
	cJSON *out = cJSON_CreateObject();
	cJSON_AddItemToObject(out, "processes", list);
	reply_ok(r, out);
}

void route_process_get(struct req *r)
{
	struct proc *p = proc_get(r, req_path_arg(r));
	if (!p)
		return;
	cJSON *out = cJSON_CreateObject();
	pthread_mutex_lock(&table_lock);
	cJSON_AddItemToObject(out, "process", record_json(p));
	put_locked(p);
	pthread_mutex_unlock(&table_lock);
	reply_ok(r, out);
}

static void add_text(cJSON *o, const char *key, const struct strbuf *log, size_t from)
{
	struct strbuf text = STRBUF_INIT;
	if (from < log->len)
		utf8_sanitize(&text, log->data + from, log->len - from, true);
	cJSON_AddStringToObject(o, key, text.len ? text.data : "");
	strbuf_free(&text);
}

void route_process_logs(struct req *r)
{
	const char *off = req_query(r, "offset");
	uint64_t from = 0;
	if (off) {
		char *end;
		errno = 0;
		from = strtoull(off, &end, 10);
		if (!*off || *end || errno || *off == '-')
			return reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
					   "offset must be a number of bytes");
	}
	struct proc *p = proc_get(r, req_path_arg(r));
	if (!p)
		return;
	cJSON *out = cJSON_CreateObject();
	cJSON_AddStringToObject(out, "processId", p->id);
	pthread_mutex_lock(&table_lock);
	add_text(out, "stdout", &p->log[OUT], from);
	add_text(out, "stderr", &p->log[ERR], from);
	json_add_int(out, "stdoutSize", (int64_t)p->log[OUT].len);
	json_add_int(out, "stderrSize", (int64_t)p->log[ERR].len);
	if (p->truncated)
		cJSON_AddTrueToObject(out, "outputTruncated");
	put_locked(p);
	pthread_mutex_unlock(&table_lock);
	reply_ok(r, out);
}

/* ---- GET /api/process/{id}/stream ---- */

struct pstream {
	struct proc *p;
	size_t seg, segoff;       /* the next byte to send */
	struct strbuf carry[2];   /* an incomplete UTF-8 character from the last event */
	bool info_sent;
};

static void output_event(struct strbuf *out, const struct proc *p, int which, const char *text)
{
	char ts[32];
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	cJSON *ev = cJSON_CreateObject();
	cJSON_AddStringToObject(ev, "type", which == OUT ? "stdout" : "stderr");
	cJSON_AddStringToObject(ev, "data", text);
	cJSON_AddStringToObject(ev, "processId", p->id);
	cJSON_AddStringToObject(ev, "timestamp", iso_time(&now, ts));
	sse_append(out, ev);
	cJSON_Delete(ev);
}

/* One event for bytes of one stream, keeping characters whole across events. */
static void stream_bytes(struct pstream *s, struct strbuf *out, int which, const char *buf,
			 size_t n, bool final)
{
	struct strbuf *carry = &s->carry[which];
	struct strbuf text = STRBUF_INIT;
	strbuf_append(carry, buf, n);
	size_t used = utf8_sanitize(&text, carry->len ? carry->data : "", carry->len, final);
	strbuf_consume(carry, used);
	if (text.len)
		output_event(out, s->p, which, text.data);
	strbuf_free(&text);
}

/* Sends what is new (table_lock held); the number of bytes sent. */
static size_t stream_pending(struct pstream *s, struct strbuf *out)
{
	struct proc *p = s->p;
	size_t sent = 0;
	while (s->seg < p->nsegs && sent < STREAM_ROUND_BYTES) {
		const struct seg *g = &p->segs[s->seg];
		size_t n = g->len - s->segoff;
		if (n > EVENT_BYTES)
			n = EVENT_BYTES;
		if (n) {
			stream_bytes(s, out, g->which, p->log[g->which].data + g->off + s->segoff, n,
				     false);
			s->segoff += n;
			sent += n;
		}
		if (s->segoff < g->len || s->seg + 1 == p->nsegs)
			break; /* more of it, or the last segment, which may still grow */
		s->seg++;
		s->segoff = 0;
	}
	return sent;
}

static bool stream_caught_up(const struct pstream *s)
{
	const struct proc *p = s->p;
	return p->nsegs == 0 || (s->seg + 1 >= p->nsegs && s->segoff == p->segs[s->seg].len);
}

static int stream_next(void *ctx, struct strbuf *out, int timeout_ms)
{
	struct pstream *s = ctx;
	struct proc *p = s->p;
	char ts[32];
	struct timespec now;
	int64_t deadline = mono_ms() + (timeout_ms > 0 ? timeout_ms : 0);
	int rc = 1;

	pthread_mutex_lock(&table_lock);
	if (!s->info_sent) {
		clock_gettime(CLOCK_REALTIME, &now);
		cJSON *ev = cJSON_CreateObject();
		cJSON_AddStringToObject(ev, "type", "process_info");
		cJSON_AddStringToObject(ev, "processId", p->id);
		cJSON_AddStringToObject(ev, "command", p->command);
		cJSON_AddStringToObject(ev, "status", status_names[p->status]);
		cJSON_AddStringToObject(ev, "timestamp", iso_time(&now, ts));
		sse_append(out, ev);
		cJSON_Delete(ev);
		s->info_sent = true;
	}
	for (;;) {
		/* the status is read before the output: a finished record's output is complete */
		bool finished = p->status != P_RUNNING;
		if (stream_pending(s, out))
			break;
		if (finished && stream_caught_up(s)) {
			for (int w = OUT; w <= ERR; w++)
				if (s->carry[w].len)
					stream_bytes(s, out, w, "", 0, true);
			clock_gettime(CLOCK_REALTIME, &now);
			cJSON *ev = cJSON_CreateObject();
			char msg[64];
			snprintf(msg, sizeof msg, "Process %s with exit code %d",
				 status_names[p->status], p->exit_code);
			cJSON_AddStringToObject(ev, "type", "exit");
			cJSON_AddStringToObject(ev, "processId", p->id);
			cJSON_AddNumberToObject(ev, "exitCode", p->exit_code);
			cJSON_AddStringToObject(ev, "data", msg);
			cJSON_AddStringToObject(ev, "timestamp", iso_time(&now, ts));
			sse_append(out, ev);
			cJSON_Delete(ev);
			rc = 0;
			break;
		}
		if (out->len || mono_ms() >= deadline)
			break;
		wait_change_until(deadline);
	}
	pthread_mutex_unlock(&table_lock);
	return rc;
}

static void stream_release(void *ctx)
{
	struct pstream *s = ctx;
	proc_put(s->p);
	strbuf_free(&s->carry[OUT]);
	strbuf_free(&s->carry[ERR]);
	free(s);
}

void route_process_stream(struct req *r)
{
	struct proc *p = proc_get(r, req_path_arg(r));
	if (!p)
		return;
	struct pstream *s = calloc(1, sizeof *s);
	if (!s)
		abort();
	s->p = p;
	reply_sse(r, (struct sse_source){ .next = stream_next, .release = stream_release,
					  .ctx = s });
}

/* ---- signals ---- */

/* The ?signal= of a kill route (default TERM); 0 after answering 400. */
static int signal_of_request(struct req *r)
{
	const char *name = req_query(r, "signal");
	if (!name)
		return SIGTERM;
	int sig = parse_signal(name);
	if (!sig)
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
			    "unknown signal '%s' (a name such as TERM, INT, KILL, or a number)",
			    name);
	return sig;
}

/* Sends sig to each running record of v (referenced); TERM is followed by KILL for those
 * still running KILL_GRACE_MS later, and then waits (bounded) for them to end. The number
 * of records signalled. */
static int kill_records(struct proc **v, size_t n, int sig)
{
	int done = 0;
	for (size_t i = 0; i < n; i++) {
		pthread_mutex_lock(&table_lock);
		bool running = v[i]->status == P_RUNNING;
		if (running && terminating(sig))
			v[i]->kill_requested = true;
		pthread_mutex_unlock(&table_lock);
		if (running && signal_proc(v[i], sig) == 0)
			done++;
	}
	if (sig != SIGTERM)
		return done;
	for (int round = 0; round < 2; round++) {
		int64_t deadline = mono_ms() + KILL_GRACE_MS;
		pthread_mutex_lock(&table_lock);
		for (size_t i = 0; i < n; i++)
			while (v[i]->status == P_RUNNING && mono_ms() < deadline)
				wait_change_until(deadline);
		pthread_mutex_unlock(&table_lock);
		if (round == 1)
			break;
		for (size_t i = 0; i < n; i++)
			signal_proc(v[i], SIGKILL); /* no-op for those that ended */
	}
	return done;
}

void route_process_kill(struct req *r)
{
	int sig = signal_of_request(r);
	if (!sig)
		return;
	struct proc *p = proc_get(r, req_path_arg(r));
	if (!p)
		return;
	pthread_mutex_lock(&table_lock);
	bool running = p->status == P_RUNNING;
	pthread_mutex_unlock(&table_lock);
	if (!running || kill_records(&p, 1, sig) == 0) {
		cJSON *ctx = cJSON_CreateObject();
		cJSON_AddStringToObject(ctx, "processId", p->id);
		reply_error(r, 404, "COMMAND_NOT_FOUND", ESRCH, ctx,
			    "Process %s is not running (already completed)", p->id);
		proc_put(p);
		return;
	}
	cJSON *out = cJSON_CreateObject();
	cJSON_AddStringToObject(out, "processId", p->id);
	proc_put(p);
	reply_ok(r, out);
}

/* The running records, referenced; *n their number. */
static struct proc **running_records(size_t *n)
{
	pthread_mutex_lock(&table_lock);
	struct proc **v = calloc(n_records + 1, sizeof *v);
	if (!v)
		abort();
	*n = 0;
	for (struct proc *p = table; p; p = p->next)
		if (p->status == P_RUNNING) {
			p->refs++;
			v[(*n)++] = p;
		}
	pthread_mutex_unlock(&table_lock);
	return v;
}

void route_process_kill_all(struct req *r)
{
	int sig = signal_of_request(r);
	if (!sig)
		return;
	size_t n;
	struct proc **v = running_records(&n);
	int done = kill_records(v, n, sig);
	for (size_t i = 0; i < n; i++)
		proc_put(v[i]);
	free(v);
	cJSON *out = cJSON_CreateObject();
	cJSON_AddNumberToObject(out, "cleanedCount", done);
	reply_ok(r, out);
}

/* ---- POST /api/x/process/remove ---- */

void route_x_process_remove(struct req *r)
{
	const char *id = json_str(req_json(r), "processId");
	if (!id || !*id)
		return reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
				   "processId is required");
	struct proc *p = proc_get(r, id);
	if (!p)
		return;
	pthread_mutex_lock(&table_lock);
	bool running = p->status == P_RUNNING;
	if (!running && p->in_table) {
		unlink_locked(p);
		put_locked(p); /* the table's reference */
	}
	put_locked(p);
	pthread_mutex_unlock(&table_lock);
	if (running) {
		cJSON *ctx = cJSON_CreateObject();
		cJSON_AddStringToObject(ctx, "processId", id);
		return reply_error(r, 409, "RESOURCE_BUSY", EBUSY, ctx,
				   "Process %s is still running: kill it first", id);
	}
	cJSON *out = cJSON_CreateObject();
	cJSON_AddStringToObject(out, "processId", id);
	reply_ok(r, out);
}

/* ---- for other routes ---- */

int processes_state(const char *id, bool *running, int *exit_code)
{
	pthread_mutex_lock(&table_lock);
	struct proc *p = find_locked(id);
	if (p) {
		*running = p->status == P_RUNNING;
		*exit_code = p->exit_code;
	}
	pthread_mutex_unlock(&table_lock);
	return p ? 0 : -ENOENT;
}

void processes_stop_session(unsigned long serial)
{
	pthread_mutex_lock(&table_lock);
	struct proc **v = calloc(n_records + 1, sizeof *v);
	if (!v)
		abort();
	size_t n = 0;
	for (struct proc *p = table; p; p = p->next)
		if (p->status == P_RUNNING && p->session_id && p->session_serial == serial) {
			p->refs++;
			v[n++] = p;
		}
	pthread_mutex_unlock(&table_lock);
	if (n)
		log_info("stopping %zu process%s of a deleted session", n, n == 1 ? "" : "es");
	kill_records(v, n, SIGKILL);
	/* KILL cannot be ignored: the collectors see the exits at once */
	int64_t deadline = mono_ms() + KILL_GRACE_MS;
	pthread_mutex_lock(&table_lock);
	for (size_t i = 0; i < n; i++) {
		while (v[i]->status == P_RUNNING && mono_ms() < deadline)
			wait_change_until(deadline);
		put_locked(v[i]);
	}
	pthread_mutex_unlock(&table_lock);
	free(v);
}

/* ---- shutdown ---- */

void processes_shutdown(void)
{
	size_t n;
	pthread_mutex_lock(&table_lock);
	shutting_down = true;
	pthread_mutex_unlock(&table_lock);
	struct proc **v = running_records(&n);
	if (n)
		log_info("stopping %zu background process%s", n, n == 1 ? "" : "es");
	kill_records(v, n, SIGTERM);
	for (size_t i = 0; i < n; i++)
		proc_put(v[i]);
	free(v);

	/* the collectors end within DRAIN_MAX_MS of the KILL; bounded all the same */
	int64_t deadline = mono_ms() + 2 * DRAIN_MAX_MS + 1000;
	pthread_mutex_lock(&table_lock);
	while (n_collectors > 0 && mono_ms() < deadline)
		wait_change_until(deadline);
	if (n_collectors > 0)
		log_warn("processes: %d collector%s did not end", n_collectors,
			 n_collectors == 1 ? "" : "s");
	while (table) {
		struct proc *p = table;
		unlink_locked(p);
		put_locked(p);
	}
	pthread_mutex_unlock(&table_lock);
}
