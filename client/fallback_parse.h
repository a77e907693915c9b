/* The attributes the fallback backend asks `find -printf` for, and the parser of what comes
 * back (client/sandbox_fallback.c runs the commands).
 *
 * The output is the container's, so it is as untrusted as any server's answer: sandboxed code
 * names its files, and whatever answers at the URL may not be a container at all. Each record
 * is STAT_FIELDS NUL-terminated fields; a NUL is the only byte no field can hold, so a record
 * with fields that do not parse cannot be told from a name that held a NUL, and a listing
 * goes on with the next record, every record judged by client/entry_check.c. Split from the
 * backend so that the fuzzer (tests/fuzz/fuzz_find.c) reaches it without a server. */
#ifndef SBX_FALLBACK_PARSE_H
#define SBX_FALLBACK_PARSE_H
#include <stddef.h>
#include <sys/stat.h>
#include "client/entry_check.h"
#include "client/sandbox.h"

#define FIND_FIELDS 13
/* inode, permission bits (octal, with setuid/setgid/sticky), type, links, uid, gid, size,
 * 512-byte blocks, atime, mtime, ctime (seconds.fraction), name, symlink target; in the
 * single quotes of a shell word */
#define FIND_STAT_FMT "'%i\\0%m\\0%y\\0%n\\0%U\\0%G\\0%s\\0%b\\0%A@\\0%T@\\0%C@\\0%f\\0%l\\0'"

/* The same fields with the path below the starting point (%P) in place of the name, for
 * listing a subtree; FIND_UNLISTED_FMT prints a directory whose content find cannot read with
 * the type 'U', and FIND_TREE_END is what the command prints after the last record when
 * nothing was cut off. */
#define FIND_TREE_FMT "'%i\\0%m\\0%y\\0%n\\0%U\\0%G\\0%s\\0%b\\0%A@\\0%T@\\0%C@\\0%P\\0%l\\0'"
#define FIND_UNLISTED_FMT "'%i\\0%m\\0U\\0%n\\0%U\\0%G\\0%s\\0%b\\0%A@\\0%T@\\0%C@\\0%P\\0%l\\0'"
#define FIND_TREE_END "'0\\0\\0E\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0\\0'"

/* The first record of `find P -maxdepth 0 -printf FIND_STAT_FMT` (out holds len bytes) into st
 * and, for a symlink, a malloc'd target into *target (target may be NULL). 0, or -EPROTO with
 * the reason in why (and in sbx_last_error()) when there is no whole record or the entry is
 * dropped; why also says what was adjusted. */
int find_parse_stat(const char *out, size_t len, struct stat *st, char **target,
		    struct entry_why *why);

/* The records of `find DIR/ -mindepth 1 -maxdepth 1 -printf FIND_STAT_FMT` as the entries of
 * dir: records that are not whole or that entry_check.c drops are left out, with one warning
 * for the listing. Never fails; false when something was dropped (the listing cannot say
 * then that a name is absent). */
bool find_parse_listing(const char *dir, const char *out, size_t len, struct sbx_dirent **ents,
			size_t *n);

/* One directory of a subtree listing: rel is its path below the top ("" for the top itself,
 * "a/b"), complete whether the output holds all of its entries. */
struct find_tree_dir {
	char *rel;
	struct sbx_dirent *ents;
	size_t n;
	bool complete;
	bool exact;     /* nothing was dropped from it */
};
/* The records of the subtree command for directory top (absolute): its own entries (depth 1),
 * then those below down to max_depth, and FIND_TREE_END unless that part was cut off. The top
 * is complete (the command makes sure its own entries are all there); a directory below it
 * when it was listed (above max_depth, readable) and the end was seen: find walks depth
 * first, so in output cut off a directory it had not finished and one it had not begun look
 * the same. Records whose path has an empty, "." or ".." component, or that lie below no
 * directory listed before them, are dropped (in the top's warning), and every
 * entry is judged as in a listing (one warning per directory). Never fails. */
void find_parse_tree(const char *top, const char *out, size_t len, int max_depth,
		     struct find_tree_dir **dirs, size_t *ndirs);
void find_tree_free(struct find_tree_dir *dirs, size_t ndirs);
#endif
