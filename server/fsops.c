/* The shared entry operations behind server/fsops.h. */
#include "server/fsops.h"
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
#include "common/jsonutil.h"

cJSON *fsop_stat_json(int dirfd, const char *name, int *err)
{
	struct stat st;
	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW)) {
		*err = -errno;
		return NULL;
	}
	cJSON *o = json_from_stat(&st);
	if (S_ISLNK(st.st_mode)) {
		char target[PATH_MAX + 1];
		ssize_t n = readlinkat(dirfd, name, target, sizeof target - 1);
		if (n >= 0) {
			target[n] = '\0';
			cJSON_AddStringToObject(o, "target", target);
		}
	}
	return o;
}

cJSON *fsop_fstat_json(int fd, int *err)
{
	struct stat st;
	if (fstat(fd, &st)) {
		*err = -errno;
		return NULL;
	}
	return json_from_stat(&st);
}

int fsop_fix_mode(int fd, mode_t want)
{
	struct stat st;
	if (fstat(fd, &st))
		return -errno;
	if (S_ISDIR(st.st_mode))
		want |= st.st_mode & S_ISGID; /* inherited from a setgid parent */
	if ((st.st_mode & 07777) != want && fchmod(fd, want))
		return -errno;
	return 0;
}

/* Through an O_PATH descriptor's /proc magic link: chmod has no AT_SYMLINK_NOFOLLOW of its
 * own. */
int fsop_chmod(int dirfd, const char *name, mode_t mode)
{
	struct stat st;
	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW))
		return -errno;
	if (S_ISLNK(st.st_mode))
		return -EOPNOTSUPP;
	int fd = openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	char proc[64];
	snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
	int err = chmod(proc, mode) ? -errno : 0;
	close(fd);
	return err;
}

int fsop_truncate(int dirfd, const char *name, off_t size)
{
	int fd = openat(dirfd, name, O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int err = ftruncate(fd, size) ? -errno : 0;
	close(fd);
	return err;
}
