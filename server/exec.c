/* POST /api/execute and /api/execute/stream.
 *
 * A command's stdout and stderr are read concurrently with poll() (a command that fills one
 * pipe while we wait on the other would otherwise deadlock), together with its pidfd, so the
 * end of the command is noticed even when a background child keeps the pipes open: once the
 * command has exited, what it wrote is already in the pipes, so one drain pass ends the
 * collection and whatever it left running in the background no longer holds the request.
 *
 * /api/execute collects both outputs whole (each capped at 64 MiB) and answers once. The
 * stream is an sse_source: each next() polls for at most the time httpd gives it and turns
 * what arrived into events; text events carry incomplete UTF-8 sequences over to the next
 * chunk so a character is never split. If the client goes away first, release() kills the
 * command's process group; /api/execute watches its client's socket in the same poll() and
 * does the same (TERM, KILL after KILL_GRACE_MS), and so does a request still waiting for its
 * session's running command (sessions.c), which then never starts. Either way every child is
 * reaped. Stopping sbxd shuts every connection down, so this also bounds how long a stop
 * waits for commands.
 *
 * Output text is UTF-8 with invalid sequences and NUL bytes replaced by U+FFFD (cJSON strings
 * cannot hold NUL); "encoding":"base64" gives the bytes exactly. */
#include "server/exec.h"
#include "server/routes.h"
#include "server/runner.h"
#include "server/sessions.h"
#include "server/envstore.h"
#include "server/utf8.h"
#include "common/base64.h"
#include "common/clock.h"
#include "common/fdio.h"
#include "common/jsonutil.h"
#include "common/log.h"
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/wait.h>
#include <unistd.h>

#define OUTPUT_MAX ((size_t)64 << 20)
#define KILL_GRACE_MS 2000          /* SIGTERM, then SIGKILL this much later */
#define DRAIN_MAX_MS 200            /* after the exit: reading what is left, at most */
#define READ_CHUNK 65536
#define STEP_BYTES (1024 * 1024) /* per round, so timeouts and exits are seen */

/* ---- running a command and reading its output ---- */

enum { OUT, ERR };

struct proc_io {
	struct run_proc p;
	const char *input;      /* the command text, when it goes to stdin */
	size_t input_len, input_off;
	bool eof[2];
	bool exited, reaped;
	int status;
	int timeout_ms;         /* 0: none */
	int64_t deadline;       /* timeout, -1 none */
	int64_t kill_at;        /* SIGKILL after the SIGTERM of a timeout, -1 none */
	int64_t drain_until;    /* after the exit: reading what is left, until then */
	int client_fd;          /* the request's socket, watched for a hang-up; -1: not */
	bool client_gone;
	bool timed_out;
	bool killed;            /* by us, for any reason: its state is not to be kept */
};

typedef void (*sink_fn)(void *ctx, int which, const char *buf, size_t n);

static void io_kill(struct proc_io *io, int sig)
{
	runner_kill(&io->p, sig);
	io->killed = true;
}

/* Writes to the command's stdin, without dying of SIGPIPE when it has closed it. */
static void io_feed(struct proc_io *io)
{
	ssize_t w = fd_write_nosigpipe(io->p.stdin_fd, io->input + io->input_off,
				       io->input_len - io->input_off);
	if (w > 0)
		io->input_off += (size_t)w;
	if ((w < 0 && w != -EAGAIN && w != -EINTR) || io->input_off == io->input_len) {
		close(io->p.stdin_fd);
		io->p.stdin_fd = -1;
	}
}

/* Reads what fd has now, up to budget bytes; false once it reached EOF. */
static bool io_read(struct proc_io *io, int which, sink_fn sink, void *ctx, size_t *budget)
{
	int fd = which == OUT ? io->p.stdout_fd : io->p.stderr_fd;
	char buf[READ_CHUNK];
	while (*budget) {
		ssize_t n = read(fd, buf, *budget < sizeof buf ? *budget : sizeof buf);
		if (n > 0) {
			sink(ctx, which, buf, (size_t)n);
			*budget -= (size_t)n;
			continue;
		}
		if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
			io->eof[which] = true;
			return false;
		}
		if (errno == EAGAIN)
			break;
	}
	return true;
}

static void io_check_exit(struct proc_io *io)
{
	if (io->exited)
		return;
	int err = runner_wait(&io->p, &io->status, 0);
	if (err == -ETIMEDOUT)
		return;
	if (err) {
		log_error("exec: waiting for %d: %s", (int)io->p.pid, strerror(-err));
		io->status = 255 << 8;
	}
	/* a failed wait (nothing to reap) ends it just the same */
	io->exited = io->reaped = true;
	io->drain_until = mono_ms() + DRAIN_MAX_MS;
}

