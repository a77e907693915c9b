/* The routes of background processes (container API §8, and POST /api/x/process/remove): each
 * decodes its request, asks the table of server/processes.h and answers in the container's
 * shapes. Output goes out as text (UTF-8, invalid sequences replaced) whose characters are
 * never split between two events of a stream. */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/clock.h"
#include "common/jsonutil.h"
#include "common/strv.h"
#include "server/processes.h"
#include "server/request.h"
#include "server/routes.h"
#include "server/sbxd.h"
#include "server/sessions.h"
#include "server/sessions_routes.h"
#include "server/utf8.h"

#define EVENT_BYTES 65536           /* output per stream event */
#define STREAM_ROUND_BYTES (1024 * 1024)
#define STR_(x) #x
#define STR(x) STR_(x)
#define EMPTY_COMMAND "Invalid command: empty command provided"

static struct procs *procs_of(struct req *r)
{
	return req_sbxd(r)->procs;
}

static const char *iso_time(const struct timespec *t, char buf[32])
{
	struct tm tm;
	gmtime_r(&t->tv_sec, &tm);
	size_t n = strftime(buf, 32, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf + n, 32 - n, ".%03ldZ", t->tv_nsec / 1000000);
	return buf;
}

static cJSON *id_context(const char *id)
{
	cJSON *ctx = cJSON_CreateObject();
	cJSON_AddStringToObject(ctx, "processId", id ? id : "");
	return ctx;
}

static void reply_not_found(struct req *r, const char *id)
{
	reply_error(r, 404, "PROCESS_NOT_FOUND", ENOENT, id_context(id), "Process %s not found",
		    id ? id : "");
}

/* The record with the id of the path, referenced; NULL after answering 404. */
static struct proc *record_of_path(struct req *r)
{
	struct proc *p = procs_get(procs_of(r), req_path_arg(r));
	if (!p)
		reply_not_found(r, req_path_arg(r));
	return p;
}

/* The record as the API shows it. */
static cJSON *record_json(const struct proc_info *i)
{
	char ts[32];
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "id", i->id);
	if (i->pid > 0)
		cJSON_AddNumberToObject(o, "pid", i->pid);
	cJSON_AddStringToObject(o, "command", i->command);
	cJSON_AddStringToObject(o, "status", proc_status_name(i->status));
	if (i->session_id)
		cJSON_AddStringToObject(o, "sessionId", i->session_id);
	cJSON_AddStringToObject(o, "startTime", iso_time(&i->start, ts));
	if (i->status != PROC_RUNNING) {
		cJSON_AddStringToObject(o, "endTime", iso_time(&i->end, ts));
		cJSON_AddNumberToObject(o, "exitCode", i->exit_code);
	}
	json_add_int(o, "stdoutSize", (int64_t)i->out_size);
	json_add_int(o, "stderrSize", (int64_t)i->err_size);
	if (i->truncated)
		cJSON_AddTrueToObject(o, "outputTruncated");
	return o;
}

/* ---- POST /api/process/start ---- */

struct start_req {
	const char *command, *cwd, *process_id;
	double timeout_ms;
};

static bool valid_process_id(const cJSON *v)
{
	return proc_id_valid(v->valuestring);
}

static const struct field start_fields[] = {
	FIELD("command", FIELD_STRING, struct start_req, command,
	      .flags = FIELD_REQUIRED | FIELD_NOT_BLANK, .code = "INVALID_COMMAND",
	      .wrong = EMPTY_COMMAND, .missing = EMPTY_COMMAND),
	FIELD("cwd", FIELD_STRING, struct start_req, cwd, .flags = FIELD_EMPTY_ABSENT,
	      .wrong = "cwd must be a string"),
	FIELD("timeoutMs", FIELD_NUMBER, struct start_req, timeout_ms, .min = 0, .max = INT_MAX,
	      .wrong = "timeoutMs must be a number of milliseconds"),
	FIELD("processId", FIELD_STRING, struct start_req, process_id, .valid = valid_process_id,
	      .wrong = "processId must be 1 to " STR(PROC_ID_MAX) " letters, digits or _-.:@+ "
		       "(not starting with '.', not 'list' or 'kill-all')"),
};

/* In a session (named in the body, as the container has it), the process starts from the
 * session's state; like the container's background commands it takes the session only to
 * start, after the session's running command, for as long as its client waits. False after
 * answering. */
static bool take_session(struct req *r, const char *id, struct session **s)
{
	*s = NULL;
	if (strcmp(id, SESSION_NONE) == 0)
		return true;
	int err = session_acquire(id, NULL, -1, req_client_fd(r), s);
	if (err == -ECONNABORTED)
		reply_error(r, 499, "CLIENT_CLOSED_REQUEST", ECANCELED, NULL,
			    "the client hung up; the process was not started");
	else if (err)
		reply_error(r, 500, "INTERNAL_ERROR", -err, NULL, "session '%s': %s", id,
			    err == -ENOSPC ? "too many sessions" : strerror(-err));
	return !err;
}

