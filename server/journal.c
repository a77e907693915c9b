/* The journal engine behind server/journal.h.
 *
 * Exactly once. A client sends its journal's operations, numbered, in batches, and sends a
 * batch again when it did not get the answer (a lost connection, a restarted sbxd). The
 * watermark says which operations were carried out: a batch skips every op at or below it
 * and raises it past each op it carries out, one op at a time, so that a batch cut short (sbxd
 * killed in its middle) is continued, not repeated, by the next copy. An op whose effect
 * cannot be told apart from nothing (a failed rename) still raises it: its result is final.
 *
 * Locks. The table lock guards the list of journals, most recently used first, and each
 * journal's count of users. A batch takes a use of its journal under the table lock (which
 * creates the journal, forgetting the least recently used unused one when the table is full),
 * then the journal's own apply lock for the whole batch: two batches of one journal never
 * interleave, and neither carries out an op the other did. Batches of different journals run
 * side by side. The watermark is read and written under the apply lock only; a journal with
 * users is never forgotten, so the lock outlives everyone waiting for it.
 *
 * Persistence. Each journal has a file in state_dir/journals named after its id, opened from
 * the held directory descriptor with *at() calls (never through a symlink). It holds the
 * watermark as 20 decimal digits and a newline, and every op overwrites it in place with one
 * pwrite of that fixed width: a write that either happened or did not (sbxd dying inside a
 * syscall does not split a 21-byte write within one page), without the temporary file and
 * rename per op that a replacement would cost. A new journal's file starts empty, which reads
 * as watermark 0. Nothing is fsynced: the workspace writes the watermark stands for are not
 * either, so after a power loss both are as the kernel left them. The files are read back at
 * start, most recently written last, and a forgotten journal's file is removed. */
#include "server/journal.h"
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "common/clock.h"
#include "common/fdio.h"
#include "common/jsonutil.h"
#include "common/log.h"
#include "server/echo.h"
#include "server/fsops.h"
#include "server/watch.h"
#include "server/workspace.h"

#define WATERMARK_DIGITS 20 /* UINT64_MAX has 20 */

struct journal {
	char id[JOURNAL_ID_MAX + 1];
	uint64_t watermark;             /* apply lock */
	pthread_mutex_t apply;          /* held by the batch being applied */
	pthread_cond_t advanced;        /* the watermark moved (batches waiting for one before) */
	unsigned users;                 /* table lock */
	struct journal *newer, *older;  /* table lock */
};

struct journals {
	pthread_mutex_t lock;           /* the table lock */
	int dirfd;                      /* state_dir/journals, or -1: in memory only */
	struct journal *newest, *oldest;
	size_t n;
};

bool journal_id_valid(const char *id)
{
	size_t n = id ? strspn(id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
				   "0123456789_-") : 0;
	return n >= 1 && n <= JOURNAL_ID_MAX && id[n] == '\0';
}

/* ---- the table ---- */

static void list_remove(struct journals *js, struct journal *j)
{
	*(j->newer ? &j->newer->older : &js->newest) = j->older;
	*(j->older ? &j->older->newer : &js->oldest) = j->newer;
	j->newer = j->older = NULL;
}

static void list_push_newest(struct journals *js, struct journal *j)
{
	j->older = js->newest;
	j->newer = NULL;
	*(js->newest ? &js->newest->newer : &js->oldest) = j;
	js->newest = j;
}

static struct journal *journal_alloc(const char *id, uint64_t watermark)
{
	struct journal *j = calloc(1, sizeof *j);
	if (!j)
		return NULL;
	snprintf(j->id, sizeof j->id, "%.*s", JOURNAL_ID_MAX, id);
	j->watermark = watermark;
	pthread_mutex_init(&j->apply, NULL);
	mono_cond_init(&j->advanced);
	return j;
}

static void journal_destroy(struct journal *j)
{
	pthread_mutex_destroy(&j->apply);
	pthread_cond_destroy(&j->advanced);
	free(j);
}

/* Forgets the least recently used journal nobody uses (its file too); false if all are used.
 * Table lock held. */