/* SIGTERM now (a timeout, a departed client), SIGKILL KILL_GRACE_MS later. */
static void io_stop(struct proc_io *io, int64_t now)
{
	io->deadline = -1;
	io_kill(io, SIGTERM);
	io->kill_at = now + KILL_GRACE_MS;
}

/* Timeouts: SIGTERM at the deadline, SIGKILL KILL_GRACE_MS later. */
static void io_timers(struct proc_io *io, int64_t now)
{
	if (io->deadline >= 0 && now >= io->deadline) {
		io->timed_out = true;
		io_stop(io, now);
	}
	if (io->kill_at >= 0 && now >= io->kill_at) {
		io->kill_at = -1;
		io_kill(io, SIGKILL);
	}
}

/* One round: waits at most wait_ms for output, input room or the exit, and hands what
 * arrived to sink (at most budget bytes). True once the command has exited and its output
 * is read. */
static bool io_step(struct proc_io *io, int wait_ms, sink_fn sink, void *ctx, size_t budget)
{
	int64_t now = mono_ms();
	io_timers(io, now);
	if (!io->exited) {
		struct pollfd pfd[5];
		int n = 0, i_out = -1, i_err = -1, i_in = -1, i_client = -1;
		if (!io->eof[OUT])
			pfd[i_out = n++] = (struct pollfd){ .fd = io->p.stdout_fd, .events = POLLIN };
		if (!io->eof[ERR])
			pfd[i_err = n++] = (struct pollfd){ .fd = io->p.stderr_fd, .events = POLLIN };
		if (io->p.stdin_fd >= 0)
			pfd[i_in = n++] = (struct pollfd){ .fd = io->p.stdin_fd, .events = POLLOUT };
		if (io->client_fd >= 0 && !io->client_gone)
			pfd[i_client = n++] = (struct pollfd){ .fd = io->client_fd,
							       .events = POLLRDHUP };
		if (io->p.pidfd >= 0)
			pfd[n++] = (struct pollfd){ .fd = io->p.pidfd, .events = POLLIN };
		else if (wait_ms < 0 || wait_ms > 10)
			wait_ms = 10; /* no pidfd: look for the exit now and then */
		int64_t next = io->deadline >= 0 ? io->deadline : io->kill_at;
		if (io->deadline >= 0 && io->kill_at >= 0 && io->kill_at < next)
			next = io->kill_at;
		if (next >= 0 && (wait_ms < 0 || next - now < wait_ms))
			wait_ms = next - now < 0 ? 0 : (int)(next - now);
		if (poll(pfd, (nfds_t)n, wait_ms) > 0) {
			if (i_in >= 0 && pfd[i_in].revents)
				io_feed(io);
			if (i_out >= 0 && pfd[i_out].revents)
				io_read(io, OUT, sink, ctx, &budget);
			if (i_err >= 0 && pfd[i_err].revents)
				io_read(io, ERR, sink, ctx, &budget);
			if (i_client >= 0 &&
			    pfd[i_client].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) {
				log_debug("exec: the client went away: stopping its command");
				io->client_gone = true;
				if (io->kill_at < 0)
					io_stop(io, mono_ms());
			}
		}
		io_check_exit(io);
		if (!io->exited)
			return false;
	}
	/* exited: everything it wrote is in the pipes; a background child holding them open
	 * does not keep us beyond DRAIN_MAX_MS */
	for (int w = OUT; w <= ERR; w++)
		if (!io->eof[w])
			io_read(io, w, sink, ctx, &budget);
	return budget > 0 || mono_ms() >= io->drain_until;
}

/* Starts the command; 0 or a negative errno. A client_fd >= 0 is watched: when that client
 * hangs up, the command is stopped. */
static int io_start(struct proc_io *io, const struct session_launch *l, const char *command,
		    int timeout_ms, int client_fd)
{
	struct run_spec spec = {
		.argv = (const char *const *)l->argv,
		.env = (const char *const *)l->env,
		.stdin_null = !l->command_on_stdin,
	};
	*io = (struct proc_io){ .deadline = -1, .kill_at = -1, .timeout_ms = timeout_ms,
				.client_fd = client_fd };
	int err = runner_spawn(&spec, &io->p);
	if (err)
		return err;
	if (l->command_on_stdin) {
		io->input = command;
		io->input_len = strlen(command);
	}
	if (timeout_ms > 0)
		io->deadline = mono_ms() + timeout_ms;
	return 0;
}

