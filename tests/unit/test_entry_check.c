/* client/entry_check.c and client/fallback_parse.c: what a server says about entries, judged
 * field by field (docs/protocol.md, "What sbxfs accepts from a server"). */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "client/entry_check.h"
#include "client/fallback_parse.h"
#include "common/jsonutil.h"
#include "common/log.h"
#include "unit.h"

static void test_names(void)
{
	char longest[257];
	memset(longest, 'n', 256);
	longest[256] = 0;
	CHECK(entry_name_problem(longest) != NULL);
	longest[255] = 0;
	CHECK(entry_name_problem(longest) == NULL);
	CHECK(entry_name_problem("") != NULL);
	CHECK(entry_name_problem(".") != NULL);
	CHECK(entry_name_problem("..") != NULL);
	CHECK(entry_name_problem("a/b") != NULL);
	CHECK(entry_name_problem("/") != NULL);
	CHECK(entry_name_problem("...") == NULL);
	CHECK(entry_name_problem(".hidden") == NULL);
	CHECK(entry_name_problem("tab\there\x1b[31m") == NULL);
	CHECK(entry_name_problem("\xff\xfe not UTF-8") == NULL);
}

static int is_int(struct wire_int w, bool neg, uint64_t mag)
{
	return w.present && w.integer && !w.huge && w.neg == neg && w.mag == mag;
}

#define TEXT(s, base) wire_int_from_text(s, strlen(s), base)

static void test_numbers_from_text(void)
{
	CHECK(is_int(TEXT("0", 10), false, 0));
	CHECK(is_int(TEXT("-0", 10), false, 0));
	CHECK(is_int(TEXT("123", 10), false, 123));
	CHECK(is_int(TEXT("-5", 10), true, 5));
	CHECK(is_int(TEXT("18446744073709551615", 10), false, UINT64_MAX));
	struct wire_int w = TEXT("18446744073709551616", 10);
	CHECK(w.integer && w.huge && w.mag == UINT64_MAX);
	w = TEXT("-99999999999999999999999", 10);
	CHECK(w.integer && w.huge && w.neg);
	CHECK(is_int(TEXT("0755", 8), false, 0755));
	const char *bad[] = { "", "-", "12a", " 1", "+1", "1.5", "0x10", "--1" };
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		w = TEXT(bad[i], 10);
		CHECK(w.present && !w.integer);
	}
	CHECK(!TEXT("8", 8).integer);
	CHECK(!TEXT("-1", 8).integer);
	/* the length counts, not a NUL */
	CHECK(is_int(wire_int_from_text("12345", 2, 10), false, 12));
}

static void test_numbers_from_json(void)
{
	cJSON *a = cJSON_Parse("[0, -1, 1.5, 1e30, -1e30, 9007199254740993, 1e999, \"5\", null,"
			       " 4294967295, -0]");
	CHECK(is_int(wire_int_from_json(cJSON_GetArrayItem(a, 0)), false, 0));
	CHECK(is_int(wire_int_from_json(cJSON_GetArrayItem(a, 1)), true, 1));
	CHECK(!wire_int_from_json(cJSON_GetArrayItem(a, 2)).integer);
	struct wire_int w = wire_int_from_json(cJSON_GetArrayItem(a, 3));
	CHECK(w.integer && w.huge && !w.neg);
	w = wire_int_from_json(cJSON_GetArrayItem(a, 4));
	CHECK(w.integer && w.huge && w.neg);
	/* a double: 2^53 + 1 arrives as 2^53 */
	CHECK(is_int(wire_int_from_json(cJSON_GetArrayItem(a, 5)), false, 9007199254740992ULL));
	w = wire_int_from_json(cJSON_GetArrayItem(a, 6));
	CHECK(w.integer && w.huge);
	CHECK(!wire_int_from_json(cJSON_GetArrayItem(a, 7)).integer);
	CHECK(!wire_int_from_json(cJSON_GetArrayItem(a, 8)).integer);
	CHECK(wire_int_from_json(cJSON_GetArrayItem(a, 8)).present);
	CHECK(is_int(wire_int_from_json(cJSON_GetArrayItem(a, 9)), false, 4294967295ULL));
	CHECK(is_int(wire_int_from_json(cJSON_GetArrayItem(a, 10)), false, 0));
	CHECK(!wire_int_from_json(NULL).present);
	cJSON_Delete(a);
}

