/* The extensions backend: sbxd's /api/x/ routes, one round trip per operation.
 *
 * Open files. A writable open gets a server-side handle at once (/api/x/open). A read-only
 * open without O_CREAT/O_TRUNC is lazy: no round trip, reads go by path until sbx_file_pin()
 * (called before the entry is removed or replaced) opens a real handle, so the common
 * open-read-close costs only the reads. Writes are buffered per file while they are
 * contiguous, up to WBUF_MAX, and go out as one PUT /api/x/pwrite; anything that must see them
 * (pread, fstat, ftruncate, fsync, close, a non-contiguous write) flushes first. One mutex
 * per file serialises its requests: a file's operations are ordered as its callers issued
 * them, while different files proceed in parallel.
 *
 * Exactly once. Every request that changes the file through its handle carries an
 * idempotency key and the handle's next write sequence number (docs/protocol.md): the client
 * may repeat it after a lost answer, and a copy that turns up late at the server, after a
 * later write, is refused there instead of overwriting newer data. A flush that fails keeps
 * its bytes, deferred attributes, key and number: its error is reported once (by flush, fsync
 * or close), and the next flush sends the very same request again, so it is carried out once
 * whether or not the lost one had been. Until then nothing is added to the buffer (a repeat
 * must be the same request). A handle whose close fails is left to the lease's heartbeat to
 * close (client/lease.c). */
#include "client/sandbox_impl.h"
#include "client/entry_check.h"
#include "client/readahead.h"
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <search.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/base64.h"
#include "common/jsonutil.h"
#include "common/log.h"
#include "common/strbuf.h"

#define WBUF_MAX (4u << 20)
#define PREAD_MAX (16u << 20)

static int ext_path_call(struct sbx *s, const char *op, const char *route, const char *path,
			 cJSON *body, bool idempotent, cJSON **out)
{
	char what[64 + 4096];
	snprintf(what, sizeof what, "%s %s", op, path);
	cJSON *j = NULL;
	int err = sbx_call_unsettled(s, what, "POST", route, body, idempotent, 0, &j);
	if (out)
		*out = j;
	else
		cJSON_Delete(j);
	return err;
}

static cJSON *path_body(const char *path)
{
	cJSON *b = cJSON_CreateObject();
	cJSON_AddStringToObject(b, "path", path);
	return b;
}

/* Calls a route that answers {"stat"} and fills st (may be NULL). */
static int ext_stat_call(struct sbx *s, const char *op, const char *route, const char *path,
			 cJSON *body, bool idempotent, struct stat *st, char **target)
{
	cJSON *j;
	int err = ext_path_call(s, op, route, path, body, idempotent, &j);
	if (!err && (st || target))
		err = sbx_parse_stat_at(path, cJSON_GetObjectItemCaseSensitive(j, "stat"), st,
					target);
	cJSON_Delete(j);
	return err;
}

static int ext_lstat(struct sbx *s, const char *path, struct stat *st, char **target)
{
	return ext_stat_call(s, "stat", "/api/x/stat", path, path_body(path), true, st, target);
}

/* One entry of /api/x/readdir: {"name","stat"}, the target in the stat (or, from older
 * servers, beside it). */
static void add_json_entry(struct entry_list *l, const cJSON *it)
{
	struct stat st;
	struct entry_why why;
	char *target;
	entry_stat_from_json(cJSON_GetObjectItemCaseSensitive(it, "stat"), &st, &target, &why);
	if (!target)
		target = entry_target(json_str(it, "target"), st.st_mode, &why);
	entry_list_add(l, json_str(it, "name"), &st, target, &why);
}

/* The entries of an answer of /api/x/readdir, checked (entry_check.h). */
static int answer_entries(const cJSON *j, const char *path, struct sbx_dirent **ents, size_t *n)
{
	const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "entries");
	if (!cJSON_IsArray(arr))
		return sbx_fail(-EPROTO, "readdir %s: the answer has no entries", path);
	struct entry_list l;
	entry_list_init(&l, path);
	const cJSON *it;
	cJSON_ArrayForEach(it, arr)
		add_json_entry(&l, it);
	entry_list_finish(&l, ents, n);
	return 0;
}

static int ext_readdir(struct sbx *s, const char *path, struct sbx_dirent **ents, size_t *n)
{
	cJSON *j = NULL;
	int err = ext_path_call(s, "readdir", "/api/x/readdir", path, path_body(path), true, &j);
	if (!err)
		err = answer_entries(j, path, ents, n);
	cJSON_Delete(j);
	return err;
}

struct named {
	const char *name;
	const struct sbx_dirent *ent;
};

static int named_cmp(const void *a, const void *b)
{
	return strcmp(((const struct named *)a)->name, ((const struct named *)b)->name);
}

