/* libFuzzer target: path confinement (server/workspace.c). A real workspace holds symlinks
 * that lead out ("/", "../..", a loop, one to a file outside); the input is an API path (up to
 * the first NUL) and a byte choosing the operation. Whatever the path, ws_normalize must give a
 * clean relative path, and every descriptor the ws_* calls hand out must be inside the
 * workspace: anything else aborts. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "server/workspace.h"

static char root[PATH_MAX];
static size_t root_len;

static void setup(void)
{
	char tmpl[] = "/tmp/sbx-fuzz-paths-XXXXXX";
	if (!mkdtemp(tmpl))
		abort();
	snprintf(root, sizeof root, "%s/ws", tmpl);
	char p[PATH_MAX + 64];
	mkdir(root, 0755);
	snprintf(p, sizeof p, "%s/outside", tmpl);
	close(open(p, O_WRONLY | O_CREAT, 0644));
#define AT(name) (snprintf(p, sizeof p, "%s/%s", root, name), p)
	mkdir(AT("a"), 0755);
	mkdir(AT("a/b"), 0755);
	mkdir(AT("scratch"), 0755);
	close(open(AT("a/file"), O_WRONLY | O_CREAT, 0644));
	symlink("/", AT("root"));
	symlink("../..", AT("a/up"));
	symlink("../outside", AT("out"));
	symlink("loop", AT("loop"));
	symlink("a/b", AT("inside"));
	symlink("/workspace/a", AT("abs-inside"));
#undef AT
	if (ws_init(root))
		abort();
	root_len = strlen(ws_host_dir());
	memcpy(root, ws_host_dir(), root_len + 1);
}

/* The descriptor's path must be the workspace or below it. */
static void check_fd(int fd)
{
	if (fd < 0)
		return;
	char link[64], path[PATH_MAX];
	snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
	ssize_t n = readlink(link, path, sizeof path - 1);
	if (n < 0)
		abort();
	path[n] = '\0';
	if (strncmp(path, root, root_len) != 0 || (path[root_len] && path[root_len] != '/')) {
		fprintf(stderr, "escaped the workspace: %s\n", path);
		abort();
	}
	close(fd);
}

static void check_normal(const char *rel)
{
	if (rel[0] == '/' || strcmp(rel, "..") == 0 || strncmp(rel, "../", 3) == 0 ||
	    strstr(rel, "/../") || strstr(rel, "//") ||
	    (strlen(rel) >= 3 && strcmp(rel + strlen(rel) - 3, "/..") == 0))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!root_len)
		setup();
	if (size < 1)
		return 0;
	unsigned op = data[0];
	char *path = strndup((const char *)data + 1, size - 1);
	if (!path)
		return 0;
	char rel[WS_PATH_MAX + 1];
	if (ws_normalize(path, rel, sizeof rel) == 0)
		check_normal(rel);

	static const int flags[] = { O_RDONLY, O_PATH, O_RDONLY | O_NOFOLLOW, O_PATH | O_NOFOLLOW,
				     O_DIRECTORY, O_PATH | O_DIRECTORY };
	struct ws_entry e;
	struct stat st;
	switch (op % 4) {
	case 0:
		check_fd(ws_open(path, flags[(op >> 2) % 6], 0));
		break;
	case 1:
		if (ws_parent(path, &e) == 0) {
			if (!e.name[0] || strchr(e.name, '/'))
				abort();
			check_fd(e.dirfd);
		} else if (e.dirfd >= 0) {
			abort();
		}
		break;
	case 2:
		ws_stat(path, &st, op & 4);
		break;
	case 3:
		/* creation only below scratch/, so the tree stays what the checks expect */
		if (ws_normalize(path, rel, sizeof rel) == 0 && strncmp(rel, "scratch/", 8) == 0) {
			int fd = ws_open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
			if (fd >= 0) {
				check_fd(fd);
				unlinkat(ws_root_fd(), rel, 0);
			}
			if (ws_mkdir_p(rel, 0755) == 0)
				check_fd(ws_open_rel(rel, O_PATH | O_DIRECTORY, 0));
		}
		break;
	}
	free(path);
	return 0;
}
