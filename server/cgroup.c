/* Where the cgroup goes. sbxd's own cgroup is read from /proc/self/cgroup and located through
 * /proc/self/mountinfo (a hierarchy may be mounted with a root other than "/" in a container);
 * the sandbox's cgroup is created below it, so that whatever limits sbxd itself lives under
 * still apply to the sandbox. In v1 the pids and memory hierarchies are separate directories
 * and a process is added to each; in v2 there is one directory, and the controllers must first
 * be enabled in sbxd's cgroup's cgroup.subtree_control, which the kernel refuses while that
 * cgroup holds processes (unless it is the root): then the cgroup still groups the processes
 * for killing, without limits.
 *
 * Killing: v2 has cgroup.kill (Linux 5.14); otherwise every listed process gets SIGKILL, over
 * and over until the list is empty, which a fork bomb cannot outrun while pids.max holds. */
#include "server/cgroup.h"
#include "common/log.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define KILL_TIMEOUT_MS 5000

enum { H_PIDS, H_MEMORY, H_UNIFIED, N_HIER };

static char dirs[N_HIER][PATH_MAX]; /* our cgroup directories; "" when unused */
static char description[2 * PATH_MAX + 64];

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000 };
	nanosleep(&ts, NULL);
}

static int write_file(const char *dir, const char *name, const char *value)
{
	char path[PATH_MAX + 64];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int err = write(fd, value, strlen(value)) < 0 ? -errno : 0;
	close(fd);
	return err;
}

static bool file_has_word(const char *dir, const char *name, const char *word)
{
	char path[PATH_MAX + 64], buf[1024];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	FILE *f = fopen(path, "re");
	if (!f)
		return false;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	for (char *save = NULL, *w = strtok_r(buf, " \n", &save); w; w = strtok_r(NULL, " \n", &save))
		if (strcmp(w, word) == 0)
			return true;
	return false;
}

static bool in_list(const char *list, const char *word)
{
	size_t n = strlen(word);
	for (const char *p = list; *p;) {
		const char *end = strchrnul(p, ',');
		if ((size_t)(end - p) == n && strncmp(p, word, n) == 0)
			return true;
		p = *end ? end + 1 : end;
	}
	return false;
}

/* Mount point and mount root of the cgroup2 hierarchy (ctrl NULL) or of the v1 hierarchy that
 * has controller ctrl. */
static bool find_mount(const char *ctrl, char *mnt, char *root)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	if (!f)
		return false;
	char line[4096];
	bool found = false;
	while (!found && fgets(line, sizeof line, f)) {
		char r[PATH_MAX], m[PATH_MAX], type[64], super[1024];
		const char *sep = strstr(line, " - ");
		if (!sep || sscanf(line, "%*s %*s %*s %4095s %4095s", r, m) != 2 ||
		    sscanf(sep + 3, "%63s %*s %1023s", type, super) != 2)
			continue;
		if (ctrl ? strcmp(type, "cgroup") == 0 && in_list(super, ctrl)
			 : strcmp(type, "cgroup2") == 0) {
			strcpy(mnt, m);
			strcpy(root, r);
			found = true;
		}
	}
	fclose(f);
	return found;
}