int sbx_readdir_content(struct sbx *s, const char *path, size_t each, size_t budget,
			sbx_content_fn fn, void *arg)
{
	if (!s->content)
		return sbx_fail(-ENOSYS, "readdir %s: the server sends no contents", path);
	cJSON *b = path_body(path);
	json_add_int(b, "content_max", (int64_t)each);
	json_add_int(b, "content_budget", (int64_t)budget);
	char what[64 + 4096];
	snprintf(what, sizeof what, "readdir %s", path);
	cJSON *j = NULL;
	/* base64 and JSON: about 1.4 bytes a byte */
	int err = sbx_call(s, what, "POST", "/api/x/readdir", b, true,
			   sbx_deadline(s, (budget * 3) / 2), &j);
	struct sbx_dirent *ents;
	size_t n;
	if (!err)
		err = answer_entries(j, path, &ents, &n);
	if (err) {
		cJSON_Delete(j);
		return err;
	}
	/* the entries as checked, found by name */
	const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "entries"), *it;
	struct named *index = malloc((n ? n : 1) * sizeof *index);
	if (!index)
		abort();
	for (size_t i = 0; i < n; i++)
		index[i] = (struct named){ ents[i].name, &ents[i] };
	qsort(index, n, sizeof *index, named_cmp);
	cJSON_ArrayForEach(it, arr) {
		const char *data = json_str(it, "data");
		struct named key = { json_str(it, "name"), NULL };
		const struct named *e = data && key.name ? bsearch(&key, index, n, sizeof *index,
								    named_cmp) : NULL;
		if (!e || !S_ISREG(e->ent->st.st_mode))
			continue;
		size_t len = strlen(data);
		char *bytes = malloc(base64_decoded_max(len) + 1);
		if (!bytes)
			abort();
		ssize_t dec = base64_decode(data, len, bytes);
		/* the content of the file the stat describes, or nothing */
		if (dec >= 0 && dec == e->ent->st.st_size && (size_t)dec <= each)
			fn(arg, e->ent->name, &e->ent->st, bytes, (size_t)dec);
		free(bytes);
	}
	free(index);
	sbx_dirents_free(ents, n);
	cJSON_Delete(j);
	return 0;
}

/* The directories an answer of /api/x/tree may still list: the subdirectories of those it
 * listed, each taken out when listed (so named once), in a search tree of malloc'd paths. */
static int path_cmp(const void *a, const void *b) { return strcmp(a, b); }

static bool take_expected(void **expected, const char *path)
{
	void *found = tfind(path, expected, path_cmp);
	if (!found)
		return false;
	char *key = *(char **)found;
	tdelete(path, expected, path_cmp);
	free(key);
	return true;
}

static void expect_subdirs(void **expected, const char *dir, const struct sbx_dirent *ents,
			   size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (!S_ISDIR(ents[i].st.st_mode))
			continue;
		char *p;
		if (asprintf(&p, "%s/%s", dir, ents[i].name) < 0)
			abort();
		char **slot = tsearch(p, expected, path_cmp);
		if (!slot)
			abort();
		if (*slot != p)
			free(p);
	}
}

static int ext_readtree(struct sbx *s, const char *path, size_t max_entries, sbx_tree_fn fn,
			void *arg, bool *truncated)
{
	if (!s->tree)
		return sbx_fail(-ENOSYS, "tree %s: the server lists one directory at a time", path);
	cJSON *b = path_body(path);
	if (max_entries)
		json_add_int(b, "max_entries", (int64_t)max_entries);
	char what[64 + 4096];
	snprintf(what, sizeof what, "tree %s", path);
	cJSON *j = NULL;
	/* about 300 bytes of JSON an entry */
	int err = sbx_call(s, what, "POST", "/api/x/tree", b, true,
			   sbx_deadline(s, (max_entries ? max_entries : 20000) * 300), &j);
	if (err)
		return err;
	const cJSON *dirs = cJSON_GetObjectItemCaseSensitive(j, "dirs");
	const cJSON *first = cJSON_GetArrayItem(dirs, 0);
	if (!cJSON_IsArray(dirs) || !first || !json_str(first, "path") ||
	    strcmp(json_str(first, "path"), path) != 0) {
		cJSON_Delete(j);
		return sbx_fail(-EPROTO, "tree %s: the answer does not list it first", path);
	}
	*truncated = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "truncated"));
	void *expected = NULL;
	size_t refused = 0;
	const cJSON *d;
	cJSON_ArrayForEach(d, dirs) {
		const char *dir = json_str(d, "path");
		const cJSON *arr = cJSON_GetObjectItemCaseSensitive(d, "entries");
		if (!dir || !cJSON_IsArray(arr) ||
		    (d != first && !take_expected(&expected, dir))) {
			refused++;
			continue;
		}
		struct entry_list l;
		entry_list_init(&l, dir);
		const cJSON *it;
		cJSON_ArrayForEach(it, arr)
			add_json_entry(&l, it);
		struct sbx_dirent *ents;
		size_t n;
		entry_list_finish(&l, &ents, &n);
		expect_subdirs(&expected, dir, ents, n);
		fn(arg, dir, ents, n);
		sbx_dirents_free(ents, n);
	}
	tdestroy(expected, free);
	cJSON_Delete(j);
	if (refused) {
		log_warn("tree %s: %zu listings left out (not a directory listed above them, or "
			 "named twice)", path, refused);
		*truncated = true;
	}
	return 0;
}

static int ext_mkdir(struct sbx *s, const char *path, mode_t mode, struct stat *st)
{
	cJSON *b = path_body(path);
	json_add_int(b, "mode", mode & 07777);
	return ext_stat_call(s, "mkdir", "/api/x/mkdir", path, b, false, st, NULL);
}

