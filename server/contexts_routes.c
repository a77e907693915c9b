/* The routes of code contexts: POST/GET /api/contexts, DELETE /api/contexts/{id}, POST
 * /api/execute/code and the extension POST /api/x/interrupt. Each decodes its request, asks
 * the engine of server/contexts.h and answers in the container's shapes; /api/execute/code
 * answers its errors before the stream in a shape of its own (reply_code_error). A context of
 * a session (an extension) starts from the directory and environment that a command of the
 * session would have. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/errnames.h"
#include "common/jsonutil.h"
#include "common/strv.h"
#include "server/contexts.h"
#include "server/envstore.h"
#include "server/request.h"
#include "server/routes.h"
#include "server/sessions.h"
#include "server/sessions_routes.h"

#define CWD_MAX 4096
#define STR_(x) #x
#define STR(x) STR_(x)

/* ---- POST /api/contexts ---- */

/* Sets "K=V" in the object of variables. */
static void env_set(cJSON *out, const char *kv)
{
	const char *eq = strchr(kv, '=');
	char *name = eq ? strndup(kv, (size_t)(eq - kv)) : NULL;
	if (name) {
		cJSON_DeleteItemFromObjectCaseSensitive(out, name);
		cJSON_AddStringToObject(out, name, eq + 1);
		free(name);
	}
}

/* The environment of a new context as a JSON object: sbxd's default and the env store (or,
 * in a session, base: what a command of the session would get), then the request's env_vars.
 * NULL and a message in why when env_vars is malformed. */
static cJSON *context_env(char **base, const cJSON *vars, char *why, size_t size)
{
	struct strv extra = { 0 };
	const cJSON *v;
	cJSON_ArrayForEach(v, vars) {
		if (!cJSON_IsString(v) || !v->string[0] || strchr(v->string, '=')) {
			snprintf(why, size, "env_vars: %s must be a string and named without '='",
				 v->string);
			strv_free(strv_finish(&extra));
			return NULL;
		}
		strv_pushf(&extra, "%s=%s", v->string, v->valuestring);
	}
	char **request = strv_finish(&extra);
	char **env = base ? NULL : envstore_build((const char *const *)request);
	cJSON *out = cJSON_CreateObject();
	for (char **e = base ? base : env; *e; e++)
		env_set(out, *e);
	for (char **e = request; base && *e; e++)
		env_set(out, *e);
	strv_free(env);
	strv_free(request);
	return out;
}

struct create_req {
	const char *language, *cwd;
	const cJSON *env_vars;
};

static bool known_language(const cJSON *v)
{
	return context_language(v->valuestring) != NULL;
}

static bool absolute(const cJSON *v)
{
	return v->valuestring[0] == '/';
}

static const struct field create_fields[] = {
	FIELD("language", FIELD_STRING, struct create_req, language, .valid = known_language,
	      .wrong = "unknown language %s: use python, javascript or typescript"),
	FIELD("cwd", FIELD_STRING, struct create_req, cwd, .max = CWD_MAX, .valid = absolute,
	      .wrong = "cwd must be an absolute path of at most " STR(CWD_MAX) " bytes"),
	FIELD("env_vars", FIELD_OBJECT, struct create_req, env_vars,
	      .wrong = "env_vars must be an object of strings"),
};

/* What a command of the session would have: its directory, in *cwd when none was asked
 * for, and its environment. False after answering. */
static bool session_start(struct req *r, const char *id, struct context_spec *spec,
			  const char **cwd, char **session_cwd, char ***session_env)
{
	int err = session_snapshot(id, req_client_fd(r), session_env, session_cwd,
				   &spec->session_serial);
	if (err == -ECONNABORTED)
		reply_error(r, 499, "CLIENT_CLOSED_REQUEST", ECANCELED, NULL,
			    "the client hung up; no context was created");
	else if (err)
		reply_error(r, 500, "INTERNAL_ERROR", -err, NULL,
			    "cannot read the state of session '%s': %s", id, strerror(-err));
	else if (!*cwd)
		*cwd = *session_cwd;
	spec->session_id = id;
	return !err;
}

