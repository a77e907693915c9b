/* Starting commands.
 *
 * Every command runs under bubblewrap: new mount, pid, ipc, uts (and, where possible, cgroup)
 * namespaces, all capabilities dropped, no new privileges. The network is shared with the host
 * (docs/security.md says why). The mount namespace is built from nothing: /usr, /etc and the
 * /bin, /lib... links read-only, /sys read-only, a new /proc with /proc/sys and friends
 * read-only (root without capabilities may still write most sysctls, core_pattern included),
 * a minimal /dev, empty /run, /var and /home, the sandbox's own /tmp and /root (directories in
 * the state dir shared by all commands of this sbxd, or per-command tmpfs without one), the
 * workspace at /workspace, and the secrets of /etc, sbxd's token file and state dir covered
 * wherever they would otherwise show.
 *
 * One part of the state dir is the sandbox's own: sessions/, where the shell of a session
 * command loads and saves its state (server/sessions.c). It is bound at SESSIONS_INSIDE, and
 * an environment value naming a file in it is translated to that path (sbxd itself only
 * renames and checks those files, never following a link the sandbox could plant).
 *
 * Process tree. bubblewrap forks the sandbox's pid 1 (its init, host pid in run_proc.inner_pid)
 * which forks the command; --new-session makes that init a session and process group leader
 * whose group the command inherits, so signalling the group -inner_pid reaches the command and
 * its children but not the outer bubblewrap (which runner_wait reaps and which would otherwise
 * die of a SIGINT meant for an interpreter). The init ignores every signal from outside but
 * SIGKILL, and when it dies the kernel kills everything in the pid namespace: so a process
 * tree dies with its leader, and SIGKILL to the group ends the whole spawn.
 *
 * Start-up handshake. bubblewrap reports the init's pid on --info-fd right after creating it,
 * and the init then waits on --block-fd before it forks the command. In that window both
 * bubblewrap processes join the sandbox cgroup (server/cgroup.h) and get the rlimits, so that
 * everything the command ever forks is counted and limited, with no race.
 *
 * All spawns happen on one long-lived thread. bubblewrap's --die-with-parent is
 * PR_SET_PDEATHSIG, and "parent" there means the *thread* that forked: spawned from an HTTP
 * connection thread, a command would be killed as soon as that connection ends. The spawner
 * thread lives as long as sbxd, so commands die with sbxd and with nothing else, even when sbxd
 * is killed with SIGKILL. On an orderly exit runner_shutdown() also empties the cgroup.
 *
 * Capabilities. bubblewrap run by root (not setuid, no user namespace) keeps its own
 * capabilities to build the sandbox and with --cap-drop ALL clears the command's effective,
 * permitted and inheritable sets, but it never touches the bounding set: the command would see
 * every capability there (only no_new_privs keeps an exec from regaining them). So the spawner
 * thread empties its own bounding set before it starts anything (credentials are per thread: the
 * rest of sbxd keeps its own) and hands its capabilities to bubblewrap as ambient ones instead,
 * which an exec keeps whatever the bounding set; bubblewrap's capset() then clears them for the
 * command along with the rest, and the empty bounding set is inherited by everything below.
 *
 * Without bubblewrap (RUNNER_ISOLATION_NONE, sbxd --isolation=none): for a system that is the
 * sandbox itself, a container made for it, where the container's own API server runs commands
 * the same way. Commands then run directly, as sbxd's user with its privileges, in this mount
 * and pid namespace, with the workspace at its real place (which must therefore be /workspace).
 * Only the limits and the token on the API remain, and sbxd says so loudly at start. The limits
 * are put in place the same race-free way: the spawner forks a child that makes itself a
 * session and process group leader (what runner_kill() signals), reports that on its info
 * descriptor, and waits on its block descriptor, as bubblewrap's init does, until sbxd has
 * added it to the cgroup and set its rlimits; only then does it exec the command. It dies with
 * the spawner thread like bubblewrap (PR_SET_PDEATHSIG). Never a fallback: with the default
 * isolation and no working bubblewrap, commands are refused.
 *
 * Children are reaped only by runner_wait(), through a pidfd, so nothing else in sbxd may set
 * SIGCHLD to SIG_IGN or call waitpid(-1). Commands get only the environment the caller passes
 * (or the default below), never sbxd's own, which may hold the bearer token. */
#include "server/runner.h"
#include "server/cgroup.h"
#include "server/envstore.h"
#include "server/sbxd.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/strv.h"
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SANDBOX_WORKSPACE "/workspace"
#define BWRAP_PROBE_TIMEOUT_MS 10000
#define BWRAP_INFO_TIMEOUT_MS 10000
#define BWRAP_INFO_FD 3  /* numbers inside bubblewrap */
#define BWRAP_BLOCK_FD 4
#define SESSIONS_INSIDE "/run/sbxd/sessions"
#define HIGH_FD 10       /* where those two live in sbxd, clear of what do_spawn dup2s to */
#define CPU_GRACE_SECONDS 5 /* SIGXCPU at the limit, SIGKILL this much later */
#if __has_include(<sys/pidfd.h>)
#include <sys/pidfd.h>
#else /* glibc before 2.36 (Ubuntu 22.04, under Cloudflare's sandbox image): the system calls */
static int pidfd_open(pid_t pid, unsigned int flags)
{
	return (int)syscall(SYS_pidfd_open, pid, flags);
}

