#include "client/ports.h"
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "client/sandbox_impl.h"
#include "common/jsonutil.h"

static int need_extension(struct sbx *s, const char *what)
{
	if (s->info.extensions)
		return 0;
	return sbx_fail(-EOPNOTSUPP, "%s: this backend (a plain container) has no port exposure "
			"route; preview URLs need sbxd (or the SDK's Worker)", what);
}

int sbx_port_expose(struct sbx *s, int port, const char *name, char **url)
{
	char what[64];
	snprintf(what, sizeof what, "expose port %d", port);
	if (url)
		*url = NULL;
	int err = need_extension(s, what);
	if (err)
		return err;
	cJSON *body = cJSON_CreateObject();
	cJSON_AddNumberToObject(body, "port", port);
	if (name)
		cJSON_AddStringToObject(body, "name", name);
	/* exposing is idempotent on the server: a retry after a lost answer is harmless */
	char *u;
	err = sbx_call_string(s, what, "POST", "/api/x/ports", body, true, 0, "url", &u);
	if (url)
		*url = u;
	else
		free(u);
	return err;
}

int sbx_port_unexpose(struct sbx *s, int port)
{
	char what[64], path[48];
	snprintf(what, sizeof what, "unexpose port %d", port);
	snprintf(path, sizeof path, "/api/x/ports/%d", port);
	int err = need_extension(s, what);
	if (err)
		return err;
	cJSON *j;
	/* not retried: a retry after a lost answer would report ENOENT for a success */
	err = sbx_call(s, what, "DELETE", path, NULL, false, 0, &j);
	cJSON_Delete(j);
	return err;
}

int sbx_ports_list(struct sbx *s, struct sbx_port **ports, size_t *n)
{
	*ports = NULL;
	*n = 0;
	if (!s->info.extensions)
		return 0;
	cJSON *j;
	const cJSON *arr, *it;
	int err = sbx_call_list(s, "list ports", "/api/x/ports", "ports", &j, &arr);
	if (err)
		return err;
	struct sbx_port *v = calloc((size_t)cJSON_GetArraySize(arr) + 1, sizeof(*v));
	if (!v)
		abort();
	size_t k = 0;
	cJSON_ArrayForEach(it, arr) {
		int port = (int)json_int(it, "port", 0);
		const char *u = json_str(it, "url");
		if (port <= 0 || !u)
			continue;
		v[k].port = port;
		v[k].url = sbx_strdup(u);
		v[k].name = sbx_strdup(json_str(it, "name"));
		k++;
	}
	cJSON_Delete(j);
	*ports = v;
	*n = k;
	return 0;
}

void sbx_ports_free(struct sbx_port *ports, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(ports[i].url);
		free(ports[i].name);
	}
	free(ports);
}