static int ext_unlink(struct sbx *s, const char *path)
{
	return ext_path_call(s, "unlink", "/api/x/unlink", path, path_body(path), false, NULL);
}

static int ext_rmdir(struct sbx *s, const char *path)
{
	return ext_path_call(s, "rmdir", "/api/x/rmdir", path, path_body(path), false, NULL);
}

static int ext_rename(struct sbx *s, const char *from, const char *to, unsigned flags)
{
	if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE))
		return sbx_fail(-EINVAL, "rename %s: unknown flags %#x", from, flags);
	cJSON *b = cJSON_CreateObject();
	cJSON_AddStringToObject(b, "oldPath", from);
	cJSON_AddStringToObject(b, "newPath", to);
	cJSON_AddBoolToObject(b, "noreplace", flags & RENAME_NOREPLACE);
	cJSON_AddBoolToObject(b, "exchange", flags & RENAME_EXCHANGE);
	return ext_path_call(s, "rename", "/api/x/rename", from, b, false, NULL);
}

static int ext_symlink(struct sbx *s, const char *target, const char *path, struct stat *st)
{
	cJSON *b = path_body(path);
	cJSON_AddStringToObject(b, "target", target);
	return ext_stat_call(s, "symlink", "/api/x/symlink", path, b, false, st, NULL);
}

static int ext_readlink(struct sbx *s, const char *path, char **target)
{
	cJSON *j;
	int err = ext_path_call(s, "readlink", "/api/x/readlink", path, path_body(path), true, &j);
	if (err)
		return err;
	const char *t = json_str(j, "target");
	size_t len = t ? strlen(t) : 0;
	if (len && len <= ENTRY_TARGET_MAX)
		*target = sbx_strdup(t);
	cJSON_Delete(j);
	if (!len)
		return sbx_fail(-EPROTO, "readlink %s: the answer has no target", path);
	if (len > ENTRY_TARGET_MAX)
		return sbx_fail(-EPROTO, "readlink %s: the server's target of %zu bytes is longer "
				"than a symlink's (%d)", path, len, ENTRY_TARGET_MAX);
	return 0;
}

static int ext_link(struct sbx *s, const char *from, const char *to, struct stat *st)
{
	cJSON *b = cJSON_CreateObject();
	cJSON_AddStringToObject(b, "oldPath", from);
	cJSON_AddStringToObject(b, "newPath", to);
	return ext_stat_call(s, "link", "/api/x/link", to, b, false, st, NULL);
}

static int ext_statfs(struct sbx *s, const char *path, struct statvfs *sv)
{
	cJSON *j;
	int err = ext_path_call(s, "statfs", "/api/x/statfs", path, path_body(path), true, &j);
	if (err)
		return err;
	*sv = (struct statvfs){
		.f_bsize = (unsigned long)json_int(j, "bsize", 4096),
		.f_frsize = (unsigned long)json_int(j, "frsize", 4096),
		.f_blocks = (fsblkcnt_t)json_int(j, "blocks", 0),
		.f_bfree = (fsblkcnt_t)json_int(j, "bfree", 0),
		.f_bavail = (fsblkcnt_t)json_int(j, "bavail", 0),
		.f_files = (fsfilcnt_t)json_int(j, "files", 0),
		.f_ffree = (fsfilcnt_t)json_int(j, "ffree", 0),
		.f_favail = (fsfilcnt_t)json_int(j, "ffree", 0),
		.f_namemax = (unsigned long)json_int(j, "namemax", 255),
	};
	cJSON_Delete(j);
	return 0;
}

static void add_time(cJSON *b, const char *key, const struct timespec *ts)
{
	if (ts->tv_nsec == UTIME_OMIT)
		return;
	if (ts->tv_nsec == UTIME_NOW)
		cJSON_AddStringToObject(b, key, "now");
	else
		cJSON_AddItemToObject(b, key, json_timespec(ts));
}

static void add_setattr_fields(cJSON *b, unsigned valid, const struct stat *want)
{
	if (valid & SBX_SET_MODE)
		json_add_int(b, "mode", want->st_mode & 07777);
	if (valid & SBX_SET_SIZE)
		json_add_int(b, "size", want->st_size);
	if (valid & SBX_SET_ATIME)
		add_time(b, "atime", &want->st_atim);
	if (valid & SBX_SET_MTIME)
		add_time(b, "mtime", &want->st_mtim);
	if (valid & SBX_SET_UID)
		json_add_int(b, "uid", want->st_uid);
	if (valid & SBX_SET_GID)
		json_add_int(b, "gid", want->st_gid);
}

static int ext_setattr(struct sbx *s, const char *path, unsigned valid, const struct stat *want,
		       struct stat *st)
{
	cJSON *b = path_body(path);
	add_setattr_fields(b, valid, want);
	return ext_stat_call(s, "setattr", "/api/x/setattr", path, b, false, st, NULL);
}

/* ---- ranged reads ---- */

char *ext_pread_body(const char *handle, const char *path, off_t off, size_t len)
{
	cJSON *b = cJSON_CreateObject();
	if (handle)
		cJSON_AddStringToObject(b, "handle", handle);
	else
		cJSON_AddStringToObject(b, "path", path);
	json_add_int(b, "offset", off);
	json_add_int(b, "length", (int64_t)len);
	char *text = json_print(b);
	cJSON_Delete(b);
	return text;
}

