/* The public sandbox API: the probe that picks a backend, dispatch to it, errors, command
 * execution and change events (both backends share /api/execute and /api/watch).
 *
 * Watch supervision. A watch is one SSE stream on the shared network thread plus one small
 * supervisor thread of its own. The stream's callbacks run on the network thread and never
 * block: events go straight to the caller's on_change; the end of the stream only flags it and
 * signals the supervisor. The supervisor owns the stream's life cycle: it opens the stream,
 * waits for its end, frees it, reports the watch unhealthy, sleeps the backoff (100 ms doubling
 * to 5 s, reset once a stream got as far as "watching") on a condition variable that
 * sbx_watch_stop() can interrupt, and opens the next. Sleeping on the network thread (a timer
 * there) would have needed a timer API the HTTP client does not have, and a dedicated thread
 * keeps the network thread free of anything slower than parsing. The stream is always closed
 * with the lock released, because http_stream_close() waits for on_end, which takes the lock.
 *
 * Each successful (re)connection, signalled by the "watching" event, calls on_resync() when a
 * previous stream existed (events may have been lost in between) and then on_state(true).
 * A server with keepalives (sbxd) gets a 45 s idle timeout so a dead connection is noticed;
 * the plain container sends none, and its own idle cut after ~255 s just causes a reconnect. */
#include "client/sandbox_impl.h"
#include "client/entry_check.h"
#include <cjson/cJSON.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "common/base64.h"
#include "common/clock.h"
#include "common/errnames.h"
#include "common/jsonutil.h"
#include "common/log.h"

static __thread char last_error[512];
static __thread int last_lost;

const char *sbx_last_error(void) { return last_error; }
int sbx_last_lost(void) { return last_lost; }

const char *sbx_key(struct sbx *s, char buf[HTTP_KEY_MAX])
{
	if (!s->keys)
		return NULL;
	http_client_new_key(s->http, buf);
	return buf;
}

void sbx_set_reason(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(last_error, sizeof last_error, fmt, ap);
	va_end(ap);
}

static const struct {
	const char *text;
	int err;
} text_errnos[] = {
	/* most specific first: mv's own wording, then strerror(3) texts */
	{ "cannot overwrite non-directory", ENOTDIR },
	{ "cannot overwrite directory", EISDIR },
	{ "subdirectory of itself", EINVAL },
	{ "cannot overwrite existing file", EEXIST },
	{ "No such file or directory", ENOENT },
	{ "Not a directory", ENOTDIR },
	{ "File exists", EEXIST },
	{ "Directory not empty", ENOTEMPTY },
	{ "Is a directory", EISDIR },
	{ "Permission denied", EACCES },
	{ "Operation not permitted", EPERM },
	{ "Invalid argument", EINVAL },
	{ "File name too long", ENAMETOOLONG },
	{ "Read-only file system", EROFS },
	{ "No space left on device", ENOSPC },
	{ "Disk quota exceeded", EDQUOT },
	{ "Too many levels of symbolic links", ELOOP },
	{ "Invalid cross-device link", EXDEV },
	{ "Too many links", EMLINK },
	{ "File too large", EFBIG },
	{ "Device or resource busy", EBUSY },
	{ "timed out", ETIMEDOUT },
	/* Node-style texts of the container's native file routes */
	{ "ENOENT", ENOENT },
	{ "ENOTDIR", ENOTDIR },
	{ "EEXIST", EEXIST },
	{ "EISDIR", EISDIR },
	{ "EACCES", EACCES },
	{ "ENOSPC", ENOSPC },
	{ "EROFS", EROFS },
};

int sbx_errno_from_text(const char *text)
{
	if (!text)
		return EIO;
	for (size_t i = 0; i < sizeof text_errnos / sizeof text_errnos[0]; i++)
		if (strstr(text, text_errnos[i].text))
			return text_errnos[i].err;
	return EIO;
}

