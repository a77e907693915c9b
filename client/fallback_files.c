/* The fallback backend's open files and transfers (client/sandbox_fallback.c has the rest).
 *
 * Open files are local temporary copies (unlinked at once, only the fd is kept), one per
 * sandbox path shared by all open files of that path in one struct sbx, as a local filesystem
 * shares one inode: writes through one handle are seen through the others, O_APPEND writes land
 * at the copy's current end, and flush of any handle uploads it. Opening downloads the whole
 * file (/api/read in base64; above the container's 32 MiB read limit, ranged `dd | base64`
 * commands, which unlike /api/read/stream stay byte-exact for files the container would send
 * as text); reads and writes go to the copy; flush uploads it whole with /api/write if it
 * changed, in parts of UPLOAD_CHUNK joined by one command inside the sandbox when it is larger.
 * An upload failure leaves the copy dirty, so every later flush retries and reports, and a
 * writer's close reports it last; each failure is logged.
 *
 * New files. A command costs milliseconds, /api/write a fraction of one, and tar, cp and git
 * make thousands of files, each created, written, given its mode and times, and closed. So when
 * the filesystem knows the name is free (SBX_O_NEW: its listing says so), creating costs
 * nothing: the copy is the file, with attributes made up locally (st_ino 0: not known yet),
 * and the first flush makes it in the sandbox with its data by /api/write alone. That needs
 * the mode /api/write gives a new file (fb_identity: 0666 less the umask) to grant group and
 * others nothing the file's own mode denies, so its data is never readable by more than it
 * should be; otherwise, and whenever something else needs the file in the sandbox before that
 * (an operation on its name or directory, a command the client runs), it is made there first
 * as open(2) would have made it: empty, with its mode (materialize_locked). Until then it
 * exists only for this client: a process in the sandbox that makes the same name meanwhile
 * loses it to the upload. The mode and times set through the open file of a file this client
 * made (fchmod, futimens; a chown to the owner it has is no change) wait for the flush, which
 * queues them for the next batch (client/fallback_settle.c) after the data.
 *
 * A copy whose name goes away (unlink, rename over it; through this sandbox object or told by
 * sbx_file_orphan) is orphaned: it leaves the table, keeps serving its handles, and is never
 * uploaded again, so the name does not come back and the file that replaced it is not
 * overwritten. unlink and rename hold the locks of the copies they touch across the command,
 * so no upload to the old name can land after it. A rename moves the copies at and below the
 * old name to the new one.
 *
 * Lost answers: every request here is a read, a whole-file or whole-part /api/write (a repeat
 * writes the same bytes), the join of the parts (a repeat finds no parts and only reports the
 * size, which must be the file's), or the creation of a new file, which does nothing when the
 * name exists. */
#include "client/fallback.h"
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "client/shellquote.h"
#include "common/base64.h"
#include "common/jsonutil.h"
#include "common/log.h"
#include "common/strbuf.h"

#define CHUNK (16u << 20)        /* one ranged read command */
#define UPLOAD_CHUNK (16u << 20) /* one /api/write: far below the container's 128 MiB body */

/* ---- whole-file and ranged reads ---- */

