/* The routes of sessions (POST /api/session/create, GET /api/session/list, POST
 * /api/session/delete) and what the routes that run commands read about sessions from a
 * request (sessions_routes.h). Deleting a session stops what was started in it: its
 * background processes and code contexts. */
#include "server/sessions_routes.h"
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include "common/jsonutil.h"
#include "common/strv.h"
#include "server/contexts.h"
#include "server/processes.h"
#include "server/request.h"
#include "server/routes.h"
#include "server/sbxd.h"
#include "server/sessions.h"
#include "server/utf8.h"

static bool blank(const char *s)
{
	for (; *s; s++)
		if (!isspace((unsigned char)*s))
			return false;
	return true;
}

/* Ids go back out in JSON answers and session lists, which cJSON would print with the
 * invalid bytes as they came: such an id is refused rather than echoed as broken JSON. */
static bool valid_utf8(const char *s)
{
	return utf8_valid(s, strlen(s));
}

/* ---- the session of a command ---- */

/* A session id a request named: not blank, not too long, valid UTF-8; NULL after answering. */
static const char *checked_id(struct req *r, const char *id)
{
	if (blank(id)) {
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
			    "sessionId must not be empty or whitespace");
		return NULL;
	}
	if (strlen(id) > SESSION_ID_MAX) {
		reply_error(r, 400, "VALIDATION_FAILED", ENAMETOOLONG, NULL,
			    "sessionId is longer than %d bytes", SESSION_ID_MAX);
		return NULL;
	}
	if (!valid_utf8(id)) {
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
			    "sessionId must be valid UTF-8");
		return NULL;
	}
	return id;
}

/* The body's "sessionId" (an empty string counts as absent) in *id; false after answering. */
static bool body_id(struct req *r, const char **id)
{
	cJSON *body = req_json(r);
	const cJSON *field = body ? cJSON_GetObjectItemCaseSensitive(body, "sessionId") : NULL;
	*id = NULL;
	if (field && !cJSON_IsNull(field) && !cJSON_IsString(field)) {
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL, "sessionId must be a string");
		return false;
	}
	if (field && cJSON_IsString(field) && field->valuestring[0])
		*id = field->valuestring;
	return true;
}

const char *session_id_of_request(struct req *r, bool *given)
{
	const char *id;
	if (!body_id(r, &id))
		return NULL;
	if (!id || !*id)
		id = req_header(r, "X-Session-Id");
	if (!id || !*id)
		id = req_query(r, "session");
	if (!id || !*id)
		id = req_query(r, "sessionId");
	*given = id && *id;
	if (!*given)
		return SESSION_DEFAULT;
	return checked_id(r, id);
}

const char *session_id_of_body(struct req *r, bool *given)
{
	const char *id;
	if (!body_id(r, &id))
		return NULL;
	*given = id != NULL;
	if (!id || strcmp(id, SESSION_NONE) == 0)
		return SESSION_NONE;
	return checked_id(r, id);
}

/* One variable of an env object as "K=V"; false when its value has no text form. */
static bool env_entry(struct strv *sv, const char *k, const cJSON *e)
{
	if (cJSON_IsString(e))
		strv_pushf(sv, "%s=%s", k, e->valuestring);
	else if (cJSON_IsBool(e))
		strv_pushf(sv, "%s=%s", k, cJSON_IsTrue(e) ? "true" : "false");
	else if (cJSON_IsNumber(e) && e->valuedouble == (double)(int64_t)e->valuedouble)
		strv_pushf(sv, "%s=%" PRId64, k, (int64_t)e->valuedouble);
	else if (cJSON_IsNumber(e))
		strv_pushf(sv, "%s=%.17g", k, e->valuedouble);
	else
		return false;
	return true;
}

static bool env_name_ok(const char *k)
{
	bool ok = k && (isalpha((unsigned char)k[0]) || k[0] == '_');
	for (const char *p = k; ok && *p; p++)
		ok = isalnum((unsigned char)*p) || *p == '_';
	return ok && strncmp(k, "__SBX_", 6) != 0;
}

char **session_env_from_json(struct req *r, const cJSON *obj)
{
	struct strv sv = { 0 };
	if (obj && !cJSON_IsNull(obj) && !cJSON_IsObject(obj)) {
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL, "env must be an object");
		return NULL;
	}
	const cJSON *vars = cJSON_IsObject(obj) ? obj : NULL, *e;
	cJSON_ArrayForEach(e, vars) {
		const char *k = e->string;
		if (!env_name_ok(k)) {
			strv_free(strv_finish(&sv));
			reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
				    "Invalid environment variable name: %s", k ? k : "");
			return NULL;
		}
		if (!cJSON_IsNull(e) && !env_entry(&sv, k, e)) {
			strv_free(strv_finish(&sv));
			reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
				    "Environment variable %s must be a string", k);
			return NULL;
		}
	}
	return strv_finish(&sv);
}

/* ---- POST /api/session/create ---- */

