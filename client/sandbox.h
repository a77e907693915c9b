/* The sandbox as typed operations, on top of the HTTP client.
 *
 * Two backends behind one interface, chosen by a single probe at sbx_open():
 *   - sbxd with its filesystem extensions (docs/protocol.md, "Extensions"): POSIX semantics,
 *     lstat, ranged I/O on server-side handles, rename(2), one round trip per operation;
 *   - a plain Cloudflare sandbox container (standard routes only): whole-file read/write in
 *     base64, metadata and POSIX operations through /api/execute (sessionless) with every
 *     argument shell-quoted, and a local temporary copy per open file.
 * Callers never branch on the backend; what a backend cannot do fails with ENOSYS/EOPNOTSUPP
 * and a readable reason in sbx_last_error().
 *
 * All paths are the sandbox's own absolute paths ("/workspace/a/b"). All functions return 0 (or
 * a non-negative count) on success and a negative errno on failure; they block the calling
 * thread for at most the request deadline. Thread-safe. */
#ifndef SBX_SANDBOX_H
#define SBX_SANDBOX_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include "client/http.h"

struct sbx;
struct sbx_file;

struct sbx_info {
	bool extensions;        /* sbxd filesystem extensions available */
	const char *server;     /* "sbxd", "cloudflare-container", ... */
	const char *version;
	const char *sandbox_id; /* may be NULL */
};

/* Connects and probes once (GET /api/x/capabilities, falling back to /api/ping). Fails with
 * -ENOTCONN when the backend is unreachable, -EACCES for a refused token. */
int sbx_open(const struct http_client_opts *opts, struct sbx **out);
void sbx_close(struct sbx *s);
const struct sbx_info *sbx_info(const struct sbx *s);
struct http_client *sbx_http(struct sbx *s);
/* Forces the standard routes even when extensions exist (used by tests and -o no_extensions).
 * Call it right after sbx_open(), before the sandbox is shared. */
void sbx_force_fallback(struct sbx *s);

/* Readable reason of this thread's last failure ("mkdir: File exists"), or "". */
const char *sbx_last_error(void);
/* Records this thread's readable reason (what sbx_last_error() then returns) and returns err,
 * a negative errno: for callers' own checks of what they were asked, as the client's calls do
 * for theirs ("proc/new: no command was written"). err is taken before the reason is formatted
 * (sbx_fail(-errno, "...: %s", strerror(errno))). A macro, so that the compiler and static
 * analysis see that what it returns is err, and that a function failing through it fails. */
#define sbx_fail(err, ...)                          \
	__extension__({                             \
		int sbx_fail_err_ = (err);          \
		sbx_set_reason(__VA_ARGS__);        \
		sbx_fail_err_;                      \
	})
