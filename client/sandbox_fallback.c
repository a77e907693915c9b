/* The fallback backend: a plain container's standard routes only (docs/protocol.md,
 * "Fallback").
 *
 * Metadata and POSIX operations run as one sessionless /api/execute each, with every argument
 * shell-quoted: the operation itself (mkdir -m, mv -T, ln -s -T, chmod, touch -d @S.N, ...)
 * chained with a `find -printf` of the result, so an operation and its new attributes cost one
 * round trip. find prints NUL-separated fields and its output goes through `base64 -w0`, so
 * names and symlink targets arrive byte-exact even though the container's JSON output is
 * UTF-8 text; client/fallback_parse.c reads them and judges every entry as it would any
 * server's answer. Errors come back as the tools' LC_ALL=C messages, which map to errnos
 * through one table (sbx_errno_from_text).
 *
 * Every request is bounded by the client's deadline (-o timeout), scaled only for large
 * transfers; a helper command's own timeout is a little shorter, so the server answers first.
 *
 * Open files are local temporary copies (unlinked at once, only the fd is kept), one per
 * sandbox path shared by all open files of that path in one struct sbx, as a local filesystem
 * shares one inode: writes through one handle are seen through the others, O_APPEND writes land
 * at the copy's current end, and flush of any handle uploads it. Opening downloads the whole
 * file (/api/read in base64; above the container's 32 MiB read limit, ranged `dd | base64`
 * commands, which unlike /api/read/stream stay byte-exact for files the container would send
 * as text); reads and writes go to the copy; flush uploads it whole with /api/write if it
 * changed. An upload failure leaves the copy dirty, so every later flush retries and reports,
 * and a writer's close reports it last.
 *
 * A copy whose name goes away (unlink, rename over it; through this sandbox object or told by
 * sbx_file_orphan) is orphaned: it leaves the table, keeps serving its handles, and is never
 * uploaded again, so the name does not come back and the file that replaced it is not
 * overwritten. unlink and rename hold the locks of the copies they touch across the command,
 * so no upload to the old name can land after it. A rename moves the copies at and below the
 * old name to the new one.
 *
 * Lost answers. A plain container knows no idempotency keys, so nothing here can ask it to
 * carry a request out once. Every request this backend makes is one whose repeat cannot do
 * harm, and the HTTP client repeats them after a lost answer: reads and finds; commands that
 * set absolute values (chmod, touch -d, truncate -s, the whole-file upload); and commands
 * whose repeat fails without changing anything once the first copy succeeded (mkdir, rmdir,
 * unlink, mv -T, ln, an O_EXCL create). For the last kind, a repeat that fails with exactly
 * the error the first copy's success would cause (EEXIST, ENOENT) after an answer was lost is
 * checked against the sandbox (already_done): if the entry now looks as the operation leaves
 * it, the operation is reported done, since the first copy did it. docs/protocol.md lists
 * this; commands given by users (proc/, ctx/, git/clone) are never repeated this way. */
#include "client/sandbox_impl.h"
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "client/fallback_parse.h"
#include "client/shellquote.h"
#include "common/base64.h"
#include "common/jsonutil.h"
#include "common/log.h"
#include "common/strbuf.h"

#define READ_MAX (32u << 20)        /* the container's /api/read limit */
#define WRITE_MAX (96u << 20)       /* the container's body limit, as base64 */
#define CHUNK (16u << 20)           /* one ranged read command */
/* Runs a helper command (sessionless, pipefail, C locale) within the deadline for moving about
 * `bytes` bytes. On success *out holds stdout, base64-decoded when decode is set. A failure maps
 * the command's stderr to an errno. */
static int run_sized(struct sbx *s, const char *what, const char *cmd, size_t bytes, bool decode,
		     char **out, size_t *out_len)
{
	struct strbuf sb = STRBUF_INIT;
	strbuf_appends(&sb, "set -o pipefail; export LC_ALL=C; ");
	strbuf_appends(&sb, cmd);
	struct sbx_exec_result r;
	int err = sbx_exec_within(s, sb.data, NULL, sbx_deadline(s, bytes), &r);
	strbuf_free(&sb);
	if (err) {
		char msg[512];
		snprintf(msg, sizeof msg, "%s", sbx_last_error());
		return sbx_fail(err, "%s: %s", what, msg);
	}
	if (r.exit_code != 0) {
		/* first line of stderr is the tool's reason */
		char *nl = memchr(r.err, '\n', r.err_len);
		if (nl)
			*nl = 0;
		if (r.exit_code == 124 && !r.err[0])
			err = sbx_fail(-ETIMEDOUT, "%s: the helper command timed out", what);
		else if (!r.err[0])
			err = sbx_fail(-EIO, "%s: the helper command failed with exit code %d", what,
				       r.exit_code);
		else
			err = sbx_fail(-sbx_errno_from_text(r.err), "%s: %s", what, r.err);
		sbx_exec_result_free(&r);
		return err;
	}
	if (decode) {
		char *d = malloc(base64_decoded_max(r.out_len) + 1);
		ssize_t n = d ? base64_decode(r.out, r.out_len, d) : -1;
		if (n < 0) {
			free(d);
			sbx_exec_result_free(&r);
			return sbx_fail(d ? -EPROTO : -ENOMEM, "%s: undecodable helper output", what);
		}
		d[n] = 0;
		free(r.out);
		r.out = d;
		r.out_len = (size_t)n;
	}
	if (out) {
		*out = r.out;
		*out_len = r.out_len;
		r.out = NULL;
	}
	sbx_exec_result_free(&r);
	return 0;
}

