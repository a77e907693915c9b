/* The code contexts behind server/contexts.h: interpreters and the executions queued on them
 * (the routes are contexts_routes.c).
 *
 * A context is one interpreter process started by the runner: for Python the IPython kernel
 * of server/interp/kernel_python.py (with charts.py), for JavaScript and TypeScript a small
 * Python host (host_node.py) that runs node with kernel_node.js. Their code is embedded in sbxd
 * and sent through stdin to a tiny `python3 -c` bootstrap, so nothing needs installing and nothing shows
 * in ps but the bootstrap. sbxd speaks JSON lines with the interpreter: requests (init,
 * execute, interrupt) on its stdin, messages (ready, init_done, stdout, stderr, result, done)
 * on its stdout; its stderr carries only the kernel's own complaints, kept for the error of a
 * context that dies. The user's code never sees these pipes (see mux.py).
 *
 * Threads and ownership. One mutex (lock) guards every context and execution; each context
 * has a condition variable for whoever waits on it. Each interpreter has a supervisor thread
 * that runs it under the pump (server/child.h), the only reader of its pipes: it turns
 * messages into SSE events appended to the running execution's buffer, starts the next queued
 * execution when one is done, enforces timeouts, and on the interpreter's death (the end of
 * its stdout, or its exit) has what is left of the sandbox killed and the interpreter reaped,
 * and fails the running and queued executions. The SSE source of an
 * execution only moves buffered events to httpd; when its client goes away the execution is
 * interrupted (or dropped from the queue) and its further output discarded. A client that
 * reads slower than the interpreter writes makes the supervisor stop reading once QUEUE_MAX
 * bytes wait, so the interpreter blocks instead of sbxd's memory growing.
 *
 * The messages come from the user's code's own process, which may write anything to the
 * channel (server/imsg.c takes them apart without trusting them). What sbxd holds of them is
 * bounded: a message longer than MESSAGE_MAX, or one that would make the unfinished messages of
 * all interpreters together exceed MESSAGES_PENDING_MAX, gets its interpreter killed (the
 * context dies and says why), so a hostile interpreter costs sbxd, which no cgroup limits, at
 * most that much.
 *
 * Writes to an interpreter's stdin happen outside the lock (a large code can take a moment)
 * under the context's write_lock, with a bound: the kernels read their requests on a thread of
 * their own, so a write that cannot finish means a broken interpreter, which is then killed.
 *
 * Contexts and executions are reference counted under the lock: the table, the supervisor,
 * each execution and each request in progress hold one on the context; the SSE source and the
 * context's queue hold one on the execution. The pump orders signals against the reap, so a
 * signal never reaches a recycled pid.
 *
 * Warm spares: after the first context of a kernel kind is created, a pool thread keeps one
 * started interpreter of that kind waiting, so later creations only send it the context's
 * directory and environment (the "init" request, which the kernels apply to themselves). */
#include "server/contexts.h"
#include "server/child.h"
#include "server/envstore.h"
#include "server/imsg.h"
#include "server/runner.h"
#include "common/clock.h"
#include "common/errnames.h"
#include "common/fdio.h"
#include "common/jsonutil.h"
#include "common/log.h"
#include "interp_sources.h"
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#define PYTHON "/usr/bin/python3"  /* Debian's, with IPython; the PATH one may be another */
#define INIT_TIMEOUT_MS 10000
#define WRITE_TIMEOUT_MS 30000
#define KILL_AFTER_TIMEOUT_MS 2000  /* a timed-out execution that ignores its interrupt */
#define QUEUE_MAX ((size_t)8 << 20) /* events waiting for a slow client */
#define MESSAGE_MAX_MIB 32
#define MESSAGES_PENDING_MAX_MIB 256 /* unfinished ones, of all interpreters together */
#define MESSAGE_MAX ((size_t)MESSAGE_MAX_MIB << 20)
#define MESSAGES_PENDING_MAX ((size_t)MESSAGES_PENDING_MAX_MIB << 20)
#define STR_(x) #x
#define STR(x) STR_(x)
#define DIAG_MAX 4096

/* Reads exactly argv[1] bytes of program from stdin (unbuffered, so the requests that follow
 * stay in the pipe) and runs them. */
static const char bootstrap[] =
	"import os,sys\n"
	"n=int(sys.argv[1]);b=b''\n"
	"while len(b)<n:\n"
	" c=os.read(0,n-len(b))\n"
	" if not c:raise SystemExit(70)\n"
	" b+=c\n"
	"exec(compile(b,'<sbx-kernel>','exec'))\n";

enum kernel { KERNEL_PYTHON, KERNEL_NODE, N_KERNELS };

static const struct language languages[] = {
	{ "python", KERNEL_PYTHON, false, "PYTHON_NOT_AVAILABLE" },
	{ "javascript", KERNEL_NODE, false, "JAVASCRIPT_NOT_AVAILABLE" },
	{ "typescript", KERNEL_NODE, true, "JAVASCRIPT_NOT_AVAILABLE" },
};

static const struct { const char *alias; int index; } language_aliases[] = {
	{ "python", 0 }, { "python3", 0 }, { "javascript", 1 }, { "js", 1 }, { "node", 1 },
	{ "typescript", 2 }, { "ts", 2 },
};

