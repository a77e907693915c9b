/* The filesystem extensions under /api/x/ (docs/protocol.md, "Extensions"): one syscall per route,
 * on the entry's parent directory resolved beneath the workspace, the final component never
 * followed. Errors are the syscall's own errno, since sbxfs hands them straight to the kernel.
 * Every route that changes an entry answers with its new stat. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include "common/errnames.h"
#include "common/fdio.h"
#include "common/jsonutil.h"
#include "server/fsops.h"
#include "server/handles.h"
#include "server/listing.h"
#include "server/request.h"
#include "server/routes.h"
#include "server/workspace.h"

#define PREAD_MAX (16u << 20)

/* Resolves the body field key to its parent directory; answers the error itself. */
static bool entry(struct req *r, const char *key, struct ws_entry *e)
{
	const char *path = req_str_field(r, key);
	if (!path)
		return false;
	int err = ws_parent(path, e);
	if (err) {
		reply_ws_errno(r, err, path);
		return false;
	}
	return true;
}

/* entry() of "oldPath" and "newPath", both or neither. */
static bool entry_pair(struct req *r, struct ws_entry *from, struct ws_entry *to)
{
	if (!entry(r, "oldPath", from))
		return false;
	if (!entry(r, "newPath", to)) {
		ws_entry_close(from);
		return false;
	}
	return true;
}

static void reply_stat(struct req *r, cJSON *st)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddItemToObject(o, "stat", st);
	reply_ok(r, o);
}

/* Answers with the stat of e, or err if nonzero; closes e. */
static void finish_entry(struct req *r, struct ws_entry *e, int err, const char *key)
{
	const char *path = json_str(req_json(r), key);
	cJSON *st = err ? NULL : fsop_stat_json(e->dirfd, e->name, &err);
	ws_entry_close(e);
	if (err)
		reply_ws_errno(r, err, path);
	else
		reply_stat(r, st);
}

static void reply_two(struct req *r, int err, const char *from, const char *to)
{
	int status;
	const char *code = errno_to_code(-err, &status);
	cJSON *ctx = cJSON_CreateObject();
	cJSON_AddStringToObject(ctx, "oldPath", from);
	cJSON_AddStringToObject(ctx, "newPath", to);
	reply_error(r, status, code, -err, ctx, "%s: %s -> %s", ws_strerror(err), from, to);
}

/* ---- metadata and directories ---- */

void route_x_stat(struct req *r)
{
	struct ws_entry e;
	if (entry(r, "path", &e))
		finish_entry(r, &e, 0, "path");
}

/* The entry's directory, opened for listing, and its normalised API path (api may be NULL);
 * answers the error itself (-1). */
static int open_listed(struct req *r, char api[WS_PATH_MAX + 16])
{
	struct ws_entry e;
	if (!entry(r, "path", &e))
		return -1;
	int fd = openat(e.dirfd, e.name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	int err = fd < 0 ? -errno : 0;
	if (api)
		ws_api_path(e.rel, api, WS_PATH_MAX + 16);
	ws_entry_close(&e);
	if (err)
		reply_ws_errno(r, err, json_str(req_json(r), "path"));
	return fd;
}

/* An optional positive integer field, at most cap; false after answering 400. */
static bool size_field(struct req *r, const char *name, size_t dflt, size_t cap, size_t *out)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(req_json(r), name);
	double want = cJSON_IsNumber(v) ? v->valuedouble : 0;
	if (v && (!cJSON_IsNumber(v) || want < 1 || want != (double)(long long)want)) {
		char msg[96];
		snprintf(msg, sizeof msg, "'%s' must be a positive integer", name);
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL, "%s", msg);
		return false;
	}
	*out = !v ? dflt : want > (double)cap ? cap : (size_t)want;
	return true;
}

