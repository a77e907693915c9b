/* The environment store and its routes. One lock guards a small array of "K=V" strings kept
 * in the order the names were first set; readers copy what they need under the lock, so an
 * environment being built never sees half an update. */
#include "server/envstore.h"
#include "server/routes.h"
#include "server/runner.h"
#include "common/log.h"
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define ENV_MAX_VARS 1024
#define ENV_MAX_STRING (128 * 1024) /* MAX_ARG_STRLEN: one "K=V" string of an execve */

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char **vars; /* "K=V", malloc'd */
static size_t n_vars;

struct strv {
	char **v;
	size_t n, cap;
};

static size_t name_len(const char *kv)
{
	return strcspn(kv, "=");
}

static bool same_name(const char *a, const char *b)
{
	size_t n = name_len(a);
	return n == name_len(b) && strncmp(a, b, n) == 0;
}

/* Adds a copy of kv, replacing an earlier definition of its name. */
static void strv_set(struct strv *sv, const char *kv)
{
	char *copy = strdup(kv);
	if (!copy)
		abort();
	for (size_t i = 0; i < sv->n; i++)
		if (same_name(sv->v[i], kv)) {
			free(sv->v[i]);
			sv->v[i] = copy;
			return;
		}
	if (sv->n + 2 > sv->cap) {
		/* cap may start at the store's count, below what one more entry needs */
		while (sv->n + 2 > sv->cap)
			sv->cap = sv->cap ? sv->cap * 2 : 32;
		sv->v = realloc(sv->v, sv->cap * sizeof *sv->v);
		if (!sv->v)
			abort();
	}
	sv->v[sv->n++] = copy;
	sv->v[sv->n] = NULL;
}

static char **strv_finish(struct strv *sv)
{
	if (!sv->v) {
		sv->v = calloc(1, sizeof *sv->v);
		if (!sv->v)
			abort();
	}
	return sv->v;
}

static void add_store(struct strv *sv)
{
	pthread_mutex_lock(&lock);
	for (size_t i = 0; i < n_vars; i++)
		strv_set(sv, vars[i]);
	pthread_mutex_unlock(&lock);
}

char **envstore_build(const char *const *extra)
{
	struct strv sv = { 0 };
	for (const char *const *e = runner_default_env(); *e; e++)
		strv_set(&sv, *e);
	add_store(&sv);
	for (; extra && *extra; extra++)
		strv_set(&sv, *extra);
	return strv_finish(&sv);
}

char **envstore_overlay(const char *const *extra)
{
	struct strv sv = { 0 };
	add_store(&sv);
	for (; extra && *extra; extra++)
		strv_set(&sv, *extra);
	return strv_finish(&sv);
}

void envstore_free(char **env)
{
	for (char **e = env; e && *e; e++)
		free(*e);
	free(env);
}

/* ---- routes ---- */

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

static cJSON *store_json(void)
{
	cJSON *o = cJSON_CreateObject();
	pthread_mutex_lock(&lock);
	for (size_t i = 0; i < n_vars; i++) {
		size_t n = name_len(vars[i]);
		char *k = strndup(vars[i], n);
		if (!k)
			abort();
		cJSON_AddStringToObject(o, k, vars[i] + n + 1);
		free(k);
	}
	pthread_mutex_unlock(&lock);
	return o;
}

void route_x_env_get(struct req *r)
{
	cJSON *body = cJSON_CreateObject();
	cJSON_AddItemToObject(body, "env", store_json());
	reply_ok(r, body);
}

static void store_unset(const char *name)
{
	for (size_t i = 0; i < n_vars; i++)
		if (strncmp(vars[i], name, name_len(vars[i])) == 0 &&
		    name[name_len(vars[i])] == '\0') {
			free(vars[i]);
			memmove(&vars[i], &vars[i + 1], (n_vars - i - 1) * sizeof *vars);
			n_vars--;
			return;
		}
}

/* Validates everything first, so a request applies whole or not at all. */
void route_x_env_set(struct req *r)
{
	cJSON *body = req_json(r);
	const cJSON *set = cJSON_GetObjectItemCaseSensitive(body, "set");
	const cJSON *unset = cJSON_GetObjectItemCaseSensitive(body, "unset");
	const cJSON *it;

	if (set && !cJSON_IsNull(set) && !cJSON_IsObject(set))
		return reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
				   "set must be an object of strings");
	if (unset && !cJSON_IsNull(unset) && !cJSON_IsArray(unset))
		return reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
				   "unset must be an array of names");
	const cJSON *setv = cJSON_IsObject(set) ? set : NULL;
	const cJSON *unsetv = cJSON_IsArray(unset) ? unset : NULL;
	size_t adding = 0;
	cJSON_ArrayForEach(it, setv) {
		if (!valid_name(it->string))
			return reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
					   "Invalid environment variable name: %s", it->string);
		if (!cJSON_IsString(it))
			return reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
					   "the value of %s must be a string", it->string);
		if (strlen(it->string) + strlen(it->valuestring) + 2 > ENV_MAX_STRING)
			return reply_error(r, 400, "VALIDATION_FAILED", E2BIG, NULL,
					   "%s is too long (at most %d bytes with its value)",
					   it->string, ENV_MAX_STRING - 2);
		adding++;
	}
	cJSON_ArrayForEach(it, unsetv)
		if (!cJSON_IsString(it) || !valid_name(it->valuestring))
			return reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
					   "Invalid environment variable name in unset: %s",
					   cJSON_IsString(it) ? it->valuestring : "(not a string)");

	pthread_mutex_lock(&lock);
	if (n_vars + adding > ENV_MAX_VARS) {
		pthread_mutex_unlock(&lock);
		return reply_error(r, 400, "VALIDATION_FAILED", ENOSPC, NULL,
				   "at most %d variables", ENV_MAX_VARS);
	}
	struct strv sv = { .v = vars, .n = n_vars, .cap = n_vars };
	cJSON_ArrayForEach(it, setv) {
		char *kv = malloc(strlen(it->string) + strlen(it->valuestring) + 2);
		if (!kv)
			abort();
		stpcpy(stpcpy(stpcpy(kv, it->string), "="), it->valuestring);
		strv_set(&sv, kv);
		free(kv);
	}
	vars = sv.v;
	n_vars = sv.n;
	cJSON_ArrayForEach(it, unsetv)
		store_unset(it->valuestring);
	pthread_mutex_unlock(&lock);

	cJSON *out = cJSON_CreateObject();
	cJSON_AddItemToObject(out, "env", store_json());
	reply_ok(r, out);
}
