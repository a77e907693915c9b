/* server/journal.c, the journal engine, without HTTP: batches applied to a real temporary
 * workspace, with their watermarks in a real state directory. Order, repeats skipped, failures
 * final, a reload of the state, the leniencies and the conflicts of a put, two batches of one
 * journal at once, the bound on journals, and confinement to the workspace. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "common/jsonutil.h"
#include "server/journal.h"
#include "server/workspace.h"
#include "unit.h"

static char top[] = "/tmp/sbx-test-journal-XXXXXX";
static char ws[256], state[256], outside[256];

/* ---- ops and a batch ---- */

static struct journal_op put(uint64_t seq, const char *path, const char *data)
{
	return (struct journal_op){ .seq = seq, .kind = JOP_PUT, .path = path, .data = data,
				    .len = strlen(data), .mode = 0644 };
}

static struct journal_op op2(uint64_t seq, enum journal_op_kind kind, const char *from,
			     const char *to)
{
	return (struct journal_op){ .seq = seq, .kind = kind, .from = from, .to = to };
}

static struct journal_op op1(uint64_t seq, enum journal_op_kind kind, const char *path)
{
	return (struct journal_op){ .seq = seq, .kind = kind, .path = path, .mode = 0755 };
}

#define N_MAX 512
struct batch {
	struct journal_result res[N_MAX];
	uint64_t applied;
	int rc;
};

static void run(struct journals *js, const char *id, const struct journal_op *ops, size_t n,
		struct batch *b)
{
	b->applied = 0;
	b->rc = journal_apply(js, id, 0, ops, n, b->res, &b->applied);
}

static void done(struct batch *b, size_t n)
{
	journal_results_free(b->res, n);
}

/* The content of a workspace file, or "" (static buffer). */
static const char *content(const char *name)
{
	static char buf[256];
	char p[PATH_MAX];
	snprintf(p, sizeof p, "%s/%s", ws, name);
	FILE *f = fopen(p, "r");
	size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
	if (f)
		fclose(f);
	buf[n] = '\0';
	return buf;
}

static int lstat_ws(const char *name, struct stat *st)
{
	char p[PATH_MAX];
	snprintf(p, sizeof p, "%s/%s", ws, name);
	return lstat(p, st);
}

static int64_t stat_field(const cJSON *st, const char *key)
{
	return json_int(st, key, -1);
}

static const char *errno_of(const struct journal_result *r)
{
	return r->outcome != JOURNAL_FAILED ? "(not failed)" : r->err == ENOENT ? "ENOENT"
		: r->err == EEXIST ? "EEXIST" : r->err == EACCES ? "EACCES" : r->err == ELOOP
		? "ELOOP" : r->err == EISDIR ? "EISDIR" : "other";
}

/* ---- the tests ---- */

/* The example: put a; rename a->b; put a. Applied in order; sent again (a lost
 * answer), nothing is applied twice: b keeps the first content, a the second. */
static void test_order_and_repeats(struct journals *js)
{
	struct journal_op ops[] = {
		put(1, "/workspace/a", "first"),
		op2(2, JOP_RENAME, "/workspace/a", "/workspace/b"),
		put(3, "a", "second"), /* relative to /workspace, as everywhere */
	};
	struct batch b;
	run(js, "order", ops, 3, &b);
	CHECK(b.rc == 0 && b.applied == 3);
	CHECK(b.res[0].outcome == JOURNAL_APPLIED && b.res[0].seq == 1);
	CHECK(stat_field(b.res[0].stat, "size") == 5);
	CHECK(b.res[1].outcome == JOURNAL_APPLIED && stat_field(b.res[1].stat, "size") == 5);
	CHECK(b.res[2].outcome == JOURNAL_APPLIED && stat_field(b.res[2].stat, "size") == 6);
	done(&b, 3);
	CHECK_STR(content("b"), "first");
	CHECK_STR(content("a"), "second");

	run(js, "order", ops, 3, &b);
	CHECK(b.rc == 0 && b.applied == 3);
	for (int i = 0; i < 3; i++)
		CHECK(b.res[i].outcome == JOURNAL_SKIPPED && b.res[i].seq == (uint64_t)i + 1 &&
		      !b.res[i].stat);
	done(&b, 3);
	CHECK_STR(content("b"), "first");
	CHECK_STR(content("a"), "second");

	/* a batch that overlaps the watermark: the old part skipped, the new part applied */
	struct journal_op more[] = { ops[2], op1(4, JOP_UNLINK, "/workspace/b") };
	run(js, "order", more, 2, &b);
	CHECK(b.rc == 0 && b.applied == 4);
	CHECK(b.res[0].outcome == JOURNAL_SKIPPED && b.res[1].outcome == JOURNAL_APPLIED);
	CHECK(!b.res[1].stat); /* unlink has none */
	done(&b, 2);
	struct stat st;
	CHECK(lstat_ws("b", &st) == -1 && errno == ENOENT);
	CHECK(journal_watermark(js, "order") == 4);
	CHECK(journal_watermark(js, "other") == 0);

	/* another journal has a watermark of its own */
	struct journal_op other[] = { put(1, "/workspace/other", "x") };
	run(js, "other", other, 1, &b);
	CHECK(b.rc == 0 && b.applied == 1 && b.res[0].outcome == JOURNAL_APPLIED);
	done(&b, 1);
	CHECK(journal_watermark(js, "order") == 4);
}