struct execution {
	int refs;
	struct ctx *ctx;
	uint64_t seq;
	char *request;          /* the execute message until it is sent */
	int64_t timeout_ms;     /* 0: none */
	int64_t deadline;       /* monotonic ms; 0: none */
	int64_t kill_at;        /* after a timeout: when to give up on the interrupt */
	bool sent, finished, abandoned, timed_out, interrupt_pending;
	struct strbuf out;      /* SSE bytes not yet handed to httpd */
	struct execution *next;      /* in the context's queue */
};

struct ctx {
	int refs;
	char id[CONTEXT_ID_LEN + 1]; /* "" while a warm spare */
	const struct language *lang;
	enum kernel kernel;
	char *cwd;
	char *session_id;       /* the session it was created in (extension), or NULL */
	unsigned long session_serial;
	struct child child;     /* the interpreter, under its supervisor */
	struct imsg_reader msgs; /* the supervisor's */
	size_t pending;         /* what msgs counts in messages_pending */
	pthread_mutex_t write_lock;
	pthread_cond_t cond;
	bool ready, dead, deleted;
	int init_state;         /* 0 waiting, 1 done, -1 failed */
	char *init_error;
	int init_errno;
	char *death;            /* why it died */
	const char *killed_for; /* why the supervisor killed it, or NULL */
	struct strbuf diag;     /* the end of the kernel's stderr */
	uint64_t seq;
	struct execution *cur;       /* sent or about to be */
	struct execution *queue;
	struct ctx *next;       /* in the table */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pool_cond = PTHREAD_COND_INITIALIZER;
static pthread_cond_t gone_cond;     /* on CLOCK_MONOTONIC (mono_cond_init) */
static pthread_once_t gone_once = PTHREAD_ONCE_INIT;
static struct ctx *table;
static struct ctx *warm[N_KERNELS];
static bool wanted[N_KERNELS];
static bool stopping;
static int supervisors;
static atomic_size_t messages_pending; /* bytes of unfinished messages, all interpreters */
static bool pool_started;
static pthread_t pool_thread;

static void init_gone_cond(void)
{
	mono_cond_init(&gone_cond);
}

/* The supervisor looks at the state of c again (a deadline, a reader that caught up). */
static void wake(struct ctx *c)
{
	child_wake(&c->child);
}

/* ---- reference counting (lock held) ---- */

static void ctx_unref(struct ctx *c)
{
	if (--c->refs > 0)
		return;
	child_free(&c->child);
	pthread_mutex_destroy(&c->write_lock);
	pthread_cond_destroy(&c->cond);
	strbuf_free(&c->diag);
	free(c->cwd);
	free(c->session_id);
	free(c->init_error);
	free(c->death);
	free(c);
}

static void exec_unref(struct execution *e)
{
	if (--e->refs > 0)
		return;
	strbuf_free(&e->out);
	free(e->request);
	ctx_unref(e->ctx);
	free(e);
}

/* Signals the interpreter (never once it has been reaped: its pid may then be reused). */
static void ctx_signal(struct ctx *c, int sig)
{
	child_signal(&c->child, sig);
}

/* ---- writing to an interpreter ---- */

/* Sends bytes to the interpreter (lock not held; the caller holds a reference). A write that
 * fails means the interpreter is broken: it is killed, and its supervisor cleans up. */
static int ctx_write(struct ctx *c, const char *data, size_t len)
{
	pthread_mutex_lock(&c->write_lock);
	int err = fd_write_until(c->child.p.stdin_fd, data, len, mono_ms() + WRITE_TIMEOUT_MS);
	pthread_mutex_unlock(&c->write_lock);
	if (err) {
		log_warn("contexts: cannot write to interpreter %s: %s", c->id[0] ? c->id : "(spare)",
			 strerror(-err));
		pthread_mutex_lock(&lock);
		ctx_signal(c, SIGKILL);
		pthread_mutex_unlock(&lock);
	}
	return err;
}

static int ctx_send(struct ctx *c, cJSON *msg)
{
	char *text = json_print(msg);
	cJSON_Delete(msg);
	if (!text)
		return -ENOMEM;
	size_t n = strlen(text);
	text[n] = '\n';         /* json_print's NUL becomes the line's end */
	int err = ctx_write(c, text, n + 1);
	free(text);
	return err;
}

static void send_interrupt(struct ctx *c, uint64_t seq)
{
	cJSON *m = cJSON_CreateObject();
	cJSON_AddStringToObject(m, "type", "interrupt");
	cJSON_AddNumberToObject(m, "seq", (double)seq);
	ctx_send(c, m);
}

/* Sends the execution that just became current and drops advance_queue's reference (lock
 * not held). */
static void start_exec(struct ctx *c, struct execution *e)
{
	pthread_mutex_lock(&lock);
	char *request = e->request;
	e->request = NULL;
	pthread_mutex_unlock(&lock);
	if (!request) {
		pthread_mutex_lock(&lock);
		exec_unref(e);
		pthread_mutex_unlock(&lock);
		return;
	}
	size_t n = strlen(request);
	request[n] = '\n';
	int err = ctx_write(c, request, n + 1);
	free(request);
	pthread_mutex_lock(&lock);
	bool interrupt = false;
	if (!err) {
		e->sent = true;
		if (e->timeout_ms > 0)
			e->deadline = mono_ms() + e->timeout_ms;
		interrupt = e->interrupt_pending && !e->finished;
	}
	uint64_t seq = e->seq;
	exec_unref(e);
	pthread_mutex_unlock(&lock);
	wake(c);        /* its deadline */
	if (interrupt)
		send_interrupt(c, seq);
}

/* ---- executions (lock held) ---- */

/* An event that is JSON text already (from the interpreter's message). */
static void exec_event_text(struct execution *e, const char *json, size_t n)
{
	if (e->abandoned)
		return;
	strbuf_appends(&e->out, "data: ");
	strbuf_append(&e->out, json, n);
	strbuf_appends(&e->out, "\n\n");
}

static void exec_event(struct execution *e, const cJSON *event)
{
	if (!e->abandoned)
		sse_append(&e->out, event);
}

/* Marks e finished (its terminal event is out) and drops the context's reference. */
static void exec_finished(struct execution *e)
{
	e->finished = true;
	pthread_cond_broadcast(&e->ctx->cond);
	exec_unref(e);
}

/* Appends the terminal event, marks e finished and drops the context's reference. */
static void exec_finish(struct execution *e, cJSON *terminal)
{
	exec_event(e, terminal);
	cJSON_Delete(terminal);
	exec_finished(e);
}

static cJSON *error_event(const char *ename, const char *evalue, cJSON *traceback)
{
	cJSON *ev = cJSON_CreateObject();
	cJSON_AddStringToObject(ev, "type", "error");
	cJSON_AddStringToObject(ev, "ename", ename);
	cJSON_AddStringToObject(ev, "evalue", evalue);
	cJSON_AddItemToObject(ev, "traceback", traceback ? traceback : cJSON_CreateArray());
	return ev;
}

static cJSON *timeout_event(const struct execution *e, bool killed)
{
	char msg[160];
	snprintf(msg, sizeof msg, "execution exceeded timeout_ms=%" PRId64 "%s", e->timeout_ms,
		 killed ? "; the interpreter ignored the interrupt and was killed" : "");
	return error_event("TimeoutError", msg, NULL);
}

/* The next queued execution becomes current; returns it, with a reference, for
 * start_exec() (or NULL). */
static struct execution *advance_queue(struct ctx *c)
{
	if (c->cur || !c->queue || c->dead)
		return NULL;
	c->cur = c->queue;
	c->queue = c->cur->next;
	c->cur->next = NULL;
	c->cur->refs++;
	return c->cur;
}

/* ---- messages from the interpreter (lock held) ---- */

static void handle_done(struct ctx *c, const struct imsg *m)
{
	struct execution *e = c->cur;
	if (!e || m->seq != (int64_t)e->seq) {
		log_debug("contexts: %s: stray done message", c->id);
		return;
	}
	c->cur = NULL;
	if (e->timed_out) {
		exec_finish(e, timeout_event(e, false));
		return;
	}
	struct strbuf ev = STRBUF_INIT;
	imsg_done_event(m, &ev);
	exec_event_text(e, ev.data, ev.len);
	strbuf_free(&ev);
	exec_finished(e);
}

static void handle_init_done(struct ctx *c, const struct imsg *m)
{
	char error[1024], name[32];
	if (imsg_is_string(m->error)) {
		imsg_string(m->error, error, sizeof error);
		imsg_string(m->errname, name, sizeof name);
		c->init_state = -1;
		c->init_error = strdup(error);
		c->init_errno = errno_from_name(name);
	} else {
		c->init_state = 1;
	}
	pthread_cond_broadcast(&c->cond);
}

/* Returns an execution to start, if this message made one current. */
static struct execution *handle_message(struct ctx *c, const char *line, size_t len)
{
	struct imsg m;
	struct execution *start = NULL;
	if (!imsg_parse(line, len, &m)) {
		log_debug("contexts: %s: unreadable message from the interpreter", c->id);
		return NULL;
	}
	switch (m.type) {
	case IMSG_STDOUT:
	case IMSG_STDERR:
	case IMSG_RESULT:
		/* output between executions (a background thread's) has nobody to go to */
		if (!c->cur)
			break;
		if (m.type == IMSG_RESULT) {
			exec_event_text(c->cur, line, len);
		} else {
			struct strbuf ev = STRBUF_INIT;
			imsg_output_event(&m, &ev);
			exec_event_text(c->cur, ev.data, ev.len);
			strbuf_free(&ev);
		}
		pthread_cond_broadcast(&c->cond);
		break;
	case IMSG_DONE:
		handle_done(c, &m);
		start = advance_queue(c);
		break;
	case IMSG_READY:
		c->ready = true;
		pthread_cond_broadcast(&c->cond);
		break;
	case IMSG_INIT_DONE:
		handle_init_done(c, &m);
		break;
	case IMSG_OTHER:
		break;
	}
	return start;
}

/* ---- the supervisor ---- */

static void keep_diag(struct ctx *c, const char *data, size_t n)
{
	strbuf_append(&c->diag, data, n);
	if (c->diag.len > DIAG_MAX)
		strbuf_consume(&c->diag, c->diag.len - DIAG_MAX);
}

/* What the kernel wrote to its stderr: its own complaints, the end kept for its death. */
static void take_diag(struct ctx *c, const char *buf, size_t n)
{
	log_debug("contexts: interpreter %s says: %.*s", c->id[0] ? c->id : "(spare)", (int)n,
		  buf);
	pthread_mutex_lock(&lock);
	keep_diag(c, buf, n);
	pthread_mutex_unlock(&lock);
}

/* The last non-empty line of the kernel's complaints (lock held); "" if none. */
static void last_diag_line(const struct ctx *c, char *out, size_t size)
{
	out[0] = 0;
	if (!c->diag.len)
		return;
	const char *s = c->diag.data, *end = s + c->diag.len;
	while (end > s && (end[-1] == '\n' || end[-1] == ' '))
		end--;
	const char *start = end;
	while (start > s && start[-1] != '\n')
		start--;
	snprintf(out, size, "%.*s", (int)(end - start), start);
}

static void died(struct ctx *c, int status)
{
	char why[512], last[300];
	pthread_mutex_lock(&lock);
	last_diag_line(c, last, sizeof last);
	int code = runner_exit_code(status);
	if (c->deleted)
		snprintf(why, sizeof why, "the context was deleted");
	else if (c->killed_for)
		snprintf(why, sizeof why, "%s", c->killed_for);
	else if (code > 128)
		snprintf(why, sizeof why, "the interpreter was killed by signal %d (%s)%s%s",
			 code - 128, strsignal(code - 128), last[0] ? ": " : "", last);
	else
		snprintf(why, sizeof why, "the interpreter exited with status %d%s%s", code,
			 last[0] ? ": " : "", last);
	c->dead = true;
	c->death = strdup(why);
	char evalue[600];
	snprintf(evalue, sizeof evalue, "%s; the context must be deleted and recreated", why);
	if (c->cur) {
		struct execution *e = c->cur;
		c->cur = NULL;
		exec_finish(e, e->timed_out ? timeout_event(e, true)
					    : error_event("InterpreterDied", evalue, NULL));
	}
	while (c->queue) {
		struct execution *e = c->queue;
		c->queue = e->next;
		e->next = NULL;
		exec_finish(e, error_event("InterpreterDied", evalue, NULL));
	}
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&lock);
	if (c->id[0] && !c->deleted)
		log_info("contexts: %s: %s", c->id, why);
}

