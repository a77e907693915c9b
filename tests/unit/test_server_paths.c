/* sbxd's workspace confinement: lexical normalisation of API paths, and resolution beneath a
 * real temporary workspace where symlinks try to lead out. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include "server/workspace.h"
#include "unit.h"

static int norm(const char *in, char *out)
{
	return ws_normalize(in, out, WS_PATH_MAX + 1);
}

static void test_normalize(void)
{
	static const struct {
		const char *in, *out;
	} ok[] = {
		{ "/workspace", "." },
		{ "/workspace/", "." },
		{ "//workspace//", "." },
		{ "/workspace/.", "." },
		{ "/workspace/a/b", "a/b" },
		{ "/workspace//a/./b/", "a/b" },
		{ "/workspace/a/../b", "b" },
		{ "/workspace/a/b/../../c", "c" },
		{ "/workspace/..dots", "..dots" },
		{ "/../workspace/a", "a" }, /* ".." at "/" stays at "/" */
		{ "a", "a" },
		{ "a/b/..", "a" },
		{ ".", "." },
		{ "./x/", "x" },
		{ "x/..", "." },
	};
	char out[WS_PATH_MAX + 1];
	for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
		int rc = norm(ok[i].in, out);
		CHECK(rc == 0);
		if (rc == 0)
			CHECK_STR(out, ok[i].out);
		else
			printf("# %s -> %d\n", ok[i].in, rc);
	}
	static const char *const outside[] = {
		"/", "/etc/passwd", "/workspace/..", "/workspace/../etc", "..", "../workspace2",
		"a/../../etc", "/workspacex", "/workspace2/a", "/tmp/workspace", "x/../../..",
	};
	for (size_t i = 0; i < sizeof outside / sizeof outside[0]; i++) {
		CHECK(norm(outside[i], out) == -EACCES);
		CHECK(ws_refused());
		CHECK_STR(ws_strerror(-EACCES), "path outside /workspace");
	}
	CHECK(norm("", out) == -EINVAL);
	CHECK(ws_normalize(NULL, out, sizeof out) == -EINVAL);
	char *lng = malloc(WS_PATH_MAX + 2);
	memset(lng, 'a', WS_PATH_MAX + 1);
	lng[WS_PATH_MAX + 1] = '\0';
	CHECK(norm(lng, out) == -ENAMETOOLONG);
	lng[WS_PATH_MAX - 20] = '\0'; /* fits as given, but not with "/workspace/" in front */
	CHECK(norm(lng, out) == 0);
	free(lng);
	char tiny[4];
	CHECK(ws_normalize("/workspace/abcdef", tiny, sizeof tiny) == -ENAMETOOLONG);
	CHECK(norm("/workspace/a", out) == 0 && !ws_refused());

	char api[WS_PATH_MAX + 16];
	ws_api_path(".", api, sizeof api);
	CHECK_STR(api, "/workspace");
	ws_api_path("a/b", api, sizeof api);
	CHECK_STR(api, "/workspace/a/b");
}

static char root[] = "/tmp/sbxd-paths-XXXXXX";

static void put(const char *rel, const char *content)
{
	char p[512];
	snprintf(p, sizeof p, "%s/%s", root, rel);
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd >= 0) {
		if (write(fd, content, strlen(content)) < 0)
			perror("write");
		close(fd);
	}
}

static void link_at(const char *target, const char *rel)
{
	char p[512];
	snprintf(p, sizeof p, "%s/%s", root, rel);
	if (symlink(target, p))
		perror("symlink");
}