static int pidfd_send_signal(int pidfd, int sig, siginfo_t *info, unsigned int flags)
{
	return (int)syscall(SYS_pidfd_send_signal, pidfd, sig, info, flags);
}
#endif
#ifndef PIDFD_SIGNAL_PROCESS_GROUP
#define PIDFD_SIGNAL_PROCESS_GROUP (1UL << 2) /* Linux 6.9 */
#endif

/* Secrets of the host's /etc that root inside the sandbox could read (it owns them). */
static const char *const etc_secrets[] = {
	"/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/security/opasswd",
	"/etc/ssl/private", "/etc/ssh/ssh_host_*key", NULL,
};

/* Parts of a fresh /proc that must not be writable (bubblewrap covers them only when it
 * believes they are writable, and for root without CAP_DAC_OVERRIDE it believes wrong). */
static const char *const proc_read_only[] = {
	"/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", NULL,
};

static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static bool initialised;
static char *workspace_dir;     /* host path, resolved */
static enum runner_isolation isolation = RUNNER_ISOLATION_BWRAP;
static char *bwrap_path;        /* NULL: without bubblewrap (isolation none, or unusable) */
static char unavailable[256];   /* non-empty: commands cannot be started */
static struct runner_limits limits = {
	.memory = RUNNER_DEFAULT_MEMORY,
	.pids = RUNNER_DEFAULT_PIDS,
	.file_size = RUNNER_DEFAULT_FILE_SIZE,
	.cpu_seconds = RUNNER_DEFAULT_CPU_SECONDS,
	.open_files = RUNNER_DEFAULT_OPEN_FILES,
};
static unsigned cgroup_limits;  /* CGROUP_* in force */
static char *token_file;        /* resolved; hidden in the sandbox */
static char *state_dir;         /* resolved; hidden in the sandbox */
static char *state_dir_given;   /* as configured (sessions.c builds its paths from it) */
static char *sandbox_tmp;       /* host directories shown as /tmp and /root; NULL: tmpfs */
static char *sandbox_home;

/* ---- the spawner thread ---- */

struct spawn_job {
	const char *path;
	char *const *argv;
	char *const *envp;
	const char *chdir_to;   /* NULL: stay */
	int fd_in, fd_out, fd_err; /* child ends; fd_in -1 = /dev/null */
	int fd_info, fd_block;  /* -1 or child ends (>= HIGH_FD) for bubblewrap's 3 and 4 */
	bool held;              /* no bubblewrap: fork a child that reports on fd_info and waits
				 * on fd_block itself */
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
	int keep = 3;
	if (j->fd_info >= 0) {
		posix_spawn_file_actions_adddup2(&fa, j->fd_info, BWRAP_INFO_FD);
		posix_spawn_file_actions_adddup2(&fa, j->fd_block, BWRAP_BLOCK_FD);
		keep = BWRAP_BLOCK_FD + 1;
	}
	/* descriptors other parts of sbxd opened without O_CLOEXEC stay out of the sandbox */
	posix_spawn_file_actions_addclosefrom_np(&fa, keep);
	if (j->chdir_to)
		posix_spawn_file_actions_addchdir_np(&fa, j->chdir_to);
	err = posix_spawn(&j->pid, j->path, &fa, &attr, j->argv, j->envp);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	return -err;
}

/* Writes the strings to stderr: all a held child can say (async-signal-safe). */
static void child_complain(const char *a, const char *b)
{
	const char *parts[] = { "sbxd: ", a, b, "\n" };
	for (size_t i = 0; i < 4; i++)
		if (write(2, parts[i], strlen(parts[i])) < 0)
			return;
}

/* The held child of a command without bubblewrap, between fork() and exec (see the top): only
 * async-signal-safe calls, since the locks of sbxd's other threads stay taken in this copy. */