/* sbxd's own cgroup path in the hierarchy of ctrl (NULL: the v2 one, "0::"). */
static bool own_path(const char *ctrl, char *path)
{
	FILE *f = fopen("/proc/self/cgroup", "re");
	if (!f)
		return false;
	char line[4096];
	bool found = false;
	while (!found && fgets(line, sizeof line, f)) {
		line[strcspn(line, "\n")] = '\0';
		char *c1 = strchr(line, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
		if (!c2)
			continue;
		*c2 = '\0';
		if (ctrl ? in_list(c1 + 1, ctrl) : strcmp(line, "0") == 0 && !c1[1]) {
			snprintf(path, PATH_MAX, "%s", c2 + 1);
			found = true;
		}
	}
	fclose(f);
	return found;
}

/* The directory of sbxd's own cgroup in that hierarchy. */
static bool own_dir(const char *ctrl, char *dir)
{
	char mnt[PATH_MAX], root[PATH_MAX], path[PATH_MAX];
	if (!find_mount(ctrl, mnt, root) || !own_path(ctrl, path))
		return false;
	size_t rl = strlen(root);
	const char *rest = path;
	if (strcmp(root, "/") != 0 && strncmp(path, root, rl) == 0 && (!path[rl] || path[rl] == '/'))
		rest = path + rl;
	if (snprintf(dir, PATH_MAX, "%s%s", mnt, strcmp(rest, "/") == 0 ? "" : rest) >= PATH_MAX)
		return false;
	struct stat st;
	return stat(dir, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Reads the pids listed in dir/cgroup.procs; returns how many (at most max). */
static size_t list_procs(const char *dir, pid_t *pids, size_t max)
{
	char path[PATH_MAX + 64];
	snprintf(path, sizeof path, "%s/cgroup.procs", dir);
	FILE *f = fopen(path, "re");
	if (!f)
		return 0;
	size_t n = 0;
	long v;
	/* NOLINTNEXTLINE(cert-err34-c): the kernel's list of pids, one a line */
	while (n < max && fscanf(f, "%ld", &v) == 1)
		pids[n++] = (pid_t)v;
	fclose(f);
	return n;
}

/* SIGKILLs everything in dir until it is empty or the time is up; true when empty. */
static bool kill_dir(const char *dir, bool unified)
{
	pid_t pids[512];
	if (unified)
		write_file(dir, "cgroup.kill", "1"); /* absent before 5.14: the loop does it */
	for (int waited = 0;; waited += 10) {
		size_t n = list_procs(dir, pids, sizeof pids / sizeof pids[0]);
		if (n == 0)
			return true;
		if (waited >= KILL_TIMEOUT_MS)
			return false;
		for (size_t i = 0; i < n; i++)
			kill(pids[i], SIGKILL);
		sleep_ms(10);
	}
}

/* Kills what is in dir and removes it; 0 or -errno. */
static int remove_dir(const char *dir, bool unified)
{
	if (!kill_dir(dir, unified))
		log_warn("cgroup %s: processes survive SIGKILL", dir);
	/* the killed may still be dying for a moment */
	for (int i = 0;; i++) {
		if (rmdir(dir) == 0)
			return 0;
		if (errno != EBUSY || i == 100)
			return -errno;
		sleep_ms(10);
	}
}

/* Removes the sbxd-<pid> cgroups in parent whose sbxd is gone (killed without a shutdown). */
static void remove_stale(const char *parent, bool unified)
{
	DIR *d = opendir(parent);
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d))) {
		char *end;
		if (strncmp(e->d_name, "sbxd-", 5) != 0)
			continue;
		long pid = strtol(e->d_name + 5, &end, 10);
		if (*end || pid <= 0 || pid == getpid())
			continue;
		char comm[64] = "", path[PATH_MAX + 300];
		snprintf(path, sizeof path, "/proc/%ld/comm", pid);
		FILE *f = fopen(path, "re");
		if (f) {
			if (!fgets(comm, sizeof comm, f))
				comm[0] = '\0';
			fclose(f);
		}
		if (strcmp(comm, "sbxd\n") == 0)
			continue; /* a live server's */
		snprintf(path, sizeof path, "%s/%s", parent, e->d_name);
		log_info("removing the cgroup of an sbxd that is gone: %s", path);
		remove_dir(path, unified);
	}
	closedir(d);
}

/* Creates parent/sbxd-<pid>; true if it exists afterwards. */
static bool make_child(const char *parent, char *dir)
{
	if (snprintf(dir, PATH_MAX, "%s/sbxd-%d", parent, (int)getpid()) >= PATH_MAX) {
		dir[0] = '\0';
		return false;
	}
	if (mkdir(dir, 0755) && errno != EEXIST) {
		log_debug("cgroup: cannot create %s: %s", dir, strerror(errno));
		dir[0] = '\0';
		return false;
	}
	return true;
}

static void limit_text(char *buf, size_t len, uint64_t v, const char *none)
{
	if (v)
		snprintf(buf, len, "%llu", (unsigned long long)v);
	else
		snprintf(buf, len, "%s", none);
}