/* A failing op does not stop those after it, and its result is final: the repeat skips it. */
static void test_failures(struct journals *js)
{
	struct journal_op ops[] = {
		op2(10, JOP_RENAME, "/workspace/missing", "/workspace/m2"),
		put(11, "/workspace/after-failure", "ok"),
		put(12, "/workspace/no-dir/x", "x"),
		(struct journal_op){ .seq = 13, .kind = JOP_WRITE, .path = "/workspace/absent",
				     .data = "x", .len = 1 },
		op1(14, JOP_MKDIR, "/workspace/after-failure"), /* a file is there */
	};
	struct batch b;
	run(js, "fail", ops, 5, &b);
	CHECK(b.rc == 0 && b.applied == 14);
	CHECK_STR(errno_of(&b.res[0]), "ENOENT");
	CHECK_HAS(b.res[0].message, "/workspace/missing -> /workspace/m2");
	CHECK_STR(b.res[0].path, "/workspace/missing");
	CHECK_STR(b.res[0].to, "/workspace/m2");
	CHECK(b.res[1].outcome == JOURNAL_APPLIED);
	CHECK_STR(errno_of(&b.res[2]), "ENOENT");
	CHECK_STR(errno_of(&b.res[3]), "ENOENT"); /* write never creates */
	CHECK_STR(errno_of(&b.res[4]), "EEXIST");
	CHECK_HAS(b.res[4].message, "/workspace/after-failure");
	done(&b, 5);
	struct stat st;
	CHECK(lstat_ws("absent", &st) == -1);

	/* the missing file turns up: the failed rename is not tried again */
	struct journal_op make[] = { put(15, "/workspace/missing", "late") };
	run(js, "fail", make, 1, &b);
	done(&b, 1);
	run(js, "fail", ops, 5, &b);
	for (int i = 0; i < 5; i++)
		CHECK(b.res[i].outcome == JOURNAL_SKIPPED);
	done(&b, 5);
	CHECK_STR(content("missing"), "late");
	CHECK(lstat_ws("m2", &st) == -1);
}

/* What counts as done before: an op that a batch cut short (sbxd killed before it kept the
 * watermark) finds already done is a success, except a rename, which is strict. */