/* Hands the complete messages in this chunk of stdout to handle_message; false when the
 * interpreter overstepped the bounds (see the top: it is then killed, and killed_for says
 * why). */
static bool take_messages(struct ctx *c, const char *chunk, size_t n)
{
	struct imsg_reader *r = &c->msgs;
	imsg_reader_add(r, chunk, n);
	const char *line;
	size_t len;
	int got;
	while ((got = imsg_reader_next(r, &line, &len)) > 0) {
		pthread_mutex_lock(&lock);
		struct execution *start = handle_message(c, line, len);
		pthread_mutex_unlock(&lock);
		if (start)
			start_exec(c, start);
	}
	size_t now = imsg_reader_pending(r), total = 0;
	if (now >= c->pending)
		total = atomic_fetch_add(&messages_pending, now - c->pending) + (now - c->pending);
	else
		atomic_fetch_sub(&messages_pending, c->pending - now);
	c->pending = now;
	if (got < 0)
		c->killed_for = "the interpreter sent a message longer than "
				STR(MESSAGE_MAX_MIB) " MiB";
	else if (total > MESSAGES_PENDING_MAX)
		c->killed_for = "the interpreters' unfinished messages exceed "
				STR(MESSAGES_PENDING_MAX_MIB) " MiB together";
	if (c->killed_for)
		log_warn("contexts: %s: %s: killing it", c->id[0] ? c->id : "(spare)",
			 c->killed_for);
	return !c->killed_for;
}

