/* What the fallback backend's files share: client/sandbox_fallback.c (the operations and open
 * files), client/fallback_settle.c (attribute changes applied in batches, and what this client
 * made), client/fallback_cache.c (what it knows of the sandbox's entries). Not for use outside
 * them. */
#ifndef SBX_FALLBACK_H
#define SBX_FALLBACK_H
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include "client/sandbox_impl.h"
#include "common/strbuf.h"

struct fb_settle;
struct fb_cache;

/* Who the sandbox's helper commands (and file routes) act as, and the mode /api/write gives
 * a file it creates: 0666 less the server's umask, which its commands inherit. */
struct fb_ident {
	uid_t uid;
	gid_t gid;
	mode_t file_mode;
};

struct fb_state {
	pthread_mutex_t lock;   /* the identity */
	bool ident_known;
	bool ident_failed;      /* the probe's answer made no sense: never fast-create */
	struct fb_ident ident;
	struct fb_settle *settle;
	struct fb_cache *cache;
};

/* Runs a helper command in the sandbox: sessionless, pipefail, C locale, preceded by the queued
 * attribute changes (fallback_settle.c), within the deadline for moving about `bytes` bytes.
 * On success *out (may be NULL) holds stdout, base64-decoded when decode is set; a failure
 * maps the command's stderr to an errno, with the reason in sbx_last_error(). */
int fb_run(struct sbx *s, const char *what, const char *cmd, size_t bytes, bool decode,
	   char **out, size_t *out_len);

/* fb_run of "<pre> && <find of path>" (only the find without pre), the one record parsed into
 * st (and target, for a symlink); follow: find -H. */
int fb_run_then_stat(struct sbx *s, const char *what, const char *pre, const char *path,
		     bool follow, struct stat *st, char **target);
/* Whether a command that failed with err after a lost answer had been carried out by its
 * first copy: err is the error that copy's success makes a repeat fail with, and path now has
 * the type `type` (S_IFDIR...; 0: absent). The entry's attributes go to st (may be NULL). */
bool fb_already_done(struct sbx *s, int err, int expected, const char *path, mode_t type,
		     struct stat *st);

/* "op path" in a buffer that lives as long as the enclosing block */
char *fb_what_of(char *buf, size_t size, const char *op, const char *path);
#define FB_WHAT(op, path) fb_what_of((char[64 + 4096]){ 0 }, 64 + 4096, op, path)

/* The identity, probed once (`umask; id -u; id -g`); false when it cannot be known. */
bool fb_identity(struct sbx *s, struct fb_ident *id);

/* `touch -c -h FLAG [-d @S.N] ` for one time (FLAG -a, -m or ""; UTIME_NOW: no -d), the
 * paths to follow: shared by a setattr's own command and the batches of times. */
void fb_append_touch_head(struct strbuf *sb, const char *flag, const struct timespec *ts);

/* st after setting `valid` of want (times UTIME_NOW: now; ctime now when anything changes). */
void fb_apply_attrs(struct stat *st, unsigned valid, const struct stat *want);
/* Whether changing an entry's mode from `from` to `to` may wait for the next batch: unless
 * it takes from group or others (what was to be hidden would stay open meanwhile), gives the
 * owner more (a script made executable is run at once) or touches set-id or sticky bits. What
 * is left (group and others get more, the owner less) only looks old for a moment. */
bool fb_mode_may_wait(mode_t from, mode_t to);
/* Whether the chown in `valid` (SBX_SET_UID/GID) of want leaves cur as it is. */
bool fb_owner_unchanged(unsigned valid, const struct stat *want, const struct stat *cur);

/* ---- fallback_files.c: open files, transfers ---- */

int fb_file_open(struct sbx *s, const char *path, int flags, mode_t mode,
		 struct sbx_file **out, struct stat *st);
ssize_t fb_file_pread(struct sbx_file *f, void *buf, size_t len, off_t off);
ssize_t fb_file_pwrite(struct sbx_file *f, const void *buf, size_t len, off_t off);
int fb_file_flush(struct sbx_file *f);
int fb_file_fsync(struct sbx_file *f, bool datasync);
int fb_file_fstat(struct sbx_file *f, struct stat *st);
int fb_file_setattr(struct sbx_file *f, unsigned valid, const struct stat *want,
		    struct stat *st);
int fb_file_cached_stat(struct sbx_file *f, struct stat *st);
int fb_file_ftruncate(struct sbx_file *f, off_t size);
int fb_file_pin(struct sbx_file *f);
int fb_file_set_path(struct sbx_file *f, const char *path);
int fb_file_orphan(struct sbx_file *f);
int fb_file_close(struct sbx_file *f);
int fb_read_all(struct sbx *s, const char *path, char **data, size_t *len);
ssize_t fb_pread_path(struct sbx *s, const char *path, void *buf, size_t len, off_t off);

/* Files this client created that the sandbox does not have yet (SBX_O_NEW) are made there
 * (empty, with their mode) when something else needs them: the one at path (FB_EXACT), the
 * ones in directory path (FB_CHILDREN), at or below path (FB_BELOW). Errors are logged: the
 * operation that needed them then fails by itself. */
enum fb_scope { FB_EXACT, FB_CHILDREN, FB_BELOW };
void fb_files_materialize(struct sbx *s, const char *path, enum fb_scope scope);

