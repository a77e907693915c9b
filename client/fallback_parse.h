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

/* The first record of `find P -maxdepth 0 -printf FIND_STAT_FMT` (out holds len bytes) into st
 * and, for a symlink, a malloc'd target into *target (target may be NULL). 0, or -EPROTO with
 * the reason in why (and in sbx_last_error()) when there is no whole record or the entry is
 * dropped; why also says what was adjusted. */
int find_parse_stat(const char *out, size_t len, struct stat *st, char **target,
		    struct entry_why *why);

/* The records of `find DIR/ -mindepth 1 -maxdepth 1 -printf FIND_STAT_FMT` as the entries of
 * dir: records that are not whole or that entry_check.c drops are left out, with one warning
 * for the listing. Never fails. */
void find_parse_listing(const char *dir, const char *out, size_t len, struct sbx_dirent **ents,
			size_t *n);
#endif