void sbx_set_reason(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Metadata. sbx_lstat never follows the final symlink; target (optional) receives a malloc'd
 * symlink target when the entry is a symlink. */
int sbx_lstat(struct sbx *s, const char *path, struct stat *st, char **target);

struct sbx_dirent {
	char *name;
	struct stat st;
	char *target; /* symlinks only, else NULL */
};
/* Full listing with attributes (readdirplus), without "." and "..". What the server sent is
 * checked (client/entry_check.h): every name is a valid one and listed once, the attributes
 * are in range; an entry that is not is left out with a warning, never failing the listing. */
int sbx_readdir(struct sbx *s, const char *path, struct sbx_dirent **ents, size_t *n);
void sbx_dirents_free(struct sbx_dirent *ents, size_t n);
/* The whole content of the small regular files of directory path, with its listing, in one
 * request (sbxd's /api/x/readdir with content_max, capability "content"): fn gets each file
 * of at most each bytes whose content came, as far as budget bytes go. -ENOSYS when the
 * server cannot (a plain container). Bypasses the journal: see sbx_journal_prefetch. */
typedef void (*sbx_content_fn)(void *arg, const char *name, const struct stat *st,
			       const void *data, size_t len);
int sbx_readdir_content(struct sbx *s, const char *path, size_t each, size_t budget,
			sbx_content_fn fn, void *arg);
/* The complete listings of directory path and of the directories below it, in one request:
 * fn gets each directory's path and entries (checked as sbx_readdir's, and borrowed for the
 * call), path's first, then breadth-first. A directory is listed whole or not at all; the
 * listings stop at about max_entries entries in all (0: the server's default), and *truncated
 * says whether some directory below path was left out. A directory the server names that does
 * not lie below path, or was not listed as a directory of its parent, or is named twice, is
 * left out with a warning. -ENOSYS where the backend cannot (then sbx_readdir each). */
typedef void (*sbx_tree_fn)(void *arg, const char *dir, const struct sbx_dirent *ents,
			    size_t n);
int sbx_readtree(struct sbx *s, const char *path, size_t max_entries, sbx_tree_fn fn, void *arg,
		 bool *truncated);

int sbx_mkdir(struct sbx *s, const char *path, mode_t mode, struct stat *st);
int sbx_unlink(struct sbx *s, const char *path);
int sbx_rmdir(struct sbx *s, const char *path);
/* rename(2) semantics (replaces a file or an empty directory, never moves *into* a directory).
 * flags: RENAME_NOREPLACE, RENAME_EXCHANGE (-EINVAL where unsupported). */
int sbx_rename(struct sbx *s, const char *from, const char *to, unsigned flags);
int sbx_symlink(struct sbx *s, const char *target, const char *path, struct stat *st);
int sbx_readlink(struct sbx *s, const char *path, char **target);
int sbx_link(struct sbx *s, const char *from, const char *to, struct stat *st);
int sbx_statfs(struct sbx *s, const char *path, struct statvfs *sv);

/* setattr: what is set in `valid` (SBX_SET_*) is applied, then the new attributes are returned
 * in st (may be NULL). Times: tv_nsec may be UTIME_NOW. */
enum {
	SBX_SET_MODE = 1 << 0,
	SBX_SET_SIZE = 1 << 1,
	SBX_SET_ATIME = 1 << 2,
	SBX_SET_MTIME = 1 << 3,
	SBX_SET_UID = 1 << 4,
	SBX_SET_GID = 1 << 5,
};
int sbx_setattr(struct sbx *s, const char *path, unsigned valid, const struct stat *want,
		struct stat *st);

/* Open files. flags are open(2) flags (O_ACCMODE, O_CREAT, O_EXCL, O_TRUNC, O_APPEND), plus
 * SBX_O_NEW below. Backed by a server-side handle (extensions) or a local copy (fallback), so an
 * open file keeps working after it is renamed or unlinked through any path. st (may be NULL)
 * receives the attributes after opening, except for a lazy open: with the extensions, a
 * read-only open without O_CREAT/O_TRUNC costs no round trip (reads go by path until
 * sbx_file_pin()), so it cannot fail for a missing file and leaves st with st_mode == 0
 * (attributes unknown).
 *
 * SBX_O_NEW (with O_CREAT): the caller knows that path does not exist (a listing that change
 * events keep current says so). The fallback then makes the file in the sandbox only when it
 * first sends it (flush, fsync, close), or earlier when something needs it there (an operation
 * on that name or on its directory, a command the client runs): until then st and the file's
 * fstat report st_ino 0, "not known yet"; the first stat after that gives the real one. */
#define SBX_O_NEW 010000000000
int sbx_file_open(struct sbx *s, const char *path, int flags, mode_t mode,
		  struct sbx_file **out, struct stat *st);
ssize_t sbx_file_pread(struct sbx_file *f, void *buf, size_t len, off_t off);
/* May buffer; errors of buffered data surface at the next flush (or pread/fstat, which flush
 * first). */
ssize_t sbx_file_pwrite(struct sbx_file *f, const void *buf, size_t len, off_t off);
/* Pushes buffered data to the sandbox; datasync=false also asks the server to fsync. */
int sbx_file_flush(struct sbx_file *f);
int sbx_file_fsync(struct sbx_file *f, bool datasync);
int sbx_file_fstat(struct sbx_file *f, struct stat *st);
int sbx_file_ftruncate(struct sbx_file *f, off_t size);
/* setattr through an open file (SBX_SET_*), st (may be NULL) receiving the result. Both
 * backends defer what cannot fail (mode and times of a file this open created, an owner left
 * unchanged) to the next flush, which sends it along with the buffered data (the fallback:
 * with a batch of such changes, client/fallback_settle.c); st then holds the attributes as
 * they will be. -ENOSYS for what must be set by path (with the fallback: anything else). */
int sbx_file_setattr(struct sbx_file *f, unsigned valid, const struct stat *want,
		     struct stat *st);
/* The attributes of a file open for writing as its handle knows them (the sandbox's last
 * answer, the buffered size, deferred attributes), without a round trip. -EAGAIN when it
 * knows none (then flush and sbx_file_fstat). */
int sbx_file_cached_stat(struct sbx_file *f, struct stat *st);
/* Makes sure f keeps working after its path goes away (unlink, rename over it): a lazily
 * opened read-only file gets its server-side handle now. The filesystem calls it for every open
 * file of an entry before removing or replacing that entry. */
int sbx_file_pin(struct sbx_file *f);
/* Tells the file its path changed (a rename through the mount): the fallback uploads there. */
int sbx_file_set_path(struct sbx_file *f, const char *path);
/* The name this file was opened under is gone (unlinked, or replaced by a rename): keep its data
 * private from now on and never upload it again. Applies to every open file of that name (in
 * the fallback they share one local copy); reads, writes and fstat keep working on the private
 * data, flush/fsync/close succeed without uploading. Idempotent, cannot fail (returns 0). Call
 * it after the unlink or rename succeeded, after sbx_file_pin(). With the extensions it does
 * nothing: the server-side handle already has POSIX semantics. sbx_unlink()/sbx_rename() of the
 * fallback also do this by themselves for files opened through the same struct sbx. */
int sbx_file_orphan(struct sbx_file *f);
/* The file's content may have changed since it was read (a change event named it, or it was
 * written through another handle): what was read ahead of it is not used. Cannot block; safe
 * under the caller's locks. */
void sbx_file_changed(struct sbx_file *f);
/* Flushes, releases the handle and frees f; returns the flush's error (nothing acknowledged
 * is lost silently: the caller reports it from close()). */
int sbx_file_close(struct sbx_file *f);

/* Reads a whole file by path into memory (small files, control data); sets *len. */
int sbx_read_all(struct sbx *s, const char *path, char **data, size_t *len);
/* Reads len bytes at off by path without opening a handle (ranged where the backend can). */
ssize_t sbx_pread_path(struct sbx *s, const char *path, void *buf, size_t len, off_t off);

/* Makes the sandbox show everything this client has done so far (the write-back journal's
 * pending changes, the fallback's held-back attributes), for at most the deadline: before
 * something that looks at the sandbox by another way than this client (a watch of a path the
 * mount just made). Requests that run something in the sandbox do it by themselves. */
void sbx_settle(struct sbx *s);

/* Runs a shell command in the sandbox (POST /api/execute, sessionless); output is collected
 * whole. exit_code is -1 when the command could not be run. timeout_ms <= 0 means 30 s; the
 * server kills the command at the timeout (exit code 124). */
struct sbx_exec_result {
	int exit_code;
	char *out;
	size_t out_len;
	char *err;
	size_t err_len;
};
int sbx_exec(struct sbx *s, const char *command, const char *cwd, long timeout_ms,
	     struct sbx_exec_result *r);
void sbx_exec_result_free(struct sbx_exec_result *r);

/* Change events for /workspace (POST /api/watch). on_change runs on the network thread with
 * the absolute path of a changed entry and its event type ("create", "modify", "delete",
 * "move_from", "move_to", "attrib"; "unknown": the client cannot tell, as after a change the
 * sandbox refused); on_resync when events may have been lost (reconnect,
 * overflow): the caller must then forget everything it caches. The watch reconnects by itself
 * with backoff until sbx_watch_stop(); on_state reports healthy=true/false transitions.
 * Events sbxd tagged as the echoes of this client's journal are not passed on: on_settled
 * says what they would have. */
struct sbx_watch_ops {
	void (*on_change)(void *arg, const char *path, const char *type, bool is_dir);
	/* the mount's own change of path is acknowledged and st is how the sandbox
	 * has it now: no event of the sandbox's comes for it (NULL: on_change, "attrib").
	 * The journal answers for path until the caller, having taken st, passes handover
	 * to sbx_journal_handover (which names a clean copy of the content) */
	void (*on_settled)(void *arg, const char *path, const struct stat *st,
			   uint64_t handover);
	void (*on_resync)(void *arg);
	void (*on_state)(void *arg, bool healthy);
};
struct sbx_watch;
struct sbx_watch *sbx_watch_start(struct sbx *s, const char *path,
				  const struct sbx_watch_ops *ops, void *arg);
void sbx_watch_stop(struct sbx_watch *w);
#endif
