/* The routes of exposed ports: POST /api/x/ports, GET /api/x/ports and DELETE
 * /api/x/ports/{port} (an sbxd extension, docs/protocol.md), over the table of
 * server/ports.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "server/ports.h"
#include "server/request.h"
#include "server/routes.h"
#include "server/sbxd.h"

#define STR_(x) #x
#define STR(x) STR_(x)

static struct ports *ports_of(struct req *r)
{
	return req_sbxd(r)->ports;
}

static cJSON *describe(struct req *r, const struct port_info *p, bool listing)
{
	cJSON *o = cJSON_CreateObject();
	char *url = ports_url(ports_of(r), p, req_header(r, "Host"));
	cJSON_AddNumberToObject(o, "port", p->port);
	cJSON_AddStringToObject(o, "url", url ? url : "");
	if (p->named)
		cJSON_AddStringToObject(o, "name", p->name);
	else
		cJSON_AddNullToObject(o, "name");
	if (listing)
		cJSON_AddStringToObject(o, "status", "active");
	free(url);
	return o;
}

static bool sandbox_id_usable(const char *id)
{
	return *id && strspn(id, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") ==
			      strlen(id);
}

struct expose_req {
	int64_t port;
	const char *name;
};

static const struct field expose_fields[] = {
	FIELD("port", FIELD_INT, struct expose_req, port, .flags = FIELD_REQUIRED, .min = 1024,
	      .max = 65535, .wrong = "port must be an integer from 1024 to 65535",
	      .missing = "port must be an integer from 1024 to 65535"),
	FIELD("name", FIELD_STRING, struct expose_req, name, .max = PORTS_NAME_MAX,
	      .wrong = "name must be a string of at most " STR(PORTS_NAME_MAX) " bytes"),
};

void route_x_ports_expose(struct req *r)
{
	struct expose_req x = { 0 };
	const struct sbxd_config *cfg = req_sbxd(r)->cfg;
	const char *id = cfg->sandbox_id ? cfg->sandbox_id : "local";
	if (!req_decode(r, expose_fields, FIELDS_N(expose_fields), &x))
		return;
	if (x.port == ports_server_port(ports_of(r)))
		return reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
				   "port %d is sbxd's own port and cannot be exposed", (int)x.port);
	if (!sandbox_id_usable(id))
		return reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
				   "sandbox id '%s' cannot be part of a host name (use letters, "
				   "digits, '.', '_' and '-' in sbxd --sandbox-id)", id);
	struct port_info p;
	int err = ports_expose(ports_of(r), (int)x.port, x.name, &p);
	if (err == -ENOSPC)
		return reply_error(r, 507, "NO_SPACE", ENOSPC, NULL,
				   "at most %d ports can be exposed at once", PORTS_MAX);
	if (err)
		return reply_error(r, 500, "INTERNAL_ERROR", EIO, NULL,
				   "no random bytes for a token");
	reply_ok(r, describe(r, &p, false));
}

void route_x_ports_unexpose(struct req *r)
{
	const char *arg = req_path_arg(r);
	char *end;
	long port = arg ? strtol(arg, &end, 10) : -1;
	if (!arg || !*arg || *end || port < 1 || port > 65535)
		return reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
				   "'%s' is not a port number", arg ? arg : "");
	if (ports_unexpose(ports_of(r), (int)port) < 0) {
		cJSON *ctx = cJSON_CreateObject();
		cJSON_AddNumberToObject(ctx, "port", (double)port);
		return reply_error(r, 404, "PORT_NOT_EXPOSED", ENOENT, ctx,
				   "port %ld is not exposed", port);
	}
	cJSON *o = cJSON_CreateObject();
	cJSON_AddNumberToObject(o, "port", (double)port);
	reply_ok(r, o);
}

void route_x_ports_list(struct req *r)
{
	struct port_info *v = calloc(PORTS_MAX, sizeof *v);
	if (!v)
		abort();
	size_t n = ports_list(ports_of(r), v, PORTS_MAX);
	cJSON *o = cJSON_CreateObject();
	cJSON *list = cJSON_AddArrayToObject(o, "ports");
	for (size_t i = 0; i < n; i++)
		cJSON_AddItemToArray(list, describe(r, &v[i], true));
	free(v);
	reply_ok(r, o);
}