void route_x_readdir(struct req *r)
{
	size_t each = 0, budget = 0;
	if (!size_field(r, "content_max", 0, CONTENT_EACH_CAP, &each) ||
	    !size_field(r, "content_budget", CONTENT_BUDGET_DEFAULT, CONTENT_BUDGET_CAP, &budget))
		return;
	int fd = open_listed(r, NULL);
	if (fd < 0)
		return;
	cJSON *list;
	int err = each ? listing_read_content(fd, each, budget, &list) : listing_read(fd, &list);
	if (err) {
		reply_ws_errno(r, err, json_str(req_json(r), "path"));
		return;
	}
	cJSON *o = cJSON_CreateObject();
	cJSON_AddItemToObject(o, "entries", list);
	reply_ok(r, o);
}

/* POST /api/x/tree {"path", "max_entries"}: the complete listings of a subtree (listing.h). */
void route_x_tree(struct req *r)
{
	const cJSON *max = cJSON_GetObjectItemCaseSensitive(req_json(r), "max_entries");
	double want = cJSON_IsNumber(max) ? max->valuedouble : 0;
	if (max && (!cJSON_IsNumber(max) || want < 1 || want != (double)(long long)want)) {
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
			    "'max_entries' must be a positive integer");
		return;
	}
	size_t limit = !max				 ? TREE_MAX_ENTRIES_DEFAULT
		       : want > TREE_MAX_ENTRIES_CAP ? TREE_MAX_ENTRIES_CAP
						     : (size_t)want;
	/* the listings name their directories by normalised API paths */
	char api[WS_PATH_MAX + 16];
	int fd = open_listed(r, api);
	if (fd < 0)
		return;
	cJSON *dirs = NULL;
	bool truncated = false;
	int err = listing_tree(fd, api, limit, &dirs, &truncated);
	if (err) {
		reply_ws_errno(r, err, json_str(req_json(r), "path"));
		return;
	}
	cJSON *o = cJSON_CreateObject();
	cJSON_AddItemToObject(o, "dirs", dirs);
	cJSON_AddBoolToObject(o, "truncated", truncated);
	reply_ok(r, o);
}

void route_x_mkdir(struct req *r)
{
	struct ws_entry e;
	if (!entry(r, "path", &e))
		return;
	mode_t mode = (mode_t)json_int(req_json(r), "mode", 0777) & 07777;
	int err = mkdirat(e.dirfd, e.name, mode) ? -errno : 0;
	if (!err) {
		int fd = openat(e.dirfd, e.name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (fd >= 0) {
			err = fsop_fix_mode(fd, mode);
			close(fd);
		}
	}
	finish_entry(r, &e, err, "path");
}

static void remove_entry(struct req *r, int flags)
{
	struct ws_entry e;
	if (!entry(r, "path", &e))
		return;
	int err = unlinkat(e.dirfd, e.name, flags) ? -errno : 0;
	ws_entry_close(&e);
	if (err)
		reply_ws_errno(r, err, json_str(req_json(r), "path"));
	else
		reply_ok(r, NULL);
}

void route_x_unlink(struct req *r) { remove_entry(r, 0); }
void route_x_rmdir(struct req *r) { remove_entry(r, AT_REMOVEDIR); }

void route_x_rename(struct req *r)
{
	struct ws_entry from, to;
	if (!entry_pair(r, &from, &to))
		return;
	unsigned flags = 0;
	if (json_bool(req_json(r), "noreplace", false))
		flags |= RENAME_NOREPLACE;
	if (json_bool(req_json(r), "exchange", false))
		flags |= RENAME_EXCHANGE;
	int err = renameat2(from.dirfd, from.name, to.dirfd, to.name, flags) ? -errno : 0;
	ws_entry_close(&from);
	ws_entry_close(&to);
	if (err)
		reply_two(r, err, json_str(req_json(r), "oldPath"), json_str(req_json(r), "newPath"));
	else
		reply_ok(r, NULL);
}

void route_x_symlink(struct req *r)
{
	const char *target = json_str(req_json(r), "target");
	if (!target) {
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL, "'target' must be a string");
		return;
	}
	struct ws_entry e;
	if (!entry(r, "path", &e))
		return;
	int err = symlinkat(target, e.dirfd, e.name) ? -errno : 0;
	finish_entry(r, &e, err, "path");
}

