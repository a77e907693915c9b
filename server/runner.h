/* The one place where sbxd starts anything inside the sandbox. Every command (and later every
 * background process and interpreter) is started by runner_spawn(), so isolation is applied
 * here and only here: today a bubblewrap mount namespace that shows the workspace directory at
 * /workspace; the isolation work tightens it in this file without touching callers. */
#ifndef SBXD_RUNNER_H
#define SBXD_RUNNER_H
#include <stdbool.h>
#include <sys/types.h>

struct run_spec {
	const char *const *argv;  /* inside the sandbox, e.g. {"bash","-c",cmd,NULL} */
	const char *cwd;          /* sandbox path; NULL = /workspace */
	const char *const *env;   /* full environment "K=V", NULL-terminated; NULL = default */
	bool stdin_null;          /* stdin from /dev/null (else a pipe in stdin_fd) */
};

struct run_proc {
	pid_t pid;                /* leader of its own process group */
	int stdin_fd;             /* -1 when stdin_null */
	int stdout_fd;            /* non-blocking, close-on-exec */
	int stderr_fd;
	int pidfd;                /* readable once the process has exited (pidfd_open) */
};

/* Host workspace directory and sbxd state directory, set once at startup. */
void runner_init(const char *workspace_dir, const char *state_dir);
/* Starts the command; 0 or a negative errno. */
int runner_spawn(const struct run_spec *spec, struct run_proc *out);
/* Signals the whole process group. */
int runner_kill(const struct run_proc *p, int sig);
/* The default environment for commands (PATH, HOME=/root, LANG=C.UTF-8, PWD...). */
const char *const *runner_default_env(void);

/* NULL while commands can be started, else why not (bubblewrap unusable and the workspace is
 * not /workspace); runner_spawn then fails with -ENOTSUP. */
const char *runner_unavailable(void);
/* Reaps the process: 0 with its wait status in *status, -ETIMEDOUT when it is still running
 * after timeout_ms (< 0: wait as long as it takes), or a negative errno. */
int runner_wait(struct run_proc *p, int *status, int timeout_ms);
/* The shell's view of a wait status: the exit code, or 128 + the signal that killed it. */
int runner_exit_code(int status);
/* Closes whichever of the process's descriptors are still open (sets them to -1). */
void runner_close(struct run_proc *p);
#endif