/* unlink of a file this client created that the sandbox never got (SBX_O_NEW): its copy
 * becomes private, and nothing need be sent. False when path is no such file. */
bool fb_files_forget_new(struct sbx *s, const char *path);

/* unlink and rename hold the open copies at or below from (and to) across the command, made in
 * the sandbox, so no upload to an old name can land after it; release tells them what
 * happened (done: the name moved to `to`, or went). */
struct fb_held;
int fb_files_hold(struct sbx *s, const char *from, const char *to, struct fb_held **h);
void fb_files_release(struct sbx *s, struct fb_held *h, bool done, const char *from,
		      const char *to);

/* ---- fallback_settle.c ---- */

struct fb_settle *fb_settle_new(void);
/* Stops the settler thread and applies what is still queued (as far as the sandbox answers);
 * then frees the queue and the registry. */
void fb_settle_free(struct sbx *s);

/* Queues `valid` (SBX_SET_MODE, SBX_SET_ATIME, SBX_SET_MTIME; times may be UTIME_NOW) of
 * want for path, merged with what is queued for it already. The caller has decided that the
 * change cannot fail (fb_made_has). May run the queue first when it is full. */
void fb_settle_queue(struct sbx *s, const char *path, unsigned valid, const struct stat *want);
/* Applies the queue now, by a command of its own, if it holds anything (for path, when path
 * is not NULL). 0, or the command's error. */
int fb_settle_now(struct sbx *s, const char *path);
/* Before path's data is sent again: waits for a command that carries its queued change to be
 * answered, then drops the queued mtime (the upload sets a newer one). */
void fb_settle_before_write(struct sbx *s, const char *path);
/* path and what lies below it are gone (unlink, rmdir, the old name of a rename): their queued
 * changes and registry entries go too. */
void fb_settle_forget(struct sbx *s, const char *path);

/* What a command carries: the queue as a shell prefix, and which entries that was. */
struct fb_ticket {
	struct fb_settle_entry **v;
	uint64_t *seq;
	size_t n;
};
/* Appends the queue to cmd as "{ chmod ...; touch ...; } 2>/dev/null; " (nothing when it is
 * empty) and notes the entries in t. */
void fb_settle_take(struct sbx *s, struct strbuf *cmd, struct fb_ticket *t);
/* The command that carried t ended: answered (any exit status) or not. */
void fb_settle_done(struct fb_settle *q, struct fb_ticket *t, bool answered);

/* The registry of entries this client made (directories by mkdir, files it created): owned
 * by the identity its commands run as, so changing their mode and times cannot fail and may
 * wait in the queue. Moved by renames, dropped by fb_settle_forget. */
void fb_made_add(struct sbx *s, const char *path);
bool fb_made_has(struct sbx *s, const char *path);
/* Moves path and what lies below it to `to` (a rename through this client). */
void fb_made_move(struct sbx *s, const char *from, const char *to);

/* ---- fallback_cache.c: what this client knows of the sandbox's entries ---- */

struct fb_cache *fb_cache_new(void);
void fb_cache_free(struct fb_cache *k);
/* A point in the cache's history: a fetch that began there stores nothing that a change since
 * concerns. */
uint64_t fb_cache_now(struct sbx *s);
/* path's attributes: 0 (st set, and *target for a symlink when target is not NULL), -ENOENT
 * (a complete listing of its directory has no such name), 1 (not known). */
int fb_cache_lstat(struct sbx *s, const char *path, struct stat *st, char **target);
/* fb_cache_lstat, and when that does not know: the listing of path's directory with what
 * lies below it, unless that was fetched lately (a walk that stats every name, as git status
 * does, costs one command). */
int fb_cache_lookup(struct sbx *s, const char *path, struct stat *st, char **target);
/* The attributes a command read for path (the fetch began at since). */
void fb_cache_put(struct sbx *s, const char *path, const struct stat *st, const char *target,
		  uint64_t since);
/* The listing of directory path: kept, else by a command that also lists what lies below. */
int fb_cache_readdir(struct sbx *s, const char *path, struct sbx_dirent **ents, size_t *n);

/* This client's own changes, told as they are made (their change events are their echo):
 *   FB_MADE     path exists now (st: its attributes, st_ino 0 when the inode is not known
 *               yet; NULL: a regular file, its attributes not known);
 *   FB_WRITTEN  its data changed (st NULL: its attributes are not known any more);
 *   FB_SET      its attributes changed to st (NULL: not known);
 *   FB_GONE     it was removed. */
enum fb_change { FB_MADE, FB_WRITTEN, FB_SET, FB_GONE };
void fb_cache_own(struct sbx *s, enum fb_change what, const char *path, const struct stat *st);
void fb_cache_renamed(struct sbx *s, const char *from, const char *to);
/* A link to inode ino was made: its other names' link counts are not known any more. */
void fb_cache_links_changed(struct sbx *s, ino_t ino);
/* A change this client is about to make in a batch (fallback_settle.c): its events are echo. */
void fb_cache_expect(struct sbx *s, const char *path);
/* A change event for path (NULL: events may have been lost). */
void fb_cache_event(struct sbx *s, const char *path);
/* A watch of /workspace became healthy or stopped being so. */
void fb_cache_watching(struct sbx *s, bool healthy);
#endif