static void new_session_id(char buf[64])
{
	unsigned char rnd[6];
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
		for (size_t i = 0; i < sizeof rnd; i++)
			/* only if getrandom fails; an id must be unique, it grants nothing (every
			 * request needs the token) */
			/* NOLINTNEXTLINE(cert-msc30-c,cert-msc50-cpp) */
			rnd[i] = (unsigned char)(rand() ^ ts.tv_nsec >> (i * 3));
	snprintf(buf, 64, "session_%" PRId64 "_%02x%02x%02x%02x%02x%02x",
		 (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000, rnd[0], rnd[1], rnd[2], rnd[3],
		 rnd[4], rnd[5]);
}

struct create_req {
	const char *id, *cwd;
	double timeout_ms;
};

static const struct field create_fields[] = {
	FIELD("id", FIELD_STRING, struct create_req, id, .wrong = "id must be a string"),
	FIELD("cwd", FIELD_STRING, struct create_req, cwd, .flags = FIELD_EMPTY_ABSENT,
	      .wrong = "cwd must be a string"),
	/* a number, checked as a double: a string would otherwise mean "no timeout" without a
	 * word, and 1e300 does not fit an integer */
	FIELD("commandTimeoutMs", FIELD_NUMBER, struct create_req, timeout_ms, .min = 0,
	      .max = INT32_MAX, .wrong = "commandTimeoutMs must be a positive number of "
					 "milliseconds"),
};

/* The id to create (a new one in buf when none is given); NULL after answering. */
static const char *id_to_create(struct req *r, const char *id, char buf[64])
{
	if (!id || !*id) {
		new_session_id(buf);
		return buf;
	}
	if (blank(id) || strcmp(id, SESSION_NONE) == 0)
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL, "invalid session id '%s'",
			    id);
	else if (strlen(id) > SESSION_ID_MAX)
		reply_error(r, 400, "VALIDATION_FAILED", ENAMETOOLONG, NULL,
			    "session id is longer than %d bytes", SESSION_ID_MAX);
	else if (!valid_utf8(id))
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
			    "session id must be valid UTF-8");
	else
		return id;
	return NULL;
}

static void reply_not_created(struct req *r, const char *id, int err)
{
	if (err == -EEXIST) {
		cJSON *ctx = cJSON_CreateObject();
		cJSON_AddStringToObject(ctx, "sessionId", id);
		cJSON_AddNullToObject(ctx, "containerPlacementId");
		return reply_error(r, 409, "SESSION_ALREADY_EXISTS", EEXIST, ctx,
				   "Session '%s' already exists", id);
	}
	reply_error(r, 500, "INTERNAL_ERROR", -err, NULL, "cannot create session '%s': %s", id,
		    err == -ENOSPC ? "too many sessions" : strerror(-err));
}

void route_session_create(struct req *r)
{
	struct create_req x = { 0 };
	char buf[64];
	const char *id;
	if (!req_decode(r, create_fields, FIELDS_N(create_fields), &x) ||
	    !(id = id_to_create(r, x.id, buf)))
		return;
	char **env = session_env_from_json(r, cJSON_GetObjectItemCaseSensitive(req_json(r),
									       "env"));
	if (!env)
		return;
	int err = sessions_create(id, x.cwd, env, (int)x.timeout_ms);
	if (err) {
		strv_free(env);
		return reply_not_created(r, id, err);
	}
	cJSON *res = cJSON_CreateObject();
	cJSON *data = cJSON_AddObjectToObject(res, "data");
	cJSON_AddStringToObject(data, "id", id);
	cJSON_AddNullToObject(res, "containerPlacementId");
	reply_ok(r, res);
}

/* ---- GET /api/session/list, POST /api/session/delete ---- */

void route_session_list(struct req *r)
{
	cJSON *res = cJSON_CreateObject();
	cJSON *list = cJSON_AddArrayToObject(res, "data");
	char **ids = sessions_ids();
	for (char **id = ids; *id; id++)
		cJSON_AddItemToArray(list, cJSON_CreateString(*id));
	strv_free(ids);
	reply_ok(r, res);
}

void route_session_delete(struct req *r)
{
	const char *id = json_str(req_json(r), "sessionId");
	if (!id || !*id)
		return reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
				   "sessionId is required");
	if (!valid_utf8(id)) /* no such session can exist, and the id cannot be echoed */
		return reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
				   "sessionId must be valid UTF-8");
	unsigned long serial;
	if (sessions_delete(id, &serial) < 0) {
		cJSON *ctx = cJSON_CreateObject();
		cJSON_AddStringToObject(ctx, "sessionId", id);
		cJSON_AddStringToObject(ctx, "originalError", "Session not found");
		return reply_error(r, 500, "INTERNAL_ERROR", ENOENT, ctx,
				   "Session '%s' not found", id);
	}
	/* after its running command, what was started in it: a process or context started
	 * meanwhile took the session's run lock to start, so it is started by now and stopped
	 * too */
	procs_stop_session(req_sbxd(r)->procs, serial);
	contexts_stop_session(serial);
	cJSON *res = cJSON_CreateObject();
	cJSON_AddStringToObject(res, "sessionId", id);
	reply_ok(r, res);
}
