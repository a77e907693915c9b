/* Background processes over the sandbox API (client/processes.h).
 *
 * Following a process. One SSE stream at a time, on the shared network thread; its callbacks
 * never block. The server may end a stream before the process ends: the container cuts an
 * idle stream after about 255 s, and a connection that goes silent past the idle timeout is
 * given up. Such a stream (one that got as far as process_info, so the id is known and the
 * server answered) is reopened at once from its own on_end, still on the network thread:
 * opening only queues the request. Every new stream starts with a replay of all output so far
 * (sbxd: in order; the container: all stdout, then all stderr), so the bytes already delivered
 * of each channel are counted and skipped. A server that keeps ending streams without sending
 * anything new is given up after a few tries instead of being asked forever.
 *
 * ps->lock guards the current stream pointer and the end state: close and a reconnect cannot
 * cross (close sets `closing` first; an on_end that sees it does not reconnect), and the old
 * stream of a reconnect is closed from the network thread, which frees it after its on_end.
 *
 * Starting a process exactly once. With sbxd the start carries an idempotency key. A plain
 * container knows no keys, so the start names the process itself (processId, unique for this
 * client) and is never sent twice blindly: when its answer is lost, the process's record is
 * looked up, and only if there is none is the start sent again. */
#include "client/processes.h"
#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "client/sandbox_impl.h"
#include "common/clock.h"
#include "common/jsonutil.h"
#include "common/log.h"

#define STREAM_CONNECT_MS 15000
#define STREAM_IDLE_MS 45000      /* sbxd sends keepalives well within this */
#define KILL_ALL_MS 120000        /* several TERM-deaf processes cost 5 s each */
#define MAX_IDLE_RECONNECTS 3

void sbx_process_clear(struct sbx_process *p)
{
	free(p->id);
	free(p->command);
	free(p->status);
	free(p->start_time);
	free(p->end_time);
	free(p->session);
	free(p->json);
	memset(p, 0, sizeof(*p));
}

void sbx_processes_free(struct sbx_process *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		sbx_process_clear(&v[i]);
	free(v);
}

static int parse_record(const cJSON *r, struct sbx_process *p)
{
	memset(p, 0, sizeof(*p));
	const char *id = json_str(r, "id");
	if (!id)
		return sbx_fail(-EPROTO, "the server's process record has no id");
	p->id = sbx_strdup(id);
	p->command = sbx_strdup(json_str(r, "command") ? json_str(r, "command") : "");
	p->status = sbx_strdup(json_str(r, "status") ? json_str(r, "status") : "unknown");
	const cJSON *code = cJSON_GetObjectItemCaseSensitive(r, "exitCode");
	if (cJSON_IsNumber(code)) {
		p->has_exit_code = true;
		p->exit_code = code->valueint;
	}
	p->pid = (long)json_int(r, "pid", 0);
	p->start_time = sbx_strdup(json_str(r, "startTime"));
	p->end_time = sbx_strdup(json_str(r, "endTime"));
	p->session = sbx_strdup(json_str(r, "sessionId"));
	p->json = cJSON_Print(r);
	if (!p->json)
		abort();
	return 0;
}

/* "/api/process/<id><suffix>" with the id percent-encoded. */
static char *process_path(const char *id, const char *suffix)
{
	char *enc = http_urlencode(id), *path;
	if (!enc || asprintf(&path, "/api/process/%s%s", enc, suffix) < 0)
		abort();
	free(enc);
	return path;
}

/* Without keys: see "Starting a process exactly once" above. Takes body. */
static int start_once(struct sbx *s, cJSON *body, char **id)
{
	char pid[HTTP_KEY_MAX + 8];
	char key[HTTP_KEY_MAX];
	http_client_new_key(s->http, key);
	snprintf(pid, sizeof pid, "sbxfs-%s", key);
	cJSON_AddStringToObject(body, "processId", pid);
	int64_t deadline = mono_ms() + s->deadline_ms;
	int err;
	for (;;) {
		err = sbx_call_string(s, "process start", "POST", "/api/process/start",
				      cJSON_Duplicate(body, true), false, 0, "processId", id);
		if (!err || !sbx_last_lost() || mono_ms() >= deadline)
			break;
		char saved[512];
		snprintf(saved, sizeof saved, "%s", sbx_last_error());
		struct sbx_process p = { 0 };
		int e = sbx_process_get(s, pid, &p);
		sbx_process_clear(&p);
		if (!e) {
			log_info("%s: it started (its answer was lost)", saved);
			*id = sbx_strdup(pid);
			err = 0;
			break;
		}
		sbx_fail(err, "%s", saved);
		if (e != -ENOENT)
			break; /* cannot tell: it may run */
	}
	cJSON_Delete(body);
	return err;
}

