/* Starting commands.
 *
 * Every command runs under bubblewrap in a mount namespace that shows the host workspace
 * directory at /workspace (the rest of the host is bound as is for now). The command is the
 * leader of a new session and process group, so runner_kill() reaches everything it started;
 * its environment is only what the caller passes (or the default below), never sbxd's own,
 * which may hold the bearer token.
 *
 * All spawns happen on one long-lived thread. bubblewrap's --die-with-parent is
 * PR_SET_PDEATHSIG, and "parent" there means the *thread* that forked: spawned from an HTTP
 * connection thread, a command would be killed as soon as that connection ends. The spawner
 * thread lives as long as sbxd, so commands die with sbxd and with nothing else.
 *
 * Children are reaped only by runner_wait(), through a pidfd, so nothing else in sbxd may set
 * SIGCHLD to SIG_IGN or call waitpid(-1). */
#include "server/runner.h"
#include "server/envstore.h"
#include "server/server.h"
#include "common/log.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SANDBOX_WORKSPACE "/workspace"
#define BWRAP_PROBE_TIMEOUT_MS 10000

static const char *const default_env[] = {
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"HOME=/root",
	"LANG=C.UTF-8",
	"TERM=dumb",
	NULL,
};

static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static bool initialised;
static char *workspace_dir;     /* host path, resolved */
static char *bwrap_path;        /* NULL: run without bubblewrap */
static char unavailable[256];   /* non-empty: commands cannot be started */

/* ---- the spawner thread ---- */

struct spawn_job {
	const char *path;
	char *const *argv;
	char *const *envp;
	const char *chdir_to;   /* NULL: stay */
	int fd_in, fd_out, fd_err; /* child ends; fd_in -1 = /dev/null */
	pid_t pid;
	int err;
	bool done;
	struct spawn_job *next;
};

static pthread_mutex_t spawn_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t spawn_cond = PTHREAD_COND_INITIALIZER;
static struct spawn_job *spawn_queue;
static bool spawner_running;

static int do_spawn(struct spawn_job *j)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t none, all;
	int err;

	sigemptyset(&none);
	sigfillset(&all);
	posix_spawn_file_actions_init(&fa);
	posix_spawnattr_init(&attr);
	/* sbxd ignores SIGPIPE and may block signals in its threads; commands must not inherit
	 * either */
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK |
					POSIX_SPAWN_SETSIGDEF);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setsigdefault(&attr, &all);
	if (j->fd_in < 0)
		posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	else
		posix_spawn_file_actions_adddup2(&fa, j->fd_in, 0);
	posix_spawn_file_actions_adddup2(&fa, j->fd_out, 1);
	posix_spawn_file_actions_adddup2(&fa, j->fd_err, 2);
	/* descriptors other parts of sbxd opened without O_CLOEXEC stay out of the sandbox */
	posix_spawn_file_actions_addclosefrom_np(&fa, 3);
	if (j->chdir_to)
		posix_spawn_file_actions_addchdir_np(&fa, j->chdir_to);
	err = posix_spawn(&j->pid, j->path, &fa, &attr, j->argv, j->envp);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	return -err;
}

static void *spawner(void *arg)
{
	pthread_mutex_lock(&spawn_lock);
	for (;;) {
		while (!spawn_queue)
			pthread_cond_wait(&spawn_cond, &spawn_lock);
		struct spawn_job *j = spawn_queue;
		spawn_queue = j->next;
		pthread_mutex_unlock(&spawn_lock);
		j->err = do_spawn(j);
		pthread_mutex_lock(&spawn_lock);
		j->done = true;
		pthread_cond_broadcast(&spawn_cond);
	}
	return NULL;
}

/* Runs the job on the spawner thread and waits for it (posix_spawn returns right after the
 * child's exec, so this never waits on the command itself). */
static int spawn_on_thread(struct spawn_job *j)
{
	pthread_mutex_lock(&spawn_lock);
	if (!spawner_running) {
		pthread_t t;
		pthread_attr_t a;
		sigset_t all, old;
		pthread_attr_init(&a);
		pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
		/* the spawner takes no signals: sbxd's handling stays where server.c put it */
		sigfillset(&all);
		pthread_sigmask(SIG_SETMASK, &all, &old);
		int err = pthread_create(&t, &a, spawner, NULL);
		pthread_sigmask(SIG_SETMASK, &old, NULL);
		pthread_attr_destroy(&a);
		if (err) {
			pthread_mutex_unlock(&spawn_lock);
			return -err;
		}
		spawner_running = true;
	}
	struct spawn_job **tail = &spawn_queue;
	while (*tail)
		tail = &(*tail)->next;
	j->next = NULL;
	j->done = false;
	*tail = j;
	pthread_cond_broadcast(&spawn_cond);
	while (!j->done)
		pthread_cond_wait(&spawn_cond, &spawn_lock);
	pthread_mutex_unlock(&spawn_lock);
	return j->err;
}