/* One /api/x/pread of at most PREAD_MAX bytes, by handle or by path. */
static ssize_t pread_once(struct sbx *s, const char *what, const char *handle, const char *path,
			  void *buf, size_t len, off_t off)
{
	char *text = ext_pread_body(handle, path, off, len);
	if (!text)
		return sbx_fail(-ENOMEM, "%s: out of memory", what);
	struct http_request req = {
		.method = "POST",
		.path = "/api/x/pread",
		.body = text,
		.body_len = strlen(text),
		.idempotent = true,
	};
	struct http_response resp = { 0 };
	ssize_t ret = http_request_sync(s->http, &req, &resp);
	free(text);
	if (ret)
		ret = sbx_fail((int)ret, "%s: %s", what, resp.errmsg[0] ? resp.errmsg : strerror((int)-ret));
	else if (resp.status != 200)
		ret = sbx_fail_response(what, resp.status, resp.body, resp.body_len);
	else if (resp.body_len > len)
		ret = sbx_fail(-EPROTO, "%s: the server sent %zu bytes for %zu asked", what,
			       resp.body_len, len);
	else {
		if (resp.body_len)
			memcpy(buf, resp.body, resp.body_len);
		ret = (ssize_t)resp.body_len;
	}
	http_response_clear(&resp);
	return ret;
}

static ssize_t pread_chunked(struct sbx *s, const char *what, const char *handle,
			     const char *path, void *buf, size_t len, off_t off)
{
	size_t done = 0;
	while (done < len) {
		size_t want = len - done > PREAD_MAX ? PREAD_MAX : len - done;
		ssize_t n = pread_once(s, what, handle, path, (char *)buf + done, want,
				       off + (off_t)done);
		if (n < 0)
			return done ? (ssize_t)done : n;
		done += (size_t)n;
		if ((size_t)n < want)
			break;
	}
	return (ssize_t)done;
}

static ssize_t ext_pread_path(struct sbx *s, const char *path, void *buf, size_t len, off_t off)
{
	char what[64 + 4096];
	snprintf(what, sizeof what, "read %s", path);
	return pread_chunked(s, what, NULL, path, buf, len, off);
}

static int ext_read_all(struct sbx *s, const char *path, char **data, size_t *len)
{
	struct strbuf sb = STRBUF_INIT;
	for (;;) {
		strbuf_reserve(&sb, PREAD_MAX);
		ssize_t n = ext_pread_path(s, path, sb.data + sb.len, PREAD_MAX, (off_t)sb.len);
		if (n < 0) {
			strbuf_free(&sb);
			return (int)n;
		}
		sb.len += (size_t)n;
		sb.data[sb.len] = 0;
		if ((size_t)n < PREAD_MAX)
			break;
	}
	if (!sb.data)
		strbuf_reserve(&sb, 1);
	*data = strbuf_detach(&sb, len);
	return 0;
}

/* ---- open files ---- */

struct ext_file {
	struct sbx_file base;
	pthread_mutex_t lock;
	char *path;
	int flags;
	char *handle;       /* NULL while a read-only open is lazy */
	char *wbuf;         /* write-behind buffer of WBUF_MAX bytes, allocated on first use */
	size_t wlen;
	off_t woff;
	int pending_err;    /* a failed flush, until reported by flush/fsync/close */
	char pending_msg[512];
	unsigned long long wseq;   /* the handle's last write sequence number used */
	unsigned long long wseq_sent; /* the number of the buffer's send */
	char wkey[HTTP_KEY_MAX];   /* the key of the buffer's unacknowledged send, or "" */
	unsigned wpend;            /* the deferred attributes that send carried */
	struct readahead *ra; /* read-only files: what is read ahead (client/readahead.c) */
	bool created;       /* the server created the file for this handle, so owns it */
	bool st_known;
	struct stat st;     /* the attributes in the server's last answer about the handle */
	unsigned pend;      /* SBX_SET_* deferred to the next flush */
	struct stat pend_st;
};

static char *what_of(struct ext_file *f, const char *op, char *buf, size_t size)
{
	snprintf(buf, size, "%s %s", op, f->path);
	return buf;
}

static int file_handle_call(struct ext_file *f, const char *op, const char *route, cJSON *b,
			    bool idempotent, cJSON **out)
{
	char what[64 + 4096];
	return sbx_call_unsettled(f->base.s, what_of(f, op, what, sizeof what), "POST", route, b,
				  idempotent, 0, out);
}

static void query_time(struct strbuf *q, const char *key, const struct timespec *ts)
{
	if (ts->tv_nsec == UTIME_OMIT)
		return;
	if (ts->tv_nsec == UTIME_NOW)
		strbuf_appendf(q, "&%s=now", key);
	else
		strbuf_appendf(q, "&%s=%jd.%09ld", key, (intmax_t)ts->tv_sec, (long)ts->tv_nsec);
}

