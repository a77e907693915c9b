/* The fallback backend: a plain container's standard routes only (docs/protocol.md,
 * "Fallback"). This file: the operations on paths; open files and transfers are in
 * client/fallback_files.c, batched attribute changes in client/fallback_settle.c, listings of
 * whole subtrees in client/fallback_tree.c (their shared state: client/fallback.h).
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
 * A command costs milliseconds (a process in the sandbox), the file routes that carry data a
 * fraction of one. So what does not need a command of its own does without: every command
 * first applies the queued attribute changes (fb_run; fallback_settle.c says which changes may
 * wait), a chown to the owner an entry has already is no change at all, and a listing answers
 * for a whole subtree at once (fallback_tree.c).
 *
 * Every request is bounded by the client's deadline (-o timeout), scaled only for large
 * transfers; a helper command's own timeout is a little shorter, so the server answers first.
 *
 * Lost answers. A plain container knows no idempotency keys, so nothing here can ask it to
 * carry a request out once. Every request this backend makes is one whose repeat cannot do
 * harm, and the HTTP client repeats them after a lost answer: reads and finds; commands that
 * set absolute values (chmod, touch -d, truncate -s, the whole-file upload, the queued
 * changes); and commands whose repeat fails without changing anything once the first copy
 * succeeded (mkdir, rmdir, unlink, mv -T, ln, an O_EXCL create). For the last kind, a repeat
 * that fails with exactly the error the first copy's success would cause (EEXIST, ENOENT) after
 * an answer was lost is checked against the sandbox (fb_already_done): if the entry now looks as
 * the operation leaves it, the operation is reported done, since the first copy did it.
 * docs/protocol.md lists this; commands given by users (proc/, ctx/, git/clone) are never
 * repeated this way. */
#include "client/fallback.h"
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "client/fallback_parse.h"
#include "client/shellquote.h"
#include "common/base64.h"
#include "common/log.h"
#include "common/strbuf.h"