static int run(struct sbx *s, const char *what, const char *cmd, bool decode, char **out,
	       size_t *out_len)
{
	return run_sized(s, what, cmd, 0, decode, out, out_len);
}

static void append_q(struct strbuf *sb, const char *s)
{
	shell_append_quoted(sb, s);
}

/* `find [-H] -- P -maxdepth 0 -printf FMT | base64 -w0` (the attributes of P itself) */
static void append_stat_cmd(struct strbuf *sb, const char *path, bool follow)
{
	strbuf_appends(sb, follow ? "find -H -- " : "find -- ");
	append_q(sb, path);
	strbuf_appends(sb, " -maxdepth 0 -printf " FIND_STAT_FMT " | base64 -w0");
}

/* Runs "<pre> && <stat of path>" (or only the stat) and parses the one record. */
static int run_then_stat(struct sbx *s, const char *what, const char *pre, const char *path,
			 bool follow, struct stat *st, char **target)
{
	struct strbuf sb = STRBUF_INIT;
	if (pre) {
		strbuf_appends(&sb, pre);
		if (!st && !target)
			goto go;
		strbuf_appends(&sb, " && ");
	}
	append_stat_cmd(&sb, path, follow);
go:;
	char *out = NULL;
	size_t len = 0;
	int err = run(s, what, sb.data, !pre || st || target, &out, &len);
	strbuf_free(&sb);
	if (!err && (st || target || !pre)) {
		struct stat tmp;
		struct entry_why why;
		err = find_parse_stat(out, len, st ? st : &tmp, target, &why);
		entry_warn_stat(path, &why);
		if (err)
			err = sbx_fail(err, "%s: the server's answer is unusable: %s", what, why.text);
	}
	free(out);
	return err;
}

static char *what_of(char *buf, size_t size, const char *op, const char *path)
{
	snprintf(buf, size, "%s %s", op, path);
	return buf;
}

#define WHAT(op, path) what_of((char[64 + 4096]){ 0 }, 64 + 4096, op, path)

static int fb_lstat(struct sbx *s, const char *path, struct stat *st, char **target)
{
	struct stat tmp;
	return run_then_stat(s, WHAT("stat", path), NULL, path, false, st ? st : &tmp, target);
}

static int fb_readdir(struct sbx *s, const char *path, struct sbx_dirent **ents, size_t *n)
{
	struct strbuf sb = STRBUF_INIT;
	/* the trailing slash makes find fail with ENOTDIR on a non-directory */
	char *dir = malloc(strlen(path) + 2);
	if (!dir)
		return sbx_fail(-ENOMEM, "readdir %s: out of memory", path);
	strcpy(stpcpy(dir, path), "/");
	strbuf_appends(&sb, "find -- ");
	append_q(&sb, dir);
	free(dir);
	strbuf_appends(&sb, " -mindepth 1 -maxdepth 1 -printf " FIND_STAT_FMT " | base64 -w0");
	char *out = NULL;
	size_t len = 0;
	int err = run(s, WHAT("readdir", path), sb.data, true, &out, &len);
	strbuf_free(&sb);
	if (err)
		return err;
	find_parse_listing(path, out, len, ents, n);
	free(out);
	return 0;
}

/* Whether a command that failed with err after a lost answer had been carried out by its
 * first copy: err is the error that copy's success makes a repeat fail with, and path now has
 * the type `type` (S_IFDIR...; 0: absent). The entry's attributes go to st (may be NULL). */
static bool already_done(struct sbx *s, int err, int expected, const char *path, mode_t type,
			 struct stat *st)
{
	if (err != expected || !sbx_last_lost())
		return false;
	char saved[512];
	snprintf(saved, sizeof saved, "%s", sbx_last_error());
	struct stat now;
	int e = fb_lstat(s, path, &now, NULL);
	bool done = type ? !e && (now.st_mode & S_IFMT) == type : e == -ENOENT;
	if (done) {
		log_info("%s: an earlier copy of this request did it (its answer was lost)", saved);
		if (st)
			*st = now;
	} else {
		sbx_fail(err, "%s", saved);
	}
	return done;
}

static int fb_mkdir(struct sbx *s, const char *path, mode_t mode, struct stat *st)
{
	struct strbuf sb = STRBUF_INIT;
	strbuf_appendf(&sb, "mkdir -m %o -- ", mode & 07777);
	append_q(&sb, path);
	int err = run_then_stat(s, WHAT("mkdir", path), sb.data, path, false, st, NULL);
	strbuf_free(&sb);
	return already_done(s, err, -EEXIST, path, S_IFDIR, st) ? 0 : err;
}

/* A command of the form "<tool> -- 'a' ['b']" without output. */
static int simple(struct sbx *s, const char *op, const char *tool, const char *a, const char *b)
{
	struct strbuf sb = STRBUF_INIT;
	strbuf_appends(&sb, tool);
	strbuf_appends(&sb, " -- ");
	append_q(&sb, a);
	if (b) {
		strbuf_appends(&sb, " ");
		append_q(&sb, b);
	}
	int err = run(s, WHAT(op, a), sb.data, false, NULL, NULL);
	strbuf_free(&sb);
	return err;
}

static int fb_rmdir(struct sbx *s, const char *path)
{
	int err = simple(s, "rmdir", "rmdir", path, NULL);
	return already_done(s, err, -ENOENT, path, 0, NULL) ? 0 : err;
}

static int fb_symlink(struct sbx *s, const char *target, const char *path, struct stat *st)
{
	struct strbuf sb = STRBUF_INIT;
	strbuf_appends(&sb, "ln -s -T -- ");
	append_q(&sb, target);
	strbuf_appends(&sb, " ");
	append_q(&sb, path);
	int err = run_then_stat(s, WHAT("symlink", path), sb.data, path, false, st, NULL);
	strbuf_free(&sb);
	return already_done(s, err, -EEXIST, path, S_IFLNK, st) ? 0 : err;
}