static void test_leniencies(struct journals *js)
{
	struct journal_op setup[] = {
		op1(1, JOP_MKDIR, "/workspace/dir"),
		put(2, "/workspace/file", "f"),
		(struct journal_op){ .seq = 3, .kind = JOP_SYMLINK, .path = "/workspace/sym",
				     .target = "file" },
		op2(4, JOP_LINK, "/workspace/file", "/workspace/hard"),
	};
	struct batch b;
	run(js, "lenient-setup", setup, 4, &b);
	for (int i = 0; i < 4; i++)
		CHECK(b.res[i].outcome == JOURNAL_APPLIED);
	CHECK(stat_field(b.res[0].stat, "mode") == (S_IFDIR | 0755));
	CHECK_STR(json_str(b.res[2].stat, "target"), "file");
	CHECK(stat_field(b.res[3].stat, "nlink") == 2);
	done(&b, 4);

	/* the same again under a new journal: done before, so successes */
	struct journal_op again[] = {
		op1(1, JOP_MKDIR, "/workspace/dir"),
		(struct journal_op){ .seq = 2, .kind = JOP_SYMLINK, .path = "/workspace/sym",
				     .target = "file" },
		op2(3, JOP_LINK, "/workspace/file", "/workspace/hard"),
		op1(4, JOP_UNLINK, "/workspace/never-was"),
		op1(5, JOP_RMDIR, "/workspace/never-was"),
		/* and what differs from what was done is an error */
		(struct journal_op){ .seq = 6, .kind = JOP_SYMLINK, .path = "/workspace/sym",
				     .target = "elsewhere" },
		op2(7, JOP_LINK, "/workspace/sym", "/workspace/hard"),
		op1(8, JOP_MKDIR, "/workspace/file"),
		op2(9, JOP_RENAME, "/workspace/gone", "/workspace/file"),
		op1(10, JOP_UNLINK, "/workspace/dir"),
	};
	run(js, "lenient-again", again, 10, &b);
	CHECK(b.rc == 0 && b.applied == 10);
	for (int i = 0; i < 5; i++)
		CHECK(b.res[i].outcome == JOURNAL_APPLIED);
	CHECK_STR(json_str(b.res[1].stat, "target"), "file");
	CHECK(stat_field(b.res[2].stat, "nlink") == 2);
	CHECK_STR(errno_of(&b.res[5]), "EEXIST");
	CHECK_STR(errno_of(&b.res[6]), "EEXIST");
	CHECK_STR(errno_of(&b.res[7]), "EEXIST");
	CHECK_STR(errno_of(&b.res[8]), "ENOENT");
	CHECK_STR(errno_of(&b.res[9]), "EISDIR");
	done(&b, 10);
}

/* put replaces the content in place (the inode stays: a hard link sees it), sets the mode of
 * an existing file and the times given; write goes into the file at its offset; setattr. */
static void test_put_write_setattr(struct journals *js)
{
	struct stat before, after;
	CHECK(lstat_ws("file", &before) == 0);
	struct journal_op p = put(1, "/workspace/file", "new content");
	p.mode = 0600;
	p.has_mtime = true;
	p.mtime = (struct timespec){ 1700000000, 123456789 };
	struct journal_op ops[] = {
		p,
		(struct journal_op){ .seq = 2, .kind = JOP_WRITE, .path = "/workspace/file",
				     .offset = 4, .data = "CONTENT!", .len = 8 },
		(struct journal_op){ .seq = 3, .kind = JOP_SETATTR, .path = "/workspace/hard",
				     .has_size = true, .size = 3, .has_mode = true,
				     .mode = 0640, .has_atime = true,
				     .atime = { 1600000000, 5 } },
		(struct journal_op){ .seq = 4, .kind = JOP_SETATTR, .path = "/workspace/sym",
				     .has_mode = true, .mode = 0600 },
	};
	struct batch b;
	run(js, "put", ops, 4, &b);
	CHECK(b.res[0].outcome == JOURNAL_APPLIED && !b.res[0].conflict);
	CHECK(stat_field(b.res[0].stat, "ino") == (int64_t)before.st_ino);
	CHECK(stat_field(b.res[0].stat, "mode") == (S_IFREG | 0600));
	CHECK(b.res[1].outcome == JOURNAL_APPLIED && stat_field(b.res[1].stat, "size") == 12);
	CHECK(b.res[2].outcome == JOURNAL_APPLIED && stat_field(b.res[2].stat, "size") == 3);
	CHECK(b.res[3].outcome == JOURNAL_FAILED && b.res[3].err == EOPNOTSUPP); /* a symlink */
	done(&b, 4);
	CHECK(lstat_ws("file", &after) == 0);
	CHECK(after.st_ino == before.st_ino && (after.st_mode & 07777) == 0640);
	CHECK(after.st_atim.tv_sec == 1600000000 && after.st_atim.tv_nsec == 5);
	CHECK_STR(content("hard"), "new"); /* (a read may change the atime: last) */

	/* the mtime of a put, and a put of nothing */
	struct journal_op q = put(5, "/workspace/timed", "");
	q.has_mtime = true;
	q.mtime = (struct timespec){ 1700000000, 123456789 };
	run(js, "put", &q, 1, &b);
	CHECK(b.res[0].outcome == JOURNAL_APPLIED && stat_field(b.res[0].stat, "size") == 0);
	done(&b, 1);
	CHECK(lstat_ws("timed", &after) == 0 && after.st_mtim.tv_sec == 1700000000 &&
	      after.st_mtim.tv_nsec == 123456789);
}

