/* The routing table: method, path, handler, flags. Kept as data so that what sbxd serves can be
 * read at a glance (and --no-extensions is a flag, not a branch in every handler). */
#include "server/routes.h"
#include "common/jsonutil.h"

/* POST /api/execute with "background":true starts a process record, as in the container: the
 * one path that two handlers share, told apart here so that neither calls the other. */
static void route_execute_any(struct req *r)
{
	if (json_bool(req_json(r), "background", false))
		route_process_start(r);
	else
		route_execute(r);
}

const struct route routes[] = {
	{ "GET", "/api/ping", route_ping, ROUTE_PUBLIC },
	{ "GET", "/api/version", route_version, 0 },
	{ "GET", "/api/x/capabilities", route_capabilities, ROUTE_EXTENSION },
	{ "POST", "/api/x/lease", route_x_lease_renew, ROUTE_JSON | ROUTE_EXTENSION },
	{ "DELETE", "/api/x/lease", route_x_lease_end, ROUTE_EXTENSION },

	{ "POST", "/api/session/create", route_session_create, ROUTE_JSON },
	{ "GET", "/api/session/list", route_session_list, 0 },
	{ "POST", "/api/session/delete", route_session_delete, ROUTE_JSON },
	{ "POST", "/api/execute", route_execute_any, ROUTE_JSON },
	{ "POST", "/api/execute/stream", route_execute_stream, ROUTE_JSON },

	{ "POST", "/api/process/start", route_process_start, ROUTE_JSON },
	{ "GET", "/api/process/list", route_process_list, 0 },
	{ "DELETE", "/api/process/kill-all", route_process_kill_all, 0 },
	{ "GET", "/api/process/{id}", route_process_get, 0 },
	{ "GET", "/api/process/{id}/logs", route_process_logs, 0 },
	{ "GET", "/api/process/{id}/stream", route_process_stream, 0 },
	{ "DELETE", "/api/process/{id}", route_process_kill, 0 },
	{ "POST", "/api/x/process/remove", route_x_process_remove, ROUTE_JSON | ROUTE_EXTENSION },

	{ "POST", "/api/port-watch", route_port_watch, ROUTE_JSON },
	{ "POST", "/api/git/checkout", route_git_checkout, ROUTE_JSON },

	{ "POST", "/api/read", route_read, ROUTE_JSON },
	{ "POST", "/api/read/stream", route_read_stream, ROUTE_JSON },
	{ "POST", "/api/write", route_write, ROUTE_JSON },
	{ "POST", "/api/delete", route_delete, ROUTE_JSON },
	{ "POST", "/api/rename", route_rename, ROUTE_JSON },
	{ "POST", "/api/move", route_move, ROUTE_JSON },
	{ "POST", "/api/mkdir", route_mkdir, ROUTE_JSON },
	{ "POST", "/api/list-files", route_list_files, ROUTE_JSON },
	{ "POST", "/api/exists", route_exists, ROUTE_JSON },
	{ "POST", "/api/watch", route_watch, ROUTE_JSON },
	{ "POST", "/api/watch/check", route_watch_check, ROUTE_JSON },

	{ "POST", "/api/contexts", route_context_create, ROUTE_JSON },
	{ "GET", "/api/contexts", route_context_list, 0 },
	{ "DELETE", "/api/contexts/{id}", route_context_delete, 0 },
	{ "POST", "/api/execute/code", route_execute_code, ROUTE_JSON },
	{ "POST", "/api/x/interrupt", route_context_interrupt, ROUTE_JSON | ROUTE_EXTENSION },

	{ "POST", "/api/x/stat", route_x_stat, ROUTE_JSON | ROUTE_EXTENSION },
	{ "POST", "/api/x/readdir", route_x_readdir, ROUTE_JSON | ROUTE_EXTENSION },
	{ "POST", "/api/x/tree", route_x_tree, ROUTE_JSON | ROUTE_EXTENSION },
	{ "POST", "/api/x/mkdir", route_x_mkdir, ROUTE_JSON | ROUTE_EXTENSION },
	{ "POST", "/api/x/unlink", route_x_unlink, ROUTE_JSON | ROUTE_EXTENSION },
	{ "POST", "/api/x/rmdir", route_x_rmdir, ROUTE_JSON | ROUTE_EXTENSION },
	{ "POST", "/api/x/rename", route_x_rename, ROUTE_JSON | ROUTE_EXTENSION },
	{ "POST", "/api/x/symlink", route_x_symlink, ROUTE_JSON | ROUTE_EXTENSION },
	{ "POST", "/api/x/readlink", route_x_readlink, ROUTE_JSON | ROUTE_EXTENSION },
	{ "POST", "/api/x/link", route_x_link, ROUTE_JSON | ROUTE_EXTENSION },
	{ "POST", "/api/x/setattr", route_x_setattr, ROUTE_JSON | ROUTE_EXTENSION },
	{ "POST", "/api/x/statfs", route_x_statfs, ROUTE_JSON | ROUTE_EXTENSION },
	{ "POST", "/api/x/open", route_x_open, ROUTE_JSON | ROUTE_EXTENSION },
	{ "POST", "/api/x/pread", route_x_pread, ROUTE_JSON | ROUTE_EXTENSION },
	{ "PUT", "/api/x/pwrite", route_x_pwrite, ROUTE_EXTENSION },
	{ "POST", "/api/x/fsync", route_x_fsync, ROUTE_JSON | ROUTE_EXTENSION },
	{ "POST", "/api/x/close", route_x_close, ROUTE_JSON | ROUTE_EXTENSION },
	{ "POST", "/api/x/journal", route_x_journal, ROUTE_JSON | ROUTE_EXTENSION },
	{ "PUT", "/api/x/journal", route_x_journal_write, ROUTE_EXTENSION },

	{ "GET", "/api/x/env", route_x_env_get, ROUTE_EXTENSION },
	{ "POST", "/api/x/env", route_x_env_set, ROUTE_JSON | ROUTE_EXTENSION },

	{ "POST", "/api/x/ports", route_x_ports_expose, ROUTE_JSON | ROUTE_EXTENSION },
	{ "GET", "/api/x/ports", route_x_ports_list, ROUTE_EXTENSION },
	{ "DELETE", "/api/x/ports/{id}", route_x_ports_unexpose, ROUTE_EXTENSION },
};
const size_t n_routes = sizeof routes / sizeof routes[0];
