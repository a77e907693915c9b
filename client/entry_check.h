/* What a server says about directory entries, checked before the filesystem believes it.
 *
 * Neither the server nor the code in its sandbox is trusted: a plain container lets sandboxed
 * code name its files anything Linux allows, and a hostile or buggy server can send anything
 * at all. Trusting it costs more than one entry: the kernel fails a whole readdir with EIO for
 * one name with '/' or an empty one, and a whole readdirplus for one entry of an unknown file
 * type or a negative size; glibc's readdir silently skips an entry of inode 0; a name longer
 * than NAME_MAX overflows programs that size their buffers by it; a number cast to a type it
 * does not fit is undefined behaviour. So every name, attribute and symlink target a server
 * sends passes through here, in both backends: an entry that cannot be shown is dropped, an
 * attribute that is only out of range is brought into it, and a listing says in one warning
 * what it dropped or changed, never one line per entry. The rules, field by field, are in
 * docs/protocol.md ("What sbxfs accepts from a server").
 *
 * A parser first reads each number into a struct wire_int (any integer, however large, or
 * "not an integer"), without converting it; entry_stat_settle() then judges the whole stat. */
#ifndef SBX_ENTRY_CHECK_H
#define SBX_ENTRY_CHECK_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include "client/sandbox.h"
#include "common/strbuf.h"

struct cJSON;

/* The longest symlink target Linux stores (PATH_MAX - 1 bytes). */
#define ENTRY_TARGET_MAX 4095

/* Why name cannot be the name of a directory entry ("empty", "a '/' in it", ...), or NULL when
 * it can. Control characters and bytes that are not UTF-8 are legal in names and kept. */
const char *entry_name_problem(const char *name);

/* One number as a server sent it. */
struct wire_int {
	bool present;  /* the field was sent */
	bool integer;  /* as an integer; else text, a fraction, NaN: its value means nothing */
	bool neg;
	bool huge;     /* 2^64 or more in magnitude: mag is UINT64_MAX */
	uint64_t mag;  /* the magnitude */
};
/* A JSON number (NULL: absent; a number with a fraction or another type: not an integer). */
struct wire_int wire_int_from_json(const struct cJSON *v);
/* len bytes of decimal digits with an optional '-' (base 10) or of octal digits (base 8);
 * anything else, the empty string included, is not an integer. */
struct wire_int wire_int_from_text(const char *s, size_t len, int base);

/* A stat as a server sent it: st_mode (type and permission bits), times as seconds and
 * nanoseconds (atime, mtime, ctime). */
struct wire_stat {
	struct wire_int ino, mode, nlink, uid, gid, size, blocks;
	struct wire_int sec[3], nsec[3];
};

/* What became of one entry, and why. */
enum entry_fate { ENTRY_GOOD, ENTRY_ADJUSTED, ENTRY_DROPPED };
struct entry_why {
	enum entry_fate fate;
	char text[200];  /* "size -1 is negative", "nlink 0 shown as 1; ..." */
};
/* Records a reason: a drop replaces adjustments (the entry is gone, that is what matters),
 * adjustments accumulate while there is room. */
void entry_note(struct entry_why *why, enum entry_fate fate, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* w as a struct stat: an entry without a known file type, without an inode number or without
 * a size of 0..2^63-1 is dropped; other fields out of range are brought into it. why is
 * reset first. */
void entry_stat_settle(const struct wire_stat *w, struct stat *st, struct entry_why *why);
/* The symlink target a server sent for an entry of mode `mode`: for a symlink a copy (NULL
 * when none was sent), dropping the entry for an empty target or one longer than
 * ENTRY_TARGET_MAX; for anything else NULL (ignored). */
char *entry_target(const char *target, mode_t mode, struct entry_why *why);
/* The stat object of the extensions (docs/protocol.md) into st, settled, and its "target"
 * into *target (target may be NULL). An object without "mode" is dropped. */
void entry_stat_from_json(const struct cJSON *o, struct stat *st, char **target,
			  struct entry_why *why);

/* Warns about a single stat (not a listing's) that was dropped or adjusted, at most one line
 * per 10 s for all of them together, so a program polling a bad entry cannot flood the log. */
void entry_warn_stat(const char *path, const struct entry_why *why);

/* A directory listing, built from a server's answer one entry at a time. */
struct entry_list {
	const char *dir;
	struct sbx_dirent *v;
	size_t n, cap;
	size_t sent, dropped, adjusted;
	/* the first reasons, for the warning, and how many did not fit */
	struct strbuf notes_dropped, notes_adjusted;
	size_t unnoted_dropped, unnoted_adjusted;
};
void entry_list_init(struct entry_list *l, const char *dir);
/* One entry as the server sent it (name NULL when it had none), with the stat and the target
 * (taken over) that came out of entry_stat_settle/entry_target and their verdict. */
void entry_list_add(struct entry_list *l, const char *name, const struct stat *st,
		    char *target, const struct entry_why *why);
/* Something that could not even be read as an entry: what it was, and why. */
void entry_list_drop(struct entry_list *l, const char *what, const char *why);
/* One the server sent that is dropped before it is judged as an entry (a path of a subtree
 * listing that names no entry): named escaped, as entries are. */
void entry_list_drop_name(struct entry_list *l, const char *name, const char *why);
/* Drops the later entries of a name already listed, warns once when anything was dropped or
 * adjusted, and hands the entries over (sbx_dirents_free frees them); l is empty afterwards. */
void entry_list_finish(struct entry_list *l, struct sbx_dirent **ents, size_t *n);
#endif