/* A put says what its client believed was there; when the path held something else, the
 * result says so (and what it found), and the put is applied all the same. */
static void test_conflicts(struct journals *js)
{
	struct stat st;
	CHECK(lstat_ws("timed", &st) == 0);
	struct journal_op ops[] = {
		put(1, "/workspace/timed", "A"),            /* expects absent: was there */
		put(2, "/workspace/fresh", "B"),            /* expects absent: was absent */
		put(3, "/workspace/fresh", "CC"),           /* expects size 1 and its mtime */
		put(4, "/workspace/fresh", "DDD"),          /* expects size 1 and mtime: size is 2 */
		put(5, "/workspace/nothing-there", "E"),    /* expects a stat: absent */
	};
	ops[0].expect = ops[1].expect = JOURNAL_EXPECT_ABSENT;
	for (int i = 2; i < 5; i++) {
		ops[i].expect = JOURNAL_EXPECT_STAT;
		ops[i].expect_has_size = true;
		ops[i].expect_size = 1;
	}
	struct batch b;
	run(js, "conflicts", ops, 2, &b);
	CHECK(b.res[0].outcome == JOURNAL_APPLIED && b.res[0].conflict && b.res[0].before);
	CHECK(stat_field(b.res[0].before, "size") == 0);
	CHECK(stat_field(b.res[0].before, "ino") == (int64_t)st.st_ino);
	const cJSON *was = cJSON_GetObjectItem(b.res[0].before, "mtime");
	CHECK(cJSON_GetArraySize(was) == 2 &&
	      cJSON_GetArrayItem(was, 0)->valuedouble == 1700000000 &&
	      cJSON_GetArrayItem(was, 1)->valuedouble == 123456789);
	CHECK(b.res[1].outcome == JOURNAL_APPLIED && !b.res[1].conflict && !b.res[1].before);
	/* the client's view of fresh: what the put answered */
	const cJSON *mt = cJSON_GetObjectItem(b.res[1].stat, "mtime");
	struct timespec fresh_mtime = {
		(time_t)cJSON_GetArrayItem(mt, 0)->valuedouble,
		(long)cJSON_GetArrayItem(mt, 1)->valuedouble,
	};
	done(&b, 2);
	for (int i = 2; i < 5; i++) {
		ops[i].expect_has_mtime = true;
		ops[i].expect_mtime = fresh_mtime;
	}
	run(js, "conflicts", ops + 2, 3, &b);
	CHECK(b.res[0].outcome == JOURNAL_APPLIED && !b.res[0].conflict);
	CHECK(b.res[1].outcome == JOURNAL_APPLIED && b.res[1].conflict);
	CHECK(stat_field(b.res[1].before, "size") == 2);
	CHECK(b.res[2].outcome == JOURNAL_APPLIED && b.res[2].conflict && !b.res[2].before);
	done(&b, 3);
	CHECK_STR(content("timed"), "A");
	CHECK_STR(content("fresh"), "DDD");
	CHECK_STR(content("nothing-there"), "E");
}

/* Nothing leads out of the workspace: not a symlinked directory, not a symlink as the last
 * component (never followed), not a path outside /workspace. */
