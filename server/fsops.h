/* The filesystem operations that the /api/x/ file routes (fsx.c) and the journal (journal.c)
 * share: on an entry already resolved beneath the workspace (its parent's descriptor and its
 * name, server/workspace.h), never following the entry itself when it is a symlink. Every
 * function returns 0 or a negative errno. */
#ifndef SBXD_FSOPS_H
#define SBXD_FSOPS_H
#include <cjson/cJSON.h>
#include <sys/types.h>

/* The stat object of docs/protocol.md for the entry (lstat), with "target" for a symlink;
 * NULL and *err on failure. */
cJSON *fsop_stat_json(int dirfd, const char *name, int *err);
/* The same for an open file. */
cJSON *fsop_fstat_json(int fd, int *err);
/* Gives a newly created entry (fd, open) exactly the permission bits want: the server's umask
 * must not apply, the client already applied its own. A directory keeps the setgid bit it
 * inherited from its parent. */
int fsop_fix_mode(int fd, mode_t want);
/* chmod of the entry itself (-EOPNOTSUPP for a symlink, which has no mode to set). */
int fsop_chmod(int dirfd, const char *name, mode_t mode);
/* truncate of the entry, a regular file (never through a symlink, never blocking on a FIFO). */
int fsop_truncate(int dirfd, const char *name, off_t size);
#endif