static int fb_readlink(struct sbx *s, const char *path, char **target)
{
	struct stat st;
	int err = fb_lstat(s, path, &st, target);
	if (!err && !S_ISLNK(st.st_mode))
		err = sbx_fail(-EINVAL, "readlink %s: not a symbolic link", path);
	if (!err && !*target)
		err = sbx_fail(-ENOMEM, "readlink %s: out of memory", path);
	if (err) {
		free(*target);
		*target = NULL;
	}
	return err;
}

static int fb_link(struct sbx *s, const char *from, const char *to, struct stat *st)
{
	struct strbuf sb = STRBUF_INIT;
	strbuf_appends(&sb, "ln -T -- ");
	append_q(&sb, from);
	strbuf_appends(&sb, " ");
	append_q(&sb, to);
	int err = run_then_stat(s, WHAT("link", to), sb.data, to, false, st, NULL);
	strbuf_free(&sb);
	return already_done(s, err, -EEXIST, to, S_IFREG, st) ? 0 : err;
}

static int fb_statfs(struct sbx *s, const char *path, struct statvfs *sv)
{
	struct strbuf sb = STRBUF_INIT;
	strbuf_appends(&sb, "stat -f -c '%S %s %b %f %a %c %d %l' -- ");
	append_q(&sb, path);
	char *out = NULL;
	size_t len;
	const char *what = WHAT("statfs", path);
	int err = run(s, what, sb.data, false, &out, &len);
	strbuf_free(&sb);
	if (err)
		return err;
	unsigned long long v[8];
	/* NOLINTNEXTLINE(cert-err34-c): stat(1) prints 64-bit unsigned numbers, which v holds */
	if (sscanf(out, "%llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
		   &v[4], &v[5], &v[6], &v[7]) != 8) {
		free(out);
		return sbx_fail(-EPROTO, "%s: unexpected stat -f output", what);
	}
	free(out);
	*sv = (struct statvfs){
		.f_frsize = v[0],
		.f_bsize = v[1],
		.f_blocks = v[2],
		.f_bfree = v[3],
		.f_bavail = v[4],
		.f_files = v[5],
		.f_ffree = v[6],
		.f_favail = v[6],
		.f_namemax = v[7],
	};
	return 0;
}

/* `touch -c -h -a|-m [-d @S.N] -- P` for one time, nothing for UTIME_OMIT */
static void append_touch(struct strbuf *sb, const char *flag, const struct timespec *ts,
			 const char *path)
{
	if (ts->tv_nsec == UTIME_OMIT)
		return;
	if (sb->len)
		strbuf_appends(sb, " && ");
	strbuf_appendf(sb, "touch -c -h %s ", flag);
	if (ts->tv_nsec != UTIME_NOW) {
		long long sec = ts->tv_sec;
		long ns = ts->tv_nsec;
		if (sec < 0 && ns) /* -1 s + 0.5 s is "-0.5" */
			strbuf_appendf(sb, "-d @-%lld.%09ld ", -(sec + 1), 1000000000L - ns);
		else
			strbuf_appendf(sb, "-d @%lld.%09ld ", sec, ns);
	}
	strbuf_appends(sb, "-- ");
	append_q(sb, path);
}

static int fb_setattr(struct sbx *s, const char *path, unsigned valid, const struct stat *want,
		      struct stat *st)
{
	struct strbuf sb = STRBUF_INIT;
	/* chown first: it clears setuid/setgid, which a chmod in the same call may set again */
	if (valid & (SBX_SET_UID | SBX_SET_GID)) {
		strbuf_appends(&sb, "chown -h ");
		if (valid & SBX_SET_UID)
			strbuf_appendf(&sb, "%u", (unsigned)want->st_uid);
		if (valid & SBX_SET_GID)
			strbuf_appendf(&sb, ":%u", (unsigned)want->st_gid);
		strbuf_appends(&sb, " -- ");
		append_q(&sb, path);
	}
	if (valid & SBX_SET_MODE) {
		strbuf_appendf(&sb, "%schmod %o -- ", sb.len ? " && " : "", want->st_mode & 07777);
		append_q(&sb, path);
	}
	if (valid & SBX_SET_SIZE) {
		strbuf_appendf(&sb, "%struncate -c -s %jd -- ", sb.len ? " && " : "",
			       (intmax_t)want->st_size);
		append_q(&sb, path);
	}
	/* after truncate, which sets mtime itself */
	if (valid & SBX_SET_ATIME)
		append_touch(&sb, "-a", &want->st_atim, path);
	if (valid & SBX_SET_MTIME)
		append_touch(&sb, "-m", &want->st_mtim, path);
	struct stat tmp;
	int err = run_then_stat(s, WHAT("setattr", path), sb.len ? sb.data : NULL, path, false,
				st ? st : &tmp, NULL);
	strbuf_free(&sb);
	return err;
}

/* ---- whole-file and ranged reads ---- */

/* Up to len bytes at off by `dd | base64` (no size limit, byte-exact). */
static ssize_t read_range(struct sbx *s, const char *path, void *buf, size_t len, off_t off)
{
	struct strbuf sb = STRBUF_INIT;
	strbuf_appendf(&sb, "dd bs=1M iflag=skip_bytes,count_bytes skip=%jd count=%zu status=none "
		       "if=", (intmax_t)off, len);
	append_q(&sb, path);
	strbuf_appends(&sb, " | base64 -w0");
	char *out = NULL;
	size_t n = 0;
	const char *what = WHAT("read", path);
	int err = run_sized(s, what, sb.data, len, true, &out, &n);
	strbuf_free(&sb);
	if (err)
		return err;
	if (n > len) {
		free(out);
		return sbx_fail(-EPROTO, "%s: more bytes than asked", what);
	}
	memcpy(buf, out, n);
	free(out);
	return (ssize_t)n;
}

