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
};

/* Host workspace directory and sbxd state directory, set once at startup. */
void runner_init(const char *workspace_dir, const char *state_dir);
/* Starts the command; 0 or a negative errno. */
int runner_spawn(const struct run_spec *spec, struct run_proc *out);
/* Signals the whole process group. */
int runner_kill(const struct run_proc *p, int sig);
/* The default environment for commands (PATH, HOME=/root, LANG=C.UTF-8, PWD...). */
const char *const *runner_default_env(void);
#endif