static _Noreturn void held_child(const struct spawn_job *j, pid_t parent)
{
	/* dies with the spawner thread, as bubblewrap's --die-with-parent */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
		_exit(127);
	/* its own session and process group, which runner_kill() signals: once sbxd has read
	 * this byte, a signal sent right after the start is not lost */
	if (setsid() < 0 || write(j->fd_info, "", 1) != 1)
		_exit(127);
	int in = j->fd_in >= 0 ? j->fd_in : open("/dev/null", O_RDONLY);
	if (in < 0 || dup2(in, 0) < 0 || dup2(j->fd_out, 1) < 0 || dup2(j->fd_err, 2) < 0 ||
	    dup2(j->fd_block, 3) < 0)
		_exit(127);
	/* also the block pipes of other spawns, so that their EOF still means "do not run" */
	close_range(4, ~0U, 0);
	char go;
	ssize_t n;
	do
		n = read(3, &go, 1);
	while (n < 0 && errno == EINTR);
	if (n != 1)
		_exit(127); /* sbxd could not limit it, or is gone */
	close(3);
	struct sigaction dfl = { .sa_handler = SIG_DFL };
	for (int sig = 1; sig < NSIG; sig++)
		sigaction(sig, &dfl, NULL); /* sbxd ignores SIGPIPE; EINVAL for KILL and STOP */
	sigset_t none;
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	if (j->chdir_to && chdir(j->chdir_to) < 0) {
		child_complain("cannot change to directory ", j->chdir_to);
		_exit(127);
	}
	execve(j->path, j->argv, j->envp);
	child_complain("cannot execute ", j->path);
	_exit(127);
}

static int do_spawn_held(struct spawn_job *j)
{
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0)
		held_child(j, parent);
	j->pid = pid;
	return 0;
}

/* Empties the calling thread's capability bounding set, keeping its capabilities for what it
 * starts as ambient ones (see the top). Without CAP_SETPCAP (sbxd not run by root) there is
 * nothing to drop: bubblewrap then uses a user namespace and empties the set itself. */
static void empty_bounding_set(void)
{
	struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
	struct __user_cap_data_struct caps[2];
	if (syscall(SYS_capget, &hdr, caps) < 0) {
		log_warn("runner: capget: %s", strerror(errno));
		return;
	}
	if (!caps[0].permitted && !caps[1].permitted)
		return;
	/* an ambient capability must be permitted and inheritable */
	caps[0].inheritable = caps[0].permitted;
	caps[1].inheritable = caps[1].permitted;
	if (syscall(SYS_capset, &hdr, caps) < 0) {
		log_warn("runner: capset: %s (the sandbox keeps the bounding set)", strerror(errno));
		return;
	}
	for (unsigned cap = 0; cap < 64; cap++)
		if (caps[cap / 32].permitted & (1u << (cap % 32)) &&
		    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) < 0) {
			log_warn("runner: raising ambient capability %u: %s (the sandbox keeps the "
				 "bounding set)", cap, strerror(errno));
			return;
		}
	/* EINVAL past the last capability this kernel knows */
	for (unsigned cap = 0; cap < 64; cap++)
		if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 && errno == EINVAL)
			break;
}