static void test_confinement(struct journals *js)
{
	char p[PATH_MAX + 32];
	snprintf(p, sizeof p, "%s/out", ws);
	CHECK(symlink(outside, p) == 0);
	snprintf(p, sizeof p, "%s/victim", outside);
	FILE *f = fopen(p, "w");
	CHECK(f != NULL);
	if (f) {
		fputs("untouched", f);
		fclose(f);
	}
	snprintf(p, sizeof p, "%s/victim", outside);
	char lnk[PATH_MAX + 32];
	snprintf(lnk, sizeof lnk, "%s/to-victim", ws);
	CHECK(symlink(p, lnk) == 0);

	struct journal_op ops[] = {
		put(1, "/workspace/out/new", "x"),
		put(2, "/workspace/out/victim", "overwritten"),
		put(3, "/workspace/to-victim", "overwritten"),
		(struct journal_op){ .seq = 4, .kind = JOP_WRITE, .path = "/workspace/to-victim",
				     .data = "x", .len = 1 },
		op1(5, JOP_MKDIR, "/workspace/out/d"),
		op2(6, JOP_RENAME, "/workspace/fresh", "/workspace/out/fresh"),
		op2(7, JOP_LINK, "/workspace/out/victim", "/workspace/stolen"),
		put(8, "/etc/sbx-journal-test", "x"),
		put(9, "/workspace/../outside", "x"),
		(struct journal_op){ .seq = 10, .kind = JOP_SETATTR, .path = "/workspace/out/victim",
				     .has_size = true, .size = 0 },
		op1(11, JOP_UNLINK, "/workspace/out/victim"),
	};
	size_t n = sizeof ops / sizeof ops[0];
	struct batch b;
	run(js, "confined", ops, n, &b);
	CHECK(b.rc == 0 && b.applied == 11);
	for (size_t i = 0; i < n; i++) {
		CHECK(b.res[i].outcome == JOURNAL_FAILED);
		if (b.res[i].outcome != JOURNAL_FAILED)
			printf("# op %zu applied\n", i);
	}
	CHECK_STR(errno_of(&b.res[0]), "EACCES");
	CHECK_HAS(b.res[0].message, "outside /workspace");
	CHECK_STR(errno_of(&b.res[2]), "ELOOP");
	CHECK_STR(errno_of(&b.res[7]), "EACCES");
	done(&b, n);
	FILE *v = fopen(p, "r");
	char buf[32] = "";
	CHECK(v && fgets(buf, sizeof buf, v));
	if (v)
		fclose(v);
	CHECK_STR(buf, "untouched");
	snprintf(p, sizeof p, "%s/new", outside);
	CHECK(access(p, F_OK) == -1);
	snprintf(p, sizeof p, "%s/d", outside);
	CHECK(access(p, F_OK) == -1);
	CHECK(access("/etc/sbx-journal-test", F_OK) == -1);
	CHECK_STR(content("fresh"), "DDD");
}

/* Bad batches are refused whole, nothing applied. */
static void test_invalid(struct journals *js)
{
	struct journal_op ops[] = { put(5, "/workspace/inv", "x"), put(5, "/workspace/inv2", "y") };
	struct batch b;
	run(js, "invalid", ops, 2, &b);
	CHECK(b.rc == -EINVAL);
	ops[1].seq = 4;
	run(js, "invalid", ops, 2, &b);
	CHECK(b.rc == -EINVAL);
	ops[0].seq = 0;
	run(js, "invalid", ops, 1, &b);
	CHECK(b.rc == -EINVAL);
	ops[0].seq = JOURNAL_SEQ_MAX + 1;
	run(js, "invalid", ops, 1, &b);
	CHECK(b.rc == -EINVAL);
	ops[0].seq = 1;
	run(js, "in valid", ops, 1, &b);
	CHECK(b.rc == -EINVAL);
	run(js, "", ops, 1, &b);
	CHECK(b.rc == -EINVAL);
	run(js, "invalid", ops, 0, &b);
	CHECK(b.rc == -EINVAL);
	struct stat st;
	CHECK(lstat_ws("inv", &st) == -1 && lstat_ws("inv2", &st) == -1);
	CHECK(journal_watermark(js, "invalid") == 0);
	CHECK(journal_id_valid("a-Z_09") && !journal_id_valid("a.b") && !journal_id_valid("a/b"));
	char longest[JOURNAL_ID_MAX + 2];
	memset(longest, 'x', sizeof longest);
	longest[JOURNAL_ID_MAX] = '\0';
	CHECK(journal_id_valid(longest));
	longest[JOURNAL_ID_MAX] = 'x';
	longest[JOURNAL_ID_MAX + 1] = '\0';
	CHECK(!journal_id_valid(longest));
}

