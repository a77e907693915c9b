/* Code contexts over the sandbox API (client/contexts.h).
 *
 * An execution is one POST /api/execute/code stream. Starting it waits for the server's answer
 * to begin (on_open: the headers came), not for its first event: code may print nothing for
 * minutes, yet whoever started it must learn at once whether it was taken. A refusal (a
 * non-200 answer) or a connection that fails before the headers ends the stream first; start
 * then reports that error itself and the owner's on_end never runs.
 *
 * x->lock guards the phase and the closing flag against sbx_execution_close() from another
 * thread; the owner's callbacks are called without it, so the owner may close the execution
 * from its own on_end (its last callback; http_stream_close from the network thread only
 * flags the stream, which is freed after that on_end returns). */
#include "client/contexts.h"
#include <cjson/cJSON.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "client/http.h"
#include "client/sandbox_impl.h"
#include "common/errnames.h"
#include "common/jsonutil.h"
#include "common/log.h"

#define CREATE_MS 65000      /* sbxd gives an interpreter 60 s to start */
#define EXEC_IDLE_MS 45000   /* sbxd sends keepalives every 15 s */

void sbx_context_clear(struct sbx_context *c)
{
	free(c->id);
	free(c->language);
	free(c->cwd);
	free(c->state);
	free(c->session);
	memset(c, 0, sizeof(*c));
}

void sbx_contexts_free(struct sbx_context *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		sbx_context_clear(&v[i]);
	free(v);
}

const char *sbx_language_canonical(const char *name)
{
	static const char *const names[][2] = {
		{ "python", "python" },         { "python3", "python" },
		{ "javascript", "javascript" }, { "js", "javascript" },
		{ "node", "javascript" },       { "typescript", "typescript" },
		{ "ts", "typescript" },
	};
	for (size_t i = 0; name && i < sizeof(names) / sizeof(names[0]); i++)
		if (strcmp(name, names[i][0]) == 0)
			return names[i][1];
	return NULL;
}

/* "/api/contexts/<id>" with the id percent-encoded. */
static char *context_path(const char *id)
{
	char *enc = http_urlencode(id), *path;
	if (!enc || asprintf(&path, "/api/contexts/%s", enc) < 0)
		abort();
	free(enc);
	return path;
}

int sbx_context_create(struct sbx *s, const char *language, const char *cwd,
		       const char *const *env, char **id)
{
	return sbx_context_create_in(s, NULL, language, cwd, env, id);
}