/* entry_stat_from_json of one stat object given as JSON text. */
static enum entry_fate judge(const char *json, struct stat *st, char **target)
{
	cJSON *o = cJSON_Parse(json);
	struct entry_why why;
	entry_stat_from_json(o, st, target, &why);
	cJSON_Delete(o);
	if (why.fate != ENTRY_GOOD)
		printf("# %s -> %s\n", json, why.text);
	return why.fate;
}

#define BASE "\"ino\":7,\"nlink\":1,\"uid\":1,\"gid\":2,\"size\":3,\"blocks\":8," \
	     "\"atime\":[1,2],\"mtime\":[3,4],\"ctime\":[5,6]"

static void test_stat_roundtrip(void)
{
	struct stat st = { 0 }, back;
	st.st_ino = 1234567890123ULL;
	st.st_mode = S_IFREG | 0640;
	st.st_nlink = 3;
	st.st_uid = 1000;
	st.st_gid = 100;
	st.st_size = (off_t)5 << 32 | 7;  /* > 2^32 */
	st.st_blocks = (st.st_size + 511) / 512;
	st.st_atim = (struct timespec){ 1700000000, 123456789 };
	st.st_mtim = (struct timespec){ 1700000001, 999999999 };
	st.st_ctim = (struct timespec){ -1, 0 };
	cJSON *o = json_from_stat(&st);
	cJSON_AddStringToObject(o, "target", "ignored for a file");
	char *text = json_print(o);
	char *target = (char *)"unset";
	CHECK(judge(text, &back, &target) == ENTRY_GOOD);
	CHECK(target == NULL);
	CHECK(back.st_ino == st.st_ino && back.st_mode == st.st_mode);
	CHECK(back.st_nlink == st.st_nlink);
	CHECK(back.st_uid == st.st_uid && back.st_gid == st.st_gid);
	CHECK(back.st_size == st.st_size && back.st_blocks == st.st_blocks);
	CHECK(back.st_atim.tv_sec == st.st_atim.tv_sec && back.st_atim.tv_nsec == 123456789);
	CHECK(back.st_mtim.tv_sec == st.st_mtim.tv_sec && back.st_mtim.tv_nsec == 999999999);
	CHECK(back.st_ctim.tv_sec == -1 && back.st_ctim.tv_nsec == 0);
	free(text);
	cJSON_Delete(o);
}

static void test_stat_dropped(void)
{
	struct stat st;
	const char *dropped[] = {
		"{" BASE "}",                                 /* no mode */
		"{\"mode\":61860," BASE "}",                  /* 0170644: no known type */
		"{\"mode\":1099511627776," BASE "}",          /* 2^40 */
		"{\"mode\":-1," BASE "}",
		"{\"mode\":33188.5," BASE "}",
		"{\"mode\":33188,\"ino\":0,\"size\":1}",
		"{\"mode\":33188,\"size\":1}",                /* no inode */
		"{\"mode\":33188,\"ino\":-4,\"size\":1}",
		"{\"mode\":33188,\"ino\":5,\"size\":-1}",
		"{\"mode\":33188,\"ino\":5,\"size\":1e30}",
		"{\"mode\":33188,\"ino\":5,\"size\":9223372036854775807}", /* a double: 2^63 */
		"{\"mode\":33188,\"ino\":5,\"size\":1.5}",
		"{\"mode\":33188,\"ino\":5,\"size\":\"1\"}",
		"{\"mode\":41471,\"ino\":5,\"target\":\"\"}", /* a symlink to "" */
		"[1,2]",
	};
	for (size_t i = 0; i < sizeof dropped / sizeof *dropped; i++)
		CHECK(judge(dropped[i], &st, NULL) == ENTRY_DROPPED);
	CHECK(judge(NULL, &st, NULL) == ENTRY_DROPPED);

	/* targets: PATH_MAX - 1 bytes is the longest Linux stores */
	struct { size_t len; enum entry_fate fate; } targets[] = {
		{ 1, ENTRY_GOOD }, { ENTRY_TARGET_MAX, ENTRY_GOOD },
		{ ENTRY_TARGET_MAX + 1, ENTRY_DROPPED },
	};
	for (size_t i = 0; i < sizeof targets / sizeof *targets; i++) {
		char *t = malloc(targets[i].len + 1);
		memset(t, 'x', targets[i].len);
		t[targets[i].len] = 0;
		cJSON *o = cJSON_Parse("{\"mode\":41471,\"ino\":5,\"size\":1}");
		cJSON_AddStringToObject(o, "target", t);
		struct entry_why why;
		char *got = NULL;
		entry_stat_from_json(o, &st, &got, &why);
		CHECK(why.fate == targets[i].fate);
		CHECK(targets[i].fate == ENTRY_DROPPED ? got == NULL : strcmp(got, t) == 0);
		free(got);
		free(t);
		cJSON_Delete(o);
	}
}