int sbx_fail_response(const char *what, long status, const char *body, size_t body_len)
{
	cJSON *j = body ? cJSON_ParseWithLength(body, body_len) : NULL;
	const char *msg = json_str(j, "message");
	int err = errno_from_api_error(json_str(j, "errno"), json_str(j, "code"), status);
	/* the container reports shell-tool failures as a generic FILESYSTEM_ERROR with the tool's
	 * message in context.stderr */
	const char *tool = json_str(cJSON_GetObjectItemCaseSensitive(j, "context"), "stderr");
	if (tool && !json_str(j, "errno") && sbx_errno_from_text(tool) != EIO) {
		err = sbx_errno_from_text(tool);
		msg = tool;
	}
	if (msg)
		sbx_fail(-err, "%s: %s", what, msg);
	else
		sbx_fail(-err, "%s: HTTP %ld", what, status);
	cJSON_Delete(j);
	return -err;
}

/* Before a request that may run something in the sandbox: the backend's settle hook. */
static void settle(struct sbx *s)
{
	const struct sbx_ops *ops = atomic_load(&s->ops);
	if (ops->settle)
		ops->settle(s);
}

void sbx_settle(struct sbx *s) { settle(s); }

int sbx_call(struct sbx *s, const char *what, const char *method, const char *path,
	     cJSON *body, bool idempotent, long timeout_ms, cJSON **out)
{
	if (strcmp(method, "POST") == 0)
		settle(s);
	return sbx_call_unsettled(s, what, method, path, body, idempotent, timeout_ms, out);
}

int sbx_call_unsettled(struct sbx *s, const char *what, const char *method, const char *path,
		       cJSON *body, bool idempotent, long timeout_ms, cJSON **out)
{
	char *text = body ? json_print(body) : NULL;
	cJSON_Delete(body);
	*out = NULL;
	if (body && !text)
		return sbx_fail(-ENOMEM, "%s: out of memory", what);
	char key[HTTP_KEY_MAX];
	struct http_request req = {
		.method = method,
		.path = path,
		.body = text,
		.body_len = text ? strlen(text) : 0,
		.timeout_ms = timeout_ms,
		.idempotent = idempotent,
		.idempotency_key = idempotent ? NULL : sbx_key(s, key),
	};
	struct http_response resp = { 0 };
	int err = http_request_sync(s->http, &req, &resp);
	last_lost = resp.lost;
	free(text);
	err = sbx_json_answer(what, err, &resp, req.idempotent || req.idempotency_key, out);
	http_response_clear(&resp);
	return err;
}

int sbx_json_answer(const char *what, int err, const struct http_response *resp, bool repeatable,
		    cJSON **out)
{
	*out = NULL;
	if (err) {
		/* a request sent once, whose answer was lost: say that it may have happened */
		bool unknown = resp->lost && !repeatable;
		return sbx_fail(err, "%s: %s%s", what,
				resp->errmsg[0] ? resp->errmsg : strerror(-err),
				unknown ? " (the sandbox may have carried it out: its answer was "
					  "lost)" : "");
	}
	if (resp->status < 200 || resp->status > 299)
		return sbx_fail_response(what, resp->status, resp->body, resp->body_len);
	*out = cJSON_ParseWithLength(resp->body ? resp->body : "", resp->body_len);
	return *out ? 0 : sbx_fail(-EPROTO, "%s: the server's answer is not JSON", what);
}

int sbx_call_string(struct sbx *s, const char *what, const char *method, const char *path,
		    cJSON *body, bool idempotent, long timeout_ms, const char *field, char **out)
{
	cJSON *j;
	*out = NULL;
	int err = sbx_call(s, what, method, path, body, idempotent, timeout_ms, &j);
	if (err)
		return err;
	const char *v = json_str(j, field);
	if (!v || !*v)
		err = sbx_fail(-EPROTO, "%s: the answer has no %s", what, field);
	else
		*out = sbx_strdup(v);
	cJSON_Delete(j);
	return err;
}

int sbx_call_list(struct sbx *s, const char *what, const char *path, const char *field,
		  cJSON **answer, const cJSON **items)
{
	int err = sbx_call(s, what, "GET", path, NULL, true, 0, answer);
	if (err)
		return err;
	*items = cJSON_GetObjectItemCaseSensitive(*answer, field);
	if (cJSON_IsArray(*items))
		return 0;
	cJSON_Delete(*answer);
	*answer = NULL;
	return sbx_fail(-EPROTO, "%s: the answer has no %s array", what, field);
}