/* ---- two batches of one journal at once ---- */

#define RACE_OPS 200
struct racer {
	struct journals *js;
	const struct journal_op *ops;
	struct batch *b;
	pthread_barrier_t *start;
};

static void *race(void *arg)
{
	struct racer *r = arg;
	pthread_barrier_wait(r->start);
	run(r->js, "race", r->ops, RACE_OPS, r->b);
	return NULL;
}

/* The same batch from two threads (a client's retry racing its first copy): every op is
 * carried out by exactly one of them, and the two never interleave (one carries out all,
 * the other skips all). */
static void test_concurrent(struct journals *js)
{
	static struct journal_op ops[RACE_OPS];
	static char names[RACE_OPS / 2][32];
	for (int i = 0; i < RACE_OPS / 2; i++) {
		snprintf(names[i], sizeof names[i], "/workspace/race-%d", i);
		/* put a; rename a -> race-i: twice would put race-a's second content there */
		ops[2 * i] = put(2 * i + 1, "/workspace/race-a", names[i] + 11);
		ops[2 * i + 1] = op2(2 * i + 2, JOP_RENAME, "/workspace/race-a", names[i]);
	}
	static struct batch b1, b2;
	pthread_barrier_t start;
	pthread_barrier_init(&start, NULL, 2);
	struct racer r1 = { js, ops, &b1, &start }, r2 = { js, ops, &b2, &start };
	pthread_t t1, t2;
	pthread_create(&t1, NULL, race, &r1);
	pthread_create(&t2, NULL, race, &r2);
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	pthread_barrier_destroy(&start);
	CHECK(b1.rc == 0 && b2.rc == 0 && b1.applied == RACE_OPS && b2.applied == RACE_OPS);
	int once = 0, twice = 0, mixed = 0;
	for (int i = 0; i < RACE_OPS; i++) {
		bool a1 = b1.res[i].outcome == JOURNAL_APPLIED;
		bool a2 = b2.res[i].outcome == JOURNAL_APPLIED;
		once += a1 != a2;
		twice += a1 && a2;
		mixed += a1 != (b1.res[0].outcome == JOURNAL_APPLIED);
	}
	CHECK(once == RACE_OPS && twice == 0);
	CHECK(mixed == 0);
	done(&b1, RACE_OPS);
	done(&b2, RACE_OPS);
	struct stat st;
	CHECK(lstat_ws("race-a", &st) == -1 && errno == ENOENT);
	CHECK_STR(content("race-0"), "race-0");
	CHECK_STR(content("race-99"), "race-99");
}

/* ---- state ---- */

static int count_files(const char *dir)
{
	DIR *d = opendir(dir);
	int n = 0;
	if (!d)
		return -1;
	for (struct dirent *de; (de = readdir(d));)
		n += de->d_name[0] != '.';
	closedir(d);
	return n;
}

/* An sbxd that starts again reads the watermarks back and skips what it did before. */
static struct journals *test_reload(struct journals *js)
{
	journals_free(js);
	int err = 0;
	js = journals_new(state, &err);
	CHECK(js != NULL && err == 0);
	if (!js)
		return NULL;
	CHECK(journal_watermark(js, "order") == 4);
	CHECK(journal_watermark(js, "fail") == 15);
	CHECK(journal_watermark(js, "race") == RACE_OPS);
	struct journal_op ops[] = {
		put(1, "/workspace/a", "first"),
		op2(2, JOP_RENAME, "/workspace/a", "/workspace/b"),
		put(3, "/workspace/a", "second"),
		put(4, "/workspace/after-reload", "new"),
		put(5, "/workspace/after-reload-2", "new"),
	};
	struct batch b;
	run(js, "order", ops, 5, &b);
	CHECK(b.rc == 0 && b.applied == 5);
	for (int i = 0; i < 4; i++)
		CHECK(b.res[i].outcome == JOURNAL_SKIPPED);
	CHECK(b.res[4].outcome == JOURNAL_APPLIED);
	done(&b, 5);
	struct stat st;
	CHECK(lstat_ws("b", &st) == -1); /* unlinked by seq 4 before the reload, not renamed again */
	CHECK(lstat_ws("after-reload", &st) == -1);