/* The deferred attributes as pwrite's query parameters (docs/protocol.md). */
static void query_attrs(struct strbuf *q, unsigned valid, const struct stat *want)
{
	if (valid & SBX_SET_MODE)
		strbuf_appendf(q, "&mode=%u", (unsigned)(want->st_mode & 07777));
	if (valid & SBX_SET_UID)
		strbuf_appendf(q, "&uid=%ju", (uintmax_t)want->st_uid);
	if (valid & SBX_SET_GID)
		strbuf_appendf(q, "&gid=%ju", (uintmax_t)want->st_gid);
	if (valid & SBX_SET_ATIME)
		query_time(q, "atime", &want->st_atim);
	if (valid & SBX_SET_MTIME)
		query_time(q, "mtime", &want->st_mtim);
}

static void note_stat(struct ext_file *f, const cJSON *answer)
{
	f->st_known = !sbx_parse_stat(cJSON_GetObjectItemCaseSensitive(answer, "stat"), &f->st,
				      NULL);
}

/* PUT /api/x/pwrite of len bytes at off, with the deferred attributes `valid` applied after
 * them; the whole of it or an error. key and seq (0: the next) identify the request. */
static int put_bytes(struct ext_file *f, const void *data, size_t len, off_t off,
		     unsigned valid, const struct stat *want, const char *key,
		     unsigned long long seq)
{
	char what[64 + 4096];
	what_of(f, "write", what, sizeof what);
	char *h = http_urlencode(f->handle);
	if (!h)
		return sbx_fail(-ENOMEM, "%s: out of memory", what);
	struct strbuf route = STRBUF_INIT;
	strbuf_appendf(&route, "/api/x/pwrite?handle=%s&offset=%jd&seq=%llu", h, (intmax_t)off,
		       seq ? seq : ++f->wseq);
	free(h);
	query_attrs(&route, valid, want);
	char fresh[HTTP_KEY_MAX];
	struct http_request req = {
		.method = "PUT",
		.path = route.data,
		.content_type = "application/octet-stream",
		.body = data,
		.body_len = len,
		/* large bodies on slow links: at least the default, plus 1 s per MiB */
		.timeout_ms = sbx_deadline(f->base.s, len),
		/* without keys, bytes at an offset can be written twice (not appended twice) */
		.idempotent = !f->base.s->keys && !(f->flags & O_APPEND),
		.idempotency_key = key && key[0] ? key : sbx_key(f->base.s, fresh),
	};
	struct http_response resp = { 0 };
	int err = http_request_sync(f->base.s->http, &req, &resp);
	if (err) {
		err = sbx_fail(err, "%s: %s", what, resp.errmsg[0] ? resp.errmsg : strerror(-err));
	} else if (resp.status < 200 || resp.status > 299) {
		err = sbx_fail_response(what, resp.status, resp.body, resp.body_len);
	} else {
		cJSON *j = cJSON_ParseWithLength(resp.body ? resp.body : "", resp.body_len);
		int64_t written = json_int(j, "written", -1);
		note_stat(f, j);
		cJSON_Delete(j);
		if (written != (int64_t)len)
			err = sbx_fail(-EIO, "%s: the server wrote %" PRId64 " of %zu bytes", what,
				       written, len);
	}
	http_response_clear(&resp);
	strbuf_free(&route);
	if (err)
		f->st_known = false;
	return err;
}

static int setattr_handle_locked(struct ext_file *f, unsigned valid, const struct stat *want);

/* Sends the write-behind buffer and the deferred attributes, in one request when there is
 * data; returns this attempt's error (and keeps it pending). A failed send of data stays
 * buffered, to be sent again as the same request ("Exactly once" above). */
static int flush_locked(struct ext_file *f)
{
	if (!f->wlen && !f->pend)
		return 0;
	int err;
	if (f->wlen) {
		if (!f->wkey[0]) { /* a new send, not the repeat of a failed one */
			f->wpend = f->pend;
			f->wseq_sent = ++f->wseq;
			sbx_key(f->base.s, f->wkey); /* stays "" without keys */
		}
		err = put_bytes(f, f->wbuf, f->wlen, f->woff, f->wpend, &f->pend_st, f->wkey,
				f->wseq_sent);
		if (!err || !f->wkey[0]) { /* done, or not repeatable: dropped */
			f->wlen = 0;
			f->pend &= ~f->wpend;
			f->wkey[0] = '\0';
		}
	} else {
		unsigned pend = f->pend;
		f->pend = 0;
		err = setattr_handle_locked(f, pend, &f->pend_st);
	}
	if (err && !f->pending_err) {
		f->pending_err = err;
		snprintf(f->pending_msg, sizeof f->pending_msg, "%s", sbx_last_error());
	}
	return err;
}

/* Reports (once) what went wrong with buffered data. */
static int take_pending(struct ext_file *f)
{
	int err = f->pending_err;
	if (err)
		sbx_fail(err, "%s", f->pending_msg);
	f->pending_err = 0;
	return err;
}

