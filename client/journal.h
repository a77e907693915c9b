/* The write-back journal (client/journal.c): what is written through the mount returns at
 * local-disk speed and goes to the sandbox in the background, in order, many changes per
 * request. docs/writeback.md says what it guarantees. */
#ifndef SBX_JOURNAL_H
#define SBX_JOURNAL_H
#include <stdbool.h>
#include <stdint.h>
#include "client/sandbox.h"

struct sbx_journal_opts {
	/* Where journals live (one directory per sandbox below it); NULL: the default,
	 * sbx_journal_default_dir(). */
	const char *cache_dir;
};

/* $XDG_CACHE_HOME/sbxfs, else ~/.cache/sbxfs; /var/cache/sbxfs for root. Caller frees. */
char *sbx_journal_default_dir(void);

/* Checks that dir can hold journals (creates it, 0700): for a clear error before the mount
 * starts. 0 or a negative errno with sbx_last_error() set. */
int sbx_journal_check_dir(const char *dir);

/* Puts a journal in front of s's backend: from now on the workspace's changes go through it.
 * Replays what an earlier mount of the same sandbox left in the journal (sbxfs killed, host
 * rebooted) before returning. Call after sbx_open (and sbx_force_fallback), before s is
 * shared. Fails with -EBUSY when another mount uses the same journal. */
int sbx_journal_start(struct sbx *s, const struct sbx_journal_opts *o);
/* Whether s's backend takes the journal's batches (sbxd's POST /api/x/journal); without
 * them (a plain container) the journal uploads one call at a time. */
bool sbx_journal_batches(const struct sbx *s);

/* Waits until everything written through the mount before the call is acknowledged by the
 * sandbox, for at most timeout_ms (<= 0: the client's deadline). 0, -ETIMEDOUT (uploads go on), or the errno of a change
 * that failed for good since the previous sync (each failure is reported once), with the
 * reason in sbx_last_error(). Without a journal: 0 at once. */
int sbx_journal_sync(struct sbx *s, long timeout_ms);

/* The filesystem has taken (taken) the sandbox's attributes of path that
 * sbx_watch_ops.on_settled announced with handover: the journal stops answering for path
 * (until the mount changes it again) and returns the blob of a clean copy of its content (0:
 * none). Until then the journal keeps answering, so a rename or stat right after an upload
 * asks nothing of the sandbox. Not taken (the file is open there): announced again later. An
 * announcement never answered lapses by itself after a few seconds. */
uint64_t sbx_journal_handover(struct sbx *s, const char *path, uint64_t handover, bool taken);

/* Opens the clean copy blob of the file at path for reading: the content the mount wrote
 * there, kept after the sandbox acknowledged it (sbx_watch_ops.on_settled names it), with
 * attributes st. The caller knows no change event touched the file since. -ENOENT when the
 * copy is gone or the journal has changes of path pending: then open it as usual. */
int sbx_journal_open_clean(struct sbx *s, const char *path, uint64_t blob, const struct stat *st,
			   struct sbx_file **out);

/* Makes the file at path, whose clean copy blob the caller knows to be the sandbox's content
 * with attributes st (no change event touched it), a file of the journal again, from a copy
 * of that copy: a rename, link, attribute change or write of it is then journaled like one of
 * a file the mount made, without asking the sandbox. 0, or -ENOENT when there is nothing to
 * do (the copy is gone, the journal answers for path already, a hard link, a large file). */
int sbx_journal_adopt_clean(struct sbx *s, const char *path, uint64_t blob, const struct stat *st);

/* Fetches the small files of directory dir whole, with its listing, in one request, and
 * keeps their contents as clean copies: fn gets each one's name, attributes (as the listing
 * gave them) and blob (sbx_journal_open_clean). Files the journal has changes of pending are
 * left out. -ENOSYS (no journal, or a server that cannot), -EAGAIN (dir itself has changes
 * pending), or the request's error. */
typedef void (*sbx_prefetch_fn)(void *arg, const char *name, const struct stat *st,
				uint64_t blob);
int sbx_journal_prefetch(struct sbx *s, const char *dir, size_t each, size_t budget,
			 sbx_prefetch_fn fn, void *arg);

/* rmdir of a directory the caller knows to be empty (its listing, kept current by the change
 * events and the mount's own changes, has no entry): journaled without asking the sandbox.
 * Should a sandbox process have made something in it meanwhile, the rmdir fails there, and
 * is reported as a refused change. -ENOSYS without a journal. */
int sbx_journal_rmdir_empty(struct sbx *s, const char *path);

/* Whether the journal answers for path (a change of it is pending): then sbx_lstat of it is
 * answered without asking the sandbox. */
bool sbx_journal_holds(struct sbx *s, const char *path);

/* One line about the journal for status files: pending changes, bytes, failures. */
int sbx_journal_status(struct sbx *s, char *buf, size_t len);
#endif
