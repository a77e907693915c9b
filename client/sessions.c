/* Execution sessions over the sandbox API (client/sessions.h).
 *
 * Creating and deleting are mutations: with sbxd they carry an idempotency key and are
 * retried like reads; a plain container gets them once (a lost answer fails the call, and the
 * log says the sandbox may have carried it out). A deletion the container refuses is told
 * apart by looking: a session that is not listed afterwards was unknown (the container says
 * "not found" only in its message, as a 500). */
#include "client/sessions.h"
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "client/sandbox_impl.h"
#include "common/jsonutil.h"

/* Adds "env": {...} from "NAME=VALUE" strings; -EINVAL (with a reason) for a malformed one. */
static int add_env(cJSON *body, const char *key, const char *const *env, const char *what)
{
	if (!env || !*env)
		return 0;
	cJSON *e = cJSON_AddObjectToObject(body, key);
	for (; *env; env++) {
		const char *eq = strchr(*env, '=');
		if (!eq || eq == *env)
			return sbx_fail(-EINVAL, "%s: '%s' is not NAME=VALUE", what, *env);
		char *name = strndup(*env, (size_t)(eq - *env));
		if (!name)
			abort();
		cJSON_DeleteItemFromObjectCaseSensitive(e, name);
		cJSON_AddStringToObject(e, name, eq + 1);
		free(name);
	}
	return 0;
}

int sbx_session_create(struct sbx *s, const char *id, const char *cwd, const char *const *env,
		       char **out)
{
	*out = NULL;
	cJSON *body = cJSON_CreateObject();
	if (id)
		cJSON_AddStringToObject(body, "id", id);
	if (cwd)
		cJSON_AddStringToObject(body, "cwd", cwd);
	int err = add_env(body, "env", env, "session create");
	if (err) {
		cJSON_Delete(body);
		return err;
	}
	cJSON *j;
	err = sbx_call(s, "session create", "POST", "/api/session/create", body, false, 0, &j);
	if (err)
		return err;
	/* the container's data is an accidental object of which only id means something */
	const char *got = json_str(cJSON_GetObjectItemCaseSensitive(j, "data"), "id");
	if (!got && id)
		got = id;
	if (got && *got)
		*out = sbx_strdup(got);
	else
		err = sbx_fail(-EPROTO, "session create: the answer has no data.id");
	cJSON_Delete(j);
	return err;
}

int sbx_session_list(struct sbx *s, char ***ids, size_t *n)
{
	cJSON *j;
	const cJSON *arr;
	*ids = NULL;
	*n = 0;
	int err = sbx_call_list(s, "session list", "/api/session/list", "data", &j, &arr);
	if (err)
		return err;
	char **v = calloc((size_t)cJSON_GetArraySize(arr) + 1, sizeof *v);
	if (!v)
		abort();
	const cJSON *e;
	cJSON_ArrayForEach(e, arr)
		if (cJSON_IsString(e) && *e->valuestring)
			v[(*n)++] = sbx_strdup(e->valuestring);
	cJSON_Delete(j);
	*ids = v;
	return 0;
}

void sbx_session_ids_free(char **ids, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(ids[i]);
	free(ids);
}

int sbx_session_exists(struct sbx *s, const char *id)
{
	char **ids;
	size_t n;
	int err = sbx_session_list(s, &ids, &n);
	if (err)
		return err;
	err = -ENOENT;
	for (size_t i = 0; i < n && err; i++)
		if (strcmp(ids[i], id) == 0)
			err = 0;
	sbx_session_ids_free(ids, n);
	return err == -ENOENT ? sbx_fail(-ENOENT, "session %s: no such session", id) : err;
}

int sbx_session_delete(struct sbx *s, const char *id)
{
	char what[300];
	snprintf(what, sizeof what, "delete session %s", id);
	cJSON *body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "sessionId", id);
	cJSON *j;
	int err = sbx_call(s, what, "POST", "/api/session/delete", body, false, 0, &j);
	cJSON_Delete(j);
	if (!err || err == -ENOENT || s->info.extensions)
		return err;
	char reason[512];
	snprintf(reason, sizeof reason, "%s", sbx_last_error());
	if (sbx_session_exists(s, id) == -ENOENT)
		return sbx_fail(-ENOENT, "%s", reason);
	return sbx_fail(err, "%s", reason);
}

int sbx_session_exec(struct sbx *s, const char *id, const char *command, bool repeatable,
		     struct sbx_exec_result *r)
{
	*r = (struct sbx_exec_result){ .exit_code = -1 };
	char what[300];
	snprintf(what, sizeof what, "execute in session %s", id);
	cJSON *body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "command", command);
	cJSON_AddStringToObject(body, "sessionId", id);
	if (s->info.extensions)
		cJSON_AddStringToObject(body, "encoding", "base64");
	cJSON *j;
	int err = sbx_call(s, what, "POST", "/api/execute", body, repeatable, 0, &j);
	if (err)
		return err;
	err = sbx_exec_answer(what, j, r);
	cJSON_Delete(j);
	return err;
}