static void test_stat_adjusted(void)
{
	struct stat st;
	CHECK(judge("{\"mode\":33188,\"ino\":5,\"nlink\":0}", &st, NULL) == ENTRY_GOOD);
	CHECK(st.st_nlink == 0);
	CHECK(judge("{\"mode\":33188,\"ino\":5,\"nlink\":-1}", &st, NULL) == ENTRY_ADJUSTED);
	CHECK(st.st_nlink == 1);
	CHECK(judge("{\"mode\":33188,\"ino\":5,\"nlink\":1e10}", &st, NULL) == ENTRY_ADJUSTED);
	CHECK(st.st_nlink == UINT32_MAX);
	CHECK(judge("{\"mode\":33188,\"ino\":5,\"uid\":4294967295,\"gid\":-1}", &st, NULL) ==
	      ENTRY_ADJUSTED);
	CHECK(st.st_uid == 65534 && st.st_gid == 65534);
	CHECK(judge("{\"mode\":33188,\"ino\":5,\"uid\":4294967294}", &st, NULL) == ENTRY_GOOD);
	CHECK(st.st_uid == 4294967294u);
	CHECK(judge("{\"mode\":33188,\"ino\":5,\"size\":4097,\"blocks\":-8}", &st, NULL) ==
	      ENTRY_ADJUSTED);
	CHECK(st.st_blocks == 9);
	CHECK(judge("{\"mode\":33188,\"ino\":5,\"size\":4097}", &st, NULL) == ENTRY_GOOD);
	CHECK(st.st_blocks == 9 && st.st_nlink == 1 && st.st_uid == 0);
	CHECK(judge("{\"mode\":33188,\"ino\":5,\"mtime\":[7,1000000000],\"atime\":[7,-1]}", &st,
		    NULL) == ENTRY_ADJUSTED);
	CHECK(st.st_mtim.tv_sec == 7 && st.st_mtim.tv_nsec == 0 && st.st_atim.tv_nsec == 0);
	CHECK(judge("{\"mode\":33188,\"ino\":5,\"mtime\":[1e30,1],\"ctime\":[-1e30,5]}", &st,
		    NULL) == ENTRY_ADJUSTED);
	CHECK(st.st_mtim.tv_sec == INT64_MAX && st.st_mtim.tv_nsec == 1);
	CHECK(st.st_ctim.tv_sec == INT64_MIN && st.st_ctim.tv_nsec == 5);
	CHECK(judge("{\"mode\":33188,\"ino\":5,\"mtime\":\"yesterday\",\"atime\":[1]}", &st,
		    NULL) == ENTRY_ADJUSTED);
	CHECK(st.st_mtim.tv_sec == 0 && st.st_atim.tv_sec == 0);
	/* adjusted and dropped: dropped wins */
	CHECK(judge("{\"mode\":33188,\"ino\":5,\"nlink\":-1,\"size\":-1}", &st, NULL) ==
	      ENTRY_DROPPED);
	/* directories, devices, FIFOs and sockets are entries too */
	CHECK(judge("{\"mode\":16877,\"ino\":5}", &st, NULL) == ENTRY_GOOD && S_ISDIR(st.st_mode));
	CHECK(judge("{\"mode\":8630,\"ino\":5}", &st, NULL) == ENTRY_GOOD && S_ISCHR(st.st_mode));
	CHECK(judge("{\"mode\":4516,\"ino\":5}", &st, NULL) == ENTRY_GOOD && S_ISFIFO(st.st_mode));
	CHECK(judge("{\"mode\":49645,\"ino\":5}", &st, NULL) == ENTRY_GOOD && S_ISSOCK(st.st_mode));
}