static ssize_t fb_pread_path(struct sbx *s, const char *path, void *buf, size_t len, off_t off)
{
	size_t done = 0;
	while (done < len) {
		size_t want = len - done > CHUNK ? CHUNK : len - done;
		ssize_t n = read_range(s, path, (char *)buf + done, want, off + (off_t)done);
		if (n < 0)
			return done ? (ssize_t)done : n;
		done += (size_t)n;
		if ((size_t)n < want)
			break;
	}
	return (ssize_t)done;
}

/* /api/read in base64: 0 and the bytes; -EFBIG when the container refuses the size.
 * size_hint (0 = unknown) sizes the deadline. */
static int read_whole(struct sbx *s, const char *path, size_t size_hint, char **data,
		      size_t *len)
{
	cJSON *b = cJSON_CreateObject();
	cJSON_AddStringToObject(b, "path", path);
	cJSON_AddStringToObject(b, "encoding", "base64");
	cJSON *j;
	const char *what = WHAT("read", path);
	int err = sbx_call(s, what, "POST", "/api/read", b, true, sbx_deadline(s, size_hint), &j);
	if (err)
		return err;
	const char *c = json_str(j, "content"), *enc = json_str(j, "encoding");
	if (!c) {
		cJSON_Delete(j);
		return sbx_fail(-EPROTO, "%s: the answer has no content", what);
	}
	size_t n = strlen(c);
	bool b64 = !enc || strcmp(enc, "base64") == 0;
	char *d = malloc((b64 ? base64_decoded_max(n) : n) + 1);
	ssize_t m = !d ? -1 : b64 ? base64_decode(c, n, d) : (memcpy(d, c, n), (ssize_t)n);
	cJSON_Delete(j);
	if (m < 0) {
		free(d);
		return sbx_fail(d ? -EPROTO : -ENOMEM, "%s: undecodable content", what);
	}
	d[m] = 0;
	*data = d;
	*len = (size_t)m;
	return 0;
}

static int fb_read_all(struct sbx *s, const char *path, char **data, size_t *len)
{
	int err = read_whole(s, path, 0, data, len);
	if (err != -EFBIG)
		return err;
	struct strbuf sb = STRBUF_INIT;
	for (;;) {
		strbuf_reserve(&sb, CHUNK);
		ssize_t n = read_range(s, path, sb.data + sb.len, CHUNK, (off_t)sb.len);
		if (n < 0) {
			strbuf_free(&sb);
			return (int)n;
		}
		sb.len += (size_t)n;
		sb.data[sb.len] = 0;
		if ((size_t)n < CHUNK)
			break;
	}
	*data = strbuf_detach(&sb, len);
	return 0;
}

/* ---- open files: one local copy per path ---- */

/* The shared copy of one sandbox path, for all its open files in one struct sbx.
 * Lock order: copy locks (several only in rename/unlink, taken in address order), then
 * s->copies_lock; never a copy lock while holding s->copies_lock (except a copy nobody else can
 * see yet). path changes only with both held, so either one is enough to read it. */
struct fb_copy {
	struct fb_copy *next;   /* in s->copies while keyed */
	struct sbx *s;
	pthread_mutex_t lock;   /* everything below, and the upload */
	char *path;
	unsigned refs;          /* s->copies_lock */
	bool keyed;             /* in s->copies under path (s->copies_lock) */
	atomic_bool orphaned;   /* the name is gone: the data is private, never uploaded */
	int fd;
	bool loaded;            /* fd holds the file; else the next opener downloads it */
	bool dirty;             /* the copy differs from what the sandbox has */
	bool modified;          /* written since st was read: times come from the copy */
	bool st_known;
	struct stat st;         /* attributes as last read from the sandbox */
};

struct fb_file {
	struct sbx_file base;
	struct fb_copy *c;
	int flags;
};

static int write_all_fd(int fd, const void *buf, size_t len, off_t off)
{
	while (len) {
		ssize_t n = pwrite(fd, buf, len, off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		buf = (const char *)buf + n;
		len -= (size_t)n;
		off += n;
	}
	return 0;
}

static int make_temp(const char *what)
{
	const char *dirs[] = { getenv("TMPDIR"), "/var/tmp", "/tmp" };
	for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
		if (!dirs[i] || !*dirs[i])
			continue;
		char tmpl[PATH_MAX];
		if (snprintf(tmpl, sizeof tmpl, "%s/sbxfs-XXXXXX", dirs[i]) >= (int)sizeof tmpl)
			continue;
		int fd = mkostemp(tmpl, O_CLOEXEC);
		if (fd >= 0) {
			unlink(tmpl);
			return fd;
		}
	}
	return sbx_fail(-errno, "%s: cannot create a local copy: %s", what, strerror(errno));
}