/* The pump's callbacks: stdout carries messages, and its end is the interpreter's. */
static bool ctx_output(void *arg, enum child_stream which, const char *buf, size_t n)
{
	struct ctx *c = arg;
	if (which == CHILD_ERR) {
		if (n)
			take_diag(c, buf, n);
		return true;
	}
	return n && take_messages(c, buf, n);
}

/* A client that reads slower than the interpreter writes holds it back. */
static bool ctx_may_read(void *arg)
{
	struct ctx *c = arg;
	pthread_mutex_lock(&lock);
	struct execution *e = c->cur;
	bool throttled = e && !e->abandoned && e->out.len > QUEUE_MAX;
	pthread_mutex_unlock(&lock);
	return !throttled;
}

/* The running execution's timeout: an interrupt at its deadline, KILL when that is ignored. */
static int64_t ctx_timers(void *arg, int64_t now)
{
	struct ctx *c = arg;
	int64_t next = -1;
	uint64_t interrupt_seq = 0;
	pthread_mutex_lock(&lock);
	struct execution *e = c->cur;
	if (e && e->sent && !e->finished && e->deadline) {
		if (!e->timed_out && now >= e->deadline) {
			e->timed_out = true;
			e->kill_at = now + KILL_AFTER_TIMEOUT_MS;
			interrupt_seq = e->seq;
		}
		if (e->timed_out && now >= e->kill_at) {
			ctx_signal(c, SIGKILL);
			e->kill_at = now + 1000;
		}
		next = e->timed_out ? e->kill_at : e->deadline;
	}
	pthread_mutex_unlock(&lock);
	if (interrupt_seq)
		send_interrupt(c, interrupt_seq);
	return next;
}

