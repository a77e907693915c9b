/* POST /api/execute and /api/execute/stream.
 *
 * A command is a child of the pump (server/child.h) whose process group survives it: what it
 * left running in the background goes on, as in a shell, and does not hold the request, since
 * once the command has exited what it wrote is already in the pipes.
 *
 * /api/execute collects both outputs whole (each capped at 64 MiB: beyond, the command is
 * killed) and answers once. The stream is an sse_source: each next() runs the pump for at most
 * the time httpd gives it and turns what arrived into events; text events carry incomplete
 * UTF-8 sequences over to the next chunk so a character is never split. If the client goes
 * away first, release() ends the command; /api/execute has the pump watch its client's socket
 * and stop the command the same way (TERM, KILL after KILL_GRACE_MS), and so does a request
 * still waiting for its session's running command (sessions.c), which then never starts.
 * Either way every child is reaped. Stopping sbxd shuts every connection down, so this also
 * bounds how long a stop waits for commands.
 *
 * Output text is UTF-8 with invalid sequences and NUL bytes replaced by U+FFFD (cJSON strings
 * cannot hold NUL); "encoding":"base64" gives the bytes exactly. */
#include "server/child.h"
#include "server/request.h"
#include "server/routes.h"
#include "server/runner.h"
#include "server/sessions.h"
#include "server/sessions_routes.h"
#include "server/envstore.h"
#include "server/utf8.h"
#include "common/base64.h"
#include "common/clock.h"
#include "common/fdio.h"
#include "common/jsonutil.h"
#include "common/log.h"
#include "common/strv.h"
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#define OUTPUT_MAX ((size_t)64 << 20)
#define KILL_GRACE_MS 2000          /* SIGTERM, then SIGKILL this much later */
#define DRAIN_MAX_MS 200            /* after the exit: reading what is left, at most */

/* ---- running a command ---- */

static const struct child_policy command_policy = {
	.grace_ms = KILL_GRACE_MS,
	.drain_ms = DRAIN_MAX_MS,
	.group_survives = true,
};

/* Starts the command of l under the pump (c is initialised either way); 0 or a negative
 * errno. A client_fd >= 0 is watched: when that client hangs up, the command is stopped. */
static int command_start(struct child *c, const struct session_launch *l, const char *command,
			 const struct child_policy *policy, const struct child_ops *ops, void *ctx,
			 int client_fd)
{
	struct run_spec spec = {
		.argv = (const char *const *)l->argv,
		.env = (const char *const *)l->env,
		.stdin_null = !l->command_on_stdin,
	};
	child_init(c);
	int err = child_start(c, &spec, policy, ops, ctx);
	if (err)
		return err;
	if (l->command_on_stdin)
		child_feed(c, command, strlen(command));
	child_watch_client(c, client_fd);
	return 0;
}

/* ---- request fields shared by both routes ---- */

struct exec_req {
	const char *command;
	const char *cwd;
	double timeout;
	char **env;
	const char *session_id;  /* resolved; SESSION_NONE for sessionless */
	bool session_given;
	bool base64;
	int timeout_ms;          /* 0: none (yet: the session's default applies later) */
};

#define EXEC_FIELDS(command_row) { \
	command_row, \
	FIELD("cwd", FIELD_STRING, struct exec_req, cwd, .flags = FIELD_EMPTY_ABSENT, \
	      .wrong = "cwd must be a string"), \
	FIELD("timeoutMs", FIELD_NUMBER, struct exec_req, timeout, .min = 0, .max = INT_MAX, \
	      .wrong = "timeoutMs must be a number of milliseconds"), \
}

static const struct field execute_fields[] = EXEC_FIELDS(
	FIELD("command", FIELD_STRING, struct exec_req, command, .flags = FIELD_REQUIRED,
	      .wrong = "command must be a string"));

/* a stream refuses a blank command first, as the container does */
static const struct field stream_fields[] = EXEC_FIELDS(
	FIELD("command", FIELD_STRING, struct exec_req, command,
	      .flags = FIELD_REQUIRED | FIELD_NOT_BLANK, .code = "INVALID_COMMAND",
	      .wrong = "Invalid command: empty command provided",
	      .missing = "Invalid command: empty command provided"));