static int open_handle(struct ext_file *f, int flags, mode_t mode, struct stat *st)
{
	cJSON *b = path_body(f->path);
	int acc = flags & O_ACCMODE;
	cJSON_AddStringToObject(b, "access", acc == O_RDWR ? "rw" : acc == O_WRONLY ? "w" : "r");
	cJSON_AddBoolToObject(b, "create", flags & O_CREAT);
	cJSON_AddBoolToObject(b, "exclusive", (flags & O_CREAT) && (flags & O_EXCL));
	cJSON_AddBoolToObject(b, "truncate", flags & O_TRUNC);
	cJSON_AddBoolToObject(b, "append", flags & O_APPEND);
	json_add_int(b, "mode", mode & 07777);
	cJSON *j;
	int err = file_handle_call(f, "open", "/api/x/open", b, false, &j);
	if (err)
		return err;
	const char *h = json_str(j, "handle");
	if (!h) {
		cJSON_Delete(j);
		return sbx_fail(-EPROTO, "open %s: the answer has no handle", f->path);
	}
	f->handle = strdup(h);
	f->created = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(j, "created"));
	note_stat(f, j);
	if (st)
		err = sbx_parse_stat(cJSON_GetObjectItemCaseSensitive(j, "stat"), st, NULL);
	cJSON_Delete(j);
	return err;
}

static void ext_file_free(struct ext_file *f)
{
	pthread_mutex_destroy(&f->lock);
	free(f->path);
	free(f->handle);
	free(f->wbuf);
	readahead_free(f->ra);
	free(f);
}

/* Closes the server-side handle; one whose close cannot be delivered is left to the lease's
 * heartbeat (a handle the server no longer knows needs nothing). */
static int close_handle(struct ext_file *f)
{
	cJSON *b = cJSON_CreateObject();
	cJSON_AddStringToObject(b, "handle", f->handle);
	cJSON *j;
	int err = file_handle_call(f, "close", "/api/x/close", b, false, &j);
	cJSON_Delete(j);
	if (err && err != -ESTALE && err != -EBADF)
		sbx_lease_orphan(f->base.s->lease, f->handle);
	return err;
}

static int ext_file_open(struct sbx *s, const char *path, int flags, mode_t mode,
			 struct sbx_file **out, struct stat *st)
{
	flags &= ~SBX_O_NEW; /* a hint the extensions do not need: creating costs one request */
	struct ext_file *f = calloc(1, sizeof *f);
	if (!f || !(f->path = strdup(path))) {
		free(f);
		return sbx_fail(-ENOMEM, "open %s: out of memory", path);
	}
	f->base.ops = &sbx_ext_ops;
	f->base.s = s;
	f->flags = flags;
	pthread_mutex_init(&f->lock, NULL);
	bool lazy = (flags & O_ACCMODE) == O_RDONLY && !(flags & (O_CREAT | O_TRUNC));
	if (lazy) {
		if (st)
			st->st_mode = 0; /* attributes unknown: see sandbox.h */
	} else {
		int err = open_handle(f, flags, mode, st);
		if (err) {
			if (f->handle) {
				char msg[512];
				snprintf(msg, sizeof msg, "%s", sbx_last_error());
				close_handle(f);
				sbx_fail(err, "%s", msg);
			}
			ext_file_free(f);
			return err;
		}
	}
	if ((flags & O_ACCMODE) == O_RDONLY) {
		f->ra = readahead_new(s, path);
		if (f->handle)
			readahead_set_source(f->ra, f->handle, f->path);
	}
	*out = &f->base;
	return 0;
}

/* What the read-ahead has of [off, off + len), the rest read now. */
static ssize_t ext_file_pread(struct sbx_file *base, void *buf, size_t len, off_t off)
{
	struct ext_file *f = (struct ext_file *)base;
	pthread_mutex_lock(&f->lock);
	ssize_t n = flush_locked(f);
	if (!n) {
		bool eof = false;
		size_t ahead = f->ra ? readahead_read(f->ra, buf, len, off, &eof) : 0;
		n = (ssize_t)ahead;
		if (ahead < len && !eof) {
			char what[64 + 4096];
			ssize_t r = pread_chunked(base->s, what_of(f, "read", what, sizeof what),
						  f->handle, f->path, (char *)buf + ahead, len - ahead,
						  off + (off_t)ahead);
			if (r >= 0 && f->ra)
				readahead_done(f->ra, off + (off_t)ahead, (size_t)r);
			n = r < 0 ? (ahead ? (ssize_t)ahead : r) : (ssize_t)ahead + r;
		}
	}
	pthread_mutex_unlock(&f->lock);
	return n;
}

static ssize_t ext_file_pwrite(struct sbx_file *base, const void *buf, size_t len, off_t off)
{
	struct ext_file *f = (struct ext_file *)base;
	if ((f->flags & O_ACCMODE) == O_RDONLY)
		return sbx_fail(-EBADF, "write %s: the file is open read-only", f->path);
	if (!len)
		return 0;
	pthread_mutex_lock(&f->lock);
	ssize_t ret = 0;
	/* Deferred attributes were set before this write: they go first (a write clears
	 * set-id bits and sets mtime). A buffer with an unacknowledged send cannot grow. */
	if (f->pend || f->wkey[0] ||
	    (f->wlen && (off != f->woff + (off_t)f->wlen || f->wlen + len > WBUF_MAX)))
		ret = flush_locked(f);
	if (ret)
		goto out;
	if (len >= WBUF_MAX) {
		ret = put_bytes(f, buf, len, off, 0, NULL, NULL, 0);
		goto out;
	}
	if (!f->wbuf && !(f->wbuf = malloc(WBUF_MAX))) {
		ret = sbx_fail(-ENOMEM, "write %s: out of memory", f->path);
		goto out;
	}
	if (!f->wlen)
		f->woff = off;
	memcpy(f->wbuf + f->wlen, buf, len);
	f->wlen += len;
	if (f->wlen == WBUF_MAX)
		flush_locked(f); /* its error is pending: this write was accepted */
out:
	pthread_mutex_unlock(&f->lock);
	return ret ? ret : (ssize_t)len;
}