static const struct child_ops ctx_ops = {
	.output = ctx_output, .may_read = ctx_may_read, .tick = ctx_timers,
};

static const struct child_policy ctx_policy = {
	.grace_ms = KILL_AFTER_TIMEOUT_MS,
	.drain_ms = 1000,
};

static void *supervise(void *arg)
{
	struct ctx *c = arg;
	child_run(&c->child);
	child_finish(&c->child);
	died(c, c->child.status);
	atomic_fetch_sub(&messages_pending, c->pending);
	imsg_reader_free(&c->msgs);
	pthread_mutex_lock(&lock);
	supervisors--;
	pthread_cond_broadcast(&gone_cond);
	ctx_unref(c);
	pthread_mutex_unlock(&lock);
	return NULL;
}

/* ---- starting interpreters ---- */

/* What starts an interpreter of that kind: the bootstrap's argv, and the program it reads
 * from stdin in parts (one Python program: mux.py's names are the others'). */
struct kernel_program {
	const char *argv[6];
	struct { const char *text; size_t len; } parts[4];
	size_t nparts;
	char n1[24], n2[24];
};

static void kernel_program(enum kernel kernel, struct kernel_program *k)
{
	size_t program_len = 0;
	k->nparts = 0;
	k->parts[k->nparts].text = sbx_interp_mux_py;
	k->parts[k->nparts++].len = sbx_interp_mux_py_len;
	if (kernel == KERNEL_PYTHON) {
		k->parts[k->nparts].text = sbx_interp_charts_py;
		k->parts[k->nparts++].len = sbx_interp_charts_py_len;
		k->parts[k->nparts].text = sbx_interp_kernel_python_py;
		k->parts[k->nparts++].len = sbx_interp_kernel_python_py_len;
	} else {
		k->parts[k->nparts].text = sbx_interp_host_node_py;
		k->parts[k->nparts++].len = sbx_interp_host_node_py_len;
	}
	for (size_t i = 0; i < k->nparts; i++)
		program_len += k->parts[i].len;
	snprintf(k->n1, sizeof k->n1, "%zu", program_len);
	snprintf(k->n2, sizeof k->n2, "%zu", sbx_interp_kernel_node_js_len);
	if (kernel == KERNEL_NODE) { /* the node kernel follows, as the second length says */
		k->parts[k->nparts].text = sbx_interp_kernel_node_js;
		k->parts[k->nparts++].len = sbx_interp_kernel_node_js_len;
	}
	const char *argv[] = { PYTHON, "-c", bootstrap, k->n1,
			       kernel == KERNEL_NODE ? k->n2 : NULL, NULL };
	memcpy(k->argv, argv, sizeof argv);
}

/* Hands the started interpreter to a supervisor thread of its own; 0 or a negative errno
 * (the interpreter is then ended). */
static int start_supervisor(struct ctx *c)
{
	pthread_t t;
	pthread_attr_t a;
	pthread_attr_init(&a);
	pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
	pthread_mutex_lock(&lock);
	supervisors++;
	pthread_mutex_unlock(&lock);
	int err = pthread_create(&t, &a, supervise, c);
	pthread_attr_destroy(&a);
	if (err) {
		pthread_mutex_lock(&lock);
		supervisors--;
		pthread_mutex_unlock(&lock);
		child_signal(&c->child, SIGKILL);
		child_finish(&c->child);
	}
	return -err;
}

/* A new interpreter of that kind, with one reference for the caller. */
static struct ctx *ctx_spawn(enum kernel kernel, int *errp)
{
	struct ctx *c = calloc(1, sizeof *c);
	if (!c) {
		*errp = -ENOMEM;
		return NULL;
	}
	c->kernel = kernel;
	c->refs = 2;    /* the caller's and the supervisor's */
	child_init(&c->child);
	imsg_reader_init(&c->msgs, MESSAGE_MAX);
	pthread_mutex_init(&c->write_lock, NULL);
	mono_cond_init(&c->cond);
	pthread_once(&gone_once, init_gone_cond);

	struct kernel_program k;
	kernel_program(kernel, &k);
	struct run_spec spec = { .argv = k.argv };
	int err = child_start(&c->child, &spec, &ctx_policy, &ctx_ops, c);
	if (!err)
		err = start_supervisor(c);
	if (err) {
		imsg_reader_free(&c->msgs);
		pthread_mutex_lock(&lock);
		c->refs = 1;
		ctx_unref(c);
		pthread_mutex_unlock(&lock);
		*errp = err;
		return NULL;
	}
	for (size_t i = 0; i < k.nparts && !ctx_write(c, k.parts[i].text, k.parts[i].len); i++)
		;
	return c;
}