/* Decodes and checks; false after answering the request. */
static bool parse_exec_req(struct req *r, struct exec_req *x, bool stream)
{
	*x = (struct exec_req){ 0 };
	if (!(stream ? req_decode(r, stream_fields, FIELDS_N(stream_fields), x)
		     : req_decode(r, execute_fields, FIELDS_N(execute_fields), x)))
		return false;
	const char *enc = json_str(req_json(r), "encoding");
	x->base64 = enc && strcmp(enc, "base64") == 0;
	x->timeout_ms = (int)x->timeout;
	x->session_id = session_id_of_request(r, &x->session_given);
	if (!x->session_id)
		return false;
	char **req_env = session_env_from_json(r, cJSON_GetObjectItemCaseSensitive(req_json(r),
										   "env"));
	if (!req_env)
		return false;
	/* the store's variables travel with the request's (which win): the session wrapper
	 * applies them over the session's state and leaves them out of what it saves */
	x->env = envstore_overlay((const char *const *)req_env);
	strv_free(req_env);
	return true;
}

static void reply_spawn_error(struct req *r, int err)
{
	if (err == -ENOTSUP && runner_unavailable())
		reply_error(r, 500, "COMMAND_EXECUTION_ERROR", ENOTSUP, NULL,
			    "cannot run commands: %s", runner_unavailable());
	else
		reply_error(r, 500, "COMMAND_EXECUTION_ERROR", -err, NULL,
			    "cannot start the command: %s", strerror(-err));
}

/* 499, nginx's "client closed request": an answer no one reads, which must not stand for the
 * request either (an Idempotency-Key's repeat runs it again: the client may only have lost
 * its connection). */
static void reply_client_left(struct req *r)
{
	reply_error(r, 499, "CLIENT_CLOSED_REQUEST", ECANCELED, NULL,
		    "the client hung up; its command was stopped or never started");
}

static void reply_session_error(struct req *r, const struct exec_req *x, int err)
{
	if (err == -ECONNABORTED)
		reply_client_left(r);
	else if (err == -ENOSPC)
		reply_error(r, 500, "INTERNAL_ERROR", ENOSPC, NULL,
			    "cannot create session '%s': too many sessions", x->session_id);
	else
		reply_error(r, 500, "INTERNAL_ERROR", -err, NULL, "session '%s': %s",
			    x->session_id, strerror(-err));
}

/* Takes the session for this command (none when sessionless); 0, -ETIMEDOUT, -ECONNABORTED
 * (the client hung up meanwhile) or an error. The session's commandTimeoutMs is for
 * foreground commands only (a stream is a background command in the container) and, like a
 * request's timeoutMs, counts from now: a command whose time runs out while it waits for the
 * session's running one never starts, nor does one whose client is gone. */
static int take_session(struct req *r, struct exec_req *x, bool foreground, struct session **s)
{
	*s = NULL;
	if (strcmp(x->session_id, SESSION_NONE) == 0)
		return 0;
	if (!x->timeout_ms && foreground)
		x->timeout_ms = session_command_timeout_of(x->session_id);
	int err = session_acquire(x->session_id, x->cwd, x->timeout_ms > 0 ? x->timeout_ms : -1,
				  req_client_fd(r), s);
	if (err == -ECONNABORTED)
		log_debug("exec: the client went away while its command waited for session '%s'",
			  x->session_id);
	if (!err && !x->timeout_ms && foreground) /* created meanwhile */
		x->timeout_ms = session_command_timeout(*s);
	return err;
}

/* ---- POST /api/execute ---- */

/* What a foreground command came to. */
struct outcome {
	struct strbuf buf[2];
	int status;
	bool timed_out, client_gone, overflow[2];
	int64_t started;         /* mono_ms() */
};

static bool collect(void *ctx, enum child_stream which, const char *buf, size_t n)
{
	struct outcome *o = ctx;
	strbuf_append(&o->buf[which], buf, n);
	return true;
}

static const struct child_ops collect_ops = { .output = collect };

/* Runs the command in s (NULL: sessionless) to its end, within timeout_ms (0: none); 0 or the
 * runner's error. The state it leaves becomes the session's, unless it was stopped. */
static int run_foreground(struct req *r, const struct exec_req *x, struct session *s,
			  int timeout_ms, struct outcome *o)
{
	struct session_launch l = { 0 };
	struct child c;
	struct child_policy policy = command_policy;
	policy.timeout_ms = timeout_ms;
	policy.output_max = OUTPUT_MAX;
	policy.kill_over_max = true;
	session_launch(s, x->command, x->cwd, x->env, s != NULL, &l);
	int err = command_start(&c, &l, x->command, &policy, &collect_ops, o, req_client_fd(r));
	o->started = mono_ms();
	if (!err) {
		child_run(&c);
		child_finish(&c);
		o->status = c.status;
		o->timed_out = c.timed_out;
		o->client_gone = c.client_gone;
		o->overflow[CHILD_OUT] = c.overflow[CHILD_OUT];
		o->overflow[CHILD_ERR] = c.overflow[CHILD_ERR];
		if (s && !c.killed)
			session_commit(s);
	}
	child_free(&c);
	session_launch_free(&l);
	return err;
}