static void reply_not_started(struct req *r, const char *id, int err)
{
	if (err == -EEXIST)
		reply_error(r, 409, "PROCESS_ALREADY_EXISTS", EEXIST, id_context(id),
			    "Process %s already exists and is running", id);
	else if (err == -ENOSPC)
		reply_error(r, 500, "PROCESS_ERROR", ENOSPC, id_context(id),
			    "too many process records (%d): remove finished ones", PROCS_MAX);
	else
		reply_error(r, 503, "PROCESS_ERROR", -err, id_context(id), "sbxd is stopping");
}

void route_process_start(struct req *r)
{
	struct start_req x = { 0 };
	bool given;
	if (!req_decode(r, start_fields, FIELDS_N(start_fields), &x))
		return;
	const char *session_id = session_id_of_body(r, &given);
	if (!session_id)
		return;
	char **env = session_env_from_json(r, cJSON_GetObjectItemCaseSensitive(req_json(r),
									       "env"));
	struct session *s;
	if (!env || !take_session(r, session_id, &s))
		return strv_free(env);
	struct proc_spec spec = { .id = x.process_id, .command = x.command, .cwd = x.cwd,
				  .env = env, .timeout_ms = (int)x.timeout_ms, .session = s,
				  .session_id = session_id };
	struct proc *p;
	int err = procs_start(procs_of(r), &spec, &p);
	if (s)
		session_release(s);
	strv_free(env);
	if (err)
		return reply_not_started(r, x.process_id, err);
	struct proc_info i;
	proc_info(procs_of(r), p, &i);
	cJSON *out = cJSON_CreateObject();
	cJSON_AddStringToObject(out, "processId", i.id);
	if (i.pid > 0)
		cJSON_AddNumberToObject(out, "pid", i.pid);
	cJSON_AddStringToObject(out, "command", i.command);
	proc_put(procs_of(r), p);
	reply_ok(r, out);
}

/* ---- reading records ---- */

void route_process_list(struct req *r)
{
	const char *want = req_query(r, "status");
	cJSON *list = cJSON_CreateArray();
	size_t n;
	struct proc **v = procs_list(procs_of(r), &n);
	for (size_t k = 0; k < n; k++) {
		struct proc_info i;
		proc_info(procs_of(r), v[k], &i);
		if (!want || strcmp(want, proc_status_name(i.status)) == 0)
			cJSON_AddItemToArray(list, record_json(&i));
	}
	procs_list_put(procs_of(r), v, n);
	cJSON *out = cJSON_CreateObject();
	cJSON_AddItemToObject(out, "processes", list);
	reply_ok(r, out);
}

void route_process_get(struct req *r)
{
	struct proc *p = record_of_path(r);
	if (!p)
		return;
	struct proc_info i;
	proc_info(procs_of(r), p, &i);
	cJSON *out = cJSON_CreateObject();
	cJSON_AddItemToObject(out, "process", record_json(&i));
	proc_put(procs_of(r), p);
	reply_ok(r, out);
}

static void add_text(cJSON *o, const char *key, const struct strbuf *log)
{
	struct strbuf text = STRBUF_INIT;
	utf8_sanitize(&text, log->len ? log->data : "", log->len, true);
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
	struct proc *p = record_of_path(r);
	if (!p)
		return;
	struct strbuf log[2] = { STRBUF_INIT, STRBUF_INIT };
	struct proc_info i;
	proc_logs(procs_of(r), p, from > SIZE_MAX ? SIZE_MAX : (size_t)from, &log[0], &log[1],
		  &i);
	cJSON *out = cJSON_CreateObject();
	cJSON_AddStringToObject(out, "processId", i.id);
	add_text(out, "stdout", &log[0]);
	add_text(out, "stderr", &log[1]);
	json_add_int(out, "stdoutSize", (int64_t)i.out_size);
	json_add_int(out, "stderrSize", (int64_t)i.err_size);
	if (i.truncated)
		cJSON_AddTrueToObject(out, "outputTruncated");
	proc_put(procs_of(r), p);
	strbuf_free(&log[0]);
	strbuf_free(&log[1]);
	reply_ok(r, out);
}

/* ---- GET /api/process/{id}/stream ---- */

struct pstream {
	struct procs *t;
	struct proc *p;
	const char *id;           /* the record's */
	struct proc_cursor at;    /* the next byte to send */
	struct strbuf carry[2];   /* an incomplete UTF-8 character from the last event */
	struct strbuf *out;       /* the events of the current next() */
	bool info_sent;
};

static void stream_event(struct strbuf *out, const char *type, const char *id, cJSON *ev)
{
	char ts[32];
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	cJSON_AddStringToObject(ev, "type", type);
	cJSON_AddStringToObject(ev, "processId", id);
	cJSON_AddStringToObject(ev, "timestamp", iso_time(&now, ts));
	sse_append(out, ev);
	cJSON_Delete(ev);
}

