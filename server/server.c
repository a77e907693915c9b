/* sbxd's lifecycle: bring the parts up in dependency order, serve until SIGINT/SIGTERM, and
 * take them down in reverse. SIGINT and SIGTERM are blocked before any thread exists, so every
 * thread inherits the mask and only sigwait() in the main thread ever sees them (the runner
 * restores a clean mask in the commands it starts). */
#include "server/server.h"
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include "common/log.h"
#include "server/contexts.h"
#include "server/handles.h"
#include "server/httpd.h"
#include "server/idempotency.h"
#include "server/leases.h"
#include "server/processes.h"
#include "server/runner.h"
#include "server/watch.h"
#include "server/workspace.h"

const struct sbxd_config *sbxd_cfg;

/* Handles (up to 4096) and connections each hold a descriptor. */
static void raise_fd_limit(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

int sbxd_serve(const struct sbxd_config *cfg)
{
	sbxd_cfg = cfg;
	signal(SIGPIPE, SIG_IGN);
	sigset_t stop;
	sigemptyset(&stop);
	sigaddset(&stop, SIGINT);
	sigaddset(&stop, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &stop, NULL);
	raise_fd_limit();

	int err = ws_init(cfg->workspace);
	if (err) {
		log_error("workspace %s: %s", cfg->workspace, strerror(-err));
		return 1;
	}
	runner_init(ws_host_dir(), cfg->state_dir);
	watch_init();
	leases_start(cfg->lease_seconds * 1000);
	struct httpd *h = httpd_start(cfg);
	if (!h) {
		leases_stop();
		watch_shutdown();
		ws_shutdown();
		return 1;
	}
	const char *listen = cfg->listen ? cfg->listen : "127.0.0.1:7070";
	const char *colon = strrchr(listen, ':');
	fprintf(stderr, "sbxd: listening on http://%.*s:%d (workspace %s)\n",
		(int)(colon - listen), listen, httpd_port(h), ws_host_dir());

	int sig = 0;
	sigwait(&stop, &sig);
	log_info("%s received, stopping", strsignal(sig));
	httpd_stop(h);
	log_debug("http server stopped");
	contexts_shutdown();
	log_debug("interpreters stopped");
	processes_shutdown();
	log_debug("background processes stopped");
	watch_shutdown();
	log_debug("watcher stopped");
	leases_stop();
	handles_shutdown();
	idem_shutdown();
	ws_shutdown();
	return 0;
}