static void *pool_fill(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&lock);
	while (!stopping) {
		int k = 0;
		while (k < N_KERNELS && !(wanted[k] && !warm[k]))
			k++;
		if (k == N_KERNELS) {
			pthread_cond_wait(&pool_cond, &lock);
			continue;
		}
		pthread_mutex_unlock(&lock);
		int err = 0;
		struct ctx *c = ctx_spawn(k, &err);
		pthread_mutex_lock(&lock);
		if (!c) {
			log_warn("contexts: cannot start a spare interpreter: %s", strerror(-err));
			wanted[k] = false;      /* the next creation asks again */
		} else if (stopping || warm[k]) {
			ctx_signal(c, SIGKILL);
			ctx_unref(c);
		} else {
			warm[k] = c;
		}
	}
	pthread_mutex_unlock(&lock);
	return NULL;
}

/* A started interpreter of that kind for a new context: the spare, or a new one. */
static struct ctx *take_interpreter(enum kernel k, int *errp)
{
	pthread_mutex_lock(&lock);
	if (stopping) {
		pthread_mutex_unlock(&lock);
		*errp = -ESHUTDOWN;
		return NULL;
	}
	struct ctx *c = warm[k];
	warm[k] = NULL;
	if (c && c->dead) {
		ctx_unref(c);
		c = NULL;
	}
	wanted[k] = true;
	if (!pool_started) {
		sigset_t all, old;
		sigfillset(&all);
		pthread_sigmask(SIG_SETMASK, &all, &old);
		pool_started = pthread_create(&pool_thread, NULL, pool_fill, NULL) == 0;
		pthread_sigmask(SIG_SETMASK, &old, NULL);
	}
	pthread_cond_broadcast(&pool_cond);
	pthread_mutex_unlock(&lock);
	return c ? c : ctx_spawn(k, errp);
}

/* Drops a context that never made it into the table. */
static void discard(struct ctx *c)
{
	pthread_mutex_lock(&lock);
	ctx_signal(c, SIGKILL);
	ctx_unref(c);
	pthread_mutex_unlock(&lock);
}

/* ---- the table ---- */

const struct language *context_language(const char *name)
{
	for (size_t i = 0; i < sizeof language_aliases / sizeof language_aliases[0]; i++)
		if (!strcasecmp(name, language_aliases[i].alias))
			return &languages[language_aliases[i].index];
	return NULL;
}

const struct language *context_default_language(void)
{
	return &languages[0];
}

static void make_uuid(char out[CONTEXT_ID_LEN + 1])
{
	unsigned char b[16];
	if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) {
		/* getrandom does not fail for 16 bytes after boot; stay unique regardless */
		static uint64_t counter;
		uint64_t t = (uint64_t)mono_ms() ^ ((uint64_t)getpid() << 32) ^ ++counter;
		memcpy(b, &t, 8);
		memcpy(b + 8, &counter, 8);
	}
	b[6] = (b[6] & 0x0f) | 0x40;
	b[8] = (b[8] & 0x3f) | 0x80;
	snprintf(out, CONTEXT_ID_LEN + 1,
		 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
		 b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12],
		 b[13], b[14], b[15]);
}

/* The context with that id, with a reference for the caller (lock held). */
static struct ctx *find_ctx(const char *id)
{
	for (struct ctx *c = table; c && id; c = c->next)
		if (!strcmp(c->id, id)) {
			c->refs++;
			return c;
		}
	return NULL;
}

static void unlink_ctx(struct ctx *c)
{
	for (struct ctx **p = &table; *p; p = &(*p)->next)
		if (*p == c) {
			*p = c->next;
			c->next = NULL;
			return;
		}
}

/* ---- creating a context ---- */

/* Waits (lock held) for the interpreter to have started; false with *e saying why not. */
static bool wait_ready(struct ctx *c, const struct language *lang, struct context_error *e)
{
	int64_t deadline = mono_ms() + CONTEXT_READY_TIMEOUT_MS;
	while (!c->ready && !c->dead && mono_cond_wait_until(&c->cond, &lock, deadline))
		;
	if (c->ready && !c->dead)
		return true;
	if (c->dead) {
		char last[300];
		last_diag_line(c, last, sizeof last);
		e->kind = CONTEXT_INTERPRETER_DIED;
		e->err = ENOEXEC;
		snprintf(e->message, sizeof e->message, "the %s interpreter cannot start: %s",
			 lang->name, last[0] ? last : "it exited");
	} else {
		e->kind = CONTEXT_NOT_READY;
		e->err = EAGAIN;
		snprintf(e->message, sizeof e->message,
			 "the %s interpreter did not start within %d s", lang->name,
			 CONTEXT_READY_TIMEOUT_MS / 1000);
	}
	return false;
}