char *sbx_strdup(const char *v)
{
	char *d = v ? strdup(v) : NULL;
	if (v && !d)
		abort();
	return d;
}

int sbx_parse_stat(const cJSON *obj, struct stat *st, char **target)
{
	return sbx_parse_stat_at(NULL, obj, st, target);
}

int sbx_parse_stat_at(const char *path, const cJSON *obj, struct stat *st, char **target)
{
	struct stat tmp;
	struct entry_why why;
	entry_stat_from_json(obj, st ? st : &tmp, target, &why);
	if (path)
		entry_warn_stat(path, &why);
	if (why.fate == ENTRY_DROPPED)
		return sbx_fail(-EPROTO, "%s%sthe server's stat is unusable: %s", path ? path : "",
				path ? ": " : "", why.text);
	return 0;
}

/* ---- probe ---- */

static bool has_extension(const cJSON *caps, const char *name)
{
	const cJSON *e;
	cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(caps, "extensions"))
		if (cJSON_IsString(e) && strcmp(e->valuestring, name) == 0)
			return true;
	return false;
}

static int probe(struct sbx *s)
{
	struct http_request req = { .method = "GET", .path = "/api/x/capabilities",
				    .idempotent = true };
	struct http_response resp = { 0 };
	int err = http_request_sync(s->http, &req, &resp);
	if (err) {
		err = sbx_fail(-ENOTCONN, "%s unreachable: %s", http_client_base_url(s->http),
			       resp.errmsg[0] ? resp.errmsg : strerror(-err));
		goto out;
	}
	if (resp.status == 401 || resp.status == 403) {
		err = sbx_fail(-EACCES, "%s: token refused (HTTP %ld)",
			       http_client_base_url(s->http), resp.status);
		goto out;
	}
	if (resp.status == 200) {
		cJSON *j = cJSON_ParseWithLength(resp.body ? resp.body : "", resp.body_len);
		const char *server = json_str(j, "server");
		if (!server) {
			cJSON_Delete(j);
			err = sbx_fail(-EPROTO, "%s: /api/x/capabilities answered without a server name",
				       http_client_base_url(s->http));
			goto out;
		}
		s->server = strdup(server);
		s->version = strdup(json_str(j, "version") ? json_str(j, "version") : "");
		if (json_str(j, "sandboxId"))
			s->sandbox_id = strdup(json_str(j, "sandboxId"));
		s->info.extensions = true;
		s->heartbeats = strcmp(server, "sbxd") == 0;
		s->keys = has_extension(j, "idempotency");
		s->journal_route = has_extension(j, "journal");
		s->tree = has_extension(j, "tree");
		s->content = has_extension(j, "content");
		s->pipeline = has_extension(j, "pipeline");
		if (has_extension(j, "lease"))
			s->lease_ms = json_int(j, "leaseMs", 0);
		atomic_store(&s->ops, &sbx_ext_ops);
		cJSON_Delete(j);
		goto out;
	}
	if (resp.status != 404) {
		err = sbx_fail_response("probe /api/x/capabilities", resp.status, resp.body,
				       resp.body_len);
		goto out;
	}
	/* no extensions: a plain container (or sbxd --no-extensions); it must answer a ping */
	http_response_clear(&resp);
	req.path = "/api/ping";
	err = http_request_sync(s->http, &req, &resp);
	if (err) {
		err = sbx_fail(-ENOTCONN, "%s unreachable: %s", http_client_base_url(s->http),
			       resp.errmsg[0] ? resp.errmsg : strerror(-err));
		goto out;
	}
	if (resp.status != 200) {
		err = sbx_fail(-ENOTCONN, "%s: /api/ping answered HTTP %ld: not a sandbox API",
			       http_client_base_url(s->http), resp.status);
		goto out;
	}
	s->server = strdup("cloudflare-container");
	s->version = strdup("");
	s->info.extensions = false;
	sbx_fallback_init(s);
	atomic_store(&s->ops, &sbx_fallback_ops);
out:
	http_response_clear(&resp);
	return err;
}

