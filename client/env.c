#include "client/env.h"
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "client/sandbox_impl.h"

static int need_extension(struct sbx *s, const char *what)
{
	if (s->info.extensions)
		return 0;
	return sbx_fail(-EOPNOTSUPP, "%s: this backend (a plain container) has no environment "
			"route; variables for everything started afterwards need sbxd (pass them "
			"per command instead)", what);
}

int sbx_env_get(struct sbx *s, char ***vars, size_t *n)
{
	*vars = NULL;
	*n = 0;
	int err = need_extension(s, "read env");
	if (err)
		return err;
	cJSON *j;
	err = sbx_call(s, "read env", "GET", "/api/x/env", NULL, true, 0, &j);
	if (err)
		return err;
	const cJSON *env = cJSON_GetObjectItemCaseSensitive(j, "env"), *it;
	if (!cJSON_IsObject(env)) {
		cJSON_Delete(j);
		return sbx_fail(-EPROTO, "read env: the answer has no env object");
	}
	char **v = calloc((size_t)cJSON_GetArraySize(env) + 1, sizeof(*v));
	if (!v)
		abort();
	size_t k = 0;
	cJSON_ArrayForEach(it, env) {
		if (!cJSON_IsString(it) || !it->string)
			continue;
		if (asprintf(&v[k++], "%s=%s", it->string, it->valuestring) < 0)
			abort();
	}
	cJSON_Delete(j);
	*vars = v;
	*n = k;
	return 0;
}

void sbx_env_free(char **vars, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(vars[i]);
	free(vars);
}

int sbx_env_update(struct sbx *s, const char *const *set, size_t nset, const char *const *unset,
		   size_t nunset)
{
	int err = need_extension(s, "set env");
	if (err)
		return err;
	cJSON *body = cJSON_CreateObject();
	cJSON *setj = cJSON_AddObjectToObject(body, "set");
	cJSON *unsetj = cJSON_AddArrayToObject(body, "unset");
	for (size_t i = 0; i < nset; i++) {
		const char *eq = strchr(set[i], '=');
		if (!eq) {
			cJSON_Delete(body);
			return sbx_fail(-EINVAL, "set env: \"%s\" is not NAME=VALUE", set[i]);
		}
		char *name = strndup(set[i], (size_t)(eq - set[i]));
		if (!name)
			abort();
		cJSON_AddItemToObject(setj, name, cJSON_CreateString(eq + 1));
		free(name);
	}
	for (size_t i = 0; i < nunset; i++)
		cJSON_AddItemToArray(unsetj, cJSON_CreateString(unset[i]));
	cJSON *j;
	/* setting the same values twice is the same as once */
	err = sbx_call(s, "set env", "POST", "/api/x/env", body, true, 0, &j);
	cJSON_Delete(j);
	return err;
}
