/* sbxd's lifecycle: bring the parts up in dependency order, serve until SIGINT/SIGTERM, and
 * take them down in reverse. SIGINT and SIGTERM are blocked before any thread exists, so every
 * thread inherits the mask and only sigwait() in the main thread ever sees them (the runner
 * restores a clean mask in the commands it starts).
 *
 * A stop is bounded. Stopping the HTTP server shuts every connection down, and each request
 * that waits (a command, a queued command, a clone, a stream) watches its connection and ends
 * within a few seconds of that; the parts after it give their processes TERM and KILL 5 s
 * later. Should anything still hold the stop STOP_MAX_S later (or a second signal come), a
 * watchdog ends the sandbox and sbxd at once, with status 1. */
#include "server/server.h"
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#include "common/log.h"
#include "server/contexts.h"
#include "server/echo.h"
#include "server/handles.h"
#include "server/httpd.h"
#include "server/idempotency.h"
#include "server/journal.h"
#include "server/leases.h"
#include "server/ports.h"
#include "server/preview.h"
#include "server/processes.h"
#include "server/runner.h"
#include "server/watch.h"
#include "server/workspace.h"

#define STOP_MAX_S 20

const struct sbxd_config *sbxd_cfg;

static sigset_t stop_signals;

/* Waits for the end of a stop: a second signal or STOP_MAX_S end sbxd there and then. */
static void *stop_watchdog(void *arg)
{
	struct timespec now, end;
	int sig = -1;
	(void)arg;
	clock_gettime(CLOCK_MONOTONIC, &end);
	end.tv_sec += STOP_MAX_S;
	do {
		clock_gettime(CLOCK_MONOTONIC, &now);
		struct timespec left = { end.tv_sec - now.tv_sec, end.tv_nsec - now.tv_nsec };
		if (left.tv_nsec < 0) {
			left.tv_sec--;
			left.tv_nsec += 1000000000;
		}
		if (left.tv_sec < 0)
			break;
		sig = sigtimedwait(&stop_signals, NULL, &left);
	} while (sig < 0 && errno == EINTR);
	if (sig > 0)
		log_error("%s received while stopping: stopping at once", strsignal(sig));
	else
		log_error("still stopping after %d s: stopping at once", STOP_MAX_S);
	runner_shutdown(); /* kills what runs in the sandbox */
	_exit(1);
}

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
	sigemptyset(&stop_signals);
	sigaddset(&stop_signals, SIGINT);
	sigaddset(&stop_signals, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
	raise_fd_limit();

	int err = ws_init(cfg->workspace);
	if (err) {
		log_error("workspace %s: %s", cfg->workspace, strerror(-err));
		return 1;
	}
	runner_init(ws_host_dir(), cfg->state_dir);
	watch_init();
	leases_start(cfg->lease_seconds * 1000);
	struct journals *journals = journals_new(cfg->state_dir, &err);
	if (!journals)
		log_error("journals in state directory %s: %s", cfg->state_dir, strerror(-err));
	struct sbxd sbxd = { .cfg = cfg, .procs = procs_new(), .ports = ports_new(cfg),
			     .journals = journals };
	struct httpd_hook preview = preview_hook(sbxd.ports);
	struct httpd *h = journals ? httpd_start(&sbxd, &preview) : NULL;
	if (!h) {
		journals_free(sbxd.journals);
		ports_free(sbxd.ports);
		procs_free(sbxd.procs);
		leases_stop();
		watch_shutdown();
		echo_clear();
		ws_shutdown();
		return 1;
	}
	const char *listen = cfg->listen ? cfg->listen : "127.0.0.1:7070";
	const char *colon = strrchr(listen, ':');
	ports_set_server_port(sbxd.ports, httpd_port(h));
	fprintf(stderr, "sbxd: listening on http://%.*s:%d (workspace %s)\n",
		(int)(colon - listen), listen, httpd_port(h), ws_host_dir());

	int sig = 0;
	sigwait(&stop_signals, &sig);
	log_info("%s received, stopping", strsignal(sig));
	pthread_t watchdog;
	if (pthread_create(&watchdog, NULL, stop_watchdog, NULL) == 0)
		pthread_detach(watchdog);
	httpd_stop(h);
	log_debug("http server stopped");
	contexts_shutdown();
	log_debug("interpreters stopped");
	procs_free(sbxd.procs);
	log_debug("background processes stopped");
	ports_free(sbxd.ports);
	journals_free(sbxd.journals);
	watch_shutdown();
	echo_clear();
	log_debug("watcher stopped");
	leases_stop();
	handles_shutdown();
	idem_shutdown();
	ws_shutdown();
	return 0;
}