static void add_output(cJSON *res, const char *key, const struct strbuf *b, bool base64)
{
	if (base64) {
		char *enc = base64_encode_alloc(b->len ? b->data : "", b->len);
		if (!enc)
			abort();
		cJSON_AddStringToObject(res, key, enc);
		free(enc);
		return;
	}
	struct strbuf text = STRBUF_INIT;
	utf8_sanitize(&text, b->len ? b->data : "", b->len, true);
	cJSON_AddStringToObject(res, key, text.len ? text.data : "");
	strbuf_free(&text);
}

static void reply_outcome(struct req *r, const struct exec_req *x, struct outcome *o)
{
	if (o->client_gone)
		return reply_client_left(r);
	for (int w = CHILD_OUT; w <= CHILD_ERR; w++)
		if (o->overflow[w])
			return reply_error(r, 500, "COMMAND_EXECUTION_ERROR", EFBIG, NULL,
					   "the command wrote more than %zu MiB to %s and was "
					   "killed (/api/execute/stream has no limit)",
					   OUTPUT_MAX >> 20, w == CHILD_OUT ? "stdout" : "stderr");
	int code = o->timed_out ? 124 : runner_exit_code(o->status);
	if (o->timed_out) {
		struct strbuf *e = &o->buf[CHILD_ERR];
		if (e->len && e->data[e->len - 1] != '\n')
			strbuf_appends(e, "\n");
		strbuf_appendf(e, "Command timed out after %dms", x->timeout_ms);
	}
	char ts[32];
	cJSON *res = cJSON_CreateObject();
	cJSON_AddBoolToObject(res, "success", code == 0);
	cJSON_AddNumberToObject(res, "exitCode", code);
	add_output(res, "stdout", &o->buf[CHILD_OUT], x->base64);
	add_output(res, "stderr", &o->buf[CHILD_ERR], x->base64);
	if (x->base64)
		cJSON_AddStringToObject(res, "encoding", "base64");
	cJSON_AddStringToObject(res, "command", x->command);
	json_add_int(res, "duration", mono_ms() - o->started);
	cJSON_AddStringToObject(res, "timestamp", json_timestamp(ts));
	if (x->session_given)
		cJSON_AddStringToObject(res, "sessionId", x->session_id);
	reply_json(r, 200, res);
}

void route_execute(struct req *r)
{
	struct exec_req x;
	struct session *s = NULL;
	struct outcome o = { .buf = { STRBUF_INIT, STRBUF_INIT }, .started = mono_ms() };
	if (!parse_exec_req(r, &x, false))
		return;
	int err = take_session(r, &x, true, &s);
	if (err == -ETIMEDOUT) {
		/* the session's previous command outlasted our whole timeout */
		o.timed_out = true;
		err = 0;
	} else if (err) {
		reply_session_error(r, &x, err);
	} else {
		int left = x.timeout_ms > 0 ? x.timeout_ms - (int)(mono_ms() - o.started) : 0;
		err = run_foreground(r, &x, s, x.timeout_ms > 0 ? (left > 1 ? left : 1) : 0, &o);
		if (err)
			reply_spawn_error(r, err);
	}
	if (s)
		session_release(s);
	if (!err)
		reply_outcome(r, &x, &o);
	strv_free(x.env);
	strbuf_free(&o.buf[CHILD_OUT]);
	strbuf_free(&o.buf[CHILD_ERR]);
}

/* ---- POST /api/execute/stream ---- */

struct stream {
	struct child c;
	struct strbuf *out;      /* the events of the current next() */
	struct strbuf carry[2];  /* an incomplete UTF-8 sequence from the last chunk */
	char *command;
	bool base64;
	bool started, finished;
};

static void stream_event(struct strbuf *out, const char *type, const char *data)
{
	char ts[32];
	cJSON *ev = cJSON_CreateObject();
	cJSON_AddStringToObject(ev, "type", type);
	cJSON_AddStringToObject(ev, "data", data);
	cJSON_AddStringToObject(ev, "timestamp", json_timestamp(ts));
	sse_append(out, ev);
	cJSON_Delete(ev);
}

/* One stdout/stderr event for a chunk (none when it is only the start of a character). */
static void stream_chunk(struct stream *st, int which, const char *buf, size_t n, bool final)
{
	const char *type = which == CHILD_OUT ? "stdout" : "stderr";
	if (st->base64) {
		if (!n)
			return;
		char *enc = base64_encode_alloc(buf, n);
		if (!enc)
			abort();
		stream_event(st->out, type, enc);
		free(enc);
		return;
	}
	struct strbuf *carry = &st->carry[which];
	struct strbuf text = STRBUF_INIT;
	if (carry->len) {
		strbuf_append(carry, buf, n);
		size_t used = utf8_sanitize(&text, carry->data, carry->len, final);
		strbuf_consume(carry, used);
	} else {
		size_t used = utf8_sanitize(&text, buf, n, final);
		strbuf_append(carry, buf + used, n - used);
	}
	if (text.len)
		stream_event(st->out, type, text.data);
	strbuf_free(&text);
}