static void add(struct entry_list *l, const char *name, off_t size, bool good)
{
	struct stat st = { .st_mode = S_IFREG | 0644, .st_ino = 9, .st_size = size };
	struct entry_why why = { .fate = good ? ENTRY_GOOD : ENTRY_DROPPED, .text = "bad" };
	entry_list_add(l, name, &st, NULL, &why);
}

static void test_listing(void)
{
	struct entry_list l;
	entry_list_init(&l, "/workspace/d");
	add(&l, "b", 1, true);
	add(&l, "a/b", 2, true);
	add(&l, "a", 3, true);
	add(&l, "b", 4, true);
	add(&l, "", 5, true);
	add(&l, NULL, 6, true);
	add(&l, "c", 7, false);
	add(&l, "a", 8, true);
	add(&l, "b", 9, true);
	add(&l, "d", 10, true);
	entry_list_drop(&l, "the last 3 bytes", "not a whole record");
	struct sbx_dirent *e;
	size_t n;
	entry_list_finish(&l, &e, &n);
	CHECK(n == 3);
	CHECK(n == 3 && strcmp(e[0].name, "b") == 0 && e[0].st.st_size == 1);
	CHECK(n == 3 && strcmp(e[1].name, "a") == 0 && e[1].st.st_size == 3);
	CHECK(n == 3 && strcmp(e[2].name, "d") == 0 && e[2].st.st_size == 10);
	sbx_dirents_free(e, n);

	/* many names, every one twice: sorting, not a quadratic scan */
	entry_list_init(&l, "/workspace/big");
	char name[32];
	for (int round = 0; round < 2; round++)
		for (int i = 0; i < 50000; i++) {
			snprintf(name, sizeof name, "f%d", i);
			add(&l, name, round, true);
		}
	entry_list_finish(&l, &e, &n);
	CHECK(n == 50000);
	bool first = true;
	for (size_t i = 0; i < n; i++)
		first = first && e[i].st.st_size == 0;
	CHECK(first);
	sbx_dirents_free(e, n);

	entry_list_init(&l, "/workspace/empty");
	entry_list_finish(&l, &e, &n);
	CHECK(n == 0);
	sbx_dirents_free(e, n);
}

#define REC(ino, perm, type, size, a, m, c, name, target) \
	ino "\0" perm "\0" type "\0" "1\0" "0\0" "0\0" size "\0" "8\0" a "\0" m "\0" c "\0" \
	name "\0" target "\0"