void route_x_readlink(struct req *r)
{
	struct ws_entry e;
	if (!entry(r, "path", &e))
		return;
	char target[PATH_MAX + 2];
	ssize_t n = readlinkat(e.dirfd, e.name, target, sizeof target - 1);
	int err = n < 0 ? -errno : (size_t)n >= sizeof target - 1 ? -ENAMETOOLONG : 0;
	ws_entry_close(&e);
	if (err) {
		reply_ws_errno(r, err, json_str(req_json(r), "path"));
		return;
	}
	target[n] = '\0';
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "target", target);
	reply_ok(r, o);
}

void route_x_link(struct req *r)
{
	struct ws_entry from, to;
	if (!entry_pair(r, &from, &to))
		return;
	int err = linkat(from.dirfd, from.name, to.dirfd, to.name, 0) ? -errno : 0;
	ws_entry_close(&from);
	if (err) {
		ws_entry_close(&to);
		reply_two(r, err, json_str(req_json(r), "oldPath"), json_str(req_json(r), "newPath"));
		return;
	}
	finish_entry(r, &to, 0, "newPath");
}

void route_x_statfs(struct req *r)
{
	const char *path = json_str(req_json(r), "path");
	if (!path || !*path)
		path = "/workspace";
	int fd = ws_open(path, O_PATH, 0);
	struct statvfs sv;
	int err = fd < 0 ? fd : fstatvfs(fd, &sv) ? -errno : 0;
	if (fd >= 0)
		close(fd);
	if (err) {
		reply_ws_errno(r, err, path);
		return;
	}
	cJSON *o = cJSON_CreateObject();
	json_add_int(o, "bsize", (int64_t)sv.f_bsize);
	json_add_int(o, "frsize", (int64_t)sv.f_frsize);
	json_add_int(o, "blocks", (int64_t)sv.f_blocks);
	json_add_int(o, "bfree", (int64_t)sv.f_bfree);
	json_add_int(o, "bavail", (int64_t)sv.f_bavail);
	json_add_int(o, "files", (int64_t)sv.f_files);
	json_add_int(o, "ffree", (int64_t)sv.f_ffree);
	json_add_int(o, "namemax", (int64_t)sv.f_namemax);
	reply_ok(r, o);
}

/* ---- setattr ---- */

/* A time field: [s,ns], "now", or absent (UTIME_OMIT); false for anything else. */
static bool time_field(const cJSON *body, const char *key, struct timespec *ts)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, key);
	if (!v || cJSON_IsNull(v)) {
		ts->tv_sec = 0;
		ts->tv_nsec = UTIME_OMIT;
		return true;
	}
	if (cJSON_IsString(v) && strcmp(v->valuestring, "now") == 0) {
		ts->tv_sec = 0;
		ts->tv_nsec = UTIME_NOW;
		return true;
	}
	return json_get_timespec(v, ts);
}

static bool int_field(const cJSON *body, const char *key, int64_t min, int64_t *out, bool *set)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, key);
	*set = v && !cJSON_IsNull(v);
	if (!*set)
		return true;
	if (!cJSON_IsNumber(v) || v->valuedouble < (double)min || v->valuedouble > 9.2e18)
		return false;
	*out = (int64_t)v->valuedouble;
	return true;
}

/* What a setattr asks for, from a JSON body or from pwrite's query string. */
struct attr_req {
	int64_t mode, size, uid, gid;
	bool has_mode, has_size, has_uid, has_gid;
	struct timespec ts[2]; /* UTIME_OMIT where absent */
};

static bool attr_req_json(const cJSON *body, struct attr_req *a)
{
	a->uid = a->gid = -1;
	return int_field(body, "mode", 0, &a->mode, &a->has_mode) &&
	       int_field(body, "size", 0, &a->size, &a->has_size) &&
	       int_field(body, "uid", 0, &a->uid, &a->has_uid) &&
	       int_field(body, "gid", 0, &a->gid, &a->has_gid) &&
	       time_field(body, "atime", &a->ts[0]) && time_field(body, "mtime", &a->ts[1]);
}

static bool has_times(const struct attr_req *a)
{
	return a->ts[0].tv_nsec != UTIME_OMIT || a->ts[1].tv_nsec != UTIME_OMIT;
}