static int ext_file_flush(struct sbx_file *base)
{
	struct ext_file *f = (struct ext_file *)base;
	pthread_mutex_lock(&f->lock);
	flush_locked(f);
	int err = take_pending(f);
	pthread_mutex_unlock(&f->lock);
	return err;
}

static int ext_file_fsync(struct sbx_file *base, bool datasync)
{
	struct ext_file *f = (struct ext_file *)base;
	pthread_mutex_lock(&f->lock);
	flush_locked(f);
	int err = take_pending(f);
	if (!err && f->handle) {
		cJSON *b = cJSON_CreateObject();
		cJSON_AddStringToObject(b, "handle", f->handle);
		cJSON_AddBoolToObject(b, "datasync", datasync);
		cJSON *j;
		err = file_handle_call(f, "fsync", "/api/x/fsync", b, false, &j);
		cJSON_Delete(j);
	}
	pthread_mutex_unlock(&f->lock);
	return err;
}

/* POST /api/x/setattr on the handle (valid may be 0: an fstat); the answer's stat is noted. */
static int setattr_handle_locked(struct ext_file *f, unsigned valid, const struct stat *want)
{
	cJSON *b = cJSON_CreateObject();
	cJSON_AddStringToObject(b, "handle", f->handle);
	add_setattr_fields(b, valid, want);
	if (valid & SBX_SET_SIZE)
		json_add_int(b, "seq", (int64_t)++f->wseq); /* a truncation is a write */
	cJSON *j;
	int err = file_handle_call(f, "setattr", "/api/x/setattr", b, !valid, &j);
	if (!err)
		note_stat(f, j);
	else
		f->st_known = false;
	cJSON_Delete(j);
	return err;
}

/* setattr on the handle when there is one (it works after unlink), else by path; what is
 * buffered or deferred goes first. */
static int handle_setattr_locked(struct ext_file *f, unsigned valid, const struct stat *want,
				 struct stat *st)
{
	int err = flush_locked(f);
	if (err)
		return err;
	if (!f->handle)
		return ext_setattr(f->base.s, f->path, valid, want, st);
	err = setattr_handle_locked(f, valid, want);
	if (!err && st) {
		if (!f->st_known)
			return sbx_fail(-EPROTO, "setattr %s: the answer has no stat", f->path);
		*st = f->st;
	}
	return err;
}

static int ext_file_fstat(struct sbx_file *base, struct stat *st)
{
	struct ext_file *f = (struct ext_file *)base;
	pthread_mutex_lock(&f->lock);
	int err;
	if (!f->handle) {
		err = ext_lstat(base->s, f->path, st, NULL);
	} else if (f->wlen || f->pend) {
		/* The flush answers with the stat. */
		err = flush_locked(f);
		if (!err && f->st_known)
			*st = f->st;
		else if (!err)
			err = handle_setattr_locked(f, 0, NULL, st);
	} else {
		err = handle_setattr_locked(f, 0, NULL, st);
	}
	pthread_mutex_unlock(&f->lock);
	return err;
}

static bool ext_writable(const struct ext_file *f)
{
	return (f->flags & O_ACCMODE) != O_RDONLY;
}

static void now_ts(struct timespec *ts)
{
	clock_gettime(CLOCK_REALTIME, ts);
}

/* The attributes the file will have once what is buffered and deferred has been sent. */
static void local_stat(const struct ext_file *f, struct stat *st)
{
	*st = f->st;
	struct timespec now;
	now_ts(&now);
	if (f->wlen) {
		off_t end = f->woff + (off_t)f->wlen;
		if (end > st->st_size)
			st->st_size = end;
		st->st_blocks = (st->st_size + 511) / 512;
		st->st_mtim = st->st_ctim = now;
	}
	if (!f->pend)
		return;
	st->st_ctim = now;
	if (f->pend & SBX_SET_MODE)
		st->st_mode = (st->st_mode & S_IFMT) | (f->pend_st.st_mode & 07777);
	if (f->pend & SBX_SET_UID)
		st->st_uid = f->pend_st.st_uid;
	if (f->pend & SBX_SET_GID)
		st->st_gid = f->pend_st.st_gid;
	if (f->pend & SBX_SET_ATIME)
		st->st_atim = f->pend_st.st_atim.tv_nsec == UTIME_NOW ? now : f->pend_st.st_atim;
	if (f->pend & SBX_SET_MTIME)
		st->st_mtim = f->pend_st.st_mtim.tv_nsec == UTIME_NOW ? now : f->pend_st.st_mtim;
}

/* Whether setting `valid` can wait for the next flush: only what cannot fail on a file the
 * server created for this handle (its owner may change its mode and times; an unchanged
 * owner is a no-op), and no owner change while set-id bits are in play (chown clears them,
 * so its order against chmod matters). */