static void test_confinement(void)
{
	char outside[600], p[700];
	CHECK(mkdtemp(root) != NULL);
	/* root/ws is the workspace; root/secret is outside it. */
	snprintf(p, sizeof p, "%s/ws", root);
	CHECK(mkdir(p, 0755) == 0);
	snprintf(outside, sizeof outside, "%s/secret", root);
	CHECK(mkdir(outside, 0755) == 0);
	put("secret/key", "top secret");
	put("ws/file.txt", "hello");
	snprintf(p, sizeof p, "%s/ws/dir", root);
	CHECK(mkdir(p, 0755) == 0);
	put("ws/dir/inner.txt", "inner");

	link_at("/etc", "ws/to_etc");            /* absolute, out */
	link_at("../secret", "ws/to_secret");    /* relative, out */
	link_at("../../etc/passwd", "ws/dir/up"); /* climbs out */
	link_at(outside, "ws/abs_secret");        /* absolute path of a real outside dir */
	link_at("dir", "ws/to_dir");              /* inside */
	link_at("../file.txt", "ws/dir/to_file"); /* inside, through .. */
	link_at("/proc/self/root/etc", "ws/magic");
	link_at("missing", "ws/dangling");

	snprintf(p, sizeof p, "%s/ws", root);
	CHECK(ws_init(p) == 0);
	CHECK(ws_root_fd() >= 0);

	/* Escapes are refused whichever way they are attempted. */
	static const char *const escapes[] = {
		"/workspace/to_etc/passwd", "/workspace/to_secret/key", "/workspace/dir/up",
		"/workspace/abs_secret/key", "to_etc", "to_secret", "/workspace/magic/passwd",
	};
	for (size_t i = 0; i < sizeof escapes / sizeof escapes[0]; i++) {
		int fd = ws_open(escapes[i], O_RDONLY, 0);
		CHECK(fd == -EACCES || fd == -ELOOP);
		if (fd >= 0) {
			printf("# escaped through %s\n", escapes[i]);
			close(fd);
		}
		struct stat st;
		CHECK(ws_stat(escapes[i], &st, true) < 0);
	}
	/* Even creating through an escaping link is refused. */
	CHECK(ws_open("/workspace/to_secret/new", O_WRONLY | O_CREAT, 0644) == -EACCES);
	snprintf(p, sizeof p, "%s/new", outside);
	CHECK(access(p, F_OK) != 0);
	CHECK(ws_mkdir_p("to_secret/made", 0755) == -EACCES);
	snprintf(p, sizeof p, "%s/made", outside);
	CHECK(access(p, F_OK) != 0);
	struct ws_entry e;
	CHECK(ws_parent("/workspace/to_secret/key", &e) == -EACCES);
	ws_entry_close(&e);

	/* The link itself is an ordinary entry: lstat and O_NOFOLLOW see the link. */
	struct stat st;
	CHECK(ws_stat("/workspace/to_etc", &st, false) == 0 && S_ISLNK(st.st_mode));
	CHECK(ws_open("/workspace/to_etc", O_RDONLY | O_NOFOLLOW, 0) == -ELOOP);
	CHECK(ws_stat("dangling", &st, false) == 0 && S_ISLNK(st.st_mode));
	CHECK(ws_stat("dangling", &st, true) == -ENOENT);

	/* Links that stay inside work. */
	int fd = ws_open("/workspace/to_dir/inner.txt", O_RDONLY, 0);
	CHECK(fd >= 0);
	char buf[16] = { 0 };
	if (fd >= 0) {
		CHECK(read(fd, buf, sizeof buf - 1) == 5);
		CHECK_STR(buf, "inner");
		close(fd);
	}
	fd = ws_open("dir/to_file", O_RDONLY, 0);
	CHECK(fd >= 0);
	if (fd >= 0)
		close(fd);
	CHECK(ws_stat("/workspace/to_dir", &st, true) == 0 && S_ISDIR(st.st_mode));

	/* ws_parent: the final component is left to the caller. */
	CHECK(ws_parent("/workspace/dir/inner.txt", &e) == 0);
	CHECK_STR(e.name, "inner.txt");
	CHECK_STR(e.rel, "dir/inner.txt");
	CHECK(fstatat(e.dirfd, e.name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode));
	ws_entry_close(&e);
	CHECK(ws_parent("/workspace", &e) == 0);
	CHECK_STR(e.name, ".");
	ws_entry_close(&e);
	CHECK(ws_parent("/workspace/nodir/x", &e) == -ENOENT);
	ws_entry_close(&e);
	CHECK(ws_parent("/workspace/file.txt/x", &e) == -ENOTDIR);
	ws_entry_close(&e);

	/* mkdir -p, through an inside link, and over a file. */
	CHECK(ws_mkdir_p("to_dir/m/n", 0755) == 0);
	snprintf(p, sizeof p, "%s/ws/dir/m/n", root);
	CHECK(stat(p, &st) == 0 && S_ISDIR(st.st_mode));
	CHECK(ws_mkdir_p("to_dir/m/n", 0755) == 0);
	CHECK(ws_mkdir_p("file.txt/sub", 0755) == -EEXIST);
	CHECK(ws_mkdir_p(".", 0755) == 0);
	ws_shutdown();

	char cmd[800];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", root);
	CHECK(system(cmd) == 0); /* NOLINT(cert-env33-c): the test's own mkdtemp directory */
}

int main(void)
{
	test_normalize();
	test_confinement();
	return UNIT_DONE();
}