int sbx_open(const struct http_client_opts *opts, struct sbx **out)
{
	*out = NULL;
	struct sbx *s = calloc(1, sizeof *s);
	if (!s)
		return sbx_fail(-ENOMEM, "out of memory");
	s->deadline_ms = opts->request_timeout_ms > 0 ? opts->request_timeout_ms : 30000;
	pthread_mutex_init(&s->copies_lock, NULL);
	pthread_mutex_init(&s->echo_lock, NULL);
	s->http = http_client_new(opts);
	if (!s->http) {
		int err = errno ? -errno : -EINVAL;
		pthread_mutex_destroy(&s->copies_lock);
		pthread_mutex_destroy(&s->echo_lock);
		free(s);
		return sbx_fail(err, "cannot create the HTTP client for %s: %s",
				opts->base_url ? opts->base_url : "(no URL)", strerror(-err));
	}
	int err = probe(s);
	if (err) {
		sbx_close(s);
		return err;
	}
	s->info.server = s->server;
	s->info.version = s->version;
	s->info.sandbox_id = s->sandbox_id;
	if (s->lease_ms > 0)
		s->lease = sbx_lease_start(s, s->lease_ms);
	last_error[0] = 0;
	*out = s;
	return 0;
}

void sbx_close(struct sbx *s)
{
	if (!s)
		return;
	sbx_journal_stop(s);
	sbx_lease_stop(s->lease);
	sbx_fallback_fini(s);
	http_client_free(s->http);
	free(s->server);
	free(s->version);
	free(s->sandbox_id);
	pthread_mutex_destroy(&s->copies_lock);
	pthread_mutex_destroy(&s->echo_lock);
	free(s);
}

const struct sbx_info *sbx_info(const struct sbx *s) { return &s->info; }
struct http_client *sbx_http(struct sbx *s) { return s->http; }

void sbx_force_fallback(struct sbx *s)
{
	s->info.extensions = false;
	s->keys = false; /* as a plain container, which knows none */
	s->journal_route = false;
	if (!s->fb)
		sbx_fallback_init(s);
	atomic_store(&s->ops, &sbx_fallback_ops);
}

/* ---- dispatch ---- */

#define OPS(s) atomic_load(&(s)->ops)

int sbx_lstat(struct sbx *s, const char *path, struct stat *st, char **target)
{
	if (target)
		*target = NULL;
	return OPS(s)->lstat(s, path, st, target);
}

int sbx_readdir(struct sbx *s, const char *path, struct sbx_dirent **ents, size_t *n)
{
	*ents = NULL;
	*n = 0;
	return OPS(s)->readdir(s, path, ents, n);
}

int sbx_readtree(struct sbx *s, const char *path, size_t max_entries, sbx_tree_fn fn, void *arg,
		 bool *truncated)
{
	*truncated = false;
	const struct sbx_ops *ops = OPS(s);
	if (!ops->readtree)
		return sbx_fail(-ENOSYS, "tree %s: the %s backend lists one directory at a time",
				path, ops->name);
	return ops->readtree(s, path, max_entries, fn, arg, truncated);
}

void sbx_dirents_free(struct sbx_dirent *ents, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(ents[i].name);
		free(ents[i].target);
	}
	free(ents);
}

int sbx_mkdir(struct sbx *s, const char *path, mode_t mode, struct stat *st)
{
	return OPS(s)->mkdir(s, path, mode, st);
}

int sbx_unlink(struct sbx *s, const char *path) { return OPS(s)->unlink(s, path); }
int sbx_rmdir(struct sbx *s, const char *path) { return OPS(s)->rmdir(s, path); }

int sbx_rename(struct sbx *s, const char *from, const char *to, unsigned flags)
{
	return OPS(s)->rename(s, from, to, flags);
}

int sbx_symlink(struct sbx *s, const char *target, const char *path, struct stat *st)
{
	return OPS(s)->symlink(s, target, path, st);
}

int sbx_readlink(struct sbx *s, const char *path, char **target)
{
	*target = NULL;
	return OPS(s)->readlink(s, path, target);
}

int sbx_link(struct sbx *s, const char *from, const char *to, struct stat *st)
{
	return OPS(s)->link(s, from, to, st);
}

