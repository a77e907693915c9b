/* The one place where sbxd starts anything inside the sandbox. Every command, background
 * process and interpreter is started by runner_spawn(), so isolation is applied here and only
 * here: bubblewrap with its own mount, pid, ipc and uts namespaces, no capabilities (an empty
 * bounding set included), the host's system directories read-only, the workspace directory at
 * /workspace, nothing of sbxd's state or token, and the sandbox-wide limits of
 * server/cgroup.h plus per-process rlimits (see docs/security.md for the whole policy).
 * Where the whole system is the sandbox (a container made for it), RUNNER_ISOLATION_NONE runs
 * commands directly, with the limits only. */
#ifndef SBXD_RUNNER_H
#define SBXD_RUNNER_H
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

struct run_spec {
	const char *const *argv;  /* inside the sandbox, e.g. {"bash","-c",cmd,NULL} */
	const char *cwd;          /* sandbox path; NULL = /workspace */
	const char *const *env;   /* full environment "K=V", NULL-terminated; NULL: the
				   * environment store's (envstore_build) */
	bool stdin_null;          /* stdin from /dev/null (else a pipe in stdin_fd) */
};

struct run_proc {
	pid_t pid;                /* what runner_wait() reaps: bubblewrap outside the sandbox, or
				   * the command itself without bubblewrap */
	int stdin_fd;             /* -1 when stdin_null */
	int stdout_fd;            /* non-blocking, close-on-exec */
	int stderr_fd;
	int pidfd;                /* readable once the process has exited (pidfd_open) */
	/* The sandbox's pid 1 as the host sees it (bubblewrap's init); the command and what it
	 * starts are in its process group, and when it dies everything in the sandbox dies. -1
	 * without bubblewrap (the command is pid, and leads its own process group) or when
	 * bubblewrap failed before creating it. */
	pid_t inner_pid;
	int inner_pidfd;          /* of inner_pid, -1 if none */
};

/* Limits for what runs in the sandbox; 0 means none. */
struct runner_limits {
	uint64_t memory;          /* bytes, all processes together (cgroup) */
	long pids;                /* processes and threads, all together (cgroup) */
	uint64_t file_size;       /* largest file a process may write, bytes (RLIMIT_FSIZE) */
	long cpu_seconds;         /* CPU time of each process (RLIMIT_CPU) */
	long open_files;          /* descriptors of each process (RLIMIT_NOFILE); 0: sbxd's */
};
#define RUNNER_DEFAULT_MEMORY (4ull << 30)
#define RUNNER_DEFAULT_PIDS 2048
#define RUNNER_DEFAULT_FILE_SIZE (16ull << 30)
#define RUNNER_DEFAULT_CPU_SECONDS 3600
#define RUNNER_DEFAULT_OPEN_FILES 4096

enum runner_isolation {
	RUNNER_ISOLATION_BWRAP,   /* the default: every command in a bubblewrap sandbox */
	RUNNER_ISOLATION_NONE,    /* sbxd --isolation=none: commands run on this system as they
				   * are, as sbxd's user; the workspace must be /workspace */
};

/* Before runner_init (else the defaults above): the limits, sbxd's token file, which is
 * hidden from commands wherever it is (NULL if the token came from the environment), and how
 * commands are isolated. */
void runner_configure(const struct runner_limits *limits, const char *token_file,
		      enum runner_isolation isolation);
/* "bubblewrap" or "none", as configured. */
const char *runner_isolation_name(void);
/* Host workspace directory and sbxd state directory, set once at startup. */
void runner_init(const char *workspace_dir, const char *state_dir);
/* Kills everything running in the sandbox and removes its cgroup. Idempotent; runner_init
 * registers it with atexit() too, so an sbxd that returns from main leaves nothing behind. */
void runner_shutdown(void);
/* Starts the command; 0 or a negative errno. */
int runner_spawn(const struct run_spec *spec, struct run_proc *out);
/* Signals the command's process group inside the sandbox (never bubblewrap itself, so that
 * SIGINT reaches an interpreter without ending the sandbox). SIGKILL ends the whole sandbox of
 * this spawn, also what left the process group. */
int runner_kill(const struct run_proc *p, int sig);

/* NULL while commands can be started, else why not (bubblewrap unusable; with
 * RUNNER_ISOLATION_NONE, a workspace other than /workspace); runner_spawn then fails with
 * -ENOTSUP. */
const char *runner_unavailable(void);
/* Reaps the process: 0 with its wait status in *status, -ETIMEDOUT when it is still running
 * after timeout_ms (< 0: wait as long as it takes), or a negative errno. */
int runner_wait(struct run_proc *p, int *status, int timeout_ms);
/* The shell's view of a wait status: the exit code, or 128 + the signal that killed it. */
int runner_exit_code(int status);
/* Closes whichever of the process's descriptors are still open (sets them to -1). */
void runner_close(struct run_proc *p);
#endif
