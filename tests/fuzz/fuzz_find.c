/* libFuzzer target: the fallback backend's parser of `find -printf` output
 * (client/fallback_parse.c), fed arbitrary bytes as a directory listing, as the listing of a
 * subtree and as the stat of one path. Whatever comes in, what comes out must be what the filesystem may trust
 * (client/entry_check.h): names that are valid and unique; a known file type and no other mode
 * bits; an inode number; a size and a block count of 0..2^63-1; at most 2^32-1 links; owners
 * other than (uid_t)-1; nanoseconds below 10^9; a symlink target only for a symlink, neither
 * empty nor longer than ENTRY_TARGET_MAX. Anything else aborts. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "client/fallback_parse.h"
#include "common/log.h"

static void check_time(const struct timespec *ts)
{
	if (ts->tv_nsec < 0 || ts->tv_nsec >= 1000000000L)
		abort();
}

static void check_stat(const struct stat *st, const char *target)
{
	switch (st->st_mode & S_IFMT) {
	case S_IFREG: case S_IFDIR: case S_IFLNK: case S_IFCHR: case S_IFBLK: case S_IFIFO:
	case S_IFSOCK:
		break;
	default:
		abort();
	}
	if ((st->st_mode & ~(mode_t)(S_IFMT | 07777)) || st->st_ino == 0 || st->st_size < 0 ||
	    st->st_blocks < 0 || st->st_nlink > UINT32_MAX ||
	    st->st_uid == (uid_t)-1 || st->st_gid == (gid_t)-1)
		abort();
	check_time(&st->st_atim);
	check_time(&st->st_mtim);
	check_time(&st->st_ctim);
	if (target && (!S_ISLNK(st->st_mode) || !*target || strlen(target) > ENTRY_TARGET_MAX))
		abort();
}

static int by_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int quiet;
	if (!quiet++)
		log_init("fuzz_find", LOG_LVL_ERROR, false); /* no warning per input */
	const char *out = (const char *)data;

	struct sbx_dirent *e;
	size_t n;
	find_parse_listing("/workspace/fuzz", out, size, &e, &n);
	char **names = malloc((n ? n : 1) * sizeof *names);
	if (!names)
		abort();
	for (size_t i = 0; i < n; i++) {
		if (entry_name_problem(e[i].name))
			abort();
		check_stat(&e[i].st, e[i].target);
		names[i] = e[i].name;
	}
	qsort(names, n, sizeof *names, by_name);
	for (size_t i = 1; i < n; i++)
		if (strcmp(names[i - 1], names[i]) == 0)
			abort();
	free(names);
	sbx_dirents_free(e, n);

	/* the same bytes as a subtree: every directory's entries as above, the top first and
	 * complete, no path with an empty, "." or ".." part */
	struct find_tree_dir *v;
	size_t nv;
	find_parse_tree("/workspace/fuzz", out, size, 3, &v, &nv);
	if (!nv || v[0].rel[0] || !v[0].complete)
		abort();
	for (size_t i = 0; i < nv; i++) {
		const char *r = v[i].rel;
		if (i && (!*r || *r == '/' || r[strlen(r) - 1] == '/' || strstr(r, "//") ||
			  strcmp(r, ".") == 0 || strcmp(r, "..") == 0 || strncmp(r, "./", 2) == 0 ||
			  strncmp(r, "../", 3) == 0 || strstr(r, "/./") || strstr(r, "/../")))
			abort();
		for (size_t j = 0; j < v[i].n; j++) {
			if (entry_name_problem(v[i].ents[j].name))
				abort();
			check_stat(&v[i].ents[j].st, v[i].ents[j].target);
		}
	}
	find_tree_free(v, nv);

	struct stat st;
	struct entry_why why;
	char *target = NULL;
	if (find_parse_stat(out, size, &st, &target, &why) == 0)
		check_stat(&st, target);
	else if (target || why.fate != ENTRY_DROPPED)
		abort();
	free(target);
	return 0;
}