/* Replaces the copy's content with the sandbox's file; size_hint (or 0) sizes the deadline. */
static int download(struct fb_copy *c, size_t size_hint, const char *what)
{
	if (ftruncate(c->fd, 0))
		return sbx_fail(-errno, "%s: local copy: %s", what, strerror(errno));
	char *data = NULL;
	size_t len = 0;
	int err = read_whole(c->s, c->path, size_hint, &data, &len);
	if (!err) {
		err = write_all_fd(c->fd, data, len, 0);
		free(data);
		return err ? sbx_fail(err, "%s: local copy: %s", what, strerror(-err)) : 0;
	}
	if (err != -EFBIG)
		return err;
	/* beyond /api/read's limit: ranged reads straight into the copy */
	char *buf = malloc(CHUNK);
	if (!buf)
		return sbx_fail(-ENOMEM, "%s: out of memory", what);
	off_t off = 0;
	for (;;) {
		ssize_t n = read_range(c->s, c->path, buf, CHUNK, off);
		if (n < 0) {
			err = (int)n;
			break;
		}
		if ((err = write_all_fd(c->fd, buf, (size_t)n, off))) {
			err = sbx_fail(err, "%s: local copy: %s", what, strerror(-err));
			break;
		}
		off += n;
		if ((size_t)n < CHUNK)
			break;
	}
	free(buf);
	return err;
}

/* Uploads the copy if it changed and its name still exists. */
static int flush_locked(struct fb_copy *c)
{
	if (!c->dirty || atomic_load(&c->orphaned))
		return 0;
	const char *what = WHAT("write", c->path);
	struct stat lst;
	if (fstat(c->fd, &lst))
		return sbx_fail(-errno, "%s: local copy: %s", what, strerror(errno));
	if ((uint64_t)lst.st_size > WRITE_MAX)
		return sbx_fail(-EFBIG, "%s: %jd bytes is more than a container accepts in one write "
				"(96 MiB); the sbxd extensions have no such limit", what,
				(intmax_t)lst.st_size);
	size_t len = (size_t)lst.st_size;
	char *raw = malloc(len ? len : 1);
	if (!raw)
		return sbx_fail(-ENOMEM, "%s: out of memory", what);
	for (size_t done = 0; done < len;) {
		ssize_t n = pread(c->fd, raw + done, len - done, (off_t)done);
		if (n <= 0) {
			int e = n < 0 ? errno : EIO;
			free(raw);
			return sbx_fail(-e, "%s: local copy: %s", what, strerror(e));
		}
		done += (size_t)n;
	}
	/* the body is built by hand: the base64 text is the bulk and is written only once */
	cJSON *jp = cJSON_CreateString(c->path);
	char *qpath = json_print(jp);
	cJSON_Delete(jp);
	struct strbuf body = STRBUF_INIT;
	strbuf_reserve(&body, base64_encoded_len(len) + strlen(qpath) + 64);
	strbuf_appendf(&body, "{\"path\":%s,\"encoding\":\"base64\",\"content\":\"", qpath);
	free(qpath);
	body.len += base64_encode(raw, len, body.data + body.len);
	free(raw);
	strbuf_appends(&body, "\"}");
	struct http_request req = {
		.method = "POST",
		.path = "/api/write",
		.body = body.data,
		.body_len = body.len,
		.timeout_ms = sbx_deadline(c->s, len),
		.idempotent = true, /* the whole file: a repeat writes the same bytes */
	};
	struct http_response resp = { 0 };
	int err = http_request_sync(c->s->http, &req, &resp);
	strbuf_free(&body);
	if (err)
		err = sbx_fail(err, "%s: %s", what, resp.errmsg[0] ? resp.errmsg : strerror(-err));
	else if (resp.status < 200 || resp.status > 299)
		err = sbx_fail_response(what, resp.status, resp.body, resp.body_len);
	else
		c->dirty = false;
	http_response_clear(&resp);
	return err;
}

/* Reads the attributes of the copy's file (following a final symlink, as open did). */
static int copy_stat_locked(struct fb_copy *c)
{
	struct stat st;
	int err = run_then_stat(c->s, WHAT("stat", c->path), NULL, c->path, true, &st, NULL);
	if (!err) {
		c->st = st;
		c->st_known = true;
	}
	return err;
}

static struct fb_copy *find_locked(struct sbx *s, const char *path)
{
	for (struct fb_copy *c = s->copies; c; c = c->next)
		if (strcmp(c->path, path) == 0)
			return c;
	return NULL;
}