int sbx_process_start(struct sbx *s, const char *command, const char *cwd,
		      const char *const *env, char **id)
{
	return sbx_process_start_in(s, NULL, command, cwd, env, id);
}

int sbx_process_start_in(struct sbx *s, const char *session, const char *command,
			 const char *cwd, const char *const *env, char **id)
{
	const char *c = command;
	while (isspace((unsigned char)*c))
		c++;
	if (!*c)
		return sbx_fail(-EINVAL, "process start: the command is empty");
	/* a plain container never starts a process in a cwd that does not exist, nor says so */
	int cwd_err = cwd && s->fb ? sbx_fallback_check_dir(s, cwd) : 0;
	if (cwd_err) {
		char why[512];
		snprintf(why, sizeof why, "%s", sbx_last_error());
		return sbx_fail(cwd_err, "process start: cwd %s", why);
	}
	cJSON *body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "command", command);
	if (cwd)
		cJSON_AddStringToObject(body, "cwd", cwd);
	if (session)
		cJSON_AddStringToObject(body, "sessionId", session);
	if (env && *env) {
		cJSON *e = cJSON_AddObjectToObject(body, "env");
		for (; *env; env++) {
			const char *eq = strchr(*env, '=');
			if (!eq || eq == *env) {
				cJSON_Delete(body);
				return sbx_fail(-EINVAL, "process start: '%s' is not NAME=VALUE",
						*env);
			}
			char *name = strndup(*env, (size_t)(eq - *env));
			if (!name)
				abort();
			cJSON_DeleteItemFromObjectCaseSensitive(e, name);
			cJSON_AddStringToObject(e, name, eq + 1);
			free(name);
		}
	}
	if (s->keys)
		return sbx_call_string(s, "process start", "POST", "/api/process/start", body,
				       false, 0, "processId", id);
	return start_once(s, body, id);
}

int sbx_process_list(struct sbx *s, struct sbx_process **v, size_t *n)
{
	cJSON *j;
	const cJSON *arr;
	int err = sbx_call_list(s, "process list", "/api/process/list", "processes", &j, &arr);
	if (err)
		return err;
	size_t cnt = (size_t)cJSON_GetArraySize(arr), i = 0;
	struct sbx_process *out = calloc(cnt ? cnt : 1, sizeof(*out));
	if (!out)
		abort();
	const cJSON *r;
	cJSON_ArrayForEach(r, arr) {
		if (parse_record(r, &out[i]) == 0)
			i++;
	}
	cJSON_Delete(j);
	*v = out;
	*n = i;
	return 0;
}

int sbx_process_get(struct sbx *s, const char *id, struct sbx_process *p)
{
	char what[300];
	snprintf(what, sizeof what, "process %s", id);
	char *path = process_path(id, "");
	cJSON *j;
	int err = sbx_call(s, what, "GET", path, NULL, true, 0, &j);
	free(path);
	if (err)
		return err;
	const cJSON *r = cJSON_GetObjectItemCaseSensitive(j, "process");
	err = cJSON_IsObject(r) ? parse_record(r, p)
				: sbx_fail(-EPROTO, "%s: the answer has no process record", what);
	cJSON_Delete(j);
	return err;
}

int sbx_process_logs(struct sbx *s, const char *id, char **out, size_t *out_len, char **err_text,
		     size_t *err_len)
{
	char what[300];
	snprintf(what, sizeof what, "process %s logs", id);
	char *path = process_path(id, "/logs");
	cJSON *j;
	int err = sbx_call(s, what, "GET", path, NULL, true, 0, &j);
	free(path);
	if (err)
		return err;
	const char *o = json_str(j, "stdout"), *e = json_str(j, "stderr");
	*out = sbx_strdup(o ? o : "");
	*out_len = strlen(*out);
	*err_text = sbx_strdup(e ? e : "");
	*err_len = strlen(*err_text);
	cJSON_Delete(j);
	return 0;
}

int sbx_signal_parse(const char *text)
{
	char name[32];
	size_t n = 0;
	while (isspace((unsigned char)*text))
		text++;
	for (; *text && !isspace((unsigned char)*text); text++)
		if (n < sizeof(name) - 1)
			name[n++] = (char)toupper((unsigned char)*text);
	name[n] = '\0';
	const char *rest = text;
	while (isspace((unsigned char)*rest))
		rest++;
	if (*rest)
		return sbx_fail(-EINVAL, "signal: one signal name or number, not '%s %s'", name,
				rest);
	if (!n)
		return SIGTERM;
	if (isdigit((unsigned char)name[0])) {
		char *end;
		long v = strtol(name, &end, 10);
		if (*end || v < 1 || v > SIGRTMAX)
			return sbx_fail(-EINVAL, "signal: no signal number %s", name);
		return (int)v;
	}
	const char *bare = strncmp(name, "SIG", 3) == 0 ? name + 3 : name;
	for (int sig = 1; sig < NSIG; sig++) {
		const char *abbrev = sigabbrev_np(sig);
		if (abbrev && strcmp(abbrev, bare) == 0)
			return sig;
	}
	return sbx_fail(-EINVAL, "signal: unknown signal '%s' (try TERM, INT, KILL, HUP or a "
			"number)", name);
}