static bool forget_oldest(struct journals *js)
{
	struct journal *j = js->oldest;
	while (j && j->users)
		j = j->newer;
	if (!j)
		return false;
	log_info("journal %s forgotten (watermark %" PRIu64 "): %d journals are kept at most",
		 j->id, j->watermark, JOURNALS_MAX);
	if (js->dirfd >= 0 && unlinkat(js->dirfd, j->id, 0) && errno != ENOENT)
		log_warn("journal %s: removing its file: %s", j->id, strerror(errno));
	list_remove(js, j);
	js->n--;
	journal_destroy(j);
	return true;
}

static struct journal *find(struct journals *js, const char *id)
{
	for (struct journal *j = js->newest; j; j = j->older)
		if (strcmp(j->id, id) == 0)
			return j;
	return NULL;
}

/* The journal of id, made if new, with a use taken: NULL and *err (-EBUSY, -ENOMEM). */
static struct journal *journal_use(struct journals *js, const char *id, int *err)
{
	pthread_mutex_lock(&js->lock);
	struct journal *j = find(js, id);
	if (j) {
		list_remove(js, j);
	} else {
		if (js->n >= JOURNALS_MAX && !forget_oldest(js)) {
			pthread_mutex_unlock(&js->lock);
			*err = -EBUSY;
			return NULL;
		}
		j = journal_alloc(id, 0);
		if (!j) {
			pthread_mutex_unlock(&js->lock);
			*err = -ENOMEM;
			return NULL;
		}
		js->n++;
	}
	list_push_newest(js, j);
	j->users++;
	pthread_mutex_unlock(&js->lock);
	return j;
}

static void journal_unuse(struct journals *js, struct journal *j)
{
	pthread_mutex_lock(&js->lock);
	j->users--;
	pthread_mutex_unlock(&js->lock);
}

uint64_t journal_watermark(struct journals *js, const char *id)
{
	uint64_t w = 0;
	pthread_mutex_lock(&js->lock);
	struct journal *j = find(js, id ? id : "");
	if (j)
		j->users++;
	pthread_mutex_unlock(&js->lock);
	if (!j)
		return 0;
	pthread_mutex_lock(&j->apply);
	w = j->watermark;
	pthread_mutex_unlock(&j->apply);
	journal_unuse(js, j);
	return w;
}

/* ---- the watermark files ---- */

struct loaded {
	char id[JOURNAL_ID_MAX + 1];
	uint64_t watermark;
	struct timespec written;
};

static int by_written(const void *a, const void *b)
{
	const struct timespec *x = &((const struct loaded *)a)->written;
	const struct timespec *y = &((const struct loaded *)b)->written;
	if (x->tv_sec != y->tv_sec)
		return x->tv_sec < y->tv_sec ? -1 : 1;
	return (x->tv_nsec > y->tv_nsec) - (x->tv_nsec < y->tv_nsec);
}

/* The watermark in journal file name: false when it is not one (a file is never empty but
 * for a journal that carried nothing out yet, which reads as 0). */
static bool read_watermark(int dirfd, const char *name, struct loaded *l)
{
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	struct stat st;
	if (fd < 0)
		return false;
	char buf[WATERMARK_DIGITS + 2];
	ssize_t n = fstat(fd, &st) || !S_ISREG(st.st_mode) ? -1 : fd_pread_full(fd, buf,
										 sizeof buf - 1, 0);
	close(fd);
	if (n < 0 || (n > 0 && (n != WATERMARK_DIGITS + 1 || buf[WATERMARK_DIGITS] != '\n')))
		return false;
	buf[n] = '\0';
	uint64_t w = 0;
	for (ssize_t i = 0; i < n - 1; i++) {
		if (buf[i] < '0' || buf[i] > '9' || w > (UINT64_MAX - 9) / 10)
			return false;
		w = w * 10 + (uint64_t)(buf[i] - '0');
	}
	snprintf(l->id, sizeof l->id, "%.*s", JOURNAL_ID_MAX, name); /* valid: no longer */
	l->watermark = w;
	l->written = st.st_mtim;
	return true;
}