static void unkey_locked(struct sbx *s, struct fb_copy *c)
{
	for (struct fb_copy **pp = &s->copies; *pp; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	c->next = NULL;
	c->keyed = false;
}

static void orphan_locked(struct sbx *s, struct fb_copy *c)
{
	if (c->keyed)
		unkey_locked(s, c);
	atomic_store(&c->orphaned, true);
}

static void copy_free(struct fb_copy *c)
{
	if (c->fd >= 0)
		close(c->fd);
	pthread_mutex_destroy(&c->lock);
	free(c->path);
	free(c);
}

/* Drops a reference; the caller does not hold c->lock. */
static void copy_put(struct fb_copy *c)
{
	struct sbx *s = c->s;
	pthread_mutex_lock(&s->copies_lock);
	bool last = --c->refs == 0;
	if (last && c->keyed)
		unkey_locked(s, c);
	pthread_mutex_unlock(&s->copies_lock);
	if (last)
		copy_free(c);
}

/* The copy of path, referenced and locked; a new one (empty, not loaded) when none is open. */
static int copy_get(struct sbx *s, const char *path, const char *what, struct fb_copy **out)
{
	struct fb_copy *fresh = calloc(1, sizeof *fresh);
	if (!fresh || !(fresh->path = strdup(path))) {
		free(fresh);
		return sbx_fail(-ENOMEM, "%s: out of memory", what);
	}
	fresh->s = s;
	fresh->refs = 1;
	pthread_mutex_init(&fresh->lock, NULL);
	if ((fresh->fd = make_temp(what)) < 0) {
		int err = fresh->fd;
		copy_free(fresh);
		return err;
	}
	pthread_mutex_lock(&fresh->lock); /* nobody else can see it yet */
	pthread_mutex_lock(&s->copies_lock);
	struct fb_copy *c = find_locked(s, path);
	if (c) {
		c->refs++;
	} else {
		fresh->keyed = true;
		fresh->next = s->copies;
		s->copies = fresh;
	}
	pthread_mutex_unlock(&s->copies_lock);
	if (c) {
		pthread_mutex_unlock(&fresh->lock);
		copy_free(fresh);
		pthread_mutex_lock(&c->lock);
		*out = c;
	} else {
		*out = fresh;
	}
	return 0;
}

/* The shell part of open: O_CREAT/O_EXCL/O_TRUNC with open(2)'s errors; nothing if none. */
static void append_open_cmd(struct strbuf *sb, const char *path, int flags, mode_t mode)
{
	struct strbuf q = STRBUF_INIT;
	shell_append_quoted(&q, path);
	unsigned m = mode & 07777;
	const char *p = q.data;
	if ((flags & O_CREAT) && (flags & O_EXCL))
		/* noclobber makes the redirection O_EXCL: EEXIST even for a dangling symlink */
		strbuf_appendf(sb, "set -C && : > %s && chmod %o -- %s", p, m, p);
	else if ((flags & O_CREAT) && (flags & O_TRUNC))
		strbuf_appendf(sb, "if [ -e %s ]; then : > %s; else : > %s && chmod %o -- %s; fi",
			       p, p, p, m, p);
	else if (flags & O_CREAT)
		strbuf_appendf(sb, "if [ ! -e %s ]; then : > %s && chmod %o -- %s; fi", p, p, m, p);
	else if (flags & O_TRUNC)
		strbuf_appendf(sb, "if [ -e %s ]; then : > %s; else echo 'open: No such file or "
			       "directory' >&2; exit 1; fi", p, p);
	strbuf_free(&q);
}

/* Opening. A read-only open without O_CREAT/O_TRUNC is one /api/read (it fails for a missing
 * file all the same) and leaves the attributes unknown until fstat or pin asks; every other
 * open is the open command chained with a stat, then the download if the file is not empty.
 * A copy other files of the path already share is reused as it is while it holds unuploaded
 * writes (the sandbox's file is older), else refreshed, so an open sees the sandbox's file. */
static int fb_file_open(struct sbx *s, const char *path, int flags, mode_t mode,
			struct sbx_file **out, struct stat *st)
{
	const char *what = WHAT("open", path);
	bool lazy = (flags & O_ACCMODE) == O_RDONLY && !(flags & (O_CREAT | O_TRUNC));
	struct stat now = { 0 };
	int err = 0;
	if (!lazy) {
		struct strbuf sb = STRBUF_INIT;
		append_open_cmd(&sb, path, flags, mode);
		err = run_then_stat(s, what, sb.len ? sb.data : NULL, path, true, &now, NULL);
		strbuf_free(&sb);
		/* an O_EXCL create whose answer was lost: the empty file it made is ours */
		if ((flags & O_CREAT) && (flags & O_EXCL) &&
		    already_done(s, err, -EEXIST, path, S_IFREG, &now))
			err = now.st_size ? sbx_fail(-EEXIST, "%s: File exists", what) : 0;
		if (!err && S_ISDIR(now.st_mode))
			err = sbx_fail(-EISDIR, "%s: is a directory", what);
		if (err)
			return err;
	}
	struct fb_file *f = calloc(1, sizeof *f);
	if (!f)
		return sbx_fail(-ENOMEM, "%s: out of memory", what);
	struct fb_copy *c = NULL;
	if ((err = copy_get(s, path, what, &c))) {
		free(f);
		return err;
	}
	if (!lazy) {
		c->st = now;
		c->st_known = true;
	}
	if (flags & O_TRUNC) {
		/* the sandbox's file is empty now, and so is the copy */
		err = ftruncate(c->fd, 0) ? sbx_fail(-errno, "%s: local copy: %s", what,
						     strerror(errno)) : 0;
		c->loaded = !err;
		c->dirty = c->modified = false;
	} else if (!c->loaded || !c->dirty) {
		c->loaded = false;
		if (!lazy && now.st_size == 0)
			err = ftruncate(c->fd, 0) ? sbx_fail(-errno, "%s: local copy: %s", what,
							     strerror(errno)) : 0;
		else
			err = download(c, (size_t)now.st_size, what);
		c->loaded = !err;
		c->dirty = c->modified = false;
		if (lazy)
			c->st_known = false; /* the content may be newer than any st we had */
	}
	pthread_mutex_unlock(&c->lock);
	if (err) {
		copy_put(c);
		free(f);
		return err;
	}
	f->base.ops = &sbx_fallback_ops;
	f->base.s = s;
	f->c = c;
	f->flags = flags;
	if (st)
		*st = now;
	*out = &f->base;
	return 0;
}

static ssize_t fb_file_pread(struct sbx_file *base, void *buf, size_t len, off_t off)
{
	struct fb_file *f = (struct fb_file *)base;
	struct fb_copy *c = f->c;
	if ((f->flags & O_ACCMODE) == O_WRONLY)
		return sbx_fail(-EBADF, "read %s: the file is open write-only", c->path);
	pthread_mutex_lock(&c->lock);
	ssize_t n;
	do
		n = pread(c->fd, buf, len, off);
	while (n < 0 && errno == EINTR);
	int e = errno;
	pthread_mutex_unlock(&c->lock);
	return n >= 0 ? n : sbx_fail(-e, "read: local copy: %s", strerror(e));
}

static ssize_t fb_file_pwrite(struct sbx_file *base, const void *buf, size_t len, off_t off)
{
	struct fb_file *f = (struct fb_file *)base;
	struct fb_copy *c = f->c;
	if ((f->flags & O_ACCMODE) == O_RDONLY)
		return sbx_fail(-EBADF, "write: the file is open read-only");
	pthread_mutex_lock(&c->lock);
	int err = 0;
	struct stat lst;
	/* O_APPEND: at the end of the shared copy, whatever the other writers did */
	if ((f->flags & O_APPEND) && fstat(c->fd, &lst) == 0)
		off = lst.st_size;
	else if (f->flags & O_APPEND)
		err = sbx_fail(-errno, "write: local copy: %s", strerror(errno));
	if (!err && (uint64_t)off + len > WRITE_MAX)
		err = sbx_fail(-EFBIG, "write %s: beyond 96 MiB, more than a container accepts in "
			       "one write", c->path);
	if (!err && (err = write_all_fd(c->fd, buf, len, off)))
		err = sbx_fail(err, "write %s: local copy: %s", c->path, strerror(-err));
	if (!err)
		c->dirty = c->modified = true;
	pthread_mutex_unlock(&c->lock);
	return err ? err : (ssize_t)len;
}

static int fb_file_flush(struct sbx_file *base)
{
	struct fb_copy *c = ((struct fb_file *)base)->c;
	pthread_mutex_lock(&c->lock);
	int err = flush_locked(c);
	pthread_mutex_unlock(&c->lock);
	return err;
}

static int fb_file_fsync(struct sbx_file *base, bool datasync)
{
	(void)datasync; /* /api/write is the only way to the sandbox's disk */
	return fb_file_flush(base);
}

static int fb_file_fstat(struct sbx_file *base, struct stat *st)
{
	struct fb_copy *c = ((struct fb_file *)base)->c;
	struct stat lst;
	pthread_mutex_lock(&c->lock);
	int err = 0;
	if (!c->st_known && !atomic_load(&c->orphaned))
		err = copy_stat_locked(c);
	if (!err && fstat(c->fd, &lst))
		err = sbx_fail(-errno, "fstat: local copy: %s", strerror(errno));
	if (!err) {
		if (c->st_known) {
			*st = c->st;
		} else {
			/* orphaned before anyone asked for its attributes (no pin): the copy's */
			*st = lst;
			st->st_mode = S_IFREG | 0644;
			st->st_nlink = 0;
		}
		st->st_size = lst.st_size;
		st->st_blocks = lst.st_blocks;
		if (c->modified) {
			st->st_mtim = lst.st_mtim;
			st->st_ctim = lst.st_ctim;
		}
	}
	pthread_mutex_unlock(&c->lock);
	return err;
}

static int fb_file_ftruncate(struct sbx_file *base, off_t size)
{
	struct fb_file *f = (struct fb_file *)base;
	struct fb_copy *c = f->c;
	if ((f->flags & O_ACCMODE) == O_RDONLY)
		return sbx_fail(-EBADF, "truncate: the file is open read-only");
	if ((uint64_t)size > WRITE_MAX)
		return sbx_fail(-EFBIG, "truncate: beyond 96 MiB, more than a container accepts "
				"in one write");
	pthread_mutex_lock(&c->lock);
	int err = ftruncate(c->fd, size) ? -errno : 0;
	if (!err)
		c->dirty = c->modified = true;
	pthread_mutex_unlock(&c->lock);
	return err ? sbx_fail(err, "truncate: local copy: %s", strerror(-err)) : 0;
}

/* The data outlives the name already; the attributes must be read while the name exists. */
static int fb_file_pin(struct sbx_file *base)
{
	struct fb_copy *c = ((struct fb_file *)base)->c;
	pthread_mutex_lock(&c->lock);
	int err = c->st_known || atomic_load(&c->orphaned) ? 0 : copy_stat_locked(c);
	pthread_mutex_unlock(&c->lock);
	return err;
}

/* A copy already under the new name belongs to the file the rename replaced: orphaned here (a
 * rename through fb_rename did that already, with the copy locked against a racing upload). */
static int fb_file_set_path(struct sbx_file *base, const char *path)
{
	struct fb_copy *c = ((struct fb_file *)base)->c;
	struct sbx *s = c->s;
	char *p = strdup(path);
	if (!p)
		return sbx_fail(-ENOMEM, "rename %s: out of memory", path);
	pthread_mutex_lock(&c->lock);
	pthread_mutex_lock(&s->copies_lock);
	if (!atomic_load(&c->orphaned) && strcmp(c->path, path) != 0) {
		struct fb_copy *old = find_locked(s, path);
		if (old)
			orphan_locked(s, old);
		char *t = c->path;
		c->path = p;
		p = t;
	}
	pthread_mutex_unlock(&s->copies_lock);
	pthread_mutex_unlock(&c->lock);
	free(p);
	return 0;
}

static int fb_file_orphan(struct sbx_file *base)
{
	struct fb_copy *c = ((struct fb_file *)base)->c;
	pthread_mutex_lock(&c->lock);
	pthread_mutex_lock(&c->s->copies_lock);
	orphan_locked(c->s, c);
	pthread_mutex_unlock(&c->s->copies_lock);
	pthread_mutex_unlock(&c->lock);
	return 0;
}

/* Only a writer uploads on close: a reader's close reports nothing of others' writes. */
static int fb_file_close(struct sbx_file *base)
{
	struct fb_file *f = (struct fb_file *)base;
	struct fb_copy *c = f->c;
	int err = 0;
	if ((f->flags & O_ACCMODE) != O_RDONLY) {
		pthread_mutex_lock(&c->lock);
		err = flush_locked(c);
		pthread_mutex_unlock(&c->lock);
	}
	copy_put(c);
	free(f);
	return err;
}

/* ---- names with open files: unlink and rename ---- */

/* The open copies a rename or unlink touches, referenced and locked (in address order) across
 * the operation, so no upload to the old name can land after the name went away. */
struct held {
	struct fb_copy *c;
	bool moved;             /* below `from` (else at or below the replaced `to`) */
};

static bool at_or_below(const char *path, const char *top)
{
	size_t n = strlen(top);
	return strncmp(path, top, n) == 0 && (path[n] == 0 || path[n] == '/');
}

static int held_cmp(const void *a, const void *b)
{
	uintptr_t x = (uintptr_t)((const struct held *)a)->c;
	uintptr_t y = (uintptr_t)((const struct held *)b)->c;
	return x < y ? -1 : x > y;
}

/* Holds the copies at or below from (moved) and at or below to (replaced; to may be NULL). */
static int hold(struct sbx *s, const char *from, const char *to, struct held **out, size_t *n)
{
	*out = NULL;
	*n = 0;
	pthread_mutex_lock(&s->copies_lock);
	size_t cnt = 0;
	for (struct fb_copy *c = s->copies; c; c = c->next)
		cnt++;
	struct held *v = cnt ? calloc(cnt, sizeof *v) : NULL;
	if (cnt && !v) {
		pthread_mutex_unlock(&s->copies_lock);
		return sbx_fail(-ENOMEM, "rename %s: out of memory", from);
	}
	cnt = 0;
	for (struct fb_copy *c = s->copies; c; c = c->next) {
		bool moved = to && at_or_below(c->path, from);
		if (moved || at_or_below(c->path, to ? to : from)) {
			c->refs++;
			v[cnt++] = (struct held){ c, moved };
		}
	}
	pthread_mutex_unlock(&s->copies_lock);
	if (cnt > 1)
		qsort(v, cnt, sizeof *v, held_cmp);
	for (size_t i = 0; i < cnt; i++) {
		pthread_mutex_lock(&v[i].c->lock);
		/* a reader's attributes, while the name still leads to them */
		if (!v[i].moved && !v[i].c->st_known && !atomic_load(&v[i].c->orphaned))
			copy_stat_locked(v[i].c);
	}
	*out = v;
	*n = cnt;
	return 0;
}

static void unhold(struct held *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		pthread_mutex_unlock(&v[i].c->lock);
	for (size_t i = 0; i < n; i++)
		copy_put(v[i].c);
	free(v);
}

/* After a successful unlink or rename: the replaced copies become private, the moved ones
 * take their new names. */
static void rename_held(struct sbx *s, struct held *v, size_t n, const char *from,
			const char *to)
{
	pthread_mutex_lock(&s->copies_lock);
	for (size_t i = 0; i < n; i++) {
		struct fb_copy *c = v[i].c;
		if (!v[i].moved) {
			orphan_locked(s, c);
			continue;
		}
		char *p;
		if (atomic_load(&c->orphaned) ||
		    asprintf(&p, "%s%s", to, c->path + strlen(from)) < 0)
			continue;
		free(c->path);
		c->path = p;
	}
	pthread_mutex_unlock(&s->copies_lock);
}

static int fb_unlink(struct sbx *s, const char *path)
{
	struct held *v;
	size_t n;
	int err = hold(s, path, NULL, &v, &n);
	if (err)
		return err;
	err = simple(s, "unlink", "unlink", path, NULL);
	if (already_done(s, err, -ENOENT, path, 0, NULL))
		err = 0;
	if (!err)
		rename_held(s, v, n, path, NULL);
	unhold(v, n);
	return err;
}

static int fb_rename(struct sbx *s, const char *from, const char *to, unsigned flags)
{
	/* mv -n is a check-then-act race and mv cannot exchange: refuse, as sshfs does */
	if (flags)
		return sbx_fail(-EINVAL, "rename %s: flags %#x are not supported without the sbxd "
				"extensions", from, flags);
	struct held *v;
	size_t n;
	int err = hold(s, from, to, &v, &n);
	if (err)
		return err;
	err = simple(s, "rename", "mv -T", from, to);
	if (err == -ENOENT && sbx_last_lost()) {
		/* as already_done, with both names: from gone and to there */
		char saved[512];
		snprintf(saved, sizeof saved, "%s", sbx_last_error());
		struct stat st;
		if (fb_lstat(s, from, &st, NULL) == -ENOENT && !fb_lstat(s, to, &st, NULL)) {
			log_info("%s: an earlier copy of this request did it (its answer was lost)",
				 saved);
			err = 0;
		} else {
			sbx_fail(err, "%s", saved);
		}
	}
	if (!err && strcmp(from, to) != 0)
		rename_held(s, v, n, from, to);
	unhold(v, n);
	return err;
}

const struct sbx_ops sbx_fallback_ops = {
	.name = "fallback",
	.lstat = fb_lstat,
	.readdir = fb_readdir,
	.mkdir = fb_mkdir,
	.unlink = fb_unlink,
	.rmdir = fb_rmdir,
	.rename = fb_rename,
	.symlink = fb_symlink,
	.readlink = fb_readlink,
	.link = fb_link,
	.statfs = fb_statfs,
	.setattr = fb_setattr,
	.file_open = fb_file_open,
	.file_pread = fb_file_pread,
	.file_pwrite = fb_file_pwrite,
	.file_flush = fb_file_flush,
	.file_fsync = fb_file_fsync,
	.file_fstat = fb_file_fstat,
	.file_ftruncate = fb_file_ftruncate,
	.file_pin = fb_file_pin,
	.file_set_path = fb_file_set_path,
	.file_orphan = fb_file_orphan,
	.file_close = fb_file_close,
	.read_all = fb_read_all,
	.pread_path = fb_pread_path,
};