/* "" for TERM (the container's only signal, the default everywhere), else "?signal=NAME";
 * -EOPNOTSUPP on a backend without the extension. */
static int signal_query(struct sbx *s, const char *what, int sig, char *buf, size_t size)
{
	buf[0] = '\0';
	if (sig == SIGTERM)
		return 0;
	const char *abbrev = sigabbrev_np(sig);
	if (!s->info.extensions)
		return sbx_fail(-EOPNOTSUPP, "%s: this backend (a plain container) can only send the "
				"default signal, TERM (then KILL after 5 s); SIG%s needs sbxd",
				what, abbrev ? abbrev : "?");
	if (abbrev)
		snprintf(buf, size, "?signal=%s", abbrev);
	else
		snprintf(buf, size, "?signal=%d", sig);
	return 0;
}

int sbx_process_kill(struct sbx *s, const char *id, int sig)
{
	char what[300], query[48];
	snprintf(what, sizeof what, "kill process %s", id);
	int err = signal_query(s, what, sig, query, sizeof query);
	if (err)
		return err;
	char *path = process_path(id, query);
	cJSON *j;
	err = sbx_call(s, what, "DELETE", path, NULL, false, 0, &j);
	free(path);
	cJSON_Delete(j);
	if (err != -ENOENT)
		return err;
	/* Not found: the id is unknown, or (the container's answer) the process already ended. */
	char reason[512];
	snprintf(reason, sizeof reason, "%s", sbx_last_error());
	struct sbx_process p;
	if (sbx_process_get(s, id, &p) == 0) {
		bool ended = strcmp(p.status, "running") != 0;
		if (ended)
			err = sbx_fail(-ESRCH, "%s: it has already ended (%s)", what, p.status);
		sbx_process_clear(&p);
		if (ended)
			return err;
	}
	return sbx_fail(-ENOENT, "%s", reason);
}

int sbx_process_kill_all(struct sbx *s, int sig, int *count)
{
	char query[48];
	int err = signal_query(s, "kill all processes", sig, query, sizeof query);
	if (err)
		return err;
	char path[96];
	snprintf(path, sizeof path, "/api/process/kill-all%s", query);
	cJSON *j;
	err = sbx_call(s, "kill all processes", "DELETE", path, NULL, false, KILL_ALL_MS, &j);
	if (!err && count)
		*count = (int)json_int(j, "cleanedCount", 0);
	cJSON_Delete(j);
	return err;
}

int sbx_process_remove(struct sbx *s, const char *id)
{
	char what[300];
	snprintf(what, sizeof what, "remove process %s", id);
	if (!s->info.extensions)
		return sbx_fail(-EOPNOTSUPP, "%s: this backend (a plain container) keeps finished "
				"process records forever; it has no route to remove one", what);
	cJSON *body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "processId", id);
	cJSON *j;
	int err = sbx_call(s, what, "POST", "/api/x/process/remove", body, false, 0, &j);
	cJSON_Delete(j);
	return err;
}

/* ---- following ---- */

struct sbx_process_stream {
	struct sbx *s;
	char *id, *path;
	struct sbx_process_stream_ops ops;
	void *arg;

	pthread_mutex_t lock;
	struct http_stream *stream; /* the current one */
	bool closing, done;
	bool answered;              /* the current stream got process_info */
	size_t seen[2], skip[2];    /* bytes delivered / still to skip, stdout and stderr */
	bool fresh_output;          /* the current stream delivered something new */
	int idle_reconnects;
};

static const struct http_stream_ops follow_ops;

static struct http_stream *follow_connect(struct sbx_process_stream *ps)
{
	struct http_request req = {
		.method = "GET",
		.path = ps->path,
		.timeout_ms = STREAM_CONNECT_MS,
		.idempotent = true,
	};
	return http_stream_open(ps->s->http, &req, &follow_ops, ps,
				ps->s->heartbeats ? STREAM_IDLE_MS : 0);
}

/* Caller holds ps->lock. */
static void follow_finish(struct sbx_process_stream *ps, int err, int exit_code)
{
	if (ps->done || ps->closing)
		return;
	ps->done = true;
	ps->ops.on_end(ps->arg, err, exit_code);
}