/* ---- helpers ---- */

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *env_get(const char *const *env, const char *name)
{
	size_t n = strlen(name);
	for (; env && *env; env++)
		if (strncmp(*env, name, n) == 0 && (*env)[n] == '=')
			return *env + n + 1;
	return NULL;
}

/* The executable for name as execvp would find it with this PATH; NULL if none. */
static char *find_program(const char *name, const char *path)
{
	if (strchr(name, '/'))
		return strdup(name);
	if (!path)
		path = "/bin:/usr/bin";
	for (const char *p = path;;) {
		const char *end = strchrnul(p, ':');
		char *cand;
		if (asprintf(&cand, "%.*s%s%s", (int)(end - p), p, end == p ? "" : "/", name) < 0)
			return NULL;
		if (access(cand, X_OK) == 0)
			return cand;
		free(cand);
		if (!*end)
			return NULL;
		p = end + 1;
	}
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

/* ---- public ---- */

const char *const *runner_default_env(void)
{
	return default_env;
}

void runner_close(struct run_proc *p)
{
	close_fd(&p->stdin_fd);
	close_fd(&p->stdout_fd);
	close_fd(&p->stderr_fd);
	close_fd(&p->pidfd);
}

int runner_exit_code(int status)
{
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return 255;
}

int runner_wait(struct run_proc *p, int *status, int timeout_ms)
{
	int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
	for (;;) {
		pid_t r = waitpid(p->pid, status, WNOHANG);
		if (r == p->pid)
			return 0;
		if (r < 0 && errno != EINTR)
			return -errno;
		int wait_ms = -1;
		if (deadline >= 0) {
			int64_t left = deadline - now_ms();
			if (left <= 0)
				return -ETIMEDOUT;
			wait_ms = left > INT_MAX ? INT_MAX : (int)left;
		}
		if (p->pidfd >= 0) {
			struct pollfd pfd = { .fd = p->pidfd, .events = POLLIN };
			if (poll(&pfd, 1, wait_ms) < 0 && errno != EINTR)
				return -errno;
		} else {
			/* no pidfd (old kernel): poll the child every 10 ms */
			struct timespec ts = { 0, 10 * 1000000 };
			if (wait_ms >= 0 && wait_ms < 10)
				ts.tv_nsec = (long)wait_ms * 1000000;
			nanosleep(&ts, NULL);
		}
	}
}

int runner_kill(const struct run_proc *p, int sig)
{
	if (p->pid <= 0)
		return -ESRCH;
	return kill(-p->pid, sig) < 0 ? -errno : 0;
}

const char *runner_unavailable(void)
{
	return unavailable[0] ? unavailable : NULL;
}

/* Can bubblewrap set up a mount namespace here? (It cannot in some containers.) */
static bool bwrap_works(const char *path)
{
	char *argv[] = { "bwrap", "--dev-bind", "/", "/", "true", NULL };
	int out[2];
	if (pipe2(out, O_CLOEXEC) < 0)
		return false;
	struct spawn_job j = { .path = path, .argv = argv, .envp = (char *const *)default_env, .fd_in = -1,
			       .fd_out = out[1], .fd_err = out[1] };
	int err = spawn_on_thread(&j);
	close(out[1]);
	if (err) {
		close(out[0]);
		log_error("runner: cannot run %s: %s", path, strerror(-err));
		return false;
	}
	struct run_proc p = { .pid = j.pid, .stdin_fd = -1, .stdout_fd = out[0], .stderr_fd = -1,
			      .pidfd = pidfd_open(j.pid, 0) };
	int status = 0;
	err = runner_wait(&p, &status, BWRAP_PROBE_TIMEOUT_MS);
	if (err == -ETIMEDOUT) {
		kill(j.pid, SIGKILL);
		err = runner_wait(&p, &status, -1);
		status = 1;
	}
	char msg[512];
	ssize_t n = read(out[0], msg, sizeof msg - 1);
	msg[n > 0 ? n : 0] = 0;
	msg[strcspn(msg, "\n")] = 0;
	runner_close(&p);
	if (err || !WIFEXITED(status) || WEXITSTATUS(status)) {
		log_error("runner: bubblewrap cannot create a sandbox here: %s",
			  msg[0] ? msg : "it failed");
		return false;
	}
	return true;
}

void runner_init(const char *ws, const char *state_dir)
{
	(void)state_dir; /* commands get nothing about it (see the header) */
	pthread_mutex_lock(&init_lock);
	if (initialised) {
		pthread_mutex_unlock(&init_lock);
		return;
	}
	workspace_dir = realpath(ws ? ws : SANDBOX_WORKSPACE, NULL);
	if (!workspace_dir) {
		snprintf(unavailable, sizeof unavailable, "workspace directory %s: %s",
			 ws ? ws : SANDBOX_WORKSPACE, strerror(errno));
		log_error("runner: %s", unavailable);
	} else {
		bwrap_path = find_program("bwrap", getenv("PATH"));
		if (!bwrap_path)
			log_error("runner: bubblewrap (bwrap) is not installed");
		else if (!bwrap_works(bwrap_path)) {
			free(bwrap_path);
			bwrap_path = NULL;
		}
		if (!bwrap_path && strcmp(workspace_dir, SANDBOX_WORKSPACE) != 0)
			snprintf(unavailable, sizeof unavailable,
				 "bubblewrap is unusable, so commands cannot see %s as "
				 SANDBOX_WORKSPACE, workspace_dir);
		else if (!bwrap_path)
			log_warn("runner: running commands without bubblewrap");
		if (unavailable[0])
			log_error("runner: %s", unavailable);
	}
	initialised = true;
	pthread_mutex_unlock(&init_lock);
}

static bool ensure_init(void)
{
	pthread_mutex_lock(&init_lock);
	bool done = initialised;
	pthread_mutex_unlock(&init_lock);
	if (!done)
		runner_init(sbxd_cfg ? sbxd_cfg->workspace : NULL,
			    sbxd_cfg ? sbxd_cfg->state_dir : NULL);
	return !unavailable[0];
}

int runner_spawn(const struct run_spec *spec, struct run_proc *out)
{
	*out = (struct run_proc){ .pid = -1, .stdin_fd = -1, .stdout_fd = -1, .stderr_fd = -1,
				  .pidfd = -1 };
	if (!spec->argv || !spec->argv[0])
		return -EINVAL;
	if (!spec->env) {
		/* the default: runner_default_env() and the variables set through /api/x/env */
		struct run_spec with_env = *spec;
		char **env = envstore_build(NULL);
		with_env.env = (const char *const *)env;
		int err = runner_spawn(&with_env, out);
		envstore_free(env);
		return err;
	}
	if (!ensure_init())
		return -ENOTSUP;
	const char *const *env = spec->env ? spec->env : default_env;
	const char *cwd = spec->cwd ? spec->cwd : SANDBOX_WORKSPACE;
	size_t argc = 0;
	while (spec->argv[argc])
		argc++;

	const char **argv = calloc(argc + 16, sizeof *argv);
	char *prog = NULL;
	if (!argv)
		return -ENOMEM;
	size_t n = 0;
	const char *chdir_to = NULL;
	if (bwrap_path) {
		argv[n++] = "bwrap";
		argv[n++] = "--dev-bind"; argv[n++] = "/"; argv[n++] = "/";
		if (strcmp(workspace_dir, SANDBOX_WORKSPACE) != 0) {
			argv[n++] = "--bind"; argv[n++] = workspace_dir;
			argv[n++] = SANDBOX_WORKSPACE;
		}
		argv[n++] = "--chdir"; argv[n++] = cwd;
		argv[n++] = "--die-with-parent";
		argv[n++] = "--";
		/* bwrap looks the program up in the command's PATH itself */
	} else {
		prog = find_program(spec->argv[0], env_get(env, "PATH"));
		if (!prog) {
			free(argv);
			return -ENOENT;
		}
		chdir_to = cwd;
	}
	for (size_t i = 0; i < argc; i++)
		argv[n++] = spec->argv[i];
	argv[n] = NULL;

	int in[2] = { -1, -1 }, o[2] = { -1, -1 }, e[2] = { -1, -1 };
	int err = 0;
	if ((!spec->stdin_null && pipe2(in, O_CLOEXEC) < 0) || pipe2(o, O_CLOEXEC) < 0 ||
	    pipe2(e, O_CLOEXEC) < 0)
		err = -errno;
	if (!err) {
		struct spawn_job j = { .path = bwrap_path ? bwrap_path : prog,
				       .argv = (char *const *)argv, .envp = (char *const *)env,
				       .chdir_to = chdir_to, .fd_in = in[0], .fd_out = o[1],
				       .fd_err = e[1] };
		err = spawn_on_thread(&j);
		if (!err)
			out->pid = j.pid;
	}
	close_fd(&in[0]);
	close_fd(&o[1]);
	close_fd(&e[1]);
	free(prog);
	free(argv);
	if (err) {
		close_fd(&in[1]);
		close_fd(&o[0]);
		close_fd(&e[0]);
		return err;
	}
	out->stdin_fd = in[1];
	out->stdout_fd = o[0];
	out->stderr_fd = e[0];
	for (int i = 0; i < 3; i++) {
		int fd = i == 0 ? in[1] : i == 1 ? o[0] : e[0];
		if (fd >= 0)
			fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	}
	out->pidfd = pidfd_open(out->pid, 0);
	if (out->pidfd < 0)
		log_debug("runner: pidfd_open: %s (polling for exits instead)", strerror(errno));
	return 0;
}