static void *spawner(void *arg)
{
	/* without bubblewrap commands keep sbxd's privileges, as the container's own server's */
	if (isolation == RUNNER_ISOLATION_BWRAP)
		empty_bounding_set();
	pthread_mutex_lock(&spawn_lock);
	for (;;) {
		while (!spawn_queue)
			pthread_cond_wait(&spawn_cond, &spawn_lock);
		struct spawn_job *j = spawn_queue;
		spawn_queue = j->next;
		pthread_mutex_unlock(&spawn_lock);
		j->err = j->held ? do_spawn_held(j) : do_spawn(j);
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

/* pipe2(O_CLOEXEC) with both ends moved to HIGH_FD or above. */
static int high_pipe(int p[2])
{
	int low[2];
	if (pipe2(low, O_CLOEXEC) < 0)
		return -errno;
	p[0] = fcntl(low[0], F_DUPFD_CLOEXEC, HIGH_FD);
	p[1] = p[0] < 0 ? -1 : fcntl(low[1], F_DUPFD_CLOEXEC, HIGH_FD);
	int err = p[1] < 0 ? -errno : 0;
	close(low[0]);
	close(low[1]);
	if (err)
		close_fd(&p[0]);
	return err;
}

/* A growing argv of owned strings. */
struct args {
	char **v;
	size_t n, cap;
	bool failed;
};

static void add(struct args *a, const char *s)
{
	if (a->failed)
		return;
	if (a->n + 2 > a->cap) {
		size_t cap = a->cap ? a->cap * 2 : 64;
		char **v = realloc(a->v, cap * sizeof *v);
		if (!v) {
			a->failed = true;
			return;
		}
		a->v = v;
		a->cap = cap;
	}
	if (!(a->v[a->n] = strdup(s))) {
		a->failed = true;
		return;
	}
	a->v[++a->n] = NULL;
}

static void add3(struct args *a, const char *opt, const char *x, const char *y)
{
	add(a, opt);
	add(a, x);
	if (y)
		add(a, y);
}

static void args_free(struct args *a)
{
	for (size_t i = 0; i < a->n; i++)
		free(a->v[i]);
	free(a->v);
}

/* ---- the sandbox's mount namespace ---- */

/* Host directories bound into the sandbox, for finding where a host path would show. */
struct bound {
	const char *host, *inside;
};

/* Covers host path p (file or directory) wherever one of the binds would show it. */
static void hide(struct args *a, const struct bound *binds, size_t nb, const char *p)
{
	struct stat st;
	char *real = realpath(p, NULL);
	if (!real || stat(real, &st) < 0) {
		free(real);
		return;
	}
	for (size_t i = 0; i < nb; i++) {
		size_t hl = strlen(binds[i].host);
		const char *rest;
		if (strcmp(binds[i].host, "/") == 0)
			rest = real;
		else if (strncmp(real, binds[i].host, hl) == 0 && (real[hl] == '/' || !real[hl]))
			rest = real + hl;
		else
			continue;
		char inside[PATH_MAX * 2];
		snprintf(inside, sizeof inside, "%s%s", binds[i].inside, rest);
		/* /dev/null on a nodev mount cannot even be opened: EACCES */
		if (S_ISDIR(st.st_mode))
			add3(a, "--tmpfs", inside, NULL);
		else
			add3(a, "--ro-bind", "/dev/null", inside);
	}
	free(real);
}

/* /bin, /lib... as the host has them: links into /usr (merged /usr) or directories. */
static void system_dirs(struct args *a)
{
	static const char *const dirs[] = { "/bin", "/sbin", "/lib", "/lib32", "/lib64",
					    "/libx32", NULL };
	add3(a, "--ro-bind", "/usr", "/usr");
	for (size_t i = 0; dirs[i]; i++) {
		struct stat st;
		char target[PATH_MAX];
		if (lstat(dirs[i], &st) < 0)
			continue;
		if (S_ISLNK(st.st_mode)) {
			ssize_t n = readlink(dirs[i], target, sizeof target - 1);
			if (n <= 0)
				continue;
			target[n] = '\0';
			add3(a, "--symlink", target, dirs[i]);
		} else if (S_ISDIR(st.st_mode)) {
			add3(a, "--ro-bind", dirs[i], dirs[i]);
		}
	}
	add3(a, "--ro-bind", "/etc", "/etc");
	add3(a, "--ro-bind", "/sys", "/sys");
}

/* bubblewrap's options for a command with this working directory. */
static void sandbox_args(struct args *a, const char *cwd)
{
	add(a, "bwrap");
	add(a, "--unshare-pid");
	add(a, "--unshare-ipc");
	add(a, "--unshare-uts");
	add(a, "--unshare-cgroup-try");
	add3(a, "--hostname", "sandbox", NULL);
	add3(a, "--cap-drop", "ALL", NULL);
	add(a, "--die-with-parent");
	add(a, "--new-session");

	system_dirs(a);
	add3(a, "--proc", "/proc", NULL);
	for (size_t i = 0; proc_read_only[i]; i++)
		add3(a, "--ro-bind-try", proc_read_only[i], proc_read_only[i]);
	add3(a, "--dev", "/dev", NULL);
	add3(a, "--tmpfs", "/run", NULL);
	add3(a, "--tmpfs", "/home", NULL);
	add3(a, "--tmpfs", "/var", NULL);
	add3(a, "--perms", "1777", NULL);
	add3(a, "--dir", "/var/tmp", NULL);
	if (sandbox_tmp) {
		add3(a, "--bind", sandbox_tmp, "/tmp");
		add3(a, "--bind", sandbox_home, "/root");
	} else {
		add3(a, "--tmpfs", "/tmp", NULL);
		add3(a, "--chmod", "1777", "/tmp");
		add3(a, "--tmpfs", "/root", NULL);
	}
	add3(a, "--bind", workspace_dir, SANDBOX_WORKSPACE);
	if (state_dir) {
		char sessions[PATH_MAX + 16];
		snprintf(sessions, sizeof sessions, "%s/sessions", state_dir);
		add3(a, "--bind-try", sessions, SESSIONS_INSIDE);
	}

	struct bound binds[] = {
		{ "/usr", "/usr" }, { "/etc", "/etc" }, { workspace_dir, SANDBOX_WORKSPACE },
		{ sandbox_tmp ? sandbox_tmp : "", "/tmp" }, { sandbox_home ? sandbox_home : "", "/root" },
	};
	size_t nb = sandbox_tmp ? 5 : 3;
	for (size_t i = 0; etc_secrets[i]; i++) {
		glob_t g;
		if (glob(etc_secrets[i], GLOB_NOSORT, NULL, &g) == 0)
			for (size_t k = 0; k < g.gl_pathc; k++)
				hide(a, binds, nb, g.gl_pathv[k]);
		globfree(&g);
	}
	if (token_file)
		hide(a, binds, nb, token_file);
	if (state_dir)
		hide(a, binds, nb, state_dir);

	add3(a, "--remount-ro", "/", NULL); /* the root tmpfs: nothing lands beside the mounts */
	add3(a, "--chdir", cwd, NULL);
	char fd[16];
	snprintf(fd, sizeof fd, "%d", BWRAP_INFO_FD);
	add3(a, "--info-fd", fd, NULL);
	snprintf(fd, sizeof fd, "%d", BWRAP_BLOCK_FD);
	add3(a, "--block-fd", fd, NULL);
	add(a, "--");
}

/* ---- limits ---- */

static void set_rlimit(pid_t pid, int res, rlim_t soft, rlim_t hard)
{
	struct rlimit rl = { soft, hard };
	/* ESRCH: bubblewrap already failed, and says why on stderr */
	if (prlimit(pid, res, &rl, NULL) < 0 && errno != ESRCH)
		log_debug("runner: prlimit %d on %d: %s", res, (int)pid, strerror(errno));
}

/* What the cgroup does not cover, and per-process limits, on a process that has not forked
 * the command yet. */
static void limit_process(pid_t pid)
{
	if (pid <= 0)
		return;
	if (limits.file_size)
		set_rlimit(pid, RLIMIT_FSIZE, limits.file_size, limits.file_size);
	if (limits.cpu_seconds)
		set_rlimit(pid, RLIMIT_CPU, (rlim_t)limits.cpu_seconds,
			   (rlim_t)limits.cpu_seconds + CPU_GRACE_SECONDS);
	if (limits.memory && !(cgroup_limits & CGROUP_MEMORY))
		set_rlimit(pid, RLIMIT_AS, limits.memory, limits.memory);
	/* not sbxd's own (raised for its connections and handles): a sandbox that opens
	 * sockets by the thousand does it in many processes, each of them counted by pids.max */
	if (limits.open_files)
		set_rlimit(pid, RLIMIT_NOFILE, (rlim_t)limits.open_files, (rlim_t)limits.open_files);
	/* no core files in the workspace, and no core_pattern helper run on the host */
	set_rlimit(pid, RLIMIT_CORE, 0, 0);
}

/* Waits until fd has a byte or its end to read (or timeout_ms passed), and reads a byte. */
static void wait_readable(int fd, int timeout_ms)
{
	struct pollfd pfd = { .fd = fd, .events = POLLIN };
	int64_t deadline = mono_ms() + timeout_ms;
	char c;
	for (int64_t left = timeout_ms; left > 0; left = deadline - mono_ms()) {
		int r = poll(&pfd, 1, (int)left);
		if (r > 0) {
			while (read(fd, &c, 1) < 0 && errno == EINTR)
				;
			return;
		}
		if (r < 0 && errno != EINTR)
			return;
	}
}

/* Reads bubblewrap's --info-fd report ({"child-pid": N, ...}) up to its end; the init's pid,
 * or -1 when bubblewrap ended (or hung) without creating it. */
static pid_t read_child_pid(int fd)
{
	char buf[1024];
	size_t len = 0;
	int64_t deadline = mono_ms() + BWRAP_INFO_TIMEOUT_MS;
	for (;;) {
		int64_t left = deadline - mono_ms();
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		if (left <= 0 || len == sizeof buf - 1)
			break;
		int r = poll(&pfd, 1, (int)left);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		ssize_t n = read(fd, buf + len, sizeof buf - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += (size_t)n;
	}
	buf[len] = '\0';
	const char *p = strstr(buf, "\"child-pid\"");
	if (!p || !(p = strchr(p, ':')))
		return -1;
	long pid = strtol(p + 1, NULL, 10);
	return pid > 0 && pid <= INT_MAX ? (pid_t)pid : -1;
}

/* ---- public ---- */

void runner_close(struct run_proc *p)
{
	close_fd(&p->stdin_fd);
	close_fd(&p->stdout_fd);
	close_fd(&p->stderr_fd);
	close_fd(&p->pidfd);
	close_fd(&p->inner_pidfd);
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
	int64_t deadline = timeout_ms < 0 ? -1 : mono_ms() + timeout_ms;
	for (;;) {
		pid_t r = waitpid(p->pid, status, WNOHANG);
		if (r == p->pid)
			return 0;
		if (r < 0 && errno != EINTR)
			return -errno;
		int wait_ms = -1;
		if (deadline >= 0) {
			int64_t left = deadline - mono_ms();
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
	if (p->inner_pid > 0) {
		if (p->inner_pidfd >= 0) {
			/* through the pidfd the signal cannot reach a recycled pid's group */
			if (pidfd_send_signal(p->inner_pidfd, sig, NULL,
					      PIDFD_SIGNAL_PROCESS_GROUP) == 0)
				return 0;
			if (errno == ESRCH)
				return -ESRCH;
			struct pollfd pfd = { .fd = p->inner_pidfd, .events = POLLIN };
			if (poll(&pfd, 1, 0) == 1)
				return -ESRCH; /* the sandbox has ended */
		}
		return kill(-p->inner_pid, sig) < 0 ? -errno : 0;
	}
	if (p->pid <= 0)
		return -ESRCH;
	return kill(-p->pid, sig) < 0 ? -errno : 0;
}

const char *runner_isolation_name(void)
{
	return isolation == RUNNER_ISOLATION_NONE ? "none" : "bubblewrap";
}

const char *runner_unavailable(void)
{
	return unavailable[0] ? unavailable : NULL;
}

void runner_configure(const struct runner_limits *lim, const char *token,
		      enum runner_isolation how)
{
	pthread_mutex_lock(&init_lock);
	if (lim)
		limits = *lim;
	isolation = how;
	free(token_file);
	token_file = token ? realpath(token, NULL) : NULL;
	pthread_mutex_unlock(&init_lock);
}

/* If value names a file in dir/sessions/, the same file as the sandbox sees it. */
static char *session_path(const char *dir, const char *value)
{
	size_t n = dir ? strlen(dir) : 0;
	char *out;
	if (!n || strncmp(value, dir, n) != 0 || strncmp(value + n, "/sessions/", 10) != 0)
		return NULL;
	return asprintf(&out, SESSIONS_INSIDE "%s", value + n + 9) < 0 ? NULL : out;
}

static void free_env(char **env);

/* env with the session paths translated (see the top); NULL when none is there. */
static char **translate_env(const char *const *env)
{
	size_t n = 0;
	while (env[n])
		n++;
	char **out = calloc(n + 1, sizeof *out);
	bool changed = false;
	for (size_t i = 0; out && i < n; i++) {
		const char *v = strchr(env[i], '=');
		char *inside = v ? session_path(state_dir, v + 1) : NULL;
		if (v && !inside)
			inside = session_path(state_dir_given, v + 1);
		if (inside) {
			if (asprintf(&out[i], "%.*s=%s", (int)(v - env[i]), env[i], inside) < 0)
				out[i] = NULL;
			free(inside);
			changed = true;
		} else {
			out[i] = strdup(env[i]);
		}
		if (!out[i]) {
			free_env(out);
			return NULL;
		}
	}
	if (!changed) {
		free_env(out);
		return NULL;
	}
	return out;
}

static void free_env(char **env)
{
	for (size_t i = 0; env && env[i]; i++)
		free(env[i]);
	free(env);
}

/* Returns once the init has forked the command (or has ended), at most 2 s later: until then
 * the group -inner_pid holds only the init, which ignores every signal but SIGKILL, so a TERM
 * sent by a caller right after the start would be lost (and the process killed 5 s later). */
static void wait_for_command(const struct run_proc *p)
{
	if (p->inner_pid <= 0)
		return;
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)p->inner_pid,
		 (int)p->inner_pid);
	for (int i = 0; i < 2000; i++) {
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			return; /* gone, or no CONFIG_PROC_CHILDREN: nothing to wait for */
		char c;
		ssize_t n = read(fd, &c, 1);
		close(fd);
		if (n != 0)
			return;
		if (p->inner_pidfd >= 0) {
			struct pollfd pfd = { .fd = p->inner_pidfd, .events = POLLIN };
			if (poll(&pfd, 1, 1) != 0)
				return;
		} else {
			usleep(1000);
		}
	}
	log_warn("runner: the sandbox's command did not start within 2 s");
}

/* The pipes of a spawn: [0] is read, [1] written; the child's ends go when it has them. */
struct spawn_pipes {
	int in[2], out[2], err[2];
	int info[2], block[2];   /* bubblewrap's (or the held child's) --info-fd and --block-fd */
};

static int open_pipes(struct spawn_pipes *p, bool stdin_null)
{
	*p = (struct spawn_pipes){ { -1, -1 }, { -1, -1 }, { -1, -1 }, { -1, -1 }, { -1, -1 } };
	if ((!stdin_null && pipe2(p->in, O_CLOEXEC) < 0) || pipe2(p->out, O_CLOEXEC) < 0 ||
	    pipe2(p->err, O_CLOEXEC) < 0)
		return -errno;
	int err = high_pipe(p->info);
	return err ? err : high_pipe(p->block);
}

static void close_child_ends(struct spawn_pipes *p)
{
	close_fd(&p->in[0]);
	close_fd(&p->out[1]);
	close_fd(&p->err[1]);
	close_fd(&p->info[1]);
	close_fd(&p->block[0]);
}

static void close_parent_ends(struct spawn_pipes *p)
{
	close_fd(&p->in[1]);
	close_fd(&p->out[0]);
	close_fd(&p->err[0]);
	close_fd(&p->info[0]);
	close_fd(&p->block[1]);
}

/* The command line: bubblewrap's arguments then argv (a.v), or argv alone and the program
 * found in env's PATH (*prog); with bubblewrap, *env may become a translated copy (*translated).
 * 0 or a negative errno. */
static int command_line(const char *const *argv, const char *const **env, const char *cwd,
			struct args *a, char **prog, char ***translated)
{
	if (bwrap_path) {
		sandbox_args(a, cwd);
		/* bwrap looks the program up in the command's PATH itself */
		if ((*translated = translate_env(*env)))
			*env = (const char *const *)*translated;
	} else if (!(*prog = find_program(argv[0], env_get(*env, "PATH")))) {
		return -ENOENT;
	}
	for (size_t i = 0; argv[i]; i++)
		add(a, argv[i]);
	return a->failed ? -ENOMEM : 0;
}

/* Between the spawn and the command (see the top): into the cgroup and under the limits,
 * then released. */
static void admit(struct spawn_pipes *p, struct run_proc *out)
{
	int cg = cgroup_add(out->pid);
	limit_process(out->pid);
	if (bwrap_path) {
		out->inner_pid = read_child_pid(p->info[0]);
		if (out->inner_pid > 0) {
			out->inner_pidfd = pidfd_open(out->inner_pid, 0);
			if (!cg)
				cg = cgroup_add(out->inner_pid);
			limit_process(out->inner_pid);
		}
	} else {
		wait_readable(p->info[0], BWRAP_INFO_TIMEOUT_MS); /* the held child's setsid() */
	}
	close_fd(&p->info[0]);
	if (cg)
		log_warn("runner: cannot add a command to the sandbox cgroup: %s", strerror(-cg));
	/* EPIPE when bubblewrap (or the held child) has already failed: its exit status tells */
	if (write(p->block[1], "", 1) < 0)
		log_debug("runner: releasing the command: %s", strerror(errno));
	close_fd(&p->block[1]);
	if (bwrap_path)
		wait_for_command(out);
}

/* Starts argv (looked up in env's PATH) in the sandbox, or directly without bubblewrap
 * (isolation none). */
static int spawn_sandboxed(const char *const *argv, const char *const *env, const char *cwd,
			   bool stdin_null, struct run_proc *out)
{
	struct args a = { 0 };
	struct spawn_pipes p;
	char *prog = NULL, **translated = NULL;
	int err = command_line(argv, &env, cwd, &a, &prog, &translated);
	if (!err) {
		err = open_pipes(&p, stdin_null);
		struct spawn_job j = { .path = bwrap_path ? bwrap_path : prog,
				       .argv = a.v, .envp = (char *const *)env,
				       .chdir_to = bwrap_path ? NULL : cwd, .fd_in = p.in[0],
				       .fd_out = p.out[1], .fd_err = p.err[1], .fd_info = p.info[1],
				       .fd_block = p.block[0], .held = !bwrap_path };
		if (!err && !(err = spawn_on_thread(&j)))
			out->pid = j.pid;
		close_child_ends(&p);
		if (err)
			close_parent_ends(&p);
	}
	free(prog);
	args_free(&a);
	free_env(translated);
	if (err)
		return err;
	admit(&p, out);
	out->stdin_fd = p.in[1];
	out->stdout_fd = p.out[0];
	out->stderr_fd = p.err[0];
	for (int i = 0; i < 3; i++) {
		int fd = i == 0 ? p.in[1] : i == 1 ? p.out[0] : p.err[0];
		if (fd >= 0)
			fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	}
	out->pidfd = pidfd_open(out->pid, 0);
	if (out->pidfd < 0)
		log_debug("runner: pidfd_open: %s (polling for exits instead)", strerror(errno));
	return 0;
}

static void init_proc(struct run_proc *p)
{
	*p = (struct run_proc){ .pid = -1, .stdin_fd = -1, .stdout_fd = -1, .stderr_fd = -1,
				.pidfd = -1, .inner_pid = -1, .inner_pidfd = -1 };
}

/* Can bubblewrap build the sandbox here? (It cannot in some containers.) */
static bool bwrap_works(void)
{
	static const char *const argv[] = { "true", NULL };
	struct run_proc p;
	init_proc(&p);
	int err = spawn_sandboxed(argv, envstore_defaults(), "/", true, &p);
	if (err) {
		log_error("runner: cannot run %s: %s", bwrap_path, strerror(-err));
		return false;
	}
	int status = 0;
	err = runner_wait(&p, &status, BWRAP_PROBE_TIMEOUT_MS);
	if (err == -ETIMEDOUT) {
		kill(p.pid, SIGKILL);
		err = runner_wait(&p, &status, -1);
		status = 1;
	}
	char msg[512];
	ssize_t n = read(p.stderr_fd, msg, sizeof msg - 1);
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

/* dir/name, created with mode (exactly: whatever the umask), or NULL after a warning. */
static char *make_dir(const char *dir, const char *name, mode_t mode)
{
	char *p;
	if (asprintf(&p, "%s/%s", dir, name) < 0)
		return NULL;
	if ((mkdir(p, mode) && errno != EEXIST) || chmod(p, mode)) {
		log_warn("runner: %s: %s (per-command tmpfs instead)", p, strerror(errno));
		free(p);
		return NULL;
	}
	return p;
}

/* The sandbox's own /tmp and /root: directories in the state dir, so that what a command
 * leaves there is seen by the next one, as in a container. */
static void make_sandbox_dirs(void)
{
	char *base = state_dir ? make_dir(state_dir, "sandbox", 0700) : NULL;
	if (base) {
		sandbox_tmp = make_dir(base, "tmp", 01777);
		sandbox_home = sandbox_tmp ? make_dir(base, "root", 0700) : NULL;
		if (!sandbox_home) {
			free(sandbox_tmp);
			sandbox_tmp = NULL;
		}
	}
	free(base);
}

static void describe_limits(const char *cgroup_how)
{
	char what[512];
	size_t n = 0;
	what[0] = '\0';
	if (limits.pids && !(cgroup_limits & CGROUP_PIDS))
		n += (size_t)snprintf(what + n, sizeof what - n, "%snumber of processes",
				      n ? ", " : "");
	if (limits.memory && !(cgroup_limits & CGROUP_MEMORY))
		snprintf(what + n, sizeof what - n, "%stotal memory (only %llu MiB of address "
			 "space per process)", n ? ", " : "",
			 (unsigned long long)(limits.memory >> 20));
	log_info("sandbox: %s; limits: memory %llu MiB, %ld processes, files %llu MiB, "
		 "CPU %ld s and %ld open files per process (0 = none)", cgroup_how,
		 (unsigned long long)(limits.memory >> 20), limits.pids,
		 (unsigned long long)(limits.file_size >> 20), limits.cpu_seconds,
		 limits.open_files);
	if (what[0])
		log_warn("sandbox: NOT enforced without a writable cgroup: %s", what);
}

/* Whether dir (resolved) is what /workspace resolves to. */
static bool is_sandbox_workspace(const char *dir)
{
	char *real = realpath(SANDBOX_WORKSPACE, NULL);
	bool same = real && strcmp(real, dir) == 0;
	free(real);
	return same;
}

/* What --isolation=none gives up, said at every start (see the top and docs/security.md). */
static void warn_no_isolation(void)
{
	char who[32];
	if (geteuid() == 0)
		snprintf(who, sizeof who, "root");
	else
		snprintf(who, sizeof who, "uid %d", (int)geteuid());
	log_warn("sandbox: --isolation=none: commands run WITHOUT ISOLATION, directly on this "
		 "system as %s with all of sbxd's privileges: this system must itself be the "
		 "sandbox (a container made for it)", who);
	log_warn("sandbox: NOT protected from commands: every file of this system (sbxd's token "
		 "file and state directory included), sbxd itself (they can signal it and read its "
		 "memory), every other process; /tmp is this system's, and what a command leaves "
		 "running outlives it");
	log_warn("sandbox: still enforced: the token on every route but /api/ping, file routes "
		 "confined to %s, and the limits below", SANDBOX_WORKSPACE);
}

void runner_init(const char *ws, const char *state)
{
	pthread_mutex_lock(&init_lock);
	if (initialised) {
		pthread_mutex_unlock(&init_lock);
		return;
	}
	workspace_dir = realpath(ws ? ws : SANDBOX_WORKSPACE, NULL);
	state_dir = state ? realpath(state, NULL) : NULL;
	state_dir_given = state ? strdup(state) : NULL;
	if (!workspace_dir) {
		snprintf(unavailable, sizeof unavailable, "workspace directory %s: %s",
			 ws ? ws : SANDBOX_WORKSPACE, strerror(errno));
	} else if (isolation == RUNNER_ISOLATION_NONE) {
		/* without a mount namespace, commands see the workspace where it really is */
		if (!is_sandbox_workspace(workspace_dir))
			snprintf(unavailable, sizeof unavailable, "with --isolation=none the "
				 "workspace must be " SANDBOX_WORKSPACE ", not %s", workspace_dir);
		else
			warn_no_isolation();
	} else {
		make_sandbox_dirs();
		bwrap_path = find_program("bwrap", getenv("PATH"));
		if (!bwrap_path)
			log_error("runner: bubblewrap (bwrap) is not installed");
		else if (!bwrap_works()) {
			free(bwrap_path);
			bwrap_path = NULL;
		}
		if (!bwrap_path)
			snprintf(unavailable, sizeof unavailable, "bubblewrap is unusable, so commands "
				 "are refused (where this system is itself the sandbox, a container "
				 "made for it, start sbxd with --isolation=none)");
	}
	if (!unavailable[0]) {
		const char *how;
		cgroup_limits = cgroup_setup(limits.memory, limits.pids, &how);
		describe_limits(how);
		atexit(runner_shutdown);
	} else {
		log_error("runner: %s", unavailable);
	}
	initialised = true;
	pthread_mutex_unlock(&init_lock);
}

void runner_shutdown(void)
{
	static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	static bool done;
	pthread_mutex_lock(&lock);
	if (!done) {
		cgroup_teardown();
		done = true;
	}
	pthread_mutex_unlock(&lock);
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
	init_proc(out);
	if (!spec->argv || !spec->argv[0])
		return -EINVAL;
	if (!spec->env) {
		/* the default: envstore_defaults() and the variables set through /api/x/env */
		struct run_spec with_env = *spec;
		char **env = envstore_build(NULL);
		with_env.env = (const char *const *)env;
		int err = runner_spawn(&with_env, out);
		strv_free(env);
		return err;
	}
	if (!ensure_init())
		return -ENOTSUP;
	return spawn_sandboxed(spec->argv, spec->env, spec->cwd ? spec->cwd : SANDBOX_WORKSPACE,
			       spec->stdin_null, out);
}
