/* Health, version and the capabilities probe that tells sbxfs it talks to sbxd. */
#include "server/routes.h"
#include "server/server.h"

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
	cJSON_AddStringToObject(o, "sandboxId",
				sbxd_cfg && sbxd_cfg->sandbox_id ? sbxd_cfg->sandbox_id : "local");
	cJSON *ext = cJSON_AddArrayToObject(o, "extensions");
	static const char *const names[] = { "fs", "watch", "ports", "env", "process", "interrupt" };
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		cJSON_AddItemToArray(ext, cJSON_CreateString(names[i]));
	reply_ok(r, o);
}