static unsigned setup_v1(uint64_t memory_bytes, long pids_max)
{
	unsigned got = 0;
	char parent[PATH_MAX], v[32];
	if (own_dir("pids", parent)) {
		remove_stale(parent, false);
		if (make_child(parent, dirs[H_PIDS])) {
			limit_text(v, sizeof v, (uint64_t)pids_max, "max");
			if (write_file(dirs[H_PIDS], "pids.max", v) == 0)
				got |= CGROUP_PIDS;
			else
				log_warn("cgroup: cannot set %s/pids.max", dirs[H_PIDS]);
		}
	}
	if (own_dir("memory", parent)) {
		remove_stale(parent, false);
		if (make_child(parent, dirs[H_MEMORY])) {
			limit_text(v, sizeof v, memory_bytes, "-1");
			if (write_file(dirs[H_MEMORY], "memory.limit_in_bytes", v) == 0) {
				got |= CGROUP_MEMORY;
				/* no way around the limit through swap (absent without swap accounting) */
				write_file(dirs[H_MEMORY], "memory.memsw.limit_in_bytes", v);
			} else {
				log_warn("cgroup: cannot set %s/memory.limit_in_bytes", dirs[H_MEMORY]);
			}
		}
	}
	if (dirs[H_PIDS][0] || dirs[H_MEMORY][0])
		snprintf(description, sizeof description, "cgroup v1 %s%s%s", dirs[H_PIDS],
			 dirs[H_PIDS][0] && dirs[H_MEMORY][0] ? " and " : "", dirs[H_MEMORY]);
	return got;
}

static unsigned setup_v2(uint64_t memory_bytes, long pids_max)
{
	char parent[PATH_MAX], v[32];
	if (!own_dir(NULL, parent))
		return 0;
	remove_stale(parent, true);
	/* refused while sbxd's cgroup has processes of its own, unless it is the root */
	if (file_has_word(parent, "cgroup.controllers", "pids"))
		write_file(parent, "cgroup.subtree_control", "+pids");
	if (file_has_word(parent, "cgroup.controllers", "memory"))
		write_file(parent, "cgroup.subtree_control", "+memory");
	if (!make_child(parent, dirs[H_UNIFIED]))
		return 0;
	unsigned got = 0;
	if (file_has_word(dirs[H_UNIFIED], "cgroup.controllers", "pids")) {
		limit_text(v, sizeof v, (uint64_t)pids_max, "max");
		if (write_file(dirs[H_UNIFIED], "pids.max", v) == 0)
			got |= CGROUP_PIDS;
	}
	if (file_has_word(dirs[H_UNIFIED], "cgroup.controllers", "memory")) {
		limit_text(v, sizeof v, memory_bytes, "max");
		if (write_file(dirs[H_UNIFIED], "memory.max", v) == 0) {
			got |= CGROUP_MEMORY;
			if (memory_bytes)
				write_file(dirs[H_UNIFIED], "memory.swap.max", "0");
		}
	}
	snprintf(description, sizeof description, "cgroup v2 %s", dirs[H_UNIFIED]);
	return got;
}

unsigned cgroup_setup(uint64_t memory_bytes, long pids_max, const char **how)
{
	unsigned got = setup_v1(memory_bytes, pids_max);
	/* v2 for what v1 does not have (a pure v2 system has no v1 hierarchy at all) */
	if (!dirs[H_PIDS][0] && !dirs[H_MEMORY][0])
		got = setup_v2(memory_bytes, pids_max);
	if (!description[0])
		snprintf(description, sizeof description, "no writable cgroup hierarchy");
	*how = description;
	return got;
}

int cgroup_add(pid_t pid)
{
	char v[32];
	int err = 0;
	snprintf(v, sizeof v, "%d", (int)pid);
	for (int i = 0; i < N_HIER; i++) {
		if (!dirs[i][0])
			continue;
		int e = write_file(dirs[i], "cgroup.procs", v);
		/* ESRCH: it is already gone, which is not the cgroup's problem */
		if (e && e != -ESRCH && !err)
			err = e;
	}
	return err;
}

void cgroup_kill_all(void)
{
	for (int i = 0; i < N_HIER; i++)
		if (dirs[i][0] && !kill_dir(dirs[i], i == H_UNIFIED))
			log_warn("cgroup %s: processes survive SIGKILL", dirs[i]);
}

void cgroup_teardown(void)
{
	for (int i = 0; i < N_HIER; i++) {
		if (!dirs[i][0])
			continue;
		int err = remove_dir(dirs[i], i == H_UNIFIED);
		if (err && err != -ENOENT)
			log_warn("cgroup: cannot remove %s: %s", dirs[i], strerror(-err));
		dirs[i][0] = '\0';
	}
}