/* Owner first (it clears set-id bits), then mode, size, and times last (a truncate sets
 * mtime). */
static int fd_setattr(int fd, const struct attr_req *a)
{
	uid_t u = a->has_uid ? (uid_t)a->uid : (uid_t)-1;
	gid_t g = a->has_gid ? (gid_t)a->gid : (gid_t)-1;
	if ((a->has_uid || a->has_gid) && fchown(fd, u, g))
		return -errno;
	if (a->has_mode && fchmod(fd, (mode_t)a->mode & 07777))
		return -errno;
	if (a->has_size && ftruncate(fd, (off_t)a->size))
		return -errno;
	if (has_times(a) && futimens(fd, a->ts))
		return -errno;
	return 0;
}

void route_x_setattr(struct req *r)
{
	const cJSON *body = req_json(r);
	struct attr_req a;
	if (!attr_req_json(body, &a)) {
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
			    "mode, size, uid, gid must be non-negative numbers; atime, mtime "
			    "[seconds, nanoseconds] or \"now\"");
		return;
	}
	uid_t u = a.has_uid ? (uid_t)a.uid : (uid_t)-1;
	gid_t g = a.has_gid ? (gid_t)a.gid : (gid_t)-1;
	const char *hid = json_str(body, "handle");
	int err = 0;

	if (hid) {
		struct handle *h;
		int64_t seq = json_int(body, "seq", 0);
		err = seq < 0 ? -EINVAL : handles_get(hid, &h);
		if (err) {
			reply_errno(r, err, NULL, "handle %s: %s", hid, strerror(-err));
			return;
		}
		int fd = handle_fd(h);
		err = handle_write_begin(h, (unsigned long long)seq);
		if (!err) {
			err = fd_setattr(fd, &a);
			handle_write_end(h);
		}
		cJSON *st = err ? NULL : fsop_fstat_json(fd, &err);
		handles_put(h);
		if (err)
			reply_errno(r, err, NULL, "handle %s: %s", hid, strerror(-err));
		else
			reply_stat(r, st);
		return;
	}

	struct ws_entry e;
	if (!entry(r, "path", &e))
		return;
	if ((a.has_uid || a.has_gid) && fchownat(e.dirfd, e.name, u, g, AT_SYMLINK_NOFOLLOW))
		err = -errno;
	if (!err && a.has_mode)
		err = fsop_chmod(e.dirfd, e.name, (mode_t)a.mode & 07777);
	if (!err && a.has_size)
		err = fsop_truncate(e.dirfd, e.name, (off_t)a.size);
	if (!err && has_times(&a) && utimensat(e.dirfd, e.name, a.ts, AT_SYMLINK_NOFOLLOW))
		err = -errno;
	finish_entry(r, &e, err, "path");
}

/* ---- open files and ranged I/O ---- */

/* The open(2) flags of the request's access, truncate and append; false after answering. */
static bool open_flags(struct req *r, int *flags)
{
	const cJSON *body = req_json(r);
	const char *access = json_str(body, "access");
	if (!access || strcmp(access, "r") == 0)
		*flags = O_RDONLY;
	else if (strcmp(access, "w") == 0)
		*flags = O_WRONLY;
	else if (strcmp(access, "rw") == 0)
		*flags = O_RDWR;
	else {
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
			    "'access' must be \"r\", \"w\" or \"rw\"");
		return false;
	}
	if (json_bool(body, "truncate", false))
		*flags |= O_TRUNC;
	if (json_bool(body, "append", false))
		*flags |= O_APPEND;
	/* Never through a symlink; never blocking on a FIFO. */
	*flags |= O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC;
	return true;
}

/* Opens e's file (closing e): a descriptor, or a negative errno. Created exclusively first so
 * that whether the file is new is known (its mode is then set exactly); an existing file is
 * opened in a second step, unless exclusive. Only regular files and directories. */