/* The interpreter took its directory and environment: it becomes the context (lock held). */
static void register_locked(struct ctx *c, const struct context_spec *spec,
			    char id[CONTEXT_ID_LEN + 1])
{
	make_uuid(c->id);
	memcpy(id, c->id, CONTEXT_ID_LEN + 1);
	c->lang = spec->lang;
	c->cwd = strdup(spec->cwd);
	if (spec->session_id) {
		c->session_id = strdup(spec->session_id);
		c->session_serial = spec->session_serial;
	}
	struct ctx **p = &table;
	while (*p)
		p = &(*p)->next;
	*p = c;         /* the caller's reference becomes the table's */
}

/* Sends the interpreter the context's directory and environment (taking spec->env), and
 * registers it once it took them; false with *e saying why it did not. */
static bool init_context(struct ctx *c, const struct context_spec *spec,
			 char id[CONTEXT_ID_LEN + 1], struct context_error *e)
{
	cJSON *init = cJSON_CreateObject();
	cJSON_AddStringToObject(init, "type", "init");
	cJSON_AddStringToObject(init, "cwd", spec->cwd);
	cJSON_AddItemToObject(init, "env", spec->env);
	cJSON_AddBoolToObject(init, "typescript", spec->lang->typescript);
	ctx_send(c, init);
	pthread_mutex_lock(&lock);
	int64_t deadline = mono_ms() + INIT_TIMEOUT_MS;
	while (!c->init_state && !c->dead && mono_cond_wait_until(&c->cond, &lock, deadline))
		;
	int state = c->dead ? -2 : c->init_state;
	if (state == 1)
		register_locked(c, spec, id);
	e->kind = state == -1 ? CONTEXT_INIT_REFUSED : state == -2 ? CONTEXT_INIT_DIED
								    : CONTEXT_INIT_SILENT;
	e->err = state == -1 && c->init_errno ? c->init_errno : state == -1 ? EINVAL : EIO;
	if (state == -1)
		snprintf(e->message, sizeof e->message, "%s", c->init_error ? c->init_error : "");
	else
		snprintf(e->message, sizeof e->message, "the %s interpreter %s", spec->lang->name,
			 state == -2 ? "died while starting" : "did not answer");
	pthread_mutex_unlock(&lock);
	return state == 1;
}

int contexts_create(const struct context_spec *spec, char id[CONTEXT_ID_LEN + 1],
		    struct context_error *e)
{
	int err = 0;
	*e = (struct context_error){ .kind = CONTEXT_NO_INTERPRETER };
	struct ctx *c = take_interpreter(spec->lang->kernel, &err);
	if (!c) {
		cJSON_Delete(spec->env);
		e->err = -err;
		if (err == -ENOTSUP)
			snprintf(e->message, sizeof e->message,
				 "commands cannot be started here: %s",
				 runner_unavailable() ? runner_unavailable() : "no sandbox");
		else
			snprintf(e->message, sizeof e->message,
				 "cannot start the interpreter: %s", strerror(-err));
		return -1;
	}
	pthread_mutex_lock(&lock);
	bool ready = wait_ready(c, spec->lang, e);
	pthread_mutex_unlock(&lock);
	if (!ready)
		cJSON_Delete(spec->env);
	if (!ready || !init_context(c, spec, id, e)) {
		discard(c);
		return -1;
	}
	return 0;
}

/* ---- what the routes ask of the table ---- */

void contexts_list(void (*each)(void *arg, const struct context_info *info), void *arg)
{
	pthread_mutex_lock(&lock);
	for (struct ctx *c = table; c; c = c->next) {
		struct context_info i = { .id = c->id, .language = c->lang->name,
					  .cwd = c->cwd ? c->cwd : "", .session_id = c->session_id,
					  .state = c->dead ? "dead" : c->cur ? "busy" : "ready" };
		each(arg, &i);
	}
	pthread_mutex_unlock(&lock);
}

int contexts_delete(const char *id)
{
	pthread_mutex_lock(&lock);
	struct ctx *c = find_ctx(id);
	if (c) {
		unlink_ctx(c);
		c->deleted = true;
		ctx_signal(c, SIGKILL);
		c->refs--;      /* the table's; find_ctx's keeps it */
		ctx_unref(c);
	}
	pthread_mutex_unlock(&lock);
	return c ? 0 : -ENOENT;
}

int contexts_interrupt(const char *id, bool *running)
{
	pthread_mutex_lock(&lock);
	struct ctx *c = find_ctx(id);
	uint64_t seq = 0;
	*running = false;
	if (c && c->cur && !c->cur->finished) {
		*running = true;
		if (c->cur->sent)
			seq = c->cur->seq;
		else
			c->cur->interrupt_pending = true;
	}
	pthread_mutex_unlock(&lock);
	if (!c)
		return -ENOENT;
	if (seq)
		send_interrupt(c, seq);
	pthread_mutex_lock(&lock);
	ctx_unref(c);
	pthread_mutex_unlock(&lock);
	return 0;
}

/* ---- executions, for their readers ---- */

/* A new execution of code at the end of c's queue (lock held); the one to start now, if
 * any, in *start. */