static int follow_event(void *arg, const struct sse_event *ev)
{
	struct sbx_process_stream *ps = arg;
	cJSON *j = cJSON_ParseWithLength(ev->data, ev->data_len);
	const char *type = json_str(j, "type");
	int stop = 0;
	pthread_mutex_lock(&ps->lock);
	if (!type || ps->done || ps->closing) {
		/* nothing to do */
	} else if (strcmp(type, "process_info") == 0) {
		ps->answered = true;
	} else if (strcmp(type, "stdout") == 0 || strcmp(type, "stderr") == 0) {
		int ch = type[3] == 'e';
		const char *data = json_str(j, "data");
		size_t len = data ? strlen(data) : 0, skip = ps->skip[ch] < len ? ps->skip[ch] : len;
		ps->skip[ch] -= skip;
		if (len > skip) {
			ps->seen[ch] += len - skip;
			ps->fresh_output = true;
			ps->ops.on_output(ps->arg, ch, data + skip, len - skip);
		}
	} else if (strcmp(type, "exit") == 0) {
		const cJSON *code = cJSON_GetObjectItemCaseSensitive(j, "exitCode");
		follow_finish(ps, 0, cJSON_IsNumber(code) ? code->valueint : -1);
		stop = 1;
	}
	pthread_mutex_unlock(&ps->lock);
	cJSON_Delete(j);
	return stop;
}

static void follow_end(void *arg, int err, long status, const char *body, size_t body_len)
{
	struct sbx_process_stream *ps = arg;
	pthread_mutex_lock(&ps->lock);
	if (ps->done || ps->closing)
		goto out;
	char what[300];
	snprintf(what, sizeof what, "follow process %s", ps->id);
	if (status && status != 200) {
		follow_finish(ps, sbx_fail_response(what, status, body, body_len), -1);
		goto out;
	}
	bool cut = ps->answered && (err == 0 || err == -ETIMEDOUT);
	ps->idle_reconnects = ps->fresh_output ? 0 : ps->idle_reconnects + 1;
	if (!cut || ps->idle_reconnects > MAX_IDLE_RECONNECTS) {
		int e = err ? err : -EIO;
		log_warn("%s: the stream ended before the process did (%s)", what,
			 err ? strerror(-err) : "closed by the server");
		follow_finish(ps, e, -1);
		goto out;
	}
	log_debug("%s: the server ended the stream early; reopening it", what);
	struct http_stream *old = ps->stream;
	ps->answered = ps->fresh_output = false;
	memcpy(ps->skip, ps->seen, sizeof(ps->skip));
	ps->stream = follow_connect(ps);
	if (!ps->stream) {
		ps->stream = old; /* still ours to free at close */
		log_warn("%s: cannot reopen the stream: %s", what, strerror(errno));
		follow_finish(ps, -errno, -1);
		goto out;
	}
	/* From the network thread this only flags it: it is freed right after this returns. */
	http_stream_close(old);
out:
	pthread_mutex_unlock(&ps->lock);
}

static const struct http_stream_ops follow_ops = {
	.on_event = follow_event,
	.on_end = follow_end,
};

struct sbx_process_stream *sbx_process_stream_open(struct sbx *s, const char *id,
						   const struct sbx_process_stream_ops *ops,
						   void *arg)
{
	struct sbx_process_stream *ps = calloc(1, sizeof(*ps));
	if (!ps)
		abort();
	ps->s = s;
	ps->id = sbx_strdup(id);
	ps->path = process_path(id, "/stream");
	ps->ops = *ops;
	ps->arg = arg;
	pthread_mutex_init(&ps->lock, NULL);
	pthread_mutex_lock(&ps->lock);
	ps->stream = follow_connect(ps);
	pthread_mutex_unlock(&ps->lock);
	if (!ps->stream) {
		int e = errno;
		sbx_fail(-e, "follow process %s: cannot start the stream: %s", id, strerror(e));
		pthread_mutex_destroy(&ps->lock);
		free(ps->path);
		free(ps->id);
		free(ps);
		errno = e;
		return NULL;
	}
	return ps;
}

void sbx_process_stream_close(struct sbx_process_stream *ps)
{
	if (!ps)
		return;
	pthread_mutex_lock(&ps->lock);
	ps->closing = true;
	struct http_stream *st = ps->stream;
	pthread_mutex_unlock(&ps->lock);
	/* Waits for its on_end, which sees `closing` and reopens nothing. */
	http_stream_close(st);
	pthread_mutex_destroy(&ps->lock);
	free(ps->path);
	free(ps->id);
	free(ps);
}
