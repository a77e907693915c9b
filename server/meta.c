/* Health, version, the capabilities probe that tells sbxfs it talks to sbxd, and the
 * client's lease (server/leases.h). */
#include <errno.h>
#include <stdlib.h>
#include "common/jsonutil.h"
#include "server/handles.h"
#include "server/leases.h"
#include "server/routes.h"
#include "server/runner.h"
#include "server/sbxd.h"

void route_ping(struct req *r)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "status", "healthy");
	reply_ok(r, o);
}

void route_version(struct req *r)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "version", SBXFS_VERSION);
	reply_ok(r, o);
}

void route_capabilities(struct req *r)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "server", "sbxd");
	cJSON_AddStringToObject(o, "version", SBXFS_VERSION);
	const char *id = req_sbxd(r)->cfg->sandbox_id;
	cJSON_AddStringToObject(o, "sandboxId", id ? id : "local");
	cJSON *ext = cJSON_AddArrayToObject(o, "extensions");
	static const char *const names[] = { "fs", "watch", "ports", "env", "process", "interrupt",
					     "idempotency", "lease", "journal", "tree", "echo",
					     "content", "pipeline" };
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		cJSON_AddItemToArray(ext, cJSON_CreateString(names[i]));
	json_add_int(o, "leaseMs", leases_duration_ms());
	cJSON_AddStringToObject(o, "isolation", runner_isolation_name());
	reply_ok(r, o);
}

/* The lease routes need a client: the Sbx-Client header, which on_request already used to
 * renew the lease. */
static const char *lease_client(struct req *r)
{
	const char *c = req_client(r);
	if (!c)
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
			    "an Sbx-Client header (1 to %d of A-Z a-z 0-9 . _ -) is required",
			    LEASE_ID_MAX - 1);
	return c;
}

/* POST /api/x/lease {"close":["h1",...]}: the heartbeat of an idle client, and the closes it
 * could not deliver before (handles it no longer uses). */
void route_x_lease_renew(struct req *r)
{
	const char *client = lease_client(r);
	if (!client)
		return;
	const cJSON *close = cJSON_GetObjectItemCaseSensitive(req_json(r), "close");
	size_t n = (size_t)cJSON_GetArraySize(close), closed = 0;
	if (close && (!cJSON_IsArray(close) || n > 4096)) {
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
			    "'close' must be an array of at most 4096 handle ids");
		return;
	}
	if (n) {
		const char **ids = calloc(n, sizeof *ids);
		if (!ids) {
			reply_error(r, 500, "INTERNAL_ERROR", ENOMEM, NULL, "out of memory");
			return;
		}
		size_t i = 0;
		const cJSON *id;
		cJSON_ArrayForEach(id, close)
			ids[i++] = cJSON_GetStringValue(id);
		closed = handles_close_owned(client, ids, n);
		free(ids);
	}
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "client", client);
	json_add_int(o, "leaseMs", leases_duration_ms());
	json_add_int(o, "closed", (int64_t)closed);
	json_add_int(o, "handles", (int64_t)handles_count_owned(client));
	reply_ok(r, o);
}

/* DELETE /api/x/lease: a client that leaves (an unmount) closes everything it holds. */
void route_x_lease_end(struct req *r)
{
	const char *client = lease_client(r);
	if (!client)
		return;
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "client", client);
	json_add_int(o, "closed", leases_end(client));
	reply_ok(r, o);
}