static struct execution *queue_execution(struct ctx *c, const char *code, int64_t timeout_ms,
					 struct execution **start)
{
	struct execution *e = calloc(1, sizeof *e);
	if (!e)
		return NULL;
	cJSON *m = cJSON_CreateObject();
	cJSON_AddStringToObject(m, "type", "execute");
	cJSON_AddNumberToObject(m, "seq", (double)++c->seq);
	cJSON_AddStringToObject(m, "code", code);
	e->request = json_print(m);
	cJSON_Delete(m);
	e->refs = 2;    /* the reader's and the queue's */
	e->ctx = c;     /* takes the caller's reference */
	e->seq = c->seq;
	e->timeout_ms = timeout_ms;
	struct execution **p = &c->queue;
	while (*p)
		p = &(*p)->next;
	*p = e;
	*start = advance_queue(c);
	return e;
}

int contexts_execute(const char *id, const char *code, const char *language,
		     int64_t timeout_ms, struct execution **out, const char **lang)
{
	struct execution *start = NULL;
	pthread_mutex_lock(&lock);
	struct ctx *c = find_ctx(id);
	int err = !c ? -ENOENT : c->dead ? -EPIPE
		  : language && context_language(language) != c->lang ? -EINVAL : 0;
	*lang = c ? c->lang->name : NULL;
	if (!err && !(*out = queue_execution(c, code, timeout_ms, &start)))
		err = -ENOMEM;
	if (err && c)
		ctx_unref(c);
	pthread_mutex_unlock(&lock);
	if (!err && start)
		start_exec(c, start);
	return err;
}

int execution_next(struct execution *e, struct strbuf *out, int timeout_ms)
{
	pthread_mutex_lock(&lock);
	int64_t deadline = mono_ms() + timeout_ms;
	while (!e->out.len && !e->finished && mono_cond_wait_until(&e->ctx->cond, &lock, deadline))
		;
	bool was_full = e->out.len > QUEUE_MAX;
	if (e->out.len) {
		strbuf_append(out, e->out.data, e->out.len);
		strbuf_free(&e->out);
	}
	int more = !e->finished;
	pthread_mutex_unlock(&lock);
	if (was_full)
		wake(e->ctx);
	return more;
}

/* Takes e, abandoned before its end, out of the queue or has it interrupted (lock held);
 * whether an interrupt is to be sent. */
static bool abandon_locked(struct execution *e)
{
	struct ctx *c = e->ctx;
	e->abandoned = true;
	strbuf_free(&e->out);
	if (c->cur == e) {
		e->interrupt_pending = true;
		return e->sent;
	}
	for (struct execution **p = &c->queue; *p; p = &(*p)->next)
		if (*p == e) {
			*p = e->next;
			e->next = NULL;
			break;
		}
	e->finished = true;
	exec_unref(e);  /* the queue's */
	return false;
}

void execution_release(struct execution *e)
{
	struct ctx *c = e->ctx;
	pthread_mutex_lock(&lock);
	uint64_t seq = e->seq;
	bool interrupt = !e->finished && abandon_locked(e);
	c->refs++;
	/* abandon_locked dropped only the queue's reference; the caller's is still e's, which
	 * the analyzer does not count */
	exec_unref(e); /* NOLINT(clang-analyzer-unix.Malloc) */
	pthread_mutex_unlock(&lock);
	if (interrupt) {
		log_debug("contexts: %s: the client left, interrupting execution %" PRIu64, c->id,
			  seq);
		send_interrupt(c, seq);
	}
	wake(c);
	pthread_mutex_lock(&lock);
	ctx_unref(c);
	pthread_mutex_unlock(&lock);
}

/* ---- sessions and the end ---- */

void contexts_stop_session(unsigned long serial)
{
	pthread_mutex_lock(&lock);
	for (struct ctx **p = &table; *p;) {
		struct ctx *c = *p;
		if (!c->session_id || c->session_serial != serial) {
			p = &c->next;
			continue;
		}
		*p = c->next;
		c->next = NULL;
		c->deleted = true;
		ctx_signal(c, SIGKILL);
		ctx_unref(c); /* the table's */
	}
	pthread_mutex_unlock(&lock);
}

void contexts_shutdown(void)
{
	pthread_once(&gone_once, init_gone_cond);
	pthread_mutex_lock(&lock);
	stopping = true;
	pthread_cond_broadcast(&pool_cond);
	bool join = pool_started;
	pool_started = false;
	pthread_mutex_unlock(&lock);
	if (join)
		pthread_join(pool_thread, NULL);

	pthread_mutex_lock(&lock);
	for (int k = 0; k < N_KERNELS; k++) {
		if (warm[k]) {
			ctx_signal(warm[k], SIGKILL);
			ctx_unref(warm[k]);
			warm[k] = NULL;
		}
	}
	while (table) {
		struct ctx *c = table;
		unlink_ctx(c);
		c->deleted = true;
		ctx_signal(c, SIGKILL);
		ctx_unref(c);
	}
	int64_t deadline = mono_ms() + 10000;
	while (supervisors > 0 && mono_cond_wait_until(&gone_cond, &lock, deadline))
		;
	if (supervisors > 0)
		log_error("contexts: %d interpreters still running at shutdown", supervisors);
	pthread_mutex_unlock(&lock);
}