static bool stream_sink(void *ctx, enum child_stream which, const char *buf, size_t n)
{
	stream_chunk(ctx, which, buf, n, false);
	return true;
}

static const struct child_ops stream_ops = { .output = stream_sink };

static void stream_start_event(struct stream *st, struct strbuf *out)
{
	char ts[32];
	cJSON *ev = cJSON_CreateObject();
	cJSON_AddStringToObject(ev, "type", "start");
	cJSON_AddStringToObject(ev, "command", st->command);
	cJSON_AddStringToObject(ev, "timestamp", json_timestamp(ts));
	sse_append(out, ev);
	cJSON_Delete(ev);
	st->started = true;
}

/* The last events of a finished command: the rest of a character cut short, the timeout's
 * message, "complete". */
static void stream_end_events(struct stream *st, struct strbuf *out)
{
	char ts[32];
	for (int w = CHILD_OUT; w <= CHILD_ERR; w++)
		if (st->carry[w].len)
			stream_chunk(st, w, "", 0, true);
	int code = child_exit_code(&st->c);
	if (st->c.timed_out) {
		char msg[64];
		code = 124;
		snprintf(msg, sizeof msg, "Command timed out after %dms\n",
			 st->c.policy.timeout_ms);
		stream_chunk(st, CHILD_ERR, msg, strlen(msg), true);
	}
	cJSON *ev = cJSON_CreateObject();
	cJSON_AddStringToObject(ev, "type", "complete");
	cJSON_AddNumberToObject(ev, "exitCode", code);
	cJSON_AddStringToObject(ev, "timestamp", json_timestamp(ts));
	sse_append(out, ev);
	cJSON_Delete(ev);
}

static int stream_next(void *ctx, struct strbuf *out, int timeout_ms)
{
	struct stream *st = ctx;
	st->out = out;
	if (!st->started) {
		stream_start_event(st, out);
		return 1;
	}
	if (st->finished)
		return 0;
	/* return with the first output rather than wait out the whole timeout */
	int64_t end = mono_ms() + (timeout_ms < 0 ? 0 : timeout_ms);
	size_t before = out->len;
	bool done;
	for (;;) {
		int left = mono_left_ms(end);
		done = child_step(&st->c, left);
		if (done || out->len != before || left == 0)
			break;
	}
	if (!done)
		return 1;
	child_finish(&st->c);
	stream_end_events(st, out);
	st->finished = true;
	return 0;
}

static void stream_release(void *ctx)
{
	struct stream *st = ctx;
	child_finish(&st->c); /* the client went away early: the command goes too */
	child_free(&st->c);
	strbuf_free(&st->carry[CHILD_OUT]);
	strbuf_free(&st->carry[CHILD_ERR]);
	free(st->command);
	free(st);
}

void route_execute_stream(struct req *r)
{
	struct exec_req x;
	struct session *s = NULL;
	struct session_launch l = { 0 };

	if (!parse_exec_req(r, &x, true))
		return;
	/* the session lock is held only while the command starts, as in the container */
	int err = take_session(r, &x, false, &s);
	if (err) {
		if (err == -ETIMEDOUT)
			reply_error(r, 500, "COMMAND_EXECUTION_ERROR", ETIMEDOUT, NULL,
				    "Command timed out after %dms waiting for session '%s'",
				    x.timeout_ms, x.session_id);
		else
			reply_session_error(r, &x, err);
		strv_free(x.env);
		return;
	}
	struct stream *st = calloc(1, sizeof *st);
	if (!st || !(st->command = strdup(x.command)))
		abort();
	st->base64 = x.base64;
	struct child_policy policy = command_policy;
	policy.timeout_ms = x.timeout_ms;
	session_launch(s, x.command, x.cwd, x.env, false, &l);
	/* httpd watches a stream's client */
	err = command_start(&st->c, &l, st->command, &policy, &stream_ops, st, -1);
	if (s)
		session_release(s);
	session_launch_free(&l);
	strv_free(x.env);
	if (err) {
		child_free(&st->c);
		free(st->command);
		free(st);
		return reply_spawn_error(r, err);
	}
	reply_sse(r, (struct sse_source){ .next = stream_next, .release = stream_release,
					  .ctx = st });
}