static bool deferrable(const struct ext_file *f, unsigned valid, const struct stat *want)
{
	if (!f->handle || !f->created || !f->st_known || !ext_writable(f) || f->wkey[0] ||
	    (valid & ~(SBX_SET_MODE | SBX_SET_ATIME | SBX_SET_MTIME | SBX_SET_UID | SBX_SET_GID)))
		return false;
	if (!(valid & (SBX_SET_UID | SBX_SET_GID)))
		return true;
	struct stat cur;
	local_stat(f, &cur);
	mode_t mode = valid & SBX_SET_MODE ? want->st_mode : cur.st_mode;
	return !((cur.st_mode | mode) & (S_ISUID | S_ISGID)) &&
	       (!(valid & SBX_SET_UID) || want->st_uid == cur.st_uid) &&
	       (!(valid & SBX_SET_GID) || want->st_gid == cur.st_gid);
}

static void defer(struct ext_file *f, unsigned valid, const struct stat *want)
{
	f->pend |= valid;
	if (valid & SBX_SET_MODE)
		f->pend_st.st_mode = want->st_mode;
	if (valid & SBX_SET_UID)
		f->pend_st.st_uid = want->st_uid;
	if (valid & SBX_SET_GID)
		f->pend_st.st_gid = want->st_gid;
	if (valid & SBX_SET_ATIME)
		f->pend_st.st_atim = want->st_atim;
	if (valid & SBX_SET_MTIME)
		f->pend_st.st_mtim = want->st_mtim;
}

static int ext_file_setattr(struct sbx_file *base, unsigned valid, const struct stat *want,
			    struct stat *st)
{
	struct ext_file *f = (struct ext_file *)base;
	pthread_mutex_lock(&f->lock);
	int err = 0;
	if (deferrable(f, valid, want)) {
		defer(f, valid, want);
		if (st)
			local_stat(f, st);
	} else {
		err = handle_setattr_locked(f, valid, want, st);
	}
	pthread_mutex_unlock(&f->lock);
	return err;
}

static int ext_file_cached_stat(struct sbx_file *base, struct stat *st)
{
	struct ext_file *f = (struct ext_file *)base;
	pthread_mutex_lock(&f->lock);
	bool known = f->handle && f->st_known && ext_writable(f);
	if (known)
		local_stat(f, st);
	pthread_mutex_unlock(&f->lock);
	return known ? 0 : -EAGAIN;
}

static int ext_file_ftruncate(struct sbx_file *base, off_t size)
{
	struct ext_file *f = (struct ext_file *)base;
	struct stat want = { .st_size = size };
	pthread_mutex_lock(&f->lock);
	int err = handle_setattr_locked(f, SBX_SET_SIZE, &want, NULL);
	pthread_mutex_unlock(&f->lock);
	return err;
}

static int ext_file_pin(struct sbx_file *base)
{
	struct ext_file *f = (struct ext_file *)base;
	pthread_mutex_lock(&f->lock);
	int err = f->handle ? 0 : open_handle(f, O_RDONLY, 0, NULL);
	if (!err && f->ra)
		readahead_set_source(f->ra, f->handle, f->path);
	pthread_mutex_unlock(&f->lock);
	return err;
}

static int ext_file_set_path(struct sbx_file *base, const char *path)
{
	struct ext_file *f = (struct ext_file *)base;
	char *p = strdup(path);
	if (!p)
		return sbx_fail(-ENOMEM, "rename %s: out of memory", f->path);
	pthread_mutex_lock(&f->lock);
	free(f->path);
	f->path = p;
	if (f->ra)
		readahead_set_source(f->ra, f->handle, f->path);
	pthread_mutex_unlock(&f->lock);
	return 0;
}

static void ext_file_changed(struct sbx_file *base)
{
	readahead_forget(((struct ext_file *)base)->ra);
}

static int ext_file_close(struct sbx_file *base)
{
	struct ext_file *f = (struct ext_file *)base;
	pthread_mutex_lock(&f->lock);
	flush_locked(f);
	int err = take_pending(f);
	char msg[512];
	snprintf(msg, sizeof msg, "%s", sbx_last_error());
	if (f->handle && close_handle(f))
		log_warn("%s", sbx_last_error());
	pthread_mutex_unlock(&f->lock);
	if (err)
		sbx_fail(err, "%s", msg);
	ext_file_free(f);
	return err;
}

const struct sbx_ops sbx_ext_ops = {
	.name = "extensions",
	.lstat = ext_lstat,
	.readdir = ext_readdir,
	.readtree = ext_readtree,
	.mkdir = ext_mkdir,
	.unlink = ext_unlink,
	.rmdir = ext_rmdir,
	.rename = ext_rename,
	.symlink = ext_symlink,
	.readlink = ext_readlink,
	.link = ext_link,
	.statfs = ext_statfs,
	.setattr = ext_setattr,
	.file_open = ext_file_open,
	.file_pread = ext_file_pread,
	.file_changed = ext_file_changed,
	.file_pwrite = ext_file_pwrite,
	.file_flush = ext_file_flush,
	.file_fsync = ext_file_fsync,
	.file_fstat = ext_file_fstat,
	.file_setattr = ext_file_setattr,
	.file_cached_stat = ext_file_cached_stat,
	.file_ftruncate = ext_file_ftruncate,
	.file_pin = ext_file_pin,
	.file_set_path = ext_file_set_path,
	.file_close = ext_file_close,
	.read_all = ext_read_all,
	.pread_path = ext_pread_path,
};
