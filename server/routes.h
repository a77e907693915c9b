/* Route handlers, grouped by the file that implements them. A handler decodes its request
 * (server/request.h), asks an engine, which knows nothing of HTTP and keeps its state in a
 * struct where that lets it be tested alone (processes.h, ports.h: reached through
 * req_sbxd()), and answers; where an engine has a file of its own, its handlers are that
 * engine's *_routes.c. */
#ifndef SBXD_ROUTES_H
#define SBXD_ROUTES_H
#include "server/httpd.h"

/* meta.c */
void route_ping(struct req *r);
void route_version(struct req *r);
void route_capabilities(struct req *r);
void route_x_lease_renew(struct req *r);
void route_x_lease_end(struct req *r);

/* files.c: the container's standard file routes */
void route_read(struct req *r);
void route_read_stream(struct req *r);
void route_write(struct req *r);
void route_delete(struct req *r);
void route_rename(struct req *r);
void route_move(struct req *r);
void route_mkdir(struct req *r);
void route_list_files(struct req *r);
void route_exists(struct req *r);

/* fsx.c + handles.c: filesystem extensions /api/x/ */
void route_x_stat(struct req *r);
void route_x_readdir(struct req *r);
void route_x_tree(struct req *r);
void route_x_mkdir(struct req *r);
void route_x_unlink(struct req *r);
void route_x_rmdir(struct req *r);
void route_x_rename(struct req *r);
void route_x_symlink(struct req *r);
void route_x_readlink(struct req *r);
void route_x_link(struct req *r);
void route_x_setattr(struct req *r);
void route_x_statfs(struct req *r);
void route_x_open(struct req *r);
void route_x_pread(struct req *r);
void route_x_pwrite(struct req *r);
void route_x_fsync(struct req *r);
void route_x_close(struct req *r);

/* journal_routes.c */
void route_x_journal(struct req *r);
void route_x_journal_write(struct req *r);

/* watch.c */
void route_watch(struct req *r);
void route_watch_check(struct req *r);

/* exec.c, sessions_routes.c */
void route_session_create(struct req *r);
void route_session_list(struct req *r);
void route_session_delete(struct req *r);
void route_execute(struct req *r);
void route_execute_stream(struct req *r);

/* processes_routes.c (POST /api/execute with "background":true starts one too: routes.c) */
void route_process_start(struct req *r);
void route_process_list(struct req *r);
void route_process_get(struct req *r);
void route_process_logs(struct req *r);
void route_process_stream(struct req *r);
void route_process_kill(struct req *r);
void route_process_kill_all(struct req *r);
void route_x_process_remove(struct req *r);

/* portwatch.c */
void route_port_watch(struct req *r);

/* git.c */
void route_git_checkout(struct req *r);

/* envstore.c */
void route_x_env_get(struct req *r);
void route_x_env_set(struct req *r);

/* ports.c */
void route_x_ports_expose(struct req *r);
void route_x_ports_list(struct req *r);
void route_x_ports_unexpose(struct req *r);

/* contexts_routes.c */
void route_context_create(struct req *r);
void route_context_list(struct req *r);
void route_context_delete(struct req *r);
void route_execute_code(struct req *r);
void route_context_interrupt(struct req *r);
#endif