static void test_find_stat(void)
{
	static const char rec[] = REC("1234", "4755", "f", "5", "1700000000.5000000000",
				      "-0.5000000000", "-1.2500000000", "x", "");
	struct stat st;
	struct entry_why why;
	char *target = (char *)"unset";
	CHECK(find_parse_stat(rec, sizeof rec - 1, &st, &target, &why) == 0);
	CHECK(why.fate == ENTRY_GOOD && target == NULL);
	CHECK(st.st_ino == 1234 && st.st_mode == (S_IFREG | 04755) && st.st_size == 5);
	CHECK(st.st_atim.tv_sec == 1700000000 && st.st_atim.tv_nsec == 500000000);
	CHECK(st.st_mtim.tv_sec == -1 && st.st_mtim.tv_nsec == 500000000);
	CHECK(st.st_ctim.tv_sec == -2 && st.st_ctim.tv_nsec == 750000000);

	static const char link[] = REC("9", "777", "l", "3", "1.0", "1.0", "1.0", "l", "a/b");
	CHECK(find_parse_stat(link, sizeof link - 1, &st, &target, &why) == 0);
	CHECK(S_ISLNK(st.st_mode) && target && strcmp(target, "a/b") == 0);
	free(target);

	CHECK(find_parse_stat(rec, sizeof rec - 2, &st, &target, &why) == -EPROTO);
	CHECK(find_parse_stat("", 0, &st, &target, &why) == -EPROTO);
	static const char bad[][96] = {
		REC("0", "644", "f", "5", "1.0", "1.0", "1.0", "x", ""),
		REC("1", "644", "x", "5", "1.0", "1.0", "1.0", "x", ""),
		REC("1", "17777", "f", "5", "1.0", "1.0", "1.0", "x", ""),
		REC("1", "644", "ff", "5", "1.0", "1.0", "1.0", "x", ""),
		REC("1", "644", "f", "-5", "1.0", "1.0", "1.0", "x", ""),
		REC("1", "644", "f", "99999999999999999999", "1.0", "1.0", "1.0", "x", ""),
		REC("1", "644", "l", "5", "1.0", "1.0", "1.0", "x", ""),
	};
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
		CHECK(find_parse_stat(bad[i], sizeof bad[i], &st, NULL, &why) == -EPROTO);
	static const char adjusted[] = REC("1", "644", "f", "5", "1.", "x", "99999999999999999999.25",
					   "x", "");
	CHECK(find_parse_stat(adjusted, sizeof adjusted - 1, &st, NULL, &why) == 0);
	CHECK(why.fate == ENTRY_ADJUSTED);
	CHECK(st.st_atim.tv_sec == 0 && st.st_mtim.tv_sec == 0);
	CHECK(st.st_ctim.tv_sec == INT64_MAX && st.st_ctim.tv_nsec == 250000000);
}

static void test_find_listing(void)
{
	static const char out[] =
		REC("1", "644", "f", "1", "1.0", "1.0", "1.0", "good", "")
		REC("2", "644", "f", "2", "1.0", "1.0", "1.0", "a/b", "")
		REC("3", "644", "f", "3", "1.0", "1.0", "1.0", "good", "")
		REC("4", "644", "x", "4", "1.0", "1.0", "1.0", "weird", "")
		REC("5", "755", "d", "5", "1.0", "1.0", "1.0", "dir", "")
		REC("6", "777", "l", "6", "1.0", "1.0", "1.0", "..", "x")
		"7\0" "644\0f\0";
	struct sbx_dirent *e;
	size_t n;
	find_parse_listing("/workspace/d", out, sizeof out - 1, &e, &n);
	CHECK(n == 2);
	CHECK(n == 2 && strcmp(e[0].name, "good") == 0 && e[0].st.st_size == 1);
	CHECK(n == 2 && strcmp(e[1].name, "dir") == 0 && S_ISDIR(e[1].st.st_mode));
	sbx_dirents_free(e, n);

	/* a name that held a NUL shifts every field after it: those records are dropped, the
	 * ones before it kept */
	static const char shifted[] =
		REC("1", "644", "f", "1", "1.0", "1.0", "1.0", "before", "")
		REC("2", "644", "f", "2", "1.0", "1.0", "1.0", "na\0me", "")
		REC("3", "644", "f", "3", "1.0", "1.0", "1.0", "after", "");
	find_parse_listing("/workspace/d", shifted, sizeof shifted - 1, &e, &n);
	CHECK(n >= 1 && strcmp(e[0].name, "before") == 0);
	for (size_t i = 0; i < n; i++)
		CHECK(entry_name_problem(e[i].name) == NULL);
	sbx_dirents_free(e, n);

	find_parse_listing("/workspace/d", "", 0, &e, &n);
	CHECK(n == 0);
	sbx_dirents_free(e, n);
}

/* The subtree listing: which directories count as complete. */
static const struct find_tree_dir *tree_dir(const struct find_tree_dir *v, size_t n,
					    const char *rel)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(v[i].rel, rel) == 0)
			return &v[i];
	return NULL;
}

#define END REC("0", "", "E", "", "", "", "", "", "")