/* Up to len bytes at off by `dd | base64` (no size limit, byte-exact). */
static ssize_t read_range(struct sbx *s, const char *path, void *buf, size_t len, off_t off)
{
	struct strbuf sb = STRBUF_INIT;
	strbuf_appendf(&sb, "dd bs=1M iflag=skip_bytes,count_bytes skip=%jd count=%zu status=none "
		       "if=", (intmax_t)off, len);
	shell_append_quoted(&sb, path);
	strbuf_appends(&sb, " | base64 -w0");
	char *out = NULL;
	size_t n = 0;
	const char *what = FB_WHAT("read", path);
	int err = fb_run(s, what, sb.data, len, true, &out, &n);
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

ssize_t fb_pread_path(struct sbx *s, const char *path, void *buf, size_t len, off_t off)
{
	fb_files_materialize(s, path, FB_EXACT);
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
	const char *what = FB_WHAT("read", path);
	int err = sbx_call_unsettled(s, what, "POST", "/api/read", b, true,
				     sbx_deadline(s, size_hint), &j);
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

int fb_read_all(struct sbx *s, const char *path, char **data, size_t *len)
{
	fb_files_materialize(s, path, FB_EXACT);
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

/* ---- writes ---- */

/* /api/write of len bytes to path: the whole file, created if missing (with its directories,
 * which the filesystem only asks for when they exist). */
static int write_whole(struct sbx *s, const char *path, const char *raw, size_t len,
		       const char *what)
{
	/* the body is built by hand: the base64 text is the bulk and is written only once */
	cJSON *jp = cJSON_CreateString(path);
	char *qpath = json_print(jp);
	cJSON_Delete(jp);
	if (!qpath)
		return sbx_fail(-ENOMEM, "%s: out of memory", what);
	struct strbuf body = STRBUF_INIT;
	strbuf_reserve(&body, base64_encoded_len(len) + strlen(qpath) + 64);
	strbuf_appendf(&body, "{\"path\":%s,\"encoding\":\"base64\",\"content\":\"", qpath);
	free(qpath);
	body.len += base64_encode(raw, len, body.data + body.len);
	strbuf_appends(&body, "\"}");
	struct http_request req = {
		.method = "POST",
		.path = "/api/write",
		.body = body.data,
		.body_len = body.len,
		.timeout_ms = sbx_deadline(s, len),
		.idempotent = true, /* the whole file: a repeat writes the same bytes */
	};
	struct http_response resp = { 0 };
	int err = http_request_sync(s->http, &req, &resp);
	strbuf_free(&body);
	if (err)
		err = sbx_fail(err, "%s: %s", what, resp.errmsg[0] ? resp.errmsg : strerror(-err));
	else if (resp.status < 200 || resp.status > 299)
		err = sbx_fail_response(what, resp.status, resp.body, resp.body_len);
	http_response_clear(&resp);
	return err;
}

static int pread_all(int fd, char *buf, size_t len, off_t off, const char *what)
{
	for (size_t done = 0; done < len;) {
		ssize_t n = pread(fd, buf + done, len - done, off + (off_t)done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int e = n < 0 ? errno : EIO;
			return sbx_fail(-e, "%s: local copy: %s", what, strerror(e));
		}
		done += (size_t)n;
	}
	return 0;
}

/* A file larger than one /api/write: its parts go beside it (the same filesystem, so the join
 * is a local copy) under names no one else uses, and one command joins them into the file in
 * place (the inode and mode stay, as /api/write keeps them) and removes them. */
static int upload_parts(struct sbx *s, const char *path, int fd, size_t len, const char *what)
{
	char key[HTTP_KEY_MAX];
	http_client_new_key(s->http, key);
	const char *slash = strrchr(path, '/');
	size_t dirlen = slash ? (size_t)(slash - path) : 0;
	size_t nparts = (len + UPLOAD_CHUNK - 1) / UPLOAD_CHUNK;
	struct strbuf parts = STRBUF_INIT, last = STRBUF_INIT;
	char *buf = malloc(UPLOAD_CHUNK);
	if (!buf)
		return sbx_fail(-ENOMEM, "%s: out of memory", what);
	int err = 0;
	size_t sent = 0;
	for (size_t i = 0; i < nparts && !err; i++) {
		char *part;
		if (asprintf(&part, "%.*s/.sbxfs-part-%s-%zu", (int)dirlen, path, key, i) < 0)
			abort();
		fb_cache_expect(s, part); /* made and removed here: no news */
		size_t n = len - i * UPLOAD_CHUNK < UPLOAD_CHUNK ? len - i * UPLOAD_CHUNK : UPLOAD_CHUNK;
		err = pread_all(fd, buf, n, (off_t)(i * UPLOAD_CHUNK), what);
		if (!err)
			err = write_whole(s, part, buf, n, what);
		if (!err || sbx_last_lost()) {
			strbuf_appends(&parts, " ");
			shell_append_quoted(&parts, part);
			sent++;
		}
		if (i + 1 == nparts) {
			strbuf_appends(&last, " ");
			shell_append_quoted(&last, part);
		}
		free(part);
	}
	free(buf);
	struct strbuf cmd = STRBUF_INIT;
	if (err) {
		/* what was sent goes again: nothing may stay behind */
		char msg[512];
		snprintf(msg, sizeof msg, "%s", sbx_last_error());
		if (sent) {
			strbuf_appendf(&cmd, "rm -f --%s", parts.data);
			fb_run(s, what, cmd.data, 0, false, NULL, NULL);
		}
		sbx_fail(err, "%s", msg);
		goto out;
	}
	/* a repeat finds no parts left, and only reports the size */
	strbuf_appendf(&cmd, "if [ -e%s ]; then cat --%s > ", last.data, parts.data);
	shell_append_quoted(&cmd, path);
	strbuf_appendf(&cmd, "; r=$?; rm -f --%s; [ $r = 0 ] || exit $r; fi; stat -L -c %%s -- ",
		       parts.data);
	shell_append_quoted(&cmd, path);
	char *out = NULL;
	size_t olen = 0;
	err = fb_run(s, what, cmd.data, len, false, &out, &olen);
	if (!err) {
		char *end;
		unsigned long long got = strtoull(out, &end, 10);
		if (end == out || got != len)
			err = sbx_fail(-EIO, "%s: the sandbox's file has %s bytes after joining the "
				       "parts, not %zu", what, end == out ? "an unknown number of" :
				       out, len);
	}
	free(out);
out:
	strbuf_free(&cmd);
	strbuf_free(&parts);
	strbuf_free(&last);
	return err;
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
	/* a new file the sandbox does not have yet (SBX_O_NEW); read without the lock only to
	 * pick copies for fb_files_materialize, which looks again under it */
	atomic_bool pending_create;
	int fd;
	bool loaded;            /* fd holds the file; else the next opener downloads it */
	bool dirty;             /* the copy differs from what the sandbox has */
	bool modified;          /* written since st was read: times come from the copy */
	bool created;           /* this client made the file: its mode and times may wait */
	mode_t create_mode;     /* the mode it was created with */
	mode_t sent_mode;       /* the mode the sandbox has, with what is queued for it */
	bool st_known;
	struct stat st;         /* attributes as last read or set, deferred ones included */
	unsigned pend;          /* SBX_SET_MODE/ATIME/MTIME set but not yet queued */
	struct stat pend_st;    /* their values (times may be UTIME_NOW) */
};

struct fb_file {
	struct sbx_file base;
	struct fb_copy *c;
	int flags;
};

static bool writable(int flags)
{
	return (flags & O_ACCMODE) != O_RDONLY;
}

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

/* Sends the whole copy to its path. */
static int upload(struct fb_copy *c, const char *what)
{
	struct stat lst;
	if (fstat(c->fd, &lst))
		return sbx_fail(-errno, "%s: local copy: %s", what, strerror(errno));
	size_t len = (size_t)lst.st_size;
	if (len > UPLOAD_CHUNK)
		return upload_parts(c->s, c->path, c->fd, len, what);
	char *raw = malloc(len ? len : 1);
	if (!raw)
		return sbx_fail(-ENOMEM, "%s: out of memory", what);
	int err = pread_all(c->fd, raw, len, 0, what);
	if (!err)
		err = write_whole(c->s, c->path, raw, len, what);
	free(raw);
	return err;
}

/* The attributes of the file as this client sees it: the last known ones with the copy's
 * size (and, once written, its times) and what is deferred. */
static void local_stat(struct fb_copy *c, struct stat *st)
{
	*st = c->st;
	struct stat lst;
	if (!c->loaded || fstat(c->fd, &lst))
		return;
	st->st_size = lst.st_size;
	st->st_blocks = (lst.st_size + 511) / 512;
	if (c->modified) {
		st->st_mtim = lst.st_mtim;
		st->st_ctim = lst.st_ctim;
	}
}

/* Makes a new file the sandbox does not have yet, as open(2) would have: empty, with the mode
 * it was created with (what is deferred follows with the flush). A name that exists already
 * (made in the sandbox meanwhile) is left as it is, and so is a repeat's. */
static int materialize_locked(struct fb_copy *c)
{
	if (!atomic_load(&c->pending_create) || atomic_load(&c->orphaned))
		return 0;
	struct strbuf q = STRBUF_INIT, pre = STRBUF_INIT;
	shell_append_quoted(&q, c->path);
	strbuf_appendf(&pre, "{ [ -e %s ] || [ -L %s ] || { set -C && : > %s && chmod %o -- %s; }; }",
		       q.data, q.data, q.data, (unsigned)c->create_mode, q.data);
	struct stat st;
	fb_cache_expect(c->s, c->path);
	int err = fb_run_then_stat(c->s, FB_WHAT("create", c->path), pre.data, c->path, false,
				   &st, NULL);
	strbuf_free(&q);
	strbuf_free(&pre);
	if (!err && !S_ISREG(st.st_mode))
		err = sbx_fail(-EEXIST, "create %s: something else was made under that name in the "
			       "sandbox meanwhile", c->path);
	if (err)
		return err;
	atomic_store(&c->pending_create, false);
	c->sent_mode = st.st_mode & 07777;
	/* the real identity; the rest is what this client set */
	c->st.st_ino = st.st_ino;
	c->st.st_dev = st.st_dev;
	c->st.st_nlink = st.st_nlink;
	fb_cache_own(c->s, FB_MADE, c->path, &st);
	fb_made_add(c->s, c->path);
	return 0;
}

/* Uploads the copy if it changed and its name still exists, making a new file in the sandbox
 * first where needed, and queues its deferred attributes. */
static int flush_locked(struct fb_copy *c)
{
	if (atomic_load(&c->orphaned)) {
		c->pend = 0;
		return 0;
	}
	bool pending = atomic_load(&c->pending_create);
	if (!c->dirty && !pending && !c->pend)
		return 0;
	struct sbx *s = c->s;
	const char *what = FB_WHAT("write", c->path);
	mode_t mode = c->st.st_mode & 07777;
	struct fb_ident id;
	bool fresh = false; /* /api/write makes the file */
	int err = 0;
	if (pending) {
		if (fb_identity(s, &id) && !(id.file_mode & ~mode & 077))
			fresh = true;
		else if ((err = materialize_locked(c)))
			goto failed;
	}
	bool sent = c->dirty || fresh;
	if (sent) {
		fb_settle_before_write(s, c->path);
		fb_cache_expect(s, c->path); /* its events may come before its answer */
		if ((err = upload(c, what)))
			goto failed;
		c->dirty = false;
	}
	if (fresh) {
		atomic_store(&c->pending_create, false);
		c->sent_mode = id.file_mode; /* what /api/write gave it */
		c->pend |= SBX_SET_MODE;
		c->pend_st.st_mode = mode;
		fb_made_add(s, c->path);
	}
	if ((c->pend & SBX_SET_MODE) && (c->pend_st.st_mode & 07777) == c->sent_mode)
		c->pend &= ~SBX_SET_MODE;
	/* a mode that must not wait (fb_mode_may_wait) is in place when the flush returns */
	bool at_once = (c->pend & SBX_SET_MODE) &&
		       !fb_mode_may_wait(c->sent_mode, c->pend_st.st_mode & 07777);
	if (c->pend)
		fb_settle_queue(s, c->path, c->pend, &c->pend_st);
	if (c->pend & SBX_SET_MODE)
		c->sent_mode = c->pend_st.st_mode & 07777;
	if (at_once && (err = fb_settle_now(s, c->path)))
		goto failed;
	if (sent || c->pend) {
		/* what the next stat would say, but the inode of a new file and the sandbox's
		 * clock for an upload's mtime (fallback_cache.c) */
		struct stat view;
		local_stat(c, &view);
		if (fresh)
			view.st_ino = 0;
		fb_cache_own(s, fresh ? FB_MADE : sent ? FB_WRITTEN : FB_SET, c->path, &view);
	}
	c->pend = 0;
	return 0;
failed:
	log_warn("%s", sbx_last_error());
	return err;
}

/* Reads the attributes of the copy's file (following a final symlink, as open did). */
static int copy_stat_locked(struct fb_copy *c)
{
	struct stat st;
	int err = fb_run_then_stat(c->s, FB_WHAT("stat", c->path), NULL, c->path, true, &st, NULL);
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

/* The copy of path, referenced and locked; a new one (empty, not loaded) when none is open,
 * and then *made is set. */
static int copy_get(struct sbx *s, const char *path, const char *what, struct fb_copy **out,
		    bool *made)
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
	*made = !c;
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

/* The copy holds the file (a lazy open downloads it only when something needs it). */
static int load_locked(struct fb_copy *c, const char *what)
{
	if (c->loaded)
		return 0;
	int err = download(c, c->st_known ? (size_t)c->st.st_size : 0, what);
	c->loaded = !err;
	return err;
}

/* Data changed after a deferred mtime: the write's time wins, as on a local disk. */
static void data_changed_locked(struct fb_copy *c)
{
	c->dirty = c->modified = true;
	c->pend &= ~SBX_SET_MTIME;
}

static int new_file(struct fb_copy *c, int flags, struct sbx_file **out)
{
	struct fb_file *f = calloc(1, sizeof *f);
	if (!f)
		return sbx_fail(-ENOMEM, "open %s: out of memory", c->path);
	f->base.ops = &sbx_fallback_ops;
	f->base.s = c->s;
	f->c = c;
	f->flags = flags;
	*out = &f->base;
	return 0;
}

/* Opening a file this client created that the sandbox does not have yet: the copy is the
 * file. 1 when path is no such file. */
static int open_pending(struct sbx *s, const char *path, int flags, struct sbx_file **out,
			struct stat *st)
{
	pthread_mutex_lock(&s->copies_lock);
	struct fb_copy *c = find_locked(s, path);
	bool pending = c && atomic_load(&c->pending_create);
	if (pending)
		c->refs++;
	pthread_mutex_unlock(&s->copies_lock);
	if (!pending)
		return 1;
	pthread_mutex_lock(&c->lock);
	int err = 0;
	if (!atomic_load(&c->pending_create))
		err = 1; /* made in the sandbox meanwhile: open it there */
	else if ((flags & O_CREAT) && (flags & O_EXCL))
		err = sbx_fail(-EEXIST, "open %s: File exists", path);
	else if ((flags & O_TRUNC) && ftruncate(c->fd, 0))
		err = sbx_fail(-errno, "open %s: local copy: %s", path, strerror(errno));
	if (!err && (flags & O_TRUNC))
		data_changed_locked(c);
	if (!err)
		err = new_file(c, flags, out);
	if (!err && st)
		local_stat(c, st);
	pthread_mutex_unlock(&c->lock);
	if (err)
		copy_put(c);
	return err;
}

/* A new file (SBX_O_NEW) made locally only; 1 when it cannot be (then open as usual). */
static int open_new(struct sbx *s, const char *path, int flags, mode_t mode,
		    struct sbx_file **out, struct stat *st)
{
	struct fb_ident id;
	if (!fb_identity(s, &id))
		return 1;
	struct fb_copy *c;
	bool made;
	int err = copy_get(s, path, FB_WHAT("open", path), &c, &made);
	if (err)
		return err;
	if (!made) {
		/* another open file has that name: it exists after all */
		pthread_mutex_unlock(&c->lock);
		copy_put(c);
		return 1;
	}
	atomic_store(&c->pending_create, true);
	c->created = c->loaded = c->st_known = true;
	c->create_mode = mode & 07777;
	c->st = (struct stat){ .st_mode = S_IFREG | (mode & 07777), .st_nlink = 1,
			       .st_uid = id.uid, .st_gid = id.gid, .st_blksize = 4096 };
	clock_gettime(CLOCK_REALTIME, &c->st.st_mtim);
	c->st.st_atim = c->st.st_ctim = c->st.st_mtim;
	err = new_file(c, flags & ~(O_CREAT | O_EXCL), out);
	if (!err && st)
		*st = c->st;
	pthread_mutex_unlock(&c->lock);
	if (err)
		copy_put(c);
	return err;
}

/* Opening. A read-only open without O_CREAT/O_TRUNC is one /api/read (it fails for a missing
 * file all the same) and leaves the attributes unknown until fstat or pin asks; every other
 * open is the open command chained with a stat, then the download if the file is not empty.
 * A copy other files of the path already share is reused as it is while it holds unuploaded
 * writes (the sandbox's file is older), else refreshed, so an open sees the sandbox's file. */
int fb_file_open(struct sbx *s, const char *path, int flags, mode_t mode,
		 struct sbx_file **out, struct stat *st)
{
	const char *what = FB_WHAT("open", path);
	/* a name known to be free: the caller's listing says so, or what this client knows */
	struct stat tmp;
	bool hint_new = (flags & O_CREAT) && (flags & (O_EXCL | O_TRUNC)) &&
			((flags & SBX_O_NEW) || fb_cache_lstat(s, path, &tmp, NULL) == -ENOENT);
	flags &= ~SBX_O_NEW;
	int err = open_pending(s, path, flags, out, st);
	if (err <= 0)
		return err;
	if (hint_new && (err = open_new(s, path, flags, mode, out, st)) <= 0)
		return err;
	bool lazy = (flags & O_ACCMODE) == O_RDONLY && !(flags & (O_CREAT | O_TRUNC));
	bool excl = (flags & O_CREAT) && (flags & O_EXCL);
	struct stat now = { 0 };
	/* A regular file this client knows (fallback_cache.c) needs no command to be opened for
	 * writing: the download tells that it is still there, and O_TRUNC is a write like any
	 * other, sent by the flush (so until then the sandbox keeps the old content). */
	bool existed = fb_cache_lstat(s, path, &now, NULL) == 0;
	bool known = existed && S_ISREG(now.st_mode) && !lazy;
	if (existed && excl)
		return sbx_fail(-EEXIST, "%s: File exists", what);
	if (lazy)
		now = (struct stat){ 0 }; /* attributes unknown: see sandbox.h */
	if (!lazy && !known) {
		struct strbuf sb = STRBUF_INIT;
		append_open_cmd(&sb, path, flags, mode);
		if (flags & (O_CREAT | O_TRUNC))
			fb_cache_expect(s, path);
		err = fb_run_then_stat(s, what, sb.len ? sb.data : NULL, path, true, &now, NULL);
		strbuf_free(&sb);
		/* an O_EXCL create whose answer was lost: the empty file it made is ours */
		if (excl && fb_already_done(s, err, -EEXIST, path, S_IFREG, &now))
			err = now.st_size ? sbx_fail(-EEXIST, "%s: File exists", what) : 0;
		if (!err && S_ISDIR(now.st_mode))
			err = sbx_fail(-EISDIR, "%s: is a directory", what);
		if (err)
			return err;
		if (flags & (O_CREAT | O_TRUNC))
			fb_cache_own(s, existed ? FB_SET : FB_MADE, path, &now);
	}
	struct fb_copy *c = NULL;
	bool made;
	if ((err = copy_get(s, path, what, &c, &made)))
		return err;
	if (excl) {
		c->created = true;
		c->create_mode = mode & 07777;
		fb_made_add(s, path);
	} else if (made && fb_made_has(s, path)) {
		c->created = true; /* made by this client earlier */
	}
	if (!lazy) {
		c->st = now;
		c->st_known = true;
		c->sent_mode = now.st_mode & 07777;
	}
	if (flags & O_TRUNC) {
		/* the sandbox's file is empty now (or will be, at the flush), and so is the copy */
		err = ftruncate(c->fd, 0) ? sbx_fail(-errno, "%s: local copy: %s", what,
						     strerror(errno)) : 0;
		c->loaded = !err;
		c->dirty = c->modified = known;
		if (known)
			c->pend &= ~SBX_SET_MTIME;
		if (known)
			now.st_size = now.st_blocks = 0;
	} else if (lazy && !c->dirty) {
		/* downloaded by the first read: a file the kernel reads from its page cache
		 * needs no download at all */
		c->loaded = c->st_known = false;
		c->modified = false;
	} else if (!c->loaded || !c->dirty) {
		c->loaded = false;
		if (now.st_size == 0)
			err = ftruncate(c->fd, 0) ? sbx_fail(-errno, "%s: local copy: %s", what,
							     strerror(errno)) : 0;
		else
			err = download(c, (size_t)now.st_size, what);
		c->loaded = !err;
		c->dirty = c->modified = false;
	}
	if (!err)
		err = new_file(c, flags, out);
	pthread_mutex_unlock(&c->lock);
	if (err) {
		copy_put(c);
		return err;
	}
	if (st)
		*st = now;
	return 0;
}

ssize_t fb_file_pread(struct sbx_file *base, void *buf, size_t len, off_t off)
{
	struct fb_file *f = (struct fb_file *)base;
	struct fb_copy *c = f->c;
	if ((f->flags & O_ACCMODE) == O_WRONLY)
		return sbx_fail(-EBADF, "read %s: the file is open write-only", c->path);
	pthread_mutex_lock(&c->lock);
	int err = load_locked(c, FB_WHAT("read", c->path));
	if (err) {
		pthread_mutex_unlock(&c->lock);
		return err;
	}
	ssize_t n;
	do
		n = pread(c->fd, buf, len, off);
	while (n < 0 && errno == EINTR);
	int e = errno;
	pthread_mutex_unlock(&c->lock);
	return n >= 0 ? n : sbx_fail(-e, "read: local copy: %s", strerror(e));
}

ssize_t fb_file_pwrite(struct sbx_file *base, const void *buf, size_t len, off_t off)
{
	struct fb_file *f = (struct fb_file *)base;
	struct fb_copy *c = f->c;
	if ((f->flags & O_ACCMODE) == O_RDONLY)
		return sbx_fail(-EBADF, "write: the file is open read-only");
	pthread_mutex_lock(&c->lock);
	int err = load_locked(c, FB_WHAT("write", c->path));
	struct stat lst;
	/* O_APPEND: at the end of the shared copy, whatever the other writers did */
	if (!err && (f->flags & O_APPEND) && fstat(c->fd, &lst) == 0)
		off = lst.st_size;
	else if (!err && (f->flags & O_APPEND))
		err = sbx_fail(-errno, "write: local copy: %s", strerror(errno));
	if (!err && (err = write_all_fd(c->fd, buf, len, off)))
		err = sbx_fail(err, "write %s: local copy: %s", c->path, strerror(-err));
	if (!err)
		data_changed_locked(c);
	pthread_mutex_unlock(&c->lock);
	return err ? err : (ssize_t)len;
}

int fb_file_flush(struct sbx_file *base)
{
	struct fb_copy *c = ((struct fb_file *)base)->c;
	pthread_mutex_lock(&c->lock);
	int err = flush_locked(c);
	pthread_mutex_unlock(&c->lock);
	return err;
}

/* /api/write is the only way to the sandbox's disk; fsync also applies the file's queued
 * attribute changes, which close leaves to the next batch. */
int fb_file_fsync(struct sbx_file *base, bool datasync)
{
	struct fb_copy *c = ((struct fb_file *)base)->c;
	pthread_mutex_lock(&c->lock);
	int err = flush_locked(c);
	if (!err && !datasync && !atomic_load(&c->orphaned))
		err = fb_settle_now(c->s, c->path);
	pthread_mutex_unlock(&c->lock);
	return err;
}

int fb_file_fstat(struct sbx_file *base, struct stat *st)
{
	struct fb_copy *c = ((struct fb_file *)base)->c;
	pthread_mutex_lock(&c->lock);
	int err = 0;
	if (!c->st_known && !atomic_load(&c->orphaned))
		err = copy_stat_locked(c);
	if (!err && c->st_known) {
		local_stat(c, st);
	} else if (!err) {
		/* orphaned before anyone asked for its attributes (no pin): the copy's */
		struct stat lst;
		if (fstat(c->fd, &lst))
			err = sbx_fail(-errno, "fstat: local copy: %s", strerror(errno));
		*st = lst;
		st->st_mode = S_IFREG | 0644;
		st->st_nlink = 0;
	}
	pthread_mutex_unlock(&c->lock);
	return err;
}

int fb_file_setattr(struct sbx_file *base, unsigned valid, const struct stat *want,
		    struct stat *st)
{
	struct fb_file *f = (struct fb_file *)base;
	struct fb_copy *c = f->c;
	pthread_mutex_lock(&c->lock);
	struct stat cur;
	local_stat(c, &cur);
	/* what cannot fail on a file this client made: its mode and times, an unchanged owner */
	bool ok = c->created && c->st_known && writable(f->flags) && !atomic_load(&c->orphaned) &&
		  !(valid & ~(SBX_SET_MODE | SBX_SET_ATIME | SBX_SET_MTIME | SBX_SET_UID |
			      SBX_SET_GID)) &&
		  fb_owner_unchanged(valid, want, &cur);
	if (ok) {
		unsigned defer = valid & (SBX_SET_MODE | SBX_SET_ATIME | SBX_SET_MTIME);
		c->pend |= defer;
		if (defer & SBX_SET_MODE)
			c->pend_st.st_mode = want->st_mode;
		if (defer & SBX_SET_ATIME)
			c->pend_st.st_atim = want->st_atim;
		if (defer & SBX_SET_MTIME) {
			c->pend_st.st_mtim = want->st_mtim;
			/* the copy's times no longer count: the mtime is the one set */
			if (c->modified) {
				c->st.st_mtim = cur.st_mtim;
				c->st.st_ctim = cur.st_ctim;
				c->modified = false;
			}
		}
		fb_apply_attrs(&c->st, defer, want);
		if (st)
			local_stat(c, st);
	}
	pthread_mutex_unlock(&c->lock);
	return ok ? 0 : sbx_fail(-ENOSYS, "setattr %s: set by path", c->path);
}

int fb_file_cached_stat(struct sbx_file *base, struct stat *st)
{
	struct fb_file *f = (struct fb_file *)base;
	struct fb_copy *c = f->c;
	pthread_mutex_lock(&c->lock);
	bool known = c->st_known && writable(f->flags);
	if (known)
		local_stat(c, st);
	pthread_mutex_unlock(&c->lock);
	return known ? 0 : -EAGAIN;
}

int fb_file_ftruncate(struct sbx_file *base, off_t size)
{
	struct fb_file *f = (struct fb_file *)base;
	struct fb_copy *c = f->c;
	if ((f->flags & O_ACCMODE) == O_RDONLY)
		return sbx_fail(-EBADF, "truncate: the file is open read-only");
	pthread_mutex_lock(&c->lock);
	int err = load_locked(c, FB_WHAT("truncate", c->path));
	if (err) {
		pthread_mutex_unlock(&c->lock);
		return err;
	}
	err = ftruncate(c->fd, size) ? -errno : 0;
	if (!err)
		data_changed_locked(c);
	pthread_mutex_unlock(&c->lock);
	return err ? sbx_fail(err, "truncate: local copy: %s", strerror(-err)) : 0;
}

/* The data and the attributes must be read while the name exists. */
int fb_file_pin(struct sbx_file *base)
{
	struct fb_copy *c = ((struct fb_file *)base)->c;
	pthread_mutex_lock(&c->lock);
	int err = 0;
	if (!atomic_load(&c->orphaned)) {
		err = c->st_known ? 0 : copy_stat_locked(c);
		if (!err)
			err = load_locked(c, FB_WHAT("read", c->path));
	}
	pthread_mutex_unlock(&c->lock);
	return err;
}

/* A copy already under the new name belongs to the file the rename replaced: orphaned here (a
 * rename through fb_rename did that already, with the copy locked against a racing upload). */
int fb_file_set_path(struct sbx_file *base, const char *path)
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

int fb_file_orphan(struct sbx_file *base)
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
int fb_file_close(struct sbx_file *base)
{
	struct fb_file *f = (struct fb_file *)base;
	struct fb_copy *c = f->c;
	int err = 0;
	if (writable(f->flags)) {
		pthread_mutex_lock(&c->lock);
		err = flush_locked(c);
		pthread_mutex_unlock(&c->lock);
	}
	copy_put(c);
	free(f);
	return err;
}

/* ---- new files the sandbox needs now ---- */

static bool at_or_below(const char *path, const char *top)
{
	size_t n = strlen(top);
	if (n == 1 && top[0] == '/')
		return true;
	return strncmp(path, top, n) == 0 && (path[n] == 0 || path[n] == '/');
}

static bool in_scope(const char *path, const char *top, enum fb_scope scope)
{
	if (scope == FB_BELOW)
		return at_or_below(path, top);
	if (scope == FB_EXACT)
		return strcmp(path, top) == 0;
	const char *slash = strrchr(path, '/');
	return slash && (size_t)(slash - path) == strlen(top) && strncmp(path, top, strlen(top)) == 0;
}

void fb_files_materialize(struct sbx *s, const char *path, enum fb_scope scope)
{
	pthread_mutex_lock(&s->copies_lock);
	size_t n = 0;
	for (struct fb_copy *c = s->copies; c; c = c->next)
		n += atomic_load(&c->pending_create) && in_scope(c->path, path, scope);
	struct fb_copy **v = n ? malloc(n * sizeof *v) : NULL;
	if (n && !v)
		abort();
	size_t cap = n;
	n = 0;
	for (struct fb_copy *c = s->copies; c && n < cap; c = c->next) {
		if (atomic_load(&c->pending_create) && in_scope(c->path, path, scope)) {
			c->refs++;
			v[n++] = c;
		}
	}
	pthread_mutex_unlock(&s->copies_lock);
	for (size_t i = 0; i < n; i++) {
		pthread_mutex_lock(&v[i]->lock);
		if (materialize_locked(v[i]))
			log_warn("%s", sbx_last_error());
		pthread_mutex_unlock(&v[i]->lock);
		copy_put(v[i]);
	}
	free(v);
}

bool fb_files_forget_new(struct sbx *s, const char *path)
{
	pthread_mutex_lock(&s->copies_lock);
	struct fb_copy *c = find_locked(s, path);
	if (c)
		c->refs++;
	pthread_mutex_unlock(&s->copies_lock);
	if (!c)
		return false;
	pthread_mutex_lock(&c->lock);
	/* the sandbox may have made the name since the listing said it was free: then its file
	 * came after this unlink, and stays */
	bool pending = atomic_load(&c->pending_create);
	if (pending) {
		pthread_mutex_lock(&s->copies_lock);
		orphan_locked(s, c);
		pthread_mutex_unlock(&s->copies_lock);
	}
	pthread_mutex_unlock(&c->lock);
	copy_put(c);
	return pending;
}

/* ---- names with open files: unlink and rename ---- */

struct fb_held {
	size_t n;
	struct held {
		struct fb_copy *c;
		bool moved;     /* below `from` (else at or below the replaced `to`) */
	} v[];
};

static int held_cmp(const void *a, const void *b)
{
	uintptr_t x = (uintptr_t)((const struct held *)a)->c;
	uintptr_t y = (uintptr_t)((const struct held *)b)->c;
	return x < y ? -1 : x > y;
}

int fb_files_hold(struct sbx *s, const char *from, const char *to, struct fb_held **out)
{
	pthread_mutex_lock(&s->copies_lock);
	size_t cnt = 0;
	for (struct fb_copy *c = s->copies; c; c = c->next)
		cnt++;
	struct fb_held *h = calloc(1, sizeof *h + cnt * sizeof h->v[0]);
	if (!h) {
		pthread_mutex_unlock(&s->copies_lock);
		return sbx_fail(-ENOMEM, "rename %s: out of memory", from);
	}
	for (struct fb_copy *c = s->copies; c; c = c->next) {
		bool moved = to && at_or_below(c->path, from);
		if (moved || at_or_below(c->path, to ? to : from)) {
			c->refs++;
			h->v[h->n++] = (struct held){ c, moved };
		}
	}
	pthread_mutex_unlock(&s->copies_lock);
	if (h->n > 1)
		qsort(h->v, h->n, sizeof h->v[0], held_cmp);
	for (size_t i = 0; i < h->n; i++) {
		struct fb_copy *c = h->v[i].c;
		pthread_mutex_lock(&c->lock);
		/* the command must find what this client made */
		if (materialize_locked(c))
			log_warn("%s", sbx_last_error());
		/* a reader's attributes and data, while the name still leads to them */
		if (!h->v[i].moved && !atomic_load(&c->orphaned)) {
			if (!c->st_known)
				copy_stat_locked(c);
			load_locked(c, FB_WHAT("read", c->path));
		}
	}
	*out = h;
	return 0;
}

/* After a successful unlink or rename the replaced copies become private, the moved ones take
 * their new names. */
void fb_files_release(struct sbx *s, struct fb_held *h, bool done, const char *from,
		      const char *to)
{
	if (done) {
		pthread_mutex_lock(&s->copies_lock);
		for (size_t i = 0; i < h->n; i++) {
			struct fb_copy *c = h->v[i].c;
			if (!h->v[i].moved) {
				orphan_locked(s, c);
				continue;
			}
			char *p;
			if (strcmp(from, to) == 0 || atomic_load(&c->orphaned) ||
			    asprintf(&p, "%s%s", to, c->path + strlen(from)) < 0)
				continue;
			free(c->path);
			c->path = p;
		}
		pthread_mutex_unlock(&s->copies_lock);
	}
	for (size_t i = 0; i < h->n; i++)
		pthread_mutex_unlock(&h->v[i].c->lock);
	for (size_t i = 0; i < h->n; i++)
		copy_put(h->v[i].c);
	free(h);
}