int fb_run(struct sbx *s, const char *what, const char *cmd, size_t bytes, bool decode,
	   char **out, size_t *out_len)
{
	struct strbuf sb = STRBUF_INIT;
	strbuf_appends(&sb, "set -o pipefail; export LC_ALL=C; ");
	struct fb_ticket t;
	fb_settle_take(s, &sb, &t);
	strbuf_appends(&sb, cmd);
	struct sbx_exec_result r;
	int err = sbx_exec_within(s, sb.data, NULL, sbx_deadline(s, bytes), &r);
	strbuf_free(&sb);
	fb_settle_done(s->fb->settle, &t, !err);
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
	return fb_run(s, what, cmd, 0, decode, out, out_len);
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

int fb_run_then_stat(struct sbx *s, const char *what, const char *pre, const char *path,
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

char *fb_what_of(char *buf, size_t size, const char *op, const char *path)
{
	snprintf(buf, size, "%s %s", op, path);
	return buf;
}

/* ---- the identity ---- */

bool fb_identity(struct sbx *s, struct fb_ident *id)
{
	struct fb_state *fb = s->fb;
	pthread_mutex_lock(&fb->lock);
	bool known = fb->ident_known, failed = fb->ident_failed;
	*id = fb->ident;
	pthread_mutex_unlock(&fb->lock);
	if (known || failed)
		return known;
	char *out = NULL;
	size_t len = 0;
	int err = run(s, "who the sandbox's commands run as", "umask; id -u; id -g", false, &out,
		      &len);
	if (err) {
		log_info("%s: every new file gets a command of its own", sbx_last_error());
		return false;
	}
	/* "022\n1000\n1000\n": umask in octal, uid, gid */
	const char *p = out ? out : "";
	char *end;
	errno = 0;
	unsigned long mask = strtoul(p, &end, 8);
	bool ok = end != p;
	unsigned long uid = strtoul(p = end, &end, 10);
	ok = ok && end != p;
	unsigned long gid = strtoul(p = end, &end, 10);
	ok = ok && end != p && !errno && mask <= 0777 && uid < UINT32_MAX && gid < UINT32_MAX;
	free(out);
	pthread_mutex_lock(&fb->lock);
	if (ok) {
		fb->ident = (struct fb_ident){ .uid = (uid_t)uid, .gid = (gid_t)gid,
					       .file_mode = 0666 & ~(mode_t)mask };
		fb->ident_known = true;
	} else {
		fb->ident_failed = true;
	}
	*id = fb->ident;
	pthread_mutex_unlock(&fb->lock);
	if (!ok)
		log_warn("the sandbox's umask and id are unreadable: every new file gets a command of "
			 "its own");
	return ok;
}

/* ---- metadata ---- */

/* A stat by a command, kept for the next time (fallback_cache.c). */
static int lstat_now(struct sbx *s, const char *path, struct stat *st, char **target)
{
	struct stat tmp;
	char *t = NULL;
	if (!st)
		st = &tmp;
	uint64_t since = fb_cache_now(s);
	int err = fb_run_then_stat(s, FB_WHAT("stat", path), NULL, path, false, st, &t);
	if (!err)
		fb_cache_put(s, path, st, t, since);
	if (target)
		*target = t;
	else
		free(t);
	return err;
}

static int fb_lstat(struct sbx *s, const char *path, struct stat *st, char **target)
{
	fb_files_materialize(s, path, FB_EXACT);
	struct stat tmp;
	int r = fb_cache_lookup(s, path, st ? st : &tmp, target);
	if (r == -ENOENT)
		return sbx_fail(r, "stat %s: No such file or directory", path);
	return r ? lstat_now(s, path, st, target) : 0;
}

static int fb_readdir(struct sbx *s, const char *path, struct sbx_dirent **ents, size_t *n)
{
	fb_files_materialize(s, path, FB_CHILDREN);
	return fb_cache_readdir(s, path, ents, n);
}

bool fb_already_done(struct sbx *s, int err, int expected, const char *path, mode_t type,
		     struct stat *st)
{
	if (err != expected || !sbx_last_lost())
		return false;
	char saved[512];
	snprintf(saved, sizeof saved, "%s", sbx_last_error());
	struct stat now;
	int e = lstat_now(s, path, &now, NULL);
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
	fb_files_materialize(s, path, FB_EXACT);
	fb_cache_expect(s, path); /* its event may come before its answer */
	struct strbuf sb = STRBUF_INIT;
	strbuf_appendf(&sb, "mkdir -m %o -- ", mode & 07777);
	append_q(&sb, path);
	struct stat tmp;
	if (!st)
		st = &tmp;
	int err = fb_run_then_stat(s, FB_WHAT("mkdir", path), sb.data, path, false, st, NULL);
	strbuf_free(&sb);
	if (fb_already_done(s, err, -EEXIST, path, S_IFDIR, st))
		err = 0;
	if (!err) {
		fb_cache_own(s, FB_MADE, path, st);
		fb_made_add(s, path);
	}
	return err;
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
	int err = run(s, FB_WHAT(op, a), sb.data, false, NULL, NULL);
	strbuf_free(&sb);
	return err;
}

static int fb_rmdir(struct sbx *s, const char *path)
{
	fb_files_materialize(s, path, FB_BELOW);
	fb_cache_expect(s, path);
	int err = simple(s, "rmdir", "rmdir", path, NULL);
	if (fb_already_done(s, err, -ENOENT, path, 0, NULL))
		err = 0;
	if (!err) {
		fb_settle_forget(s, path);
		fb_cache_own(s, FB_GONE, path, NULL);
	}
	return err;
}

static int fb_symlink(struct sbx *s, const char *target, const char *path, struct stat *st)
{
	fb_files_materialize(s, path, FB_EXACT);
	fb_cache_expect(s, path);
	struct strbuf sb = STRBUF_INIT;
	strbuf_appends(&sb, "ln -s -T -- ");
	append_q(&sb, target);
	strbuf_appends(&sb, " ");
	append_q(&sb, path);
	struct stat tmp;
	if (!st)
		st = &tmp;
	int err = fb_run_then_stat(s, FB_WHAT("symlink", path), sb.data, path, false, st, NULL);
	strbuf_free(&sb);
	if (fb_already_done(s, err, -EEXIST, path, S_IFLNK, st))
		err = 0;
	if (!err)
		fb_cache_own(s, FB_MADE, path, st);
	return err;
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
	fb_files_materialize(s, from, FB_EXACT);
	fb_files_materialize(s, to, FB_EXACT);
	fb_cache_expect(s, from);
	fb_cache_expect(s, to);
	struct strbuf sb = STRBUF_INIT;
	strbuf_appends(&sb, "ln -T -- ");
	append_q(&sb, from);
	strbuf_appends(&sb, " ");
	append_q(&sb, to);
	struct stat tmp;
	if (!st)
		st = &tmp;
	int err = fb_run_then_stat(s, FB_WHAT("link", to), sb.data, to, false, st, NULL);
	strbuf_free(&sb);
	if (fb_already_done(s, err, -EEXIST, to, S_IFREG, st))
		err = 0;
	if (!err) {
		fb_cache_links_changed(s, st->st_ino);
		fb_cache_own(s, FB_SET, from, st); /* one more link */
		fb_cache_own(s, FB_MADE, to, st);
	}
	return err;
}

static int fb_statfs(struct sbx *s, const char *path, struct statvfs *sv)
{
	struct strbuf sb = STRBUF_INIT;
	strbuf_appends(&sb, "stat -f -c '%S %s %b %f %a %c %d %l' -- ");
	append_q(&sb, path);
	char *out = NULL;
	size_t len;
	const char *what = FB_WHAT("statfs", path);
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

void fb_append_touch_head(struct strbuf *sb, const char *flag, const struct timespec *ts)
{
	strbuf_appendf(sb, "touch -c -h %s ", flag);
	if (ts->tv_nsec == UTIME_NOW)
		return;
	long long sec = ts->tv_sec;
	long ns = ts->tv_nsec;
	if (sec < 0 && ns) /* -1 s + 0.5 s is "-0.5" */
		strbuf_appendf(sb, "-d @-%lld.%09ld ", -(sec + 1), 1000000000L - ns);
	else
		strbuf_appendf(sb, "-d @%lld.%09ld ", sec, ns);
}

/* `touch -c -h -a|-m [-d @S.N] -- P` for one time, nothing for UTIME_OMIT */
static void append_touch(struct strbuf *sb, const char *flag, const struct timespec *ts,
			 const char *path)
{
	if (ts->tv_nsec == UTIME_OMIT)
		return;
	if (sb->len)
		strbuf_appends(sb, " && ");
	fb_append_touch_head(sb, flag, ts);
	strbuf_appends(sb, "-- ");
	append_q(sb, path);
}

/* The attributes st will have after setting `valid` of want (times UTIME_NOW: now). */
void fb_apply_attrs(struct stat *st, unsigned valid, const struct stat *want)
{
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	if (valid & SBX_SET_MODE)
		st->st_mode = (st->st_mode & S_IFMT) | (want->st_mode & 07777);
	if (valid & SBX_SET_UID)
		st->st_uid = want->st_uid;
	if (valid & SBX_SET_GID)
		st->st_gid = want->st_gid;
	if ((valid & SBX_SET_ATIME) && want->st_atim.tv_nsec != UTIME_OMIT)
		st->st_atim = want->st_atim.tv_nsec == UTIME_NOW ? now : want->st_atim;
	if ((valid & SBX_SET_MTIME) && want->st_mtim.tv_nsec != UTIME_OMIT)
		st->st_mtim = want->st_mtim.tv_nsec == UTIME_NOW ? now : want->st_mtim;
	if (valid)
		st->st_ctim = now;
}

bool fb_mode_may_wait(mode_t from, mode_t to)
{
	mode_t added = to & ~from & 07777, removed = from & ~to & 07777;
	return !(removed & 0077) && !(added & 0700) && !((added | removed) & 07000);
}

bool fb_owner_unchanged(unsigned valid, const struct stat *want, const struct stat *cur)
{
	/* chown clears set-id bits even when the owner stays: then it is a change */
	return !(cur->st_mode & (S_ISUID | S_ISGID)) &&
	       (!(valid & SBX_SET_UID) || want->st_uid == cur->st_uid) &&
	       (!(valid & SBX_SET_GID) || want->st_gid == cur->st_gid);
}

static int fb_setattr(struct sbx *s, const char *path, unsigned valid, const struct stat *want,
		      struct stat *st)
{
	fb_files_materialize(s, path, FB_EXACT);
	struct stat tmp, cur;
	if (!st)
		st = &tmp;
	bool known = fb_cache_lstat(s, path, &cur, NULL) == 0;
	/* a chown to the owner the entry has is no change, nor a chmod by its owner to the mode
	 * it has */
	if (known && (valid & (SBX_SET_UID | SBX_SET_GID)) && fb_owner_unchanged(valid, want, &cur))
		valid &= ~(SBX_SET_UID | SBX_SET_GID);
	struct fb_ident id;
	if (known && (valid & SBX_SET_MODE) && (cur.st_mode & 07777) == (want->st_mode & 07777) &&
	    fb_identity(s, &id) && cur.st_uid == id.uid)
		valid &= ~SBX_SET_MODE;
	if (!valid && known) {
		*st = cur;
		return 0;
	}
	/* the times of an entry this client made, and a mode that only gives group and others
	 * more: queued (fallback_settle.c) */
	if (known && fb_made_has(s, path) &&
	    !(valid & ~(SBX_SET_MODE | SBX_SET_ATIME | SBX_SET_MTIME)) &&
	    (!(valid & SBX_SET_MODE) || fb_mode_may_wait(cur.st_mode & 07777,
							 want->st_mode & 07777))) {
		fb_apply_attrs(&cur, valid, want);
		fb_settle_queue(s, path, valid, want);
		fb_cache_own(s, FB_SET, path, &cur);
		*st = cur;
		return 0;
	}
	fb_cache_expect(s, path);
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
	int err = fb_run_then_stat(s, FB_WHAT("setattr", path), sb.len ? sb.data : NULL, path,
				   false, st, NULL);
	strbuf_free(&sb);
	fb_cache_own(s, FB_SET, path, err ? NULL : st);
	if (!err && (valid & (SBX_SET_UID | SBX_SET_GID)))
		fb_settle_forget(s, path); /* not ours any more: its changes cannot wait */
	return err;
}

/* ---- names with open files: unlink and rename ---- */

static int fb_unlink(struct sbx *s, const char *path)
{
	/* a file this client created and never sent: gone before the sandbox saw it */
	if (fb_files_forget_new(s, path))
		return 0;
	struct fb_held *h;
	int err = fb_files_hold(s, path, NULL, &h);
	if (err)
		return err;
	fb_cache_expect(s, path);
	err = simple(s, "unlink", "unlink", path, NULL);
	if (fb_already_done(s, err, -ENOENT, path, 0, NULL))
		err = 0;
	if (!err) {
		fb_settle_forget(s, path);
		fb_cache_own(s, FB_GONE, path, NULL);
	}
	fb_files_release(s, h, !err, path, NULL);
	return err;
}

static int fb_rename(struct sbx *s, const char *from, const char *to, unsigned flags)
{
	/* mv -n is a check-then-act race and mv cannot exchange: refuse, as sshfs does */
	if (flags)
		return sbx_fail(-EINVAL, "rename %s: flags %#x are not supported without the sbxd "
				"extensions", from, flags);
	struct fb_held *h;
	int err = fb_files_hold(s, from, to, &h);
	if (err)
		return err;
	fb_cache_expect(s, from);
	fb_cache_expect(s, to);
	err = simple(s, "rename", "mv -T", from, to);
	if (err == -ENOENT && sbx_last_lost()) {
		/* as fb_already_done, with both names: from gone and to there */
		char saved[512];
		snprintf(saved, sizeof saved, "%s", sbx_last_error());
		struct stat st;
		if (lstat_now(s, from, &st, NULL) == -ENOENT && !lstat_now(s, to, &st, NULL)) {
			log_info("%s: an earlier copy of this request did it (its answer was lost)",
				 saved);
			err = 0;
		} else {
			sbx_fail(err, "%s", saved);
		}
	}
	if (!err && strcmp(from, to) != 0) {
		/* the batch went in front of mv, under the old names */
		fb_settle_forget(s, from);
		fb_settle_forget(s, to);
		fb_made_move(s, from, to);
		fb_cache_renamed(s, from, to);
	}
	fb_files_release(s, h, !err, from, to);
	return err;
}

/* ---- the client's other requests ---- */

int sbx_fallback_check_dir(struct sbx *s, const char *path)
{
	struct stat st;
	int err = fb_lstat(s, path, &st, NULL);
	if (!err && S_ISLNK(st.st_mode))
		err = fb_run_then_stat(s, FB_WHAT("stat", path), NULL, path, true, &st, NULL);
	if (!err && !S_ISDIR(st.st_mode))
		err = -ENOTDIR;
	return err ? sbx_fail(err, "%s: %s", path, strerror(-err)) : 0;
}

/* Before a command, process, code or clone: everything this client did is in the sandbox. */
static void fb_settle(struct sbx *s)
{
	fb_files_materialize(s, "/", FB_BELOW);
	if (fb_settle_now(s, NULL))
		log_warn("%s: the sandbox may still show old modes or times", sbx_last_error());
}

static void fb_changed(struct sbx *s, const char *path)
{
	fb_cache_event(s, path);
}

static void fb_watching(struct sbx *s, bool healthy)
{
	fb_cache_watching(s, healthy);
}

void sbx_fallback_init(struct sbx *s)
{
	struct fb_state *fb = calloc(1, sizeof *fb);
	if (!fb)
		abort();
	pthread_mutex_init(&fb->lock, NULL);
	fb->settle = fb_settle_new();
	fb->cache = fb_cache_new();
	s->fb = fb;
}

void sbx_fallback_fini(struct sbx *s)
{
	struct fb_state *fb = s->fb;
	if (!fb)
		return;
	fb_settle_free(s);
	fb_cache_free(fb->cache);
	pthread_mutex_destroy(&fb->lock);
	free(fb);
	s->fb = NULL;
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
	.file_setattr = fb_file_setattr,
	.file_cached_stat = fb_file_cached_stat,
	.file_ftruncate = fb_file_ftruncate,
	.file_pin = fb_file_pin,
	.file_set_path = fb_file_set_path,
	.file_orphan = fb_file_orphan,
	.file_close = fb_file_close,
	.read_all = fb_read_all,
	.pread_path = fb_pread_path,
	.settle = fb_settle,
	.changed = fb_changed,
	.watching = fb_watching,
};