int sbx_statfs(struct sbx *s, const char *path, struct statvfs *sv)
{
	return OPS(s)->statfs(s, path, sv);
}

int sbx_setattr(struct sbx *s, const char *path, unsigned valid, const struct stat *want,
		struct stat *st)
{
	return OPS(s)->setattr(s, path, valid, want, st);
}

int sbx_file_open(struct sbx *s, const char *path, int flags, mode_t mode, struct sbx_file **out,
		  struct stat *st)
{
	*out = NULL;
	return OPS(s)->file_open(s, path, flags, mode, out, st);
}

ssize_t sbx_file_pread(struct sbx_file *f, void *buf, size_t len, off_t off)
{
	if (off < 0)
		return sbx_fail(-EINVAL, "pread: negative offset");
	return f->ops->file_pread(f, buf, len, off);
}

ssize_t sbx_file_pwrite(struct sbx_file *f, const void *buf, size_t len, off_t off)
{
	if (off < 0)
		return sbx_fail(-EINVAL, "pwrite: negative offset");
	return f->ops->file_pwrite(f, buf, len, off);
}

int sbx_file_flush(struct sbx_file *f) { return f->ops->file_flush(f); }
int sbx_file_fsync(struct sbx_file *f, bool datasync) { return f->ops->file_fsync(f, datasync); }
int sbx_file_fstat(struct sbx_file *f, struct stat *st) { return f->ops->file_fstat(f, st); }

int sbx_file_setattr(struct sbx_file *f, unsigned valid, const struct stat *want,
		     struct stat *st)
{
	return f->ops->file_setattr(f, valid, want, st);
}

int sbx_file_cached_stat(struct sbx_file *f, struct stat *st)
{
	return f->ops->file_cached_stat(f, st);
}

int sbx_file_ftruncate(struct sbx_file *f, off_t size)
{
	if (size < 0)
		return sbx_fail(-EINVAL, "ftruncate: negative size");
	return f->ops->file_ftruncate(f, size);
}

int sbx_file_pin(struct sbx_file *f) { return f->ops->file_pin(f); }

int sbx_file_set_path(struct sbx_file *f, const char *path)
{
	return f->ops->file_set_path(f, path);
}

int sbx_file_orphan(struct sbx_file *f)
{
	/* the extensions' handle is the server's open file: it already outlives its name */
	return f->ops->file_orphan ? f->ops->file_orphan(f) : 0;
}

void sbx_file_changed(struct sbx_file *f)
{
	if (f->ops->file_changed)
		f->ops->file_changed(f);
}

int sbx_file_close(struct sbx_file *f) { return f ? f->ops->file_close(f) : 0; }

int sbx_read_all(struct sbx *s, const char *path, char **data, size_t *len)
{
	*data = NULL;
	*len = 0;
	return OPS(s)->read_all(s, path, data, len);
}

ssize_t sbx_pread_path(struct sbx *s, const char *path, void *buf, size_t len, off_t off)
{
	if (off < 0)
		return sbx_fail(-EINVAL, "pread %s: negative offset", path);
	return OPS(s)->pread_path(s, path, buf, len, off);
}

/* ---- commands ---- */

/* Copies a stdout/stderr field, decoding it when the server applied the base64 extension. */
static int exec_output(const cJSON *j, const char *key, bool b64, char **out, size_t *len)
{
	const char *v = json_str(j, key);
	size_t n = v ? strlen(v) : 0;
	*out = malloc(b64 ? base64_decoded_max(n) + 1 : n + 1);
	if (!*out)
		return -ENOMEM;
	if (b64) {
		ssize_t m = base64_decode(v ? v : "", n, *out);
		if (m < 0)
			return -EPROTO;
		n = (size_t)m;
	} else if (n) {
		memcpy(*out, v, n);
	}
	(*out)[n] = 0;
	*len = n;
	return 0;
}

long sbx_deadline(const struct sbx *s, size_t bytes)
{
	/* 1 s per MiB beyond the first 8: slow links still finish, a stall still ends */
	return s->deadline_ms + (bytes > (8u << 20) ? (long)(bytes >> 20) * 1000 : 0);
}