/* Ends the command if it still runs (SIGTERM, SIGKILL after the grace period), reaps it and
 * closes everything. */
static void io_finish(struct proc_io *io)
{
	if (io->p.pid > 0 && !io->reaped) {
		if (!io->exited) {
			io_kill(io, SIGTERM);
			if (runner_wait(&io->p, &io->status, KILL_GRACE_MS) == -ETIMEDOUT) {
				io_kill(io, SIGKILL);
				runner_wait(&io->p, &io->status, -1);
			}
		} else {
			runner_wait(&io->p, &io->status, -1);
		}
	}
	/* what a timed-out command left behind in its group goes too */
	if (io->timed_out)
		runner_kill(&io->p, SIGKILL);
	runner_close(&io->p);
}

/* ---- request fields shared by both routes ---- */

struct exec_req {
	const char *command;
	const char *cwd;
	char **env;
	const char *session_id;  /* resolved; SESSION_NONE for sessionless */
	bool session_given;
	bool base64;
	int timeout_ms;          /* 0: none (yet: the session's default applies later) */
};

/* Parses and validates; false after answering the request. */
static bool parse_exec_req(struct req *r, struct exec_req *x, bool stream)
{
	cJSON *body = req_json(r);
	const cJSON *cmd = cJSON_GetObjectItemCaseSensitive(body, "command");
	const cJSON *cwd = cJSON_GetObjectItemCaseSensitive(body, "cwd");
	const cJSON *tmo = cJSON_GetObjectItemCaseSensitive(body, "timeoutMs");
	*x = (struct exec_req){ 0 };

	if (stream && (!cJSON_IsString(cmd) || !*cmd->valuestring ||
		       strspn(cmd->valuestring, " \t\r\n\v\f") == strlen(cmd->valuestring))) {
		reply_error(r, 400, "INVALID_COMMAND", EINVAL, NULL,
			    "Invalid command: empty command provided");
		return false;
	}
	if (!cmd || cJSON_IsNull(cmd)) {
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL, "command is required");
		return false;
	}
	if (!cJSON_IsString(cmd)) {
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL, "command must be a string");
		return false;
	}
	x->command = cmd->valuestring;
	if (cwd && !cJSON_IsNull(cwd) && !cJSON_IsString(cwd)) {
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL, "cwd must be a string");
		return false;
	}
	if (cJSON_IsString(cwd) && *cwd->valuestring)
		x->cwd = cwd->valuestring;
	if (tmo && !cJSON_IsNull(tmo)) {
		if (!cJSON_IsNumber(tmo) || tmo->valuedouble < 0 || tmo->valuedouble > INT_MAX) {
			reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
				    "timeoutMs must be a number of milliseconds");
			return false;
		}
		x->timeout_ms = (int)tmo->valuedouble;
	}
	const char *enc = json_str(body, "encoding");
	x->base64 = enc && strcmp(enc, "base64") == 0;
	x->session_id = session_id_of_request(r, &x->session_given);
	if (!x->session_id)
		return false;
	char **req_env = session_env_from_json(r, cJSON_GetObjectItemCaseSensitive(body, "env"));
	if (!req_env)
		return false;
	/* the store's variables travel with the request's (which win): the session wrapper
	 * applies them over the session's state and leaves them out of what it saves */
	x->env = envstore_overlay((const char *const *)req_env);
	session_free_env(req_env);
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

struct collected {
	struct strbuf buf[2];
	bool overflow[2];
	struct proc_io *io;
};