	/* a file that is not a watermark is left alone and does not stop the start */
	char p[PATH_MAX + 32];
	snprintf(p, sizeof p, "%s/journals/garbage", state);
	FILE *f = fopen(p, "w");
	if (f) {
		fputs("not a number\n", f);
		fclose(f);
	}
	journals_free(js);
	js = journals_new(state, &err);
	CHECK(js != NULL);
	CHECK(js && journal_watermark(js, "order") == 5 && journal_watermark(js, "garbage") == 0);
	unlink(p);
	return js;
}

/* At most JOURNALS_MAX journals: a new one forgets the least recently used (and its file). */
static void test_bound(struct journals *js)
{
	char dir[PATH_MAX + 32];
	snprintf(dir, sizeof dir, "%s/journals", state);
	struct journal_op op = op1(7, JOP_MKDIR, "/workspace/bound");
	struct batch b;
	char id[32];
	int before = count_files(dir);
	CHECK(before > 0 && before < 16);
	/* a use, even one that skips everything, makes a journal the most recently used: of
	 * those so far, "order" is now the least recently used */
	static const char *const others[] = { "other", "fail", "lenient-setup",
		"lenient-again", "put", "conflicts", "confined", "race" };
	struct journal_op old = put(1, "/workspace/never", "x");
	for (size_t i = 0; i < sizeof others / sizeof others[0]; i++) {
		run(js, others[i], &old, 1, &b);
		CHECK(b.rc == 0 && b.res[0].outcome == JOURNAL_SKIPPED);
		done(&b, 1);
	}
	for (int i = 0; i < JOURNALS_MAX - before; i++) {
		snprintf(id, sizeof id, "bound-%d", i);
		run(js, id, &op, 1, &b);
		done(&b, 1);
	}
	CHECK(count_files(dir) == JOURNALS_MAX);
	CHECK(journal_watermark(js, "order") == 5);
	run(js, "one-too-many", &op, 1, &b);
	CHECK(b.rc == 0 && b.res[0].outcome == JOURNAL_APPLIED);
	done(&b, 1);
	CHECK(count_files(dir) == JOURNALS_MAX);
	CHECK(journal_watermark(js, "order") == 0);      /* forgotten */
	CHECK(journal_watermark(js, "fail") == 15);      /* used recently */
	snprintf(dir, sizeof dir, "%s/journals/order", state);
	CHECK(access(dir, F_OK) == -1);
	CHECK(journal_watermark(js, "one-too-many") == 7);
}

int main(void)
{
	if (!mkdtemp(top))
		return 1;
	snprintf(ws, sizeof ws, "%s/ws", top);
	snprintf(state, sizeof state, "%s/state", top);
	snprintf(outside, sizeof outside, "%s/outside", top);
	if (mkdir(ws, 0755) || mkdir(state, 0700) || mkdir(outside, 0755) || ws_init(ws))
		return 1;
	umask(022);
	int err = 0;
	struct journals *js = journals_new(state, &err);
	CHECK(js != NULL);
	if (!js)
		return UNIT_DONE();
	test_order_and_repeats(js);
	test_failures(js);
	test_leniencies(js);
	test_put_write_setattr(js);
	test_conflicts(js);
	test_confinement(js);
	test_invalid(js);
	test_concurrent(js);
	js = test_reload(js);
	if (js)
		test_bound(js);
	journals_free(js);

	/* in memory only: works the same, keeps nothing */
	js = journals_new(NULL, &err);
	struct journal_op op = put(1, "/workspace/memory", "m");
	struct batch b;
	run(js, "memory", &op, 1, &b);
	CHECK(b.rc == 0 && b.res[0].outcome == JOURNAL_APPLIED);
	done(&b, 1);
	journals_free(js);

	ws_shutdown();
	char cmd[PATH_MAX + 16];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", top);
	if (system(cmd) != 0) /* NOLINT(cert-env33-c): the test's own mkdtemp directory */
		printf("# could not remove %s\n", top);
	return UNIT_DONE();
}