static void test_find_tree(void)
{
	/* find -P prints a directory before what lies in it; depth 2 below "a" is the limit */
	static const char whole[] =
		REC("1", "755", "d", "4096", "1.0", "1.0", "1.0", "a", "")
		REC("2", "644", "f", "3", "1.0", "1.0", "1.0", "top.txt", "")
		REC("3", "700", "U", "4096", "1.0", "1.0", "1.0", "locked", "")
		REC("4", "755", "d", "4096", "1.0", "1.0", "1.0", "a/b", "")
		REC("5", "644", "f", "1", "1.0", "1.0", "1.0", "a/f", "")
		REC("6", "777", "l", "3", "1.0", "1.0", "1.0", "a/l", "../x")
		END;
	struct find_tree_dir *v;
	size_t n;
	find_parse_tree("/workspace/t", whole, sizeof whole - 1, 2, &v, &n);
	const struct find_tree_dir *top = tree_dir(v, n, ""), *a = tree_dir(v, n, "a"),
				   *b = tree_dir(v, n, "a/b"), *locked = tree_dir(v, n, "locked");
	CHECK(n && v[0].rel[0] == 0); /* the top first */
	CHECK(top && top->complete && top->n == 3);
	CHECK(a && a->complete && a->n == 3);
	/* at the depth limit: listed in its directory, its own content not */
	CHECK(!b || !b->complete);
	/* unreadable: a directory in the listing, its content not known */
	CHECK(!locked || !locked->complete);
	bool found = false;
	for (size_t i = 0; top && i < top->n; i++)
		if (strcmp(top->ents[i].name, "locked") == 0)
			found = S_ISDIR(top->ents[i].st.st_mode);
	CHECK(found);
	for (size_t i = 0; a && i < a->n; i++)
		if (strcmp(a->ents[i].name, "l") == 0)
			CHECK(a->ents[i].target && strcmp(a->ents[i].target, "../x") == 0);
	find_tree_free(v, n);

	/* cut off (no end mark): only the top is complete; records with bad paths dropped */
	static const char cut[] =
		REC("1", "755", "d", "4096", "1.0", "1.0", "1.0", "a", "")
		REC("2", "644", "f", "3", "1.0", "1.0", "1.0", "a/../x", "")
		REC("3", "644", "f", "3", "1.0", "1.0", "1.0", "a//y", "")
		REC("4", "644", "f", "3", "1.0", "1.0", "1.0", "a/z", "")
		"7\0" "64";
	find_parse_tree("/workspace/t", cut, sizeof cut - 1, 8, &v, &n);
	top = tree_dir(v, n, "");
	a = tree_dir(v, n, "a");
	CHECK(top && top->complete && top->n == 1);
	CHECK(a && !a->complete && a->n == 1 && strcmp(a->ents[0].name, "z") == 0);
	CHECK(!tree_dir(v, n, "a/.."));
	find_tree_free(v, n);

	/* a path below no directory printed before it (a name with '/' among the top's own
	 * entries, from a hostile server): no entry of anything; what dropped entries is not
	 * exact (a lookup of a dropped name must ask), what did not is */
	static const char stray[] =
		REC("1", "644", "f", "3", "1.0", "1.0", "1.0", "x/y", "")
		REC("2", "755", "d", "4096", "1.0", "1.0", "1.0", "a", "")
		REC("3", "644", "f", "3", "1.0", "1.0", "1.0", "a/z", "")
		REC("4", "644", "f", "3", "1.0", "1.0", "1.0", "q/r/s", "")
		END;
	find_parse_tree("/workspace/t", stray, sizeof stray - 1, 8, &v, &n);
	top = tree_dir(v, n, "");
	a = tree_dir(v, n, "a");
	CHECK(top && top->complete && !top->exact && top->n == 1);
	CHECK(a && a->complete && a->exact && a->n == 1);
	CHECK(!tree_dir(v, n, "x") && !tree_dir(v, n, "q/r"));
	find_tree_free(v, n);

	find_parse_tree("/workspace/t", "", 0, 8, &v, &n);
	CHECK(n == 1 && v[0].complete && v[0].exact && v[0].n == 0);
	find_tree_free(v, n);
}

int main(void)
{
	log_init("test_entry_check", LOG_LVL_WARN, false);
	test_names();
	test_numbers_from_text();
	test_numbers_from_json();
	test_stat_roundtrip();
	test_stat_dropped();
	test_stat_adjusted();
	test_listing();
	test_find_stat();
	test_find_listing();
	test_find_tree();
	return UNIT_DONE();
}
