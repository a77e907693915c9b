/* The routes of the environment store: GET and POST /api/x/env (an sbxd extension,
 * docs/protocol.md), over server/envstore.h. A change is checked whole before any of it is
 * made, so a request applies whole or not at all. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "common/strv.h"
#include "server/envstore.h"
#include "server/request.h"
#include "server/routes.h"

#define ENV_MAX_STRING (128 * 1024) /* MAX_ARG_STRLEN: one "K=V" string of an execve */

/* The store as a JSON object. */
static cJSON *store_json(void)
{
	cJSON *o = cJSON_CreateObject();
	char **vars = envstore_list();
	for (char **kv = vars; *kv; kv++) {
		size_t n = strcspn(*kv, "=");
		char *k = strndup(*kv, n);
		if (!k)
			abort();
		cJSON_AddStringToObject(o, k, *kv + n + 1);
		free(k);
	}
	strv_free(vars);
	return o;
}

void route_x_env_get(struct req *r)
{
	cJSON *body = cJSON_CreateObject();
	cJSON_AddItemToObject(body, "env", store_json());
	reply_ok(r, body);
}

/* A portable shell name, and not one of sbxd's own (the session wrapper's __SBX_*). */
static bool valid_name(const char *k)
{
	if (!k || !(*k == '_' || (*k >= 'A' && *k <= 'Z') || (*k >= 'a' && *k <= 'z')))
		return false;
	for (const char *p = k + 1; *p; p++)
		if (!(*p == '_' || (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
		      (*p >= '0' && *p <= '9')))
			return false;
	return strncmp(k, "__SBX_", 6) != 0;
}

struct change {
	const cJSON *set, *unset;
};

static const struct field change_fields[] = {
	FIELD("set", FIELD_OBJECT, struct change, set, .wrong = "set must be an object of strings"),
	FIELD("unset", FIELD_ARRAY, struct change, unset,
	      .wrong = "unset must be an array of names"),
};

/* The variables to set, as "K=V"; NULL after answering. */
static char **to_set(struct req *r, const cJSON *set)
{
	struct strv sv = { 0 };
	const cJSON *it;
	cJSON_ArrayForEach(it, set) {
		if (!valid_name(it->string))
			reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
				    "Invalid environment variable name: %s", it->string);
		else if (!cJSON_IsString(it))
			reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
				    "the value of %s must be a string", it->string);
		else if (strlen(it->string) + strlen(it->valuestring) + 2 > ENV_MAX_STRING)
			reply_error(r, 400, "VALIDATION_FAILED", E2BIG, NULL,
				    "%s is too long (at most %d bytes with its value)", it->string,
				    ENV_MAX_STRING - 2);
		else {
			strv_pushf(&sv, "%s=%s", it->string, it->valuestring);
			continue;
		}
		strv_free(strv_finish(&sv));
		return NULL;
	}
	return strv_finish(&sv);
}

/* The names to unset; NULL after answering. */
static char **to_unset(struct req *r, const cJSON *unset)
{
	struct strv sv = { 0 };
	const cJSON *it;
	cJSON_ArrayForEach(it, unset) {
		if (!cJSON_IsString(it) || !valid_name(it->valuestring)) {
			strv_free(strv_finish(&sv));
			reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
				    "Invalid environment variable name in unset: %s",
				    cJSON_IsString(it) ? it->valuestring : "(not a string)");
			return NULL;
		}
		strv_push(&sv, strdup(it->valuestring));
	}
	return strv_finish(&sv);
}

void route_x_env_set(struct req *r)
{
	struct change x = { 0 };
	char **set = NULL, **unset = NULL;
	if (!req_decode(r, change_fields, FIELDS_N(change_fields), &x) ||
	    !(set = to_set(r, x.set)) || !(unset = to_unset(r, x.unset))) {
		strv_free(set);
		return;
	}
	int err = envstore_update((const char *const *)set, (const char *const *)unset);
	strv_free(set);
	strv_free(unset);
	if (err)
		return reply_error(r, 400, "VALIDATION_FAILED", ENOSPC, NULL, "at most %d variables",
				   ENVSTORE_MAX_VARS);
	cJSON *out = cJSON_CreateObject();
	cJSON_AddItemToObject(out, "env", store_json());
	reply_ok(r, out);
}