int sbx_context_create_in(struct sbx *s, const char *session, const char *language,
			  const char *cwd, const char *const *env, char **id)
{
	if (session && !s->info.extensions)
		return sbx_fail(-EOPNOTSUPP, "create context in session %s: a plain container's "
				"code contexts belong to no session (they run in /workspace with the "
				"server's environment); this needs sbxd", session);
	const char *lang = sbx_language_canonical(language ? language : "python");
	if (!lang)
		return sbx_fail(-EINVAL, "create context: unknown language '%s' (python, "
				"javascript or typescript; also python3, js, node, ts)", language);
	cJSON *body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "language", lang);
	if (cwd)
		cJSON_AddStringToObject(body, "cwd", cwd);
	if (session)
		cJSON_AddStringToObject(body, "sessionId", session);
	if (env && *env) {
		cJSON *e = cJSON_AddObjectToObject(body, "env_vars");
		for (; *env; env++) {
			const char *eq = strchr(*env, '=');
			if (!eq || eq == *env) {
				cJSON_Delete(body);
				return sbx_fail(-EINVAL, "create context: '%s' is not NAME=VALUE",
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
	long ms = s->deadline_ms > CREATE_MS ? s->deadline_ms : CREATE_MS;
	return sbx_call_string(s, "create context", "POST", "/api/contexts", body, false, ms,
			       "contextId", id);
}

int sbx_context_list(struct sbx *s, struct sbx_context **v, size_t *n)
{
	cJSON *j;
	const cJSON *arr;
	int err = sbx_call_list(s, "list contexts", "/api/contexts", "contexts", &j, &arr);
	if (err)
		return err;
	size_t cnt = (size_t)cJSON_GetArraySize(arr), i = 0;
	struct sbx_context *out = calloc(cnt ? cnt : 1, sizeof(*out));
	if (!out)
		abort();
	const cJSON *r;
	cJSON_ArrayForEach(r, arr) {
		const char *cid = json_str(r, "id") ? json_str(r, "id") : json_str(r, "contextId");
		if (!cid || !*cid)
			continue;
		const char *lang = json_str(r, "language");
		out[i].id = sbx_strdup(cid);
		out[i].language = sbx_strdup(lang ? lang : "python");
		out[i].cwd = sbx_strdup(json_str(r, "cwd") ? json_str(r, "cwd") : "");
		out[i].state = sbx_strdup(json_str(r, "state"));
		out[i].session = sbx_strdup(json_str(r, "sessionId"));
		i++;
	}
	cJSON_Delete(j);
	*v = out;
	*n = i;
	return 0;
}

int sbx_context_get(struct sbx *s, const char *id, struct sbx_context *c)
{
	struct sbx_context *v;
	size_t n;
	int err = sbx_context_list(s, &v, &n);
	if (err)
		return err;
	err = sbx_fail(-ENOENT, "context %s: no such context", id);
	for (size_t i = 0; i < n; i++) {
		if (strcmp(v[i].id, id) == 0) {
			*c = v[i];
			memset(&v[i], 0, sizeof(v[i]));
			err = 0;
			break;
		}
	}
	sbx_contexts_free(v, n);
	return err;
}

int sbx_context_delete(struct sbx *s, const char *id)
{
	char what[300];
	snprintf(what, sizeof what, "delete context %s", id);
	char *path = context_path(id);
	cJSON *j;
	int err = sbx_call(s, what, "DELETE", path, NULL, false, 0, &j);
	free(path);
	cJSON_Delete(j);
	return err;
}

int sbx_context_interrupt(struct sbx *s, const char *id)
{
	char what[300];
	snprintf(what, sizeof what, "interrupt context %s", id);
	if (!s->info.extensions)
		return sbx_fail(-EOPNOTSUPP, "%s: this backend (a plain container) has no route to "
				"interrupt an execution", what);
	cJSON *body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "context_id", id);
	cJSON *j;
	int err = sbx_call(s, what, "POST", "/api/x/interrupt", body, false, 0, &j);
	if (!err)
		log_debug("%s: %s", what, json_bool(j, "interrupted", false) ? "interrupted"
									   : "it was idle");
	cJSON_Delete(j);
	return err;
}

/* ---- executions ---- */

enum phase { CONNECTING, RUNNING, REFUSED, ENDED };

struct sbx_execution {
	struct sbx_execution_ops ops;
	void *arg;
	char *id;
	struct http_stream *stream;
	bool terminal; /* the terminal event came (network thread only) */

	pthread_mutex_t lock;
	pthread_cond_t cond;
	enum phase phase;
	bool closing;
	int err;          /* REFUSED: why */
	char reason[512];
};

static void execution_free(struct sbx_execution *x)
{
	pthread_mutex_destroy(&x->lock);
	pthread_cond_destroy(&x->cond);
	free(x->id);
	free(x);
}

static void exec_open(void *arg, long status)
{
	struct sbx_execution *x = arg;
	if (status != 200)
		return; /* its body, and on_end, say why */
	pthread_mutex_lock(&x->lock);
	x->phase = RUNNING;
	pthread_cond_broadcast(&x->cond);
	pthread_mutex_unlock(&x->lock);
}

static int exec_event(void *arg, const struct sse_event *ev)
{
	struct sbx_execution *x = arg;
	cJSON *j = cJSON_ParseWithLength(ev->data, ev->data_len);
	if (!cJSON_IsObject(j)) {
		log_debug("execution in %s: skipping an event that is not a JSON object", x->id);
		cJSON_Delete(j);
		return 0;
	}
	const char *type = json_str(j, "type");
	x->terminal = type && (strcmp(type, "execution_complete") == 0 ||
			       strcmp(type, "error") == 0);
	pthread_mutex_lock(&x->lock);
	bool deliver = !x->closing;
	pthread_mutex_unlock(&x->lock);
	if (deliver) {
		/* One event, one line: SSE joins multi-line data with newlines. */
		char *compact = memchr(ev->data, '\n', ev->data_len) ? json_print(j) : NULL;
		if (compact)
			x->ops.on_event(x->arg, compact, strlen(compact), j);
		else
			x->ops.on_event(x->arg, ev->data, ev->data_len, j);
		free(compact);
	}
	cJSON_Delete(j);
	return x->terminal;
}

/* The readable reason and errno of a refused execution (the route's own error shape:
 * {"error","code","details"}, or the standard one). */
static int refusal(struct sbx_execution *x, long status, const char *body, size_t len)
{
	cJSON *j = body ? cJSON_ParseWithLength(body, len) : NULL;
	const char *msg = json_str(j, "error") ? json_str(j, "error") : json_str(j, "message");
	int err = errno_from_api_error(json_str(j, "errno"), json_str(j, "code"), status);
	if (msg)
		snprintf(x->reason, sizeof x->reason, "run code in context %s: %s", x->id, msg);
	else
		snprintf(x->reason, sizeof x->reason, "run code in context %s: HTTP %ld", x->id,
			 status);
	cJSON_Delete(j);
	return -err;
}

static void exec_end(void *arg, int err, long status, const char *body, size_t body_len)
{
	struct sbx_execution *x = arg;
	pthread_mutex_lock(&x->lock);
	if (x->phase == CONNECTING) {
		x->phase = REFUSED;
		if (status && status != 200) {
			x->err = refusal(x, status, body, body_len);
		} else {
			x->err = err ? err : -EIO;
			snprintf(x->reason, sizeof x->reason, "run code in context %s: %s", x->id,
				 err ? strerror(-err) : "the server closed the connection");
		}
		pthread_cond_broadcast(&x->cond);
		pthread_mutex_unlock(&x->lock);
		return;
	}
	x->phase = ENDED;
	bool deliver = !x->closing;
	pthread_mutex_unlock(&x->lock);
	if (!deliver)
		return;
	char reason[512] = "";
	if (!x->terminal) {
		err = err ? err : -EIO;
		snprintf(reason, sizeof reason, "execution in context %s: the stream ended before "
			 "the execution did (%s)", x->id,
			 err == -EIO ? "the connection was closed" : strerror(-err));
	} else {
		err = 0;
	}
	/* Last: the owner may close (and so free) x from here. */
	x->ops.on_end(x->arg, err, reason);
}

static const struct http_stream_ops exec_ops = {
	.on_event = exec_event,
	.on_end = exec_end,
	.on_open = exec_open,
};

struct sbx_execution *sbx_execution_start(struct sbx *s, const char *id, const char *code,
					  size_t len, const struct sbx_execution_ops *ops,
					  void *arg)
{
	if (memchr(code, '\0', len)) {
		sbx_fail(-EINVAL, "run code in context %s: the code contains a NUL byte", id);
		errno = EINVAL;
		return NULL;
	}
	char *text = strndup(code, len);
	if (!text)
		abort();
	cJSON *body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "context_id", id);
	cJSON_AddStringToObject(body, "code", text);
	free(text);
	char *json = json_print(body);
	cJSON_Delete(body);
	if (!json)
		abort();

	struct sbx_execution *x = calloc(1, sizeof(*x));
	if (!x)
		abort();
	x->ops = *ops;
	x->arg = arg;
	x->id = sbx_strdup(id);
	pthread_mutex_init(&x->lock, NULL);
	pthread_cond_init(&x->cond, NULL);
	char key[HTTP_KEY_MAX];
	struct http_request req = {
		.method = "POST",
		.path = "/api/execute/code",
		.body = json,
		.body_len = strlen(json),
		.timeout_ms = sbx_deadline(s, len),
		/* opened again after a lost connection only before anything came back; the
		 * server then runs it once (a repeat of one that started is refused) */
		.idempotency_key = sbx_key(s, key),
	};
	pthread_mutex_lock(&x->lock);
	x->stream = http_stream_open(s->http, &req, &exec_ops, x,
				     s->heartbeats ? EXEC_IDLE_MS : 0);
	free(json);
	if (!x->stream) {
		int e = errno;
		pthread_mutex_unlock(&x->lock);
		sbx_fail(-e, "run code in context %s: cannot start the request: %s", id,
			 strerror(e));
		execution_free(x);
		errno = e;
		return NULL;
	}
	/* Bounded: the stream gives up at the request's deadline when no headers came. */
	while (x->phase == CONNECTING)
		pthread_cond_wait(&x->cond, &x->lock);
	bool refused = x->phase == REFUSED;
	pthread_mutex_unlock(&x->lock);
	if (refused) {
		int e = -x->err;
		sbx_fail(x->err, "%s", x->reason);
		http_stream_close(x->stream); /* already ended: only frees it */
		execution_free(x);
		errno = e;
		return NULL;
	}
	return x;
}

void sbx_execution_close(struct sbx_execution *x)
{
	if (!x)
		return;
	pthread_mutex_lock(&x->lock);
	x->closing = true;
	pthread_mutex_unlock(&x->lock);
	/* Waits for the stream's end unless called from the network thread (from on_end). */
	http_stream_close(x->stream);
	execution_free(x);
}