/* The command's timeout and the HTTP deadline around it. */
static int exec_bounded(struct sbx *s, const char *command, const char *cwd, long timeout_ms,
			long http_ms, bool repeatable, struct sbx_exec_result *r)
{
	*r = (struct sbx_exec_result){ .exit_code = -1 };
	cJSON *body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "command", command);
	if (cwd)
		cJSON_AddStringToObject(body, "cwd", cwd);
	json_add_int(body, "timeoutMs", timeout_ms);
	cJSON_AddStringToObject(body, "sessionId", "__DISABLE_SESSION__");
	cJSON_AddStringToObject(body, "encoding", "base64");
	cJSON *j;
	/* the fallback's helpers (repeatable) settle by themselves; a user's command settles */
	int err = repeatable ? sbx_call_unsettled(s, "execute", "POST", "/api/execute", body, true,
						  http_ms, &j)
			     : sbx_call(s, "execute", "POST", "/api/execute", body, false, http_ms,
					&j);
	if (err)
		return err;
	err = sbx_exec_answer("execute", j, r);
	cJSON_Delete(j);
	return err;
}

int sbx_exec_answer(const char *what, const cJSON *j, struct sbx_exec_result *r)
{
	*r = (struct sbx_exec_result){ .exit_code = -1 };
	const char *enc = json_str(j, "encoding");
	bool b64 = enc && strcmp(enc, "base64") == 0;
	if (!cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(j, "exitCode")))
		return sbx_fail(-EPROTO, "%s: the answer has no exit code", what);
	r->exit_code = (int)json_int(j, "exitCode", -1);
	int err = exec_output(j, "stdout", b64, &r->out, &r->out_len);
	if (!err)
		err = exec_output(j, "stderr", b64, &r->err, &r->err_len);
	if (err) {
		sbx_exec_result_free(r);
		r->exit_code = -1;
		return sbx_fail(err, "%s: undecodable output", what);
	}
	return 0;
}

int sbx_exec(struct sbx *s, const char *command, const char *cwd, long timeout_ms,
	     struct sbx_exec_result *r)
{
	if (timeout_ms <= 0)
		timeout_ms = 30000;
	/* the server kills the command at timeout_ms (SIGTERM, SIGKILL 5 s later) and answers */
	return exec_bounded(s, command, cwd, timeout_ms, timeout_ms + 10000, false, r);
}

int sbx_exec_within(struct sbx *s, const char *command, const char *cwd, long http_ms,
		    struct sbx_exec_result *r)
{
	/* the server answers with exit code 124 a little before the client would give up; its
	 * SIGKILL grace does not matter for the helpers, which are plain tools that die on
	 * SIGTERM */
	long margin = http_ms / 5 < 2000 ? http_ms / 5 : 2000;
	return exec_bounded(s, command, cwd, http_ms - margin, http_ms, true, r);
}

void sbx_exec_result_free(struct sbx_exec_result *r)
{
	free(r->out);
	free(r->err);
	r->out = r->err = NULL;
	r->out_len = r->err_len = 0;
}

/* ---- change events ---- */

#define WATCH_BACKOFF_MIN_MS 100
#define WATCH_BACKOFF_MAX_MS 5000
#define WATCH_IDLE_MS 45000

struct sbx_watch {
	struct sbx *s;
	char *path;
	struct sbx_watch_ops ops;
	void *arg;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stopping;
	bool ended;      /* the current stream's on_end ran */
	bool connected;  /* the current stream got "watching" */
	bool healthy;    /* last state reported through on_state */
	bool ever_connected;
};

static void watch_set_state(struct sbx_watch *w, bool healthy)
{
	if (w->healthy == healthy)
		return;
	w->healthy = healthy;
	const struct sbx_ops *ops = atomic_load(&w->s->ops);
	if (ops->watching && strcmp(w->path, "/workspace") == 0)
		ops->watching(w->s, healthy);
	if (w->ops.on_state)
		w->ops.on_state(w->arg, healthy);
}