/* Reads back the journals of an earlier run, oldest written first into the table. */
static int load(struct journals *js)
{
	int fd = openat(js->dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd < 0 ? NULL : fdopendir(fd);
	if (!d) {
		int err = -errno;
		if (fd >= 0)
			close(fd);
		return err;
	}
	struct loaded *all = NULL;
	size_t n = 0, cap = 0;
	int err = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		if (n == cap) {
			size_t c = cap ? cap * 2 : 64;
			struct loaded *grown = realloc(all, c * sizeof *all);
			if (!grown) {
				err = -ENOMEM;
				break;
			}
			all = grown;
			cap = c;
		}
		if (journal_id_valid(de->d_name) && read_watermark(js->dirfd, de->d_name, &all[n]))
			n++;
		else
			log_warn("journal state: %s is not a journal's watermark, left alone",
				 de->d_name);
	}
	closedir(d);
	if (!err) {
		if (n)
			qsort(all, n, sizeof *all, by_written);
		for (size_t i = 0; i < n && !err; i++) {
			struct journal *j = journal_alloc(all[i].id, all[i].watermark);
			if (!j) {
				err = -ENOMEM;
				break;
			}
			if (js->n >= JOURNALS_MAX)
				forget_oldest(js);
			list_push_newest(js, j);
			js->n++;
		}
	}
	free(all);
	return err;
}