static int open_entry(struct ws_entry *e, int flags, mode_t mode, bool create, bool exclusive,
		      bool *created)
{
	int fd = -1, err = 0;
	*created = false;
	for (int tries = 0; tries < 8; tries++) {
		if (create) {
			fd = openat(e->dirfd, e->name, flags | O_CREAT | O_EXCL, mode);
			if (fd >= 0) {
				*created = true;
				break;
			}
			if (errno != EEXIST || exclusive)
				break;
		}
		fd = openat(e->dirfd, e->name, flags);
		if (fd >= 0 || errno != ENOENT || !create)
			break;
	}
	if (fd < 0)
		err = -errno;
	ws_entry_close(e);
	struct stat st;
	if (!err && fstat(fd, &st))
		err = -errno;
	if (!err && !S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode))
		err = -EOPNOTSUPP;
	if (!err && *created)
		err = fsop_fix_mode(fd, mode);
	if (err && fd >= 0)
		close(fd);
	if (!err)
		fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	return err ? err : fd;
}

void route_x_open(struct req *r)
{
	const cJSON *body = req_json(r);
	const char *path = json_str(body, "path");
	struct ws_entry e;
	int flags, err = 0;
	bool created;
	if (!open_flags(r, &flags) || !entry(r, "path", &e))
		return;
	int fd = open_entry(&e, flags, (mode_t)json_int(body, "mode", 0644) & 07777,
			   json_bool(body, "create", false), json_bool(body, "exclusive", false),
			   &created);
	if (fd < 0)
		return reply_ws_errno(r, fd, path);
	cJSON *sto = fsop_fstat_json(fd, &err);
	char id[HANDLE_ID_MAX];
	err = handles_add(fd, req_client(r), id);
	if (err) {
		cJSON_Delete(sto);
		return reply_errno(r, err, path, "%s: too many open handles (%d)", path,
				   HANDLES_MAX);
	}
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "handle", id);
	cJSON_AddBoolToObject(o, "created", created);
	cJSON_AddItemToObject(o, "stat", sto);
	reply_ok(r, o);
}

static void reply_handle_error(struct req *r, int err, const char *hid)
{
	reply_errno(r, err, NULL, "handle %s: %s", hid ? hid : "", strerror(-err));
}

void route_x_pread(struct req *r)
{
	const cJSON *body = req_json(r);
	int64_t off = json_int(body, "offset", 0), len = json_int(body, "length", -1);
	if (off < 0 || len < 0 || len > PREAD_MAX) {
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
			    "'offset' must be >= 0 and 'length' between 0 and %u", PREAD_MAX);
		return;
	}
	const char *hid = json_str(body, "handle");
	struct handle *h = NULL;
	int fd, err;
	if (hid) {
		err = handles_get(hid, &h);
		if (err) {
			reply_handle_error(r, err, hid);
			return;
		}
		fd = handle_fd(h);
	} else {
		const char *path = req_str_field(r, "path");
		if (!path)
			return;
		fd = ws_open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK, 0);
		struct stat st;
		err = fd < 0 ? fd : fstat(fd, &st) ? -errno
			 : S_ISDIR(st.st_mode)	    ? -EISDIR
			 : !S_ISREG(st.st_mode)	    ? -EINVAL
						    : 0;
		if (err) {
			if (fd >= 0)
				close(fd);
			reply_ws_errno(r, err, path);
			return;
		}
	}
	char *buf = malloc(len ? (size_t)len : 1);
	ssize_t n = buf ? fd_pread_full(fd, buf, (size_t)len, (off_t)off) : -ENOMEM;
	if (h)
		handles_put(h);
	else
		close(fd);
	if (n < 0) {
		free(buf);
		reply_handle_error(r, (int)n, hid);
		return;
	}
	reply_bytes(r, 200, "application/octet-stream", buf, (size_t)n);
}

static bool parse_offset(const char *s, int64_t *out)
{
	char *end;
	if (!s || !*s || *s == '-')
		return false;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (*end || errno)
		return false;
	*out = v;
	return true;
}

/* A time in a query string: "now", "S" or "S.F" (F a decimal fraction of up to 9 digits);
 * absent is UTIME_OMIT. */