/* Events may have been lost: whatever the backend and the caller cache must go. */
static void watch_lost_events(struct sbx_watch *w)
{
	const struct sbx_ops *ops = atomic_load(&w->s->ops);
	if (ops->changed)
		ops->changed(w->s, NULL);
	if (w->ops.on_resync)
		w->ops.on_resync(w->arg);
}

static int watch_on_event(void *arg, const struct sse_event *ev)
{
	struct sbx_watch *w = arg;
	cJSON *j = cJSON_ParseWithLength(ev->data, ev->data_len);
	const char *type = json_str(j, "type");
	int stop = 0;
	if (!type) {
		log_debug("watch %s: ignoring an event without a type", w->path);
	} else if (strcmp(type, "event") == 0 && sbx_own_change(w->s, json_str(j, "journal"))) {
		/* the echo of the mount's own change: its journal knows the outcome already */
	} else if (strcmp(type, "event") == 0) {
		const char *path = json_str(j, "path");
		const char *et = json_str(j, "eventType");
		const struct sbx_ops *ops = atomic_load(&w->s->ops);
		if (path && ops->changed)
			ops->changed(w->s, path);
		if (path && et && w->ops.on_change)
			w->ops.on_change(w->arg, path, et, json_bool(j, "isDirectory", false));
	} else if (strcmp(type, "watching") == 0) {
		pthread_mutex_lock(&w->lock);
		bool resync = w->ever_connected;
		w->connected = w->ever_connected = true;
		pthread_mutex_unlock(&w->lock);
		if (resync)
			watch_lost_events(w);
		watch_set_state(w, true);
	} else if (strcmp(type, "overflow") == 0) {
		watch_lost_events(w);
	} else if (strcmp(type, "stopped") == 0 || strcmp(type, "error") == 0) {
		const char *why = json_str(j, "reason") ? json_str(j, "reason") : json_str(j, "error");
		log_info("watch %s: the server ended it (%s: %s)", w->path, type,
			 why ? why : "no reason given");
		stop = 1;
	}
	cJSON_Delete(j);
	return stop;
}

static void watch_on_end(void *arg, int err, long status, const char *body, size_t body_len)
{
	struct sbx_watch *w = arg;
	if (err && err != -ECANCELED)
		log_debug("watch %s: stream ended: %s", w->path, strerror(-err));
	else if (status && status != 200)
		log_info("watch %s: HTTP %ld: %.*s", w->path, status, (int)(body_len > 200 ? 200 : body_len),
			 body ? body : "");
	pthread_mutex_lock(&w->lock);
	w->ended = true;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

static const struct http_stream_ops watch_stream_ops = {
	.on_event = watch_on_event,
	.on_end = watch_on_end,
};

static struct http_stream *watch_open_stream(struct sbx_watch *w)
{
	cJSON *body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "path", w->path);
	cJSON_AddBoolToObject(body, "recursive", true);
	cJSON_AddItemToObject(body, "exclude", cJSON_CreateArray());
	char *text = json_print(body);
	cJSON_Delete(body);
	if (!text)
		return NULL;
	struct http_request req = {
		.method = "POST",
		.path = "/api/watch",
		.body = text,
		.body_len = strlen(text),
		/* for a stream, the deadline covers the connection and the first response */
		.timeout_ms = 15000,
		.idempotent = true, /* it only watches */
	};
	struct http_stream *st = http_stream_open(w->s->http, &req, &watch_stream_ops, w,
						  w->s->heartbeats ? WATCH_IDLE_MS : 0);
	free(text);
	return st;
}

static void deadline_after(struct timespec *ts, long ms)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += ms / 1000;
	ts->tv_nsec += (ms % 1000) * 1000000L;
	if (ts->tv_nsec >= 1000000000L) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000L;
	}
}

