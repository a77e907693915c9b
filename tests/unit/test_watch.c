/* server/watch.c, the change events of the workspace, without HTTP: a subscriber gets what its
 * filter wants of real changes to a scratch workspace, a retained watch counts them. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "common/clock.h"
#include "common/strbuf.h"
#include "server/watch.h"
#include "server/workspace.h"
#include "unit.h"

static char ws[] = "/tmp/sbx-test-watch-XXXXXX";

static void touch(const char *rel)
{
	char path[256];
	snprintf(path, sizeof path, "%s/%s", ws, rel);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd >= 0) {
		if (write(fd, "x", 1) != 1)
			perror("write");
		close(fd);
	}
}

static struct watch_filter filter(const char *root, bool recursive, const char *glob,
				  bool include)
{
	struct watch_filter f = { .root = strdup(root), .recursive = recursive,
				  .events = WATCH_ALL & ~WATCH_ATTRIB, .include = include };
	f.globs = calloc(2, sizeof *f.globs);
	if (glob)
		f.globs[f.nglobs++] = strdup(glob);
	return f;
}

/* Reads the subscriber's events until one holds want (at most 5 s); whether it did. */
static bool wait_for(struct watch_sub *s, struct strbuf *got, const char *want)
{
	int64_t end = mono_ms() + 5000;
	while (!strstr(got->data ? got->data : "", want) && mono_ms() < end)
		watch_next(s, got, 200);
	return strstr(got->data ? got->data : "", want) != NULL;
}

static void test_subscriber(void)
{
	int err;
	struct strbuf got = STRBUF_INIT;
	struct watch_filter f = filter("sub", true, "*.tmp", false);
	struct watch_sub *s = watch_subscribe(&f, "/workspace/sub", &err);
	CHECK(s != NULL && f.root == NULL); /* the filter was taken */
	CHECK(wait_for(s, &got, "\"type\":\"watching\""));
	touch("outside.txt");       /* not under the watched entry */
	touch("sub/skip.tmp");      /* excluded */
	touch("sub/deep/file.txt");
	CHECK(wait_for(s, &got, "\"path\":\"/workspace/sub/deep/file.txt\""));
	CHECK_HAS(got.data, "\"eventType\":\"create\"");
	CHECK_LACKS(got.data, "outside.txt");
	CHECK_LACKS(got.data, "skip.tmp");
	watch_unsubscribe(s);
	strbuf_free(&got);
}

static void test_retained(void)
{
	struct watch_filter f = filter(".", true, NULL, false);
	struct watch_state a, b, c;
	CHECK(watch_check(&f, "/workspace", &a) == 0 && a.created && a.cursor == 0);
	f = filter(".", true, NULL, false);
	CHECK(watch_check(&f, "/workspace", &b) == 0 && !b.created);
	CHECK_STR(b.id, a.id); /* the same parameters: the same watch */
	touch("counted.txt");
	int64_t end = mono_ms() + 5000;
	do {
		f = filter(".", true, NULL, false);
		CHECK(watch_check(&f, "/workspace", &c) == 0);
		usleep(10000);
	} while (c.cursor == 0 && mono_ms() < end);
	CHECK(c.cursor > 0);
	f = filter(".", false, NULL, false); /* other parameters: another watch */
	CHECK(watch_check(&f, "/workspace", &c) == 0 && c.created && strcmp(c.id, a.id) != 0);
}

int main(void)
{
	char path[256];
	if (!mkdtemp(ws) || ws_init(ws)) {
		printf("1..0 # SKIP no scratch workspace\n");
		return 0;
	}
	snprintf(path, sizeof path, "%s/sub", ws);
	mkdir(path, 0755);
	snprintf(path, sizeof path, "%s/sub/deep", ws);
	mkdir(path, 0755);
	watch_init();
	test_subscriber();
	test_retained();
	watch_shutdown();
	ws_shutdown();
	snprintf(path, sizeof path, "rm -rf '%s'", ws);
	if (system(path) != 0) /* NOLINT(cert-env33-c): the test's own mkdtemp directory */
		perror("rm");
	return UNIT_DONE();
}
