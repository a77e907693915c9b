#include "server/workspace.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static int root_fd = -1;
static char *host_dir;
static __thread const char *refusal;

#define RESOLVE_FLAGS (RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)

static int refuse(int err, const char *why)
{
	refusal = why;
	return -err;
}

int ws_init(const char *dir)
{
	host_dir = realpath(dir, NULL);
	if (!host_dir)
		return -errno;
	root_fd = open(host_dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (root_fd < 0) {
		int err = errno;
		free(host_dir);
		host_dir = NULL;
		return -err;
	}
	return 0;
}

void ws_shutdown(void)
{
	if (root_fd >= 0)
		close(root_fd);
	root_fd = -1;
	free(host_dir);
	host_dir = NULL;
}

const char *ws_host_dir(void) { return host_dir; }
int ws_root_fd(void) { return root_fd; }

bool ws_refused(void) { return refusal != NULL; }

const char *ws_strerror(int err)
{
	return refusal ? refusal : strerror(err < 0 ? -err : err);
}

/* Lexical normalisation of "/workspace/" + path (or path when absolute), then the check that
 * the result is /workspace or below. ".." at "/" stays at "/", as the kernel does. */
int ws_normalize(const char *api_path, char *out, size_t outlen)
{
	refusal = NULL;
	if (!api_path || !*api_path)
		return refuse(EINVAL, "path must be a non-empty string");
	size_t n = strlen(api_path);
	if (n > WS_PATH_MAX)
		return refuse(ENAMETOOLONG, "path longer than 4096 characters");

	char buf[WS_PATH_MAX + sizeof "/workspace/"];
	snprintf(buf, sizeof buf, "%s%s", api_path[0] == '/' ? "" : "/workspace/", api_path);

	/* Components as offsets into buf, each NUL-terminated in place. */
	const char *comp[WS_PATH_MAX / 2 + 8];
	size_t depth = 0;
	for (char *p = buf, *save = NULL, *c; (c = strtok_r(p, "/", &save)); p = NULL) {
		if (strcmp(c, ".") == 0)
			continue;
		if (strcmp(c, "..") == 0) {
			if (depth)
				depth--;
			continue;
		}
		comp[depth++] = c;
	}
	if (depth == 0 || strcmp(comp[0], "workspace") != 0)
		return refuse(EACCES, "path outside /workspace");

	size_t len = 0;
	if (depth == 1) {
		if (outlen < 2)
			return refuse(ENAMETOOLONG, "path too long");
		strcpy(out, ".");
		return 0;
	}
	for (size_t i = 1; i < depth; i++) {
		size_t cl = strlen(comp[i]);
		if (len + cl + 2 > outlen)
			return refuse(ENAMETOOLONG, "path too long");
		if (i > 1)
			out[len++] = '/';
		memcpy(out + len, comp[i], cl);
		len += cl;
	}
	out[len] = '\0';
	return 0;
}

void ws_api_path(const char *rel, char *out, size_t outlen)
{
	if (strcmp(rel, ".") == 0)
		snprintf(out, outlen, "/workspace");
	else
		snprintf(out, outlen, "/workspace/%s", rel);
}

/* openat2 beneath dirfd; an escape (EXDEV) becomes EACCES with a reason. */
static int open_beneath(int dirfd, const char *rel, int flags, mode_t mode)
{
	struct open_how how = {
		.flags = (unsigned long long)(flags | O_CLOEXEC),
		.mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0,
		.resolve = RESOLVE_FLAGS,
	};
	for (int tries = 0;; tries++) {
		long fd = syscall(SYS_openat2, dirfd, rel, &how, sizeof how);
		if (fd >= 0)
			return (int)fd;
		/* EAGAIN: a concurrent rename raced with ".." resolution; the kernel asks to retry. */
		if (errno == EAGAIN && tries < 16)
			continue;
		if (errno == EXDEV)
			return refuse(EACCES, "path leads outside /workspace");
		return -errno;
	}
}

int ws_parent(const char *api_path, struct ws_entry *e)
{
	e->dirfd = -1;
	int err = ws_normalize(api_path, e->rel, sizeof e->rel);
	if (err)
		return err;
	const char *slash = strrchr(e->rel, '/');
	const char *name = slash ? slash + 1 : e->rel;
	if (strlen(name) > NAME_MAX)
		return refuse(ENAMETOOLONG, "file name longer than 255 bytes");
	strcpy(e->name, name);
	if (!slash) {
		e->dirfd = fcntl(root_fd, F_DUPFD_CLOEXEC, 0);
		return e->dirfd < 0 ? -errno : 0;
	}
	char parent[WS_PATH_MAX + 1];
	memcpy(parent, e->rel, (size_t)(slash - e->rel));
	parent[slash - e->rel] = '\0';
	int fd = open_beneath(root_fd, parent, O_PATH | O_DIRECTORY, 0);
	if (fd < 0)
		return fd;
	e->dirfd = fd;
	return 0;
}

void ws_entry_close(struct ws_entry *e)
{
	if (e->dirfd >= 0)
		close(e->dirfd);
	e->dirfd = -1;
}

int ws_open_rel(const char *rel, int flags, mode_t mode)
{
	refusal = NULL;
	return open_beneath(root_fd, rel, flags, mode);
}

int ws_open(const char *api_path, int flags, mode_t mode)
{
	if (flags & O_NOFOLLOW) {
		struct ws_entry e;
		int err = ws_parent(api_path, &e);
		if (err)
			return err;
		int fd = openat(e.dirfd, e.name, flags | O_CLOEXEC, mode);
		if (fd < 0)
			fd = -errno;
		ws_entry_close(&e);
		return fd;
	}
	char rel[WS_PATH_MAX + 1];
	int err = ws_normalize(api_path, rel, sizeof rel);
	if (err)
		return err;
	return open_beneath(root_fd, rel, flags, mode);
}

int ws_stat(const char *api_path, struct stat *st, bool follow)
{
	if (follow) {
		int fd = ws_open(api_path, O_PATH, 0);
		if (fd < 0)
			return fd;
		int err = fstat(fd, st) ? -errno : 0;
		close(fd);
		return err;
	}
	struct ws_entry e;
	int err = ws_parent(api_path, &e);
	if (!err && fstatat(e.dirfd, e.name, st, AT_SYMLINK_NOFOLLOW))
		err = -errno;
	ws_entry_close(&e);
	return err;
}

int ws_mkdir_p(const char *rel, mode_t mode)
{
	refusal = NULL;
	if (strcmp(rel, ".") == 0)
		return 0;
	char prefix[WS_PATH_MAX + 1];
	int cur = fcntl(root_fd, F_DUPFD_CLOEXEC, 0);
	if (cur < 0)
		return -errno;
	size_t len = strlen(rel);
	if (len >= sizeof prefix) {
		close(cur);
		return -ENAMETOOLONG;
	}
	for (size_t start = 0; start < len;) {
		const char *end = strchr(rel + start, '/');
		size_t stop = end ? (size_t)(end - rel) : len;
		char name[NAME_MAX + 1];
		if (stop - start > NAME_MAX) {
			close(cur);
			return -ENAMETOOLONG;
		}
		memcpy(name, rel + start, stop - start);
		name[stop - start] = '\0';
		if (mkdirat(cur, name, mode) && errno != EEXIST) {
			int err = -errno;
			close(cur);
			return err;
		}
		memcpy(prefix, rel, stop);
		prefix[stop] = '\0';
		int next = open_beneath(root_fd, prefix, O_PATH | O_DIRECTORY, 0);
		close(cur);
		if (next < 0)
			return next == -ENOTDIR ? -EEXIST : next;
		cur = next;
		start = stop + 1;
	}
	close(cur);
	return 0;
}