struct journals *journals_new(const char *state_dir, int *err)
{
	struct journals *js = calloc(1, sizeof *js);
	if (!js) {
		*err = -ENOMEM;
		return NULL;
	}
	pthread_mutex_init(&js->lock, NULL);
	js->dirfd = -1;
	if (!state_dir)
		return js;
	int base = open(state_dir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	*err = 0;
	if (base < 0 || (mkdirat(base, "journals", 0700) && errno != EEXIST))
		*err = -errno;
	if (!*err) {
		js->dirfd = openat(base, "journals", O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (js->dirfd < 0)
			*err = -errno;
	}
	if (base >= 0)
		close(base);
	if (!*err)
		*err = load(js);
	if (*err) {
		journals_free(js);
		return NULL;
	}
	return js;
}

void journals_free(struct journals *js)
{
	if (!js)
		return;
	for (struct journal *j = js->newest, *older; j; j = older) {
		older = j->older;
		journal_destroy(j);
	}
	if (js->dirfd >= 0)
		close(js->dirfd);
	pthread_mutex_destroy(&js->lock);
	free(js);
}

/* Raises j's watermark to seq, in memory and, when fd is its file, on disk. */
static void record(struct journal *j, int fd, uint64_t seq, bool *warned)
{
	j->watermark = seq;
	if (fd < 0)
		return;
	char text[WATERMARK_DIGITS + 2];
	snprintf(text, sizeof text, "%0*" PRIu64 "\n", WATERMARK_DIGITS, seq);
	int err = fd_pwrite_full(fd, text, WATERMARK_DIGITS + 1, 0);
	if (err && !*warned) {
		*warned = true;
		log_error("journal %s: keeping watermark %" PRIu64 ": %s (a restarted sbxd would "
			  "carry its ops out again)", j->id, seq, strerror(-err));
	}
}

/* ---- the operations ---- */

static void fail(struct journal_result *res, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void fail(struct journal_result *res, int err, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	res->outcome = JOURNAL_FAILED;
	res->err = err < 0 ? -err : err;
	if (vasprintf(&res->message, fmt, ap) < 0)
		res->message = NULL;
	va_end(ap);
}

/* Resolves path to its parent (confined); false after failing res. */
static bool resolve(const char *path, struct ws_entry *e, struct journal_result *res)
{
	int err = ws_parent(path, e);
	if (err)
		fail(res, err, "%s: %s", ws_strerror(err), path);
	return !err;
}

static void fail_path(struct journal_result *res, int err, const char *path)
{
	fail(res, err, "%s: %s", strerror(-err), path);
}

/* Applied, with the stat of e (or err if that fails). */
static void done_entry(struct journal_result *res, const struct ws_entry *e, const char *path)
{
	int err = 0;
	res->stat = fsop_stat_json(e->dirfd, e->name, &err);
	if (!res->stat)
		fail_path(res, err, path);
}

/* Opens the regular file e for writing (flags: O_CREAT, O_TRUNC, ...): never through a
 * symlink (ELOOP), never a device or FIFO, which is not opened at all when it is one
 * already. A descriptor or -errno. */
static int open_file(const struct ws_entry *e, int flags, mode_t mode)
{
	struct stat st;
	if (fstatat(e->dirfd, e->name, &st, AT_SYMLINK_NOFOLLOW) == 0 && !S_ISREG(st.st_mode))
		return S_ISDIR(st.st_mode) ? -EISDIR : S_ISLNK(st.st_mode) ? -ELOOP : -EOPNOTSUPP;
	int fd = openat(e->dirfd, e->name, flags | O_WRONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC,
			mode);
	if (fd < 0)
		return -errno;
	int err = fstat(fd, &st) ? -errno : !S_ISREG(st.st_mode) ? -EOPNOTSUPP : 0;
	if (err) { /* replaced in between */
		close(fd);
		return err;
	}
	return fd;
}

/* The op's times for futimens/utimensat; false when it sets none. */
static bool times_of(const struct journal_op *op, struct timespec ts[2])
{
	ts[0] = op->has_atime ? op->atime : (struct timespec){ .tv_nsec = UTIME_OMIT };
	ts[1] = op->has_mtime ? op->mtime : (struct timespec){ .tv_nsec = UTIME_OMIT };
	return op->has_atime || op->has_mtime;
}

/* Whether what a put found (NULL: nothing) differs from what its client expected. */
static bool unexpected(const struct journal_op *op, const struct stat *found)
{
	switch (op->expect) {
	case JOURNAL_EXPECT_NOTHING:
		return false;
	case JOURNAL_EXPECT_ABSENT:
		return found != NULL;
	case JOURNAL_EXPECT_STAT:
		return !found || (op->expect_has_size && found->st_size != op->expect_size) ||
		       (op->expect_has_mtime &&
			(found->st_mtim.tv_sec != op->expect_mtime.tv_sec ||
			 found->st_mtim.tv_nsec != op->expect_mtime.tv_nsec));
	}
	return false;
}

/* put: the whole content, in place (the inode stays, so hard links see it). */
static void op_put(const struct journal_op *op, struct journal_result *res)
{
	struct ws_entry e;
	if (!resolve(op->path, &e, res))
		return;
	struct stat before;
	bool existed = fstatat(e.dirfd, e.name, &before, AT_SYMLINK_NOFOLLOW) == 0;
	if (unexpected(op, existed ? &before : NULL)) {
		int ignored = 0;
		res->conflict = true;
		res->before = existed ? fsop_stat_json(e.dirfd, e.name, &ignored) : NULL;
	}
	struct timespec ts[2];
	int fd = open_file(&e, O_CREAT | O_TRUNC, op->mode & 07777);
	int err = fd < 0 ? fd : fd_pwrite_full(fd, op->data, op->len, 0);
	if (!err && fchmod(fd, op->mode & 07777))
		err = -errno;
	if (!err && times_of(op, ts) && futimens(fd, ts))
		err = -errno;
	if (!err)
		res->stat = fsop_fstat_json(fd, &err);
	if (fd >= 0)
		close(fd);
	ws_entry_close(&e);
	if (err)
		fail_path(res, err, op->path);
}

/* write: bytes into a file that exists (a large file's later parts, after its put). */
static void op_write(const struct journal_op *op, struct journal_result *res)
{
	struct ws_entry e;
	if (!resolve(op->path, &e, res))
		return;
	int fd = open_file(&e, 0, 0);
	int err = fd < 0 ? fd : fd_pwrite_full(fd, op->data, op->len, op->offset);
	if (!err)
		res->stat = fsop_fstat_json(fd, &err);
	if (fd >= 0)
		close(fd);
	ws_entry_close(&e);
	if (err)
		fail_path(res, err, op->path);
}

static bool is_type(const struct ws_entry *e, mode_t type)
{
	struct stat st;
	return fstatat(e->dirfd, e->name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
	       (st.st_mode & S_IFMT) == type;
}

/* mkdir: a directory already there is one made before. */
static void op_mkdir(const struct journal_op *op, struct journal_result *res)
{
	struct ws_entry e;
	if (!resolve(op->path, &e, res))
		return;
	mode_t mode = op->mode & 07777;
	int err = mkdirat(e.dirfd, e.name, mode) ? -errno : 0;
	if (!err) {
		int fd = openat(e.dirfd, e.name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (fd >= 0) {
			err = fsop_fix_mode(fd, mode);
			close(fd);
		}
	} else if (err == -EEXIST && is_type(&e, S_IFDIR)) {
		err = 0;
	}
	if (err)
		fail_path(res, err, op->path);
	else
		done_entry(res, &e, op->path);
	ws_entry_close(&e);
}

/* symlink: the same link already there is one made before. */
static void op_symlink(const struct journal_op *op, struct journal_result *res)
{
	struct ws_entry e;
	if (!resolve(op->path, &e, res))
		return;
	int err = !op->target ? -EINVAL : symlinkat(op->target, e.dirfd, e.name) ? -errno : 0;
	if (err == -EEXIST) {
		char have[PATH_MAX + 1];
		ssize_t n = readlinkat(e.dirfd, e.name, have, sizeof have - 1);
		if (n >= 0 && (size_t)n == strlen(op->target) && memcmp(have, op->target, n) == 0)
			err = 0;
	}
	if (err)
		fail_path(res, err, op->path);
	else
		done_entry(res, &e, op->path);
	ws_entry_close(&e);
}

static void fail_two(struct journal_result *res, int err, const char *from, const char *to)
{
	fail(res, err, "%s: %s -> %s", ws_strerror(err), from, to);
	res->path = from;
	res->to = to;
}

/* Both ends of a link or rename; false after failing res. */
static bool resolve_two(const struct journal_op *op, struct ws_entry *from, struct ws_entry *to,
			struct journal_result *res)
{
	int err = ws_parent(op->from, from);
	if (!err) {
		err = ws_parent(op->to, to);
		if (err)
			ws_entry_close(from);
	}
	if (err)
		fail_two(res, err, op->from, op->to);
	return !err;
}

/* link: `to` already being `from` is a link made before. */
static void op_link(const struct journal_op *op, struct journal_result *res)
{
	struct ws_entry from, to;
	if (!resolve_two(op, &from, &to, res))
		return;
	int err = linkat(from.dirfd, from.name, to.dirfd, to.name, 0) ? -errno : 0;
	if (err == -EEXIST) {
		struct stat a, b;
		if (fstatat(from.dirfd, from.name, &a, AT_SYMLINK_NOFOLLOW) == 0 &&
		    fstatat(to.dirfd, to.name, &b, AT_SYMLINK_NOFOLLOW) == 0 &&
		    a.st_dev == b.st_dev && a.st_ino == b.st_ino)
			err = 0;
	}
	if (err)
		fail_two(res, err, op->from, op->to);
	else
		done_entry(res, &to, op->to);
	ws_entry_close(&from);
	ws_entry_close(&to);
}

/* unlink, rmdir: nothing there is an entry removed before. A file with other names left: the
 * stat of what they keep (its link count, its ctime). */
static void op_remove(const struct journal_op *op, int flags, struct journal_result *res)
{
	struct ws_entry e;
	if (!resolve(op->path, &e, res))
		return;
	struct stat st;
	int kept = !flags && fstatat(e.dirfd, e.name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
			   S_ISREG(st.st_mode) && st.st_nlink > 1
		   ? openat(e.dirfd, e.name, O_PATH | O_NOFOLLOW | O_CLOEXEC) : -1;
	int err = unlinkat(e.dirfd, e.name, flags) ? -errno : 0;
	ws_entry_close(&e);
	if (!err && kept >= 0) {
		int ignored = 0;
		res->stat = fsop_fstat_json(kept, &ignored);
	}
	if (kept >= 0)
		close(kept);
	if (err && err != -ENOENT)
		fail_path(res, err, op->path);
}

/* rename: strict, as rename(2) (a missing source is an error). */
static void op_rename(const struct journal_op *op, struct journal_result *res)
{
	struct ws_entry from, to;
	if (!resolve_two(op, &from, &to, res))
		return;
	if (renameat2(from.dirfd, from.name, to.dirfd, to.name, op->rename_flags))
		fail_two(res, -errno, op->from, op->to);
	else
		done_entry(res, &to, op->to);
	ws_entry_close(&from);
	ws_entry_close(&to);
}

/* setattr: owner first (it clears set-id bits), then mode, size, and times last (a truncate
 * sets mtime), as /api/x/setattr. */
static void op_setattr(const struct journal_op *op, struct journal_result *res)
{
	struct ws_entry e;
	if (!resolve(op->path, &e, res))
		return;
	struct timespec ts[2];
	int err = 0;
	if ((op->has_uid || op->has_gid) &&
	    fchownat(e.dirfd, e.name, op->has_uid ? op->uid : (uid_t)-1,
		     op->has_gid ? op->gid : (gid_t)-1, AT_SYMLINK_NOFOLLOW))
		err = -errno;
	if (!err && op->has_mode)
		err = fsop_chmod(e.dirfd, e.name, op->mode & 07777);
	if (!err && op->has_size)
		err = fsop_truncate(e.dirfd, e.name, op->size);
	if (!err && times_of(op, ts) && utimensat(e.dirfd, e.name, ts, AT_SYMLINK_NOFOLLOW))
		err = -errno;
	if (err)
		fail_path(res, err, op->path);
	else
		done_entry(res, &e, op->path);
	ws_entry_close(&e);
}

static void apply_one(const struct journal_op *op, struct journal_result *res)
{
	res->outcome = JOURNAL_APPLIED;
	res->path = op->path;
	switch (op->kind) {
	case JOP_PUT: op_put(op, res); return;
	case JOP_WRITE: op_write(op, res); return;
	case JOP_MKDIR: op_mkdir(op, res); return;
	case JOP_SYMLINK: op_symlink(op, res); return;
	case JOP_LINK: op_link(op, res); return;
	case JOP_UNLINK: op_remove(op, 0, res); return;
	case JOP_RMDIR: op_remove(op, AT_REMOVEDIR, res); return;
	case JOP_RENAME: op_rename(op, res); return;
	case JOP_SETATTR: op_setattr(op, res); return;
	}
	fail(res, EINVAL, "unknown operation");
}

/* The directory of api_path as it is now, or NULL. */
static cJSON *dir_stat_json(const char *api_path)
{
	const char *slash = strrchr(api_path, '/');
	if (!slash || slash == api_path)
		return NULL;
	char dir[WS_PATH_MAX + 16];
	snprintf(dir, sizeof dir, "%.*s", (int)(slash - api_path), api_path);
	struct ws_entry e;
	int err = 0;
	if (ws_parent(dir, &e))
		return NULL;
	cJSON *st = fsop_stat_json(e.dirfd, e.name, &err);
	ws_entry_close(&e);
	return st;
}

/* The directories whose names an applied op changed, as it left them: the client then knows
 * their times without asking. */
static void add_parents(const struct journal_op *op, struct journal_result *res)
{
	switch (op->kind) {
	case JOP_SETATTR:
	case JOP_WRITE:
		return;
	case JOP_RENAME:
		res->from_parent = dir_stat_json(op->from);
		/* fall through */
	case JOP_LINK:
		res->parent = dir_stat_json(op->to);
		return;
	default:
		res->parent = dir_stat_json(op->path);
		return;
	}
}

/* The state an applied op left its paths in, and the change events it causes there. */
static void note_echoes(const char *id, uint64_t batch, const struct journal_op *op)
{
	enum { MOVED = WATCH_MOVE_FROM | WATCH_MOVE_TO | WATCH_CREATE | WATCH_DELETE };
	if (op->kind == JOP_RENAME)
		echo_renote_dir_of(op->from);
	if (op->kind != JOP_SETATTR && op->kind != JOP_WRITE)
		echo_renote_dir_of(op->kind == JOP_LINK || op->kind == JOP_RENAME ? op->to : op->path);
	switch (op->kind) {
	case JOP_PUT:
	case JOP_WRITE:
		echo_note(id, batch, op->path, WATCH_CREATE | WATCH_MODIFY | WATCH_ATTRIB);
		return;
	case JOP_MKDIR:
		echo_note(id, batch, op->path, WATCH_CREATE | WATCH_ATTRIB | WATCH_MODIFY);
		return;
	case JOP_SYMLINK:
		echo_note(id, batch, op->path, WATCH_CREATE | WATCH_ATTRIB);
		return;
	case JOP_LINK:
		echo_note(id, batch, op->from, WATCH_ATTRIB);
		echo_note(id, batch, op->to, WATCH_CREATE | WATCH_ATTRIB);
		return;
	case JOP_UNLINK:
	case JOP_RMDIR:
		echo_note(id, batch, op->path, WATCH_DELETE);
		return;
	case JOP_RENAME:
		echo_note(id, batch, op->from, MOVED);
		echo_note(id, batch, op->to, MOVED);
		return;
	case JOP_SETATTR:
		/* a truncate, or a time set alone, is a "modify" (fsnotify_change) */
		echo_note(id, batch, op->path, WATCH_ATTRIB | WATCH_MODIFY);
		return;
	}
}

/* ---- batches ---- */

static bool in_order(const struct journal_op *ops, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (ops[i].seq < 1 || ops[i].seq > JOURNAL_SEQ_MAX ||
		    (i && ops[i].seq <= ops[i - 1].seq))
			return false;
	return true;
}

int journal_apply(struct journals *js, const char *id, uint64_t after,
		  const struct journal_op *ops, size_t n, struct journal_result *results,
		  uint64_t *applied)
{
	memset(results, 0, n * sizeof *results);
	if (!journal_id_valid(id) || n < 1 || n > JOURNAL_OPS_MAX || !in_order(ops, n) ||
	    after >= ops[0].seq)
		return -EINVAL;
	int err = 0;
	struct journal *j = journal_use(js, id, &err);
	if (!j)
		return err;
	pthread_mutex_lock(&j->apply);
	/* sent right after the batch before it, on another connection: that one may still be
	 * on its way */
	int64_t deadline = mono_ms() + JOURNAL_AFTER_WAIT_MS;
	while (j->watermark < after && mono_cond_wait_until(&j->advanced, &j->apply, deadline))
		;
	if (j->watermark < after) {
		*applied = j->watermark;
		pthread_mutex_unlock(&j->apply);
		journal_unuse(js, j);
		return -EAGAIN;
	}
	int fd = -1;
	/* A batch that is all repeats touches no file. */
	if (js->dirfd >= 0 && ops[n - 1].seq > j->watermark) {
		fd = openat(js->dirfd, j->id, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
		if (fd < 0) {
			err = -errno;
			log_error("journal %s: its file: %s", j->id, strerror(errno));
		}
	}
	size_t done = 0, skipped = 0, failed = 0;
	bool warned = false;
	uint64_t batch = echo_batch();
	for (size_t i = 0; i < n && !err; i++) {
		results[i].seq = ops[i].seq;
		if (ops[i].seq <= j->watermark) {
			results[i].outcome = JOURNAL_SKIPPED;
			skipped++;
			continue;
		}
		echo_lock();
		struct stat gone; /* an unlinked hard link: its other names change too */
		bool links = ops[i].kind == JOP_UNLINK && ws_stat(ops[i].path, &gone, false) == 0 &&
			     gone.st_nlink > 1;
		apply_one(&ops[i], &results[i]);
		if (results[i].outcome == JOURNAL_APPLIED) {
			add_parents(&ops[i], &results[i]);
			note_echoes(j->id, batch, &ops[i]);
			if (links)
				echo_renote_inode(&gone);
		}
		echo_unlock();
		record(j, fd, ops[i].seq, &warned);
		done++;
		failed += results[i].outcome == JOURNAL_FAILED;
	}
	*applied = j->watermark;
	if (fd >= 0)
		close(fd);
	pthread_cond_broadcast(&j->advanced);
	pthread_mutex_unlock(&j->apply);
	journal_unuse(js, j);
	if (!err)
		log_debug("journal %s: %zu ops carried out (%zu failed), %zu skipped, watermark "
			  "%" PRIu64, id, done, failed, skipped, *applied);
	return err;
}

void journal_results_free(struct journal_result *results, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		cJSON_Delete(results[i].stat);
		cJSON_Delete(results[i].parent);
		cJSON_Delete(results[i].from_parent);
		cJSON_Delete(results[i].before);
		free(results[i].message);
	}
}