static void reply_not_created(struct req *r, const struct context_spec *spec,
			      const struct context_error *e)
{
	switch (e->kind) {
	case CONTEXT_NO_INTERPRETER:
		if (e->err == ENOTSUP)
			return reply_error(r, 501, spec->lang->missing_code, ENOTSUP, NULL, "%s",
					   e->message);
		return reply_error(r, 500, "INTERNAL_ERROR", e->err, NULL, "%s", e->message);
	case CONTEXT_INTERPRETER_DIED:
		return reply_error(r, 501, spec->lang->missing_code, e->err, NULL, "%s",
				   e->message);
	case CONTEXT_NOT_READY:
		return reply_error(r, 503, "INTERPRETER_NOT_READY", e->err, NULL, "%s", e->message);
	case CONTEXT_INIT_REFUSED:
		return reply_errno(r, e->err, spec->cwd, "%s", e->message);
	case CONTEXT_INIT_DIED:
	case CONTEXT_INIT_SILENT:
		return reply_error(r, 500, "INTERNAL_ERROR", e->err, NULL, "%s", e->message);
	}
}

static void reply_created(struct req *r, const struct context_spec *spec, const char *id)
{
	cJSON *body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "contextId", id);
	cJSON_AddStringToObject(body, "language", spec->lang->name);
	cJSON_AddStringToObject(body, "cwd", spec->cwd);
	if (spec->session_id)
		cJSON_AddStringToObject(body, "sessionId", spec->session_id);
	reply_ok(r, body);
}

void route_context_create(struct req *r)
{
	struct create_req x = { 0 };
	bool given;
	const char *session_id;
	if (!req_decode(r, create_fields, FIELDS_N(create_fields), &x) ||
	    !(session_id = session_id_of_body(r, &given)))
		return;
	struct context_spec spec = { .lang = x.language ? context_language(x.language)
							 : context_default_language() };
	char **session_env = NULL, *session_cwd = NULL, why[256], id[CONTEXT_ID_LEN + 1];
	/* Extension: a context of a session starts from what a command of the session would
	 * have (the container's contexts know no sessions) */
	if (strcmp(session_id, SESSION_NONE) != 0 &&
	    !session_start(r, session_id, &spec, &x.cwd, &session_cwd, &session_env))
		return;
	spec.cwd = x.cwd ? x.cwd : "/workspace";
	spec.env = context_env(session_env, x.env_vars, why, sizeof why);
	strv_free(session_env);
	struct context_error e;
	if (!spec.env)
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL, "%s", why);
	else if (contexts_create(&spec, id, &e) < 0)
		reply_not_created(r, &spec, &e);
	else
		reply_created(r, &spec, id);
	free(session_cwd);
}

/* ---- GET /api/contexts, DELETE /api/contexts/{id}, POST /api/x/interrupt ---- */

static void list_one(void *arg, const struct context_info *i)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "id", i->id);
	cJSON_AddStringToObject(o, "language", i->language);
	cJSON_AddStringToObject(o, "cwd", i->cwd);
	if (i->session_id)
		cJSON_AddStringToObject(o, "sessionId", i->session_id);
	cJSON_AddStringToObject(o, "state", i->state);
	cJSON_AddItemToArray(arg, o);
}

void route_context_list(struct req *r)
{
	cJSON *list = cJSON_CreateArray();
	contexts_list(list_one, list);
	cJSON *body = cJSON_CreateObject();
	cJSON_AddItemToObject(body, "contexts", list);
	reply_ok(r, body);
}

static void reply_not_found(struct req *r, const char *id)
{
	cJSON *ctx = cJSON_CreateObject();
	cJSON_AddStringToObject(ctx, "contextId", id ? id : "");
	reply_error(r, 404, "CONTEXT_NOT_FOUND", ENOENT, ctx, "Code context '%s' not found",
		    id ? id : "");
}

