/* The sandbox's control group: one cgroup ("sbxd-<pid>", below sbxd's own) holding every
 * process sbxd starts, with a limit on the number of processes and on memory. It is the only
 * way to stop a fork bomb: commands run as root, and RLIMIT_NPROC does not apply to root.
 *
 * cgroup v1 (the pids and memory hierarchies, each used when mounted and writable) and v2 (the
 * unified hierarchy, when pids and memory can be delegated to a child) are both handled. What
 * cannot be set up is simply not enforced: cgroup_setup() says which limits hold. */
#ifndef SBXD_CGROUP_H
#define SBXD_CGROUP_H
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

enum cgroup_enforced {
	CGROUP_PIDS = 1 << 0,
	CGROUP_MEMORY = 1 << 1,
};

/* Creates the cgroup and sets the limits (0 = no limit, but still grouped so that everything
 * can be killed). Returns the CGROUP_* limits in force; *how describes the cgroup ("cgroup v1
 * /sys/fs/cgroup/pids/sbxd-42", or why there is none). Also removes the empty leftovers of
 * an sbxd that was killed, after killing what still ran in them. */
unsigned cgroup_setup(uint64_t memory_bytes, long pids_max, const char **how);
/* Moves a process into the cgroup (before it forks: its children follow it). */
int cgroup_add(pid_t pid);
/* SIGKILLs every process in the cgroup until it is empty (bounded: a few seconds). */
void cgroup_kill_all(void);
/* cgroup_kill_all(), then removes the cgroup. */
void cgroup_teardown(void);
#endif