/* One event for bytes of one stream, keeping characters whole across events. */
static void stream_bytes(void *ctx, enum child_stream which, const char *buf, size_t n)
{
	struct pstream *s = ctx;
	struct strbuf *carry = &s->carry[which];
	struct strbuf text = STRBUF_INIT;
	strbuf_append(carry, buf, n);
	size_t used = utf8_sanitize(&text, carry->len ? carry->data : "", carry->len, !n);
	strbuf_consume(carry, used);
	if (text.len) {
		cJSON *ev = cJSON_CreateObject();
		cJSON_AddStringToObject(ev, "data", text.data);
		stream_event(s->out, which == CHILD_OUT ? "stdout" : "stderr", s->id, ev);
	}
	strbuf_free(&text);
}

static void stream_info(struct pstream *s, const struct proc_info *i)
{
	cJSON *ev = cJSON_CreateObject();
	cJSON_AddStringToObject(ev, "command", i->command);
	cJSON_AddStringToObject(ev, "status", proc_status_name(i->status));
	stream_event(s->out, "process_info", s->id, ev);
	s->info_sent = true;
}

/* The end: the rest of a character cut short, then "exit". */
static void stream_exit(struct pstream *s, const struct proc_info *i)
{
	char msg[64];
	for (int w = CHILD_OUT; w <= CHILD_ERR; w++)
		if (s->carry[w].len)
			stream_bytes(s, w, "", 0);
	snprintf(msg, sizeof msg, "Process %s with exit code %d", proc_status_name(i->status),
		 i->exit_code);
	cJSON *ev = cJSON_CreateObject();
	cJSON_AddNumberToObject(ev, "exitCode", i->exit_code);
	cJSON_AddStringToObject(ev, "data", msg);
	stream_event(s->out, "exit", s->id, ev);
}

static int stream_next(void *ctx, struct strbuf *out, int timeout_ms)
{
	struct pstream *s = ctx;
	struct proc_info i;
	s->out = out;
	if (!s->info_sent) {
		proc_info(s->t, s->p, &i);
		stream_info(s, &i);
		return 1;
	}
	int64_t deadline = mono_ms() + (timeout_ms > 0 ? timeout_ms : 0);
	if (proc_follow(s->t, s->p, &s->at, EVENT_BYTES, STREAM_ROUND_BYTES, deadline,
			stream_bytes, s, &i))
		return 1;
	stream_exit(s, &i);
	return 0;
}

static void stream_release(void *ctx)
{
	struct pstream *s = ctx;
	proc_put(s->t, s->p);
	strbuf_free(&s->carry[CHILD_OUT]);
	strbuf_free(&s->carry[CHILD_ERR]);
	free(s);
}

void route_process_stream(struct req *r)
{
	struct proc *p = record_of_path(r);
	if (!p)
		return;
	struct pstream *s = calloc(1, sizeof *s);
	if (!s)
		abort();
	struct proc_info i;
	proc_info(procs_of(r), p, &i);
	*s = (struct pstream){ .t = procs_of(r), .p = p, .id = i.id,
			       .carry = { STRBUF_INIT, STRBUF_INIT } };
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
	int sig = proc_signal_number(name);
	if (!sig)
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
			    "unknown signal '%s' (a name such as TERM, INT, KILL, or a number)",
			    name);
	return sig;
}

void route_process_kill(struct req *r)
{
	int sig = signal_of_request(r);
	struct proc *p = sig ? record_of_path(r) : NULL;
	if (!p)
		return;
	const char *id = req_path_arg(r);
	if (proc_kill(procs_of(r), p, sig) < 0)
		reply_error(r, 404, "COMMAND_NOT_FOUND", ESRCH, id_context(id),
			    "Process %s is not running (already completed)", id);
	else
		reply_ok(r, id_context(id));
	proc_put(procs_of(r), p);
}

void route_process_kill_all(struct req *r)
{
	int sig = signal_of_request(r);
	if (!sig)
		return;
	cJSON *out = cJSON_CreateObject();
	cJSON_AddNumberToObject(out, "cleanedCount", procs_kill_all(procs_of(r), sig));
	reply_ok(r, out);
}

/* ---- POST /api/x/process/remove ---- */

void route_x_process_remove(struct req *r)
{
	const char *id = json_str(req_json(r), "processId");
	if (!id || !*id)
		return reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
				   "processId is required");
	int err = procs_remove(procs_of(r), id);
	if (err == -ENOENT)
		return reply_not_found(r, id);
	if (err == -EBUSY)
		return reply_error(r, 409, "RESOURCE_BUSY", EBUSY, id_context(id),
				   "Process %s is still running: kill it first", id);
	reply_ok(r, id_context(id));
}