static void *watch_supervisor(void *arg)
{
	struct sbx_watch *w = arg;
	long backoff = WATCH_BACKOFF_MIN_MS;
	pthread_mutex_lock(&w->lock);
	while (!w->stopping) {
		w->ended = w->connected = false;
		pthread_mutex_unlock(&w->lock);
		struct http_stream *st = watch_open_stream(w);
		pthread_mutex_lock(&w->lock);
		if (st) {
			while (!w->ended && !w->stopping)
				pthread_cond_wait(&w->cond, &w->lock);
			bool connected = w->connected;
			pthread_mutex_unlock(&w->lock);
			http_stream_close(st);
			if (connected)
				backoff = WATCH_BACKOFF_MIN_MS;
			pthread_mutex_lock(&w->lock);
		}
		if (w->stopping)
			break;
		pthread_mutex_unlock(&w->lock);
		watch_set_state(w, false);
		pthread_mutex_lock(&w->lock);
		struct timespec until;
		deadline_after(&until, backoff);
		while (!w->stopping &&
		       pthread_cond_timedwait(&w->cond, &w->lock, &until) != ETIMEDOUT)
			;
		backoff = backoff * 2 > WATCH_BACKOFF_MAX_MS ? WATCH_BACKOFF_MAX_MS : backoff * 2;
	}
	pthread_mutex_unlock(&w->lock);
	return NULL;
}

struct sbx_watch *sbx_watch_start(struct sbx *s, const char *path, const struct sbx_watch_ops *ops,
				  void *arg)
{
	struct sbx_watch *w = calloc(1, sizeof *w);
	if (!w || !(w->path = strdup(path))) {
		free(w);
		sbx_fail(-ENOMEM, "watch: out of memory");
		errno = ENOMEM;
		return NULL;
	}
	w->s = s;
	w->ops = *ops;
	w->arg = arg;
	pthread_mutex_init(&w->lock, NULL);
	mono_cond_init(&w->cond);
	int err = pthread_create(&w->thread, NULL, watch_supervisor, w);
	if (err) {
		pthread_cond_destroy(&w->cond);
		pthread_mutex_destroy(&w->lock);
		free(w->path);
		free(w);
		sbx_fail(-err, "watch: cannot start its thread: %s", strerror(err));
		errno = err;
		return NULL;
	}
	if (strcmp(path, "/workspace") == 0) {
		pthread_mutex_lock(&s->echo_lock);
		s->workspace_watch = w;
		pthread_mutex_unlock(&s->echo_lock);
	}
	return w;
}

void sbx_local_unknown(struct sbx *s, const char *path)
{
	pthread_mutex_lock(&s->echo_lock);
	struct sbx_watch *w = s->workspace_watch;
	if (w && w->ops.on_change)
		w->ops.on_change(w->arg, path, "unknown", false);
	pthread_mutex_unlock(&s->echo_lock);
}

bool sbx_own_change(const struct sbx *s, const char *journal)
{
	size_t n = strlen(s->journal_id);
	return journal && n && strncmp(journal, s->journal_id, n) == 0 &&
	       (!journal[n] || strcmp(journal + n, SBX_LANE_SUFFIX) == 0);
}

bool sbx_local_settled(struct sbx *s, const char *path, bool is_dir, const struct stat *st,
		       uint64_t handover)
{
	pthread_mutex_lock(&s->echo_lock);
	struct sbx_watch *w = s->workspace_watch; /* its callbacks only queue: never block */
	bool taken = w && st && w->ops.on_settled;
	if (taken)
		w->ops.on_settled(w->arg, path, st, handover);
	else if (w && w->ops.on_change)
		w->ops.on_change(w->arg, path, "attrib", is_dir);
	pthread_mutex_unlock(&s->echo_lock);
	return taken;
}

void sbx_watch_stop(struct sbx_watch *w)
{
	if (!w)
		return;
	pthread_mutex_lock(&w->s->echo_lock);
	if (w->s->workspace_watch == w)
		w->s->workspace_watch = NULL;
	pthread_mutex_unlock(&w->s->echo_lock);
	pthread_mutex_lock(&w->lock);
	w->stopping = true;
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->lock);
	pthread_join(w->thread, NULL);
	/* its events stop: for the backend's caches it is as good as broken */
	const struct sbx_ops *ops = atomic_load(&w->s->ops);
	if (w->healthy && ops->watching && strcmp(w->path, "/workspace") == 0)
		ops->watching(w->s, false);
	pthread_cond_destroy(&w->cond);
	pthread_mutex_destroy(&w->lock);
	free(w->path);
	free(w);
}