void route_context_delete(struct req *r)
{
	const char *id = req_path_arg(r);
	if (contexts_delete(id) < 0)
		return reply_not_found(r, id);
	cJSON *body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "contextId", id);
	reply_ok(r, body);
}

void route_context_interrupt(struct req *r)
{
	const char *id = json_str(req_json(r), "context_id");
	bool running;
	if (contexts_interrupt(id, &running) < 0)
		return reply_not_found(r, id);
	cJSON *body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "contextId", id);
	cJSON_AddBoolToObject(body, "interrupted", running);
	reply_ok(r, body);
}

/* ---- POST /api/execute/code ---- */

/* /api/execute/code answers errors before the stream in the container's own shape. */
static void reply_code_error(struct req *r, int status, const char *code, int err,
			     const char *context_id, const char *fmt, ...)
	__attribute__((format(printf, 6, 7)));
static void reply_code_error(struct req *r, int status, const char *code, int err,
			     const char *context_id, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	cJSON *body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "error", msg);
	cJSON_AddStringToObject(body, "code", code);
	cJSON *details = cJSON_AddObjectToObject(body, "details");
	if (context_id)
		cJSON_AddStringToObject(details, "contextId", context_id);
	if (errno_name(err))
		cJSON_AddStringToObject(body, "errno", errno_name(err));
	reply_json(r, status, body);
}

struct code_req {
	const char *code;
	double timeout_ms;
};

static const struct field code_fields[] = {
	FIELD("code", FIELD_STRING, struct code_req, code, .flags = FIELD_REQUIRED,
	      .wrong = "code must be a string", .missing = "code must be a string"),
	FIELD("timeout_ms", FIELD_NUMBER, struct code_req, timeout_ms, .min = 0, .max = 1e12,
	      .wrong = "timeout_ms must be a number of milliseconds >= 0"),
};

static void reply_not_queued(struct req *r, const char *id, int err, const char *lang,
			     const char *language)
{
	if (err == -ENOENT)
		reply_code_error(r, 404, "CONTEXT_NOT_FOUND", ENOENT, id, "Context %s not found",
				 id);
	else if (err == -EPIPE)
		reply_code_error(r, 500, "INTERNAL_ERROR", EIO, id,
				 "Context executor has terminated. Please delete and recreate the "
				 "context.");
	else if (err == -EINVAL)
		reply_code_error(r, 500, "CODE_EXECUTION_ERROR", EINVAL, id,
				 "Failed to execute code in context '%s': Context %s was created "
				 "for %s, cannot execute %s code", id, id, lang, language);
	else
		reply_code_error(r, 500, "INTERNAL_ERROR", ENOMEM, id, "out of memory");
}

static int code_next(void *e, struct strbuf *out, int timeout_ms)
{
	return execution_next(e, out, timeout_ms);
}

static void code_release(void *e)
{
	execution_release(e);
}

void route_execute_code(struct req *r)
{
	const char *id = json_str(req_json(r), "context_id");
	const char *language = json_str(req_json(r), "language");
	struct code_req x = { 0 };
	struct field_error fe;
	if (!id)
		return reply_code_error(r, 404, "CONTEXT_NOT_FOUND", ENOENT, NULL,
					"Context undefined not found");
	if (!fields_decode(req_json(r), code_fields, FIELDS_N(code_fields), &x, &fe))
		return reply_code_error(r, 400, "VALIDATION_FAILED", EINVAL, id, "%s", fe.message);
	struct execution *e;
	const char *lang;
	int err = contexts_execute(id, x.code, language, (int64_t)x.timeout_ms, &e, &lang);
	if (err)
		return reply_not_queued(r, id, err, lang, language);
	reply_sse(r, (struct sse_source){ .next = code_next, .release = code_release, .ctx = e });
}