static void collect(void *ctx, int which, const char *buf, size_t n)
{
	struct collected *c = ctx;
	if (c->overflow[which])
		return;
	if (c->buf[which].len + n > OUTPUT_MAX) {
		c->overflow[which] = true;
		io_kill(c->io, SIGKILL);
		return;
	}
	strbuf_append(&c->buf[which], buf, n);
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

void route_execute(struct req *r)
{
	struct exec_req x;
	struct session *s = NULL;
	struct session_launch l = { 0 };
	struct proc_io io = { .p = { .pid = -1, .stdin_fd = -1, .stdout_fd = -1, .stderr_fd = -1,
				     .pidfd = -1 } };
	struct collected c = { .buf = { STRBUF_INIT, STRBUF_INIT }, .io = &io };
	int64_t t0 = mono_ms();
	bool timed_out = false;

	if (json_bool(req_json(r), "background", false))
		return route_process_start(r); /* as the container: a process record */
	if (!parse_exec_req(r, &x, false))
		return;
	int err = take_session(r, &x, true, &s);
	if (err == -ETIMEDOUT) {
		/* the session's previous command outlasted our whole timeout */
		timed_out = true;
	} else if (err) {
		reply_session_error(r, &x, err);
		goto out;
	} else {
		session_launch(s, x.command, x.cwd, x.env, s != NULL, &l);
		int left = x.timeout_ms > 0 ? x.timeout_ms - (int)(mono_ms() - t0) : 0;
		err = io_start(&io, &l, x.command, x.timeout_ms > 0 ? (left > 1 ? left : 1) : 0,
			       req_client_fd(r));
		if (err) {
			reply_spawn_error(r, err);
			goto out;
		}
		t0 = mono_ms();
		while (!io_step(&io, -1, collect, &c, STEP_BYTES))
			;
		io_finish(&io);
		timed_out = io.timed_out;
		if (s && !io.killed)
			session_commit(s);
	}
	if (s) {
		session_release(s);
		s = NULL;
	}
	if (io.client_gone) {
		reply_client_left(r);
		goto out;
	}
	for (int w = OUT; w <= ERR; w++)
		if (c.overflow[w]) {
			reply_error(r, 500, "COMMAND_EXECUTION_ERROR", EFBIG, NULL,
				    "the command wrote more than %zu MiB to %s and was killed "
				    "(/api/execute/stream has no limit)", OUTPUT_MAX >> 20,
				    w == OUT ? "stdout" : "stderr");
			goto out;
		}

	int code = timed_out ? 124 : runner_exit_code(io.status);
	if (timed_out) {
		struct strbuf *e = &c.buf[ERR];
		if (e->len && e->data[e->len - 1] != '\n')
			strbuf_appends(e, "\n");
		strbuf_appendf(e, "Command timed out after %dms", x.timeout_ms);
	}
	char ts[32];
	cJSON *res = cJSON_CreateObject();
	cJSON_AddBoolToObject(res, "success", code == 0);
	cJSON_AddNumberToObject(res, "exitCode", code);
	add_output(res, "stdout", &c.buf[OUT], x.base64);
	add_output(res, "stderr", &c.buf[ERR], x.base64);
	if (x.base64)
		cJSON_AddStringToObject(res, "encoding", "base64");
	cJSON_AddStringToObject(res, "command", x.command);
	json_add_int(res, "duration", mono_ms() - t0);
	cJSON_AddStringToObject(res, "timestamp", json_timestamp(ts));
	if (x.session_given)
		cJSON_AddStringToObject(res, "sessionId", x.session_id);
	reply_json(r, 200, res);
out:
	if (s)
		session_release(s);
	session_launch_free(&l);
	session_free_env(x.env);
	strbuf_free(&c.buf[OUT]);
	strbuf_free(&c.buf[ERR]);
}

/* ---- POST /api/execute/stream ---- */

struct stream {
	struct proc_io io;
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
	const char *type = which == OUT ? "stdout" : "stderr";
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

static void stream_sink(void *ctx, int which, const char *buf, size_t n)
{
	stream_chunk(ctx, which, buf, n, false);
}

static int stream_next(void *ctx, struct strbuf *out, int timeout_ms)
{
	struct stream *st = ctx;
	char ts[32];
	st->out = out;
	if (!st->started) {
		cJSON *ev = cJSON_CreateObject();
		cJSON_AddStringToObject(ev, "type", "start");
		cJSON_AddStringToObject(ev, "command", st->command);
		cJSON_AddStringToObject(ev, "timestamp", json_timestamp(ts));
		sse_append(out, ev);
		cJSON_Delete(ev);
		st->started = true;
		return 1;
	}
	if (st->finished)
		return 0;
	/* return with the first output rather than wait out the whole timeout */
	int64_t end = mono_ms() + (timeout_ms < 0 ? 0 : timeout_ms);
	size_t before = out->len;
	bool done;
	for (;;) {
		int64_t left = end - mono_ms();
		done = io_step(&st->io, left > 0 ? (int)left : 0, stream_sink, st, STEP_BYTES);
		if (done || out->len != before || left <= 0)
			break;
	}
	if (!done)
		return 1;
	for (int w = OUT; w <= ERR; w++)
		if (st->carry[w].len)
			stream_chunk(st, w, "", 0, true);
	io_finish(&st->io);
	int code = runner_exit_code(st->io.status);
	if (st->io.timed_out) {
		code = 124;
		struct strbuf msg = STRBUF_INIT;
		strbuf_appendf(&msg, "Command timed out after %dms\n", st->io.timeout_ms);
		if (st->base64) {
			char *enc = base64_encode_alloc(msg.data, msg.len);
			stream_event(out, "stderr", enc);
			free(enc);
		} else {
			stream_event(out, "stderr", msg.data);
		}
		strbuf_free(&msg);
	}
	cJSON *ev = cJSON_CreateObject();
	cJSON_AddStringToObject(ev, "type", "complete");
	cJSON_AddNumberToObject(ev, "exitCode", code);
	cJSON_AddStringToObject(ev, "timestamp", json_timestamp(ts));
	sse_append(out, ev);
	cJSON_Delete(ev);
	st->finished = true;
	return 0;
}

static void stream_release(void *ctx)
{
	struct stream *st = ctx;
	if (!st->finished)
		io_finish(&st->io); /* the client went away: the command goes too */
	strbuf_free(&st->carry[OUT]);
	strbuf_free(&st->carry[ERR]);
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
		session_free_env(x.env);
		return;
	}
	struct stream *st = calloc(1, sizeof *st);
	if (!st || !(st->command = strdup(x.command)))
		abort();
	st->base64 = x.base64;
	session_launch(s, x.command, x.cwd, x.env, false, &l);
	err = io_start(&st->io, &l, st->command, x.timeout_ms, -1); /* httpd watches a stream */
	if (s)
		session_release(s);
	session_launch_free(&l);
	session_free_env(x.env);
	if (err) {
		free(st->command);
		free(st);
		return reply_spawn_error(r, err);
	}
	reply_sse(r, (struct sse_source){ .next = stream_next, .release = stream_release,
					  .ctx = st });
}

/* ---- a session's environment, for code contexts ---- */

#define SNAPSHOT_TIMEOUT_MS 10000
#define SNAPSHOT_MAX ((size_t)4 << 20)

static void snapshot_collect(void *ctx, int which, const char *buf, size_t n)
{
	struct strbuf *out = ctx;
	if (which == OUT && out->len + n <= SNAPSHOT_MAX)
		strbuf_append(out, buf, n);
}

/* Names a shell sets for itself, which are no part of what the session holds. */
static bool shell_own(const char *kv)
{
	return strncmp(kv, "_=", 2) == 0 || strncmp(kv, "SHLVL=", 6) == 0 ||
	       strncmp(kv, "OLDPWD=", 7) == 0;
}

int exec_session_snapshot(const char *id, int client_fd, char ***env, char **cwd,
			  unsigned long *serial)
{
	/* `command env`: not a function or alias of the session called env */
	static const char probe[] = "builtin printf '%s\\0' \"$PWD\"; command env -0";
	struct session *s;
	struct session_launch l = { 0 };
	struct proc_io io = { .p = { .pid = -1, .stdin_fd = -1, .stdout_fd = -1, .stderr_fd = -1,
				     .pidfd = -1 } };
	struct strbuf out = STRBUF_INIT;
	*env = NULL;
	*cwd = NULL;
	int err = session_acquire(id, NULL, -1, client_fd, &s);
	if (err)
		return err;
	*serial = session_serial(s);
	char **overlay = envstore_overlay(NULL);
	session_launch(s, probe, NULL, overlay, false, &l);
	envstore_free(overlay);
	err = io_start(&io, &l, probe, SNAPSHOT_TIMEOUT_MS, client_fd);
	if (!err) {
		while (!io_step(&io, -1, snapshot_collect, &out, STEP_BYTES))
			;
		io_finish(&io);
		if (io.client_gone)
			err = -ECONNABORTED;
		else if (io.timed_out || !WIFEXITED(io.status) || WEXITSTATUS(io.status) != 0)
			err = -EIO;
	}
	session_release(s);
	session_launch_free(&l);
	/* "<cwd>\0K=V\0K=V\0..." */
	size_t n = 0;
	for (size_t i = 0; !err && i < out.len; i++)
		n += out.data[i] == '\0';
	if (!err && (!n || out.data[out.len - 1] != '\0'))
		err = -EPROTO;
	if (!err) {
		char **v = calloc(n + 1, sizeof *v);
		if (!v || !(*cwd = strdup(out.data)))
			abort();
		size_t k = 0;
		for (const char *p = out.data + strlen(out.data) + 1; p < out.data + out.len;
		     p += strlen(p) + 1)
			if (strchr(p, '=') && !shell_own(p) && !(v[k++] = strdup(p)))
				abort();
		*env = v;
	}
	strbuf_free(&out);
	return err;
}