static bool query_time(const char *s, struct timespec *ts)
{
	ts->tv_sec = 0;
	ts->tv_nsec = UTIME_OMIT;
	if (!s)
		return true;
	if (strcmp(s, "now") == 0) {
		ts->tv_nsec = UTIME_NOW;
		return true;
	}
	char *end;
	errno = 0;
	long long sec = strtoll(s, &end, 10);
	if (end == s || errno)
		return false;
	long ns = 0;
	if (*end == '.') {
		const char *f = end + 1;
		int digits = 0;
		for (; *f >= '0' && *f <= '9' && digits < 9; f++, digits++)
			ns = ns * 10 + (*f - '0');
		if (!digits || *f)
			return false;
		for (; digits < 9; digits++)
			ns *= 10;
		end = (char *)f;
	}
	if (*end)
		return false;
	ts->tv_sec = (time_t)sec;
	ts->tv_nsec = ns;
	return true;
}

static bool query_int(struct req *r, const char *key, int64_t *out, bool *set)
{
	const char *s = req_query(r, key);
	*set = s != NULL;
	return !s || parse_offset(s, out);
}

/* pwrite's optional attributes, applied after the data (so the write cannot undo a time). */
static bool attr_req_query(struct req *r, struct attr_req *a)
{
	*a = (struct attr_req){ .uid = -1, .gid = -1 };
	return query_int(r, "mode", &a->mode, &a->has_mode) &&
	       query_int(r, "uid", &a->uid, &a->has_uid) &&
	       query_int(r, "gid", &a->gid, &a->has_gid) &&
	       query_time(req_query(r, "atime"), &a->ts[0]) &&
	       query_time(req_query(r, "mtime"), &a->ts[1]);
}

void route_x_pwrite(struct req *r)
{
	const char *hid = req_query(r, "handle");
	int64_t off, seq = 0;
	struct attr_req a;
	if (!hid || !parse_offset(req_query(r, "offset"), &off) ||
	    (req_query(r, "seq") && !parse_offset(req_query(r, "seq"), &seq))) {
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
			    "query parameters 'handle' and 'offset' (>= 0) are required; 'seq' "
			    "is optional (>= 0)");
		return;
	}
	if (!attr_req_query(r, &a)) {
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
			    "mode, uid, gid must be non-negative integers; atime, mtime "
			    "S.N or \"now\"");
		return;
	}
	struct handle *h;
	int err = handles_get(hid, &h);
	if (err) {
		reply_handle_error(r, err, hid);
		return;
	}
	size_t len;
	const char *data = req_body(r, &len);
	int fd = handle_fd(h);
	err = handle_write_begin(h, (unsigned long long)seq);
	if (err) {
		handles_put(h);
		reply_error(r, 409, "WRITE_SUPERSEDED", ESTALE, NULL,
			    "write %lld on handle %s arrived after a later one: not applied",
			    (long long)seq, hid);
		return;
	}
	err = fd_pwrite_full(fd, data, len, (off_t)off);
	if (!err)
		err = fd_setattr(fd, &a);
	handle_write_end(h);
	cJSON *st = err ? NULL : fsop_fstat_json(fd, &err);
	handles_put(h);
	if (err) {
		reply_handle_error(r, err, hid);
		return;
	}
	cJSON *o = cJSON_CreateObject();
	json_add_int(o, "written", (int64_t)len);
	cJSON_AddItemToObject(o, "stat", st);
	reply_ok(r, o);
}

void route_x_fsync(struct req *r)
{
	const char *hid = req_str_field(r, "handle");
	if (!hid)
		return;
	struct handle *h;
	int err = handles_get(hid, &h);
	if (!err) {
		int fd = handle_fd(h);
		if (json_bool(req_json(r), "datasync", false) ? fdatasync(fd) : fsync(fd))
			err = -errno;
		handles_put(h);
	}
	if (err)
		reply_handle_error(r, err, hid);
	else
		reply_ok(r, NULL);
}

void route_x_close(struct req *r)
{
	const char *hid = req_str_field(r, "handle");
	if (!hid)
		return;
	int err = handles_close(hid);
	if (err)
		reply_handle_error(r, err, hid);
	else
		reply_ok(r, NULL);
}
