/* The container's standard file routes (container-api.md §7), done with syscalls beneath the
 * workspace root (workspace.c): no shell helper, so they never queue behind a session. Shapes
 * and status codes follow the container; errors carry the real errno. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include "common/base64.h"
#include "common/errnames.h"
#include "common/fdio.h"
#include "common/jsonutil.h"
#include "server/request.h"
#include "server/routes.h"
#include "server/workspace.h"

#define READ_MAX (32u << 20)
#define STREAM_CHUNK 65535
#define LIST_DEPTH_MAX 1024

/* ---- content type and text detection ---- */

static const struct {
	const char *ext;
	const char *mime;
} mime_types[] = {
	{ "txt", "text/plain" }, { "log", "text/plain" }, { "md", "text/markdown" },
	{ "html", "text/html" }, { "htm", "text/html" }, { "css", "text/css" },
	{ "csv", "text/csv" }, { "tsv", "text/tab-separated-values" },
	{ "js", "application/javascript" }, { "mjs", "application/javascript" },
	{ "cjs", "application/javascript" }, { "jsx", "text/jsx" },
	{ "ts", "application/typescript" }, { "tsx", "text/tsx" },
	{ "json", "application/json" }, { "xml", "application/xml" },
	{ "yaml", "application/yaml" }, { "yml", "application/yaml" },
	{ "toml", "application/toml" }, { "sh", "application/x-sh" },
	{ "bash", "application/x-sh" }, { "sql", "application/sql" },
	{ "py", "text/x-python" }, { "c", "text/x-c" }, { "h", "text/x-c" },
	{ "cpp", "text/x-c++" }, { "go", "text/x-go" }, { "rs", "text/x-rust" },
	{ "java", "text/x-java" }, { "rb", "text/x-ruby" }, { "svg", "image/svg+xml" },
	{ "png", "image/png" }, { "jpg", "image/jpeg" }, { "jpeg", "image/jpeg" },
	{ "gif", "image/gif" }, { "webp", "image/webp" }, { "ico", "image/x-icon" },
	{ "pdf", "application/pdf" }, { "zip", "application/zip" },
	{ "gz", "application/gzip" }, { "tar", "application/x-tar" },
	{ "wasm", "application/wasm" }, { "mp3", "audio/mpeg" }, { "mp4", "video/mp4" },
	{ "woff", "font/woff" }, { "woff2", "font/woff2" }, { "ttf", "font/ttf" },
};

static const char *mime_from_name(const char *path)
{
	const char *base = strrchr(path, '/');
	base = base ? base + 1 : path;
	const char *dot = strrchr(base, '.');
	if (!dot || dot == base)
		return NULL;
	for (size_t i = 0; i < sizeof mime_types / sizeof mime_types[0]; i++)
		if (strcasecmp(dot + 1, mime_types[i].ext) == 0)
			return mime_types[i].mime;
	return NULL;
}

static bool mime_is_text(const char *m)
{
	static const char *const text_apps[] = {
		"application/json", "application/xml", "application/javascript",
		"application/typescript", "application/yaml", "application/toml",
		"application/x-sh", "application/sql",
	};
	size_t n = strlen(m);
	if (strncmp(m, "text/", 5) == 0 || (n > 5 && strcmp(m + n - 5, "+json") == 0) ||
	    (n > 4 && strcmp(m + n - 4, "+xml") == 0))
		return true;
	for (size_t i = 0; i < sizeof text_apps / sizeof text_apps[0]; i++)
		if (strcmp(m, text_apps[i]) == 0)
			return true;
	return false;
}

/* Length (1-4) of the valid UTF-8 character at p, 0 when invalid, -1 when p[0..n) is the start
 * of a valid character cut short. NUL counts as invalid: JSON strings here are C strings. */
static int utf8_char(const unsigned char *p, size_t n)
{
	unsigned c = p[0];
	int len;
	unsigned min;
	if (c == 0)
		return 0;
	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf)
		len = 2, min = 0x80;
	else if (c >= 0xe0 && c <= 0xef)
		len = 3, min = 0x800;
	else if (c >= 0xf0 && c <= 0xf4)
		len = 4, min = 0x10000;
	else
		return 0;
	unsigned cp = c & (0x3f >> (len - 1));
	for (int i = 1; i < len; i++) {
		if ((size_t)i >= n)
			return -1;
		if ((p[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (p[i] & 0x3f);
		/* Reject overlong forms and surrogates as soon as the bits tell. */
		if (i == 1 && ((len == 3 && c == 0xe0 && p[1] < 0xa0) ||
			       (len == 3 && c == 0xed && p[1] >= 0xa0) ||
			       (len == 4 && c == 0xf0 && p[1] < 0x90) ||
			       (len == 4 && c == 0xf4 && p[1] >= 0x90)))
			return 0;
	}
	return cp >= min ? len : 0;
}

/* Appends p[0..n) as UTF-8 text, invalid bytes as U+FFFD; returns how many trailing bytes
 * form an incomplete character (left for the next call unless final). */
static size_t utf8_append_lossy(struct strbuf *out, const unsigned char *p, size_t n, bool final)
{
	size_t i = 0, run = 0;
	while (i < n) {
		int l = utf8_char(p + i, n - i);
		if (l > 0) {
			i += (size_t)l;
			continue;
		}
		strbuf_append(out, p + run, i - run);
		if (l < 0 && !final) {
			return n - i;
		}
		strbuf_appends(out, "\xef\xbf\xbd");
		i++;
		run = i;
	}
	strbuf_append(out, p + run, i - run);
	return 0;
}

/* The whole file is valid UTF-8 without NUL (read through once, in blocks). */
static bool fd_is_utf8(int fd)
{
	static const size_t block = 1 << 20;
	unsigned char *buf = malloc(block + 4);
	if (!buf)
		return false;
	size_t carry = 0;
	off_t off = 0;
	bool ok = true;
	for (;;) {
		ssize_t n = pread(fd, buf + carry, block, off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			ok = n == 0 && carry == 0;
			break;
		}
		off += n;
		size_t len = carry + (size_t)n, i = 0;
		carry = 0;
		while (i < len) {
			int l = utf8_char(buf + i, len - i);
			if (l == 0) {
				ok = false;
				break;
			}
			if (l < 0) {
				carry = len - i;
				memmove(buf, buf + i, carry);
				break;
			}
			i += (size_t)l;
		}
		if (!ok)
			break;
	}
	free(buf);
	return ok;
}

/* MIME type by name; without a known extension, "text/plain" for UTF-8 content (as `file`
 * would say), else application/octet-stream. */
static const char *content_type(const char *path, int fd, bool *text)
{
	const char *m = mime_from_name(path);
	if (m) {
		*text = mime_is_text(m) && fd_is_utf8(fd);
		return m;
	}
	*text = fd_is_utf8(fd);
	return *text ? "text/plain" : "application/octet-stream";
}

/* Stats abs as the container's `test -e` sees it: following symlinks, so a dangling link does
 * not exist, yet a link leading out of the workspace exists, as itself, unfollowed. */
static int stat_existing(const char *abs, struct stat *st)
{
	int err = ws_stat(abs, st, true);
	if (err && ws_refused())
		err = ws_stat(abs, st, false);
	return err;
}

/* Opens a regular file for reading (following symlinks inside the workspace); a FIFO or device
 * is refused rather than blocked on. Directories read as "not found", as in the container. */
static int open_for_read(const char *rel, struct stat *st, const char **why)
{
	int fd = ws_open_rel(rel, O_RDONLY | O_NONBLOCK, 0);
	if (fd < 0) {
		*why = NULL;
		return fd;
	}
	int err = 0;
	if (fstat(fd, st))
		err = -errno;
	else if (S_ISDIR(st->st_mode))
		err = -EISDIR;
	else if (!S_ISREG(st->st_mode))
		err = -EINVAL, *why = "not a regular file";
	if (err) {
		close(fd);
		return err;
	}
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
	return fd;
}

static void reply_read_error(struct req *r, int err, const char *why, const char *abs)
{
	if (err == -ENOENT || err == -EISDIR) {
		cJSON *ctx = cJSON_CreateObject();
		cJSON_AddStringToObject(ctx, "path", abs);
		cJSON_AddStringToObject(ctx, "operation", "file.read");
		reply_error(r, 404, "FILE_NOT_FOUND", -err, ctx, "File not found: %s", abs);
	} else if (why) {
		reply_errno(r, err, abs, "%s: %s", why, abs);
	} else {
		reply_ws_errno(r, err, abs);
	}
}

/* {"success":true,"path":abs,...}: what a route that changed one entry answers. */
static void reply_path(struct req *r, const char *abs)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "path", abs);
	reply_ok(r, o);
}

/* ---- /api/read ---- */

static void reply_too_large(struct req *r, const char *abs, off_t size)
{
	cJSON *ctx = cJSON_CreateObject();
	cJSON_AddStringToObject(ctx, "path", abs);
	cJSON_AddStringToObject(ctx, "operation", "file.read");
	json_add_int(ctx, "actualSize", size);
	json_add_int(ctx, "maxSize", READ_MAX);
	reply_error(r, 413, "FILE_TOO_LARGE", EFBIG, ctx,
		    "File too large. Size %lld bytes exceeds the 32 MiB limit.", (long long)size);
}

/* The whole file of fd (of size bytes when it was looked at) into *data; 0 or a negative
 * errno (-EFBIG for a file that grew past READ_MAX since). */
static int read_whole(int fd, off_t size, char **data, size_t *len)
{
	/* One byte more than allowed tells a file that grew past the limit since fstat. */
	size_t cap = (size_t)size + 1 > READ_MAX + 1 ? READ_MAX + 1 : (size_t)size + 1;
	if (!(*data = malloc(cap)))
		return -ENOMEM;
	int err = fd_read_full(fd, *data, cap, len);
	if (!err && *len > READ_MAX)
		err = -EFBIG;
	if (err) {
		free(*data);
		*data = NULL;
	}
	return err;
}

/* The file's content as text (invalid sequences replaced) or base64. */
static void add_content(cJSON *o, const char *data, size_t len, bool text)
{
	if (text) {
		struct strbuf sb = STRBUF_INIT;
		utf8_append_lossy(&sb, (const unsigned char *)data, len, true);
		cJSON_AddStringToObject(o, "content", sb.data ? sb.data : "");
		strbuf_free(&sb);
	} else {
		char *b64 = base64_encode_alloc(data, len);
		cJSON_AddStringToObject(o, "content", b64 ? b64 : "");
		free(b64);
	}
	cJSON_AddStringToObject(o, "encoding", text ? "utf-8" : "base64");
	cJSON_AddBoolToObject(o, "isBinary", !text);
}

void route_read(struct req *r)
{
	char rel[WS_PATH_MAX + 1], abs[WS_PATH_MAX + 16], *data;
	const char *why = NULL, *path = req_ws_path(r, "path", rel, abs);
	const char *enc = json_str(req_json(r), "encoding");
	struct stat st;
	size_t len;
	bool text = false;
	if (!path)
		return;
	int fd = open_for_read(rel, &st, &why);
	if (fd < 0)
		return reply_read_error(r, fd, why, abs);
	if ((uint64_t)st.st_size > READ_MAX) {
		close(fd);
		return reply_too_large(r, abs, st.st_size);
	}
	int err = read_whole(fd, st.st_size, &data, &len);
	const char *mime = err ? NULL : content_type(path, fd, &text);
	close(fd);
	if (err)
		return reply_ws_errno(r, err, abs);
	if (enc && strcmp(enc, "base64") == 0)
		text = false;
	else if (enc && (strcmp(enc, "utf-8") == 0 || strcmp(enc, "utf8") == 0))
		text = true;
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "path", abs);
	add_content(o, data, len, text);
	free(data);
	cJSON_AddStringToObject(o, "mimeType", mime);
	json_add_int(o, "size", (int64_t)len);
	reply_ok(r, o);
}

/* ---- /api/read/stream ---- */

struct read_stream {
	int fd;
	char *error;    /* the only event when set */
	const char *mime;
	bool text;
	bool started;
	uint64_t size, done;
	unsigned char carry[4];
	size_t ncarry;
	unsigned char buf[STREAM_CHUNK + 4];
};

static void stream_event_error(struct strbuf *out, const char *msg)
{
	cJSON *e = cJSON_CreateObject();
	cJSON_AddStringToObject(e, "type", "error");
	cJSON_AddStringToObject(e, "error", msg);
	sse_append(out, e);
	cJSON_Delete(e);
}

static void stream_metadata(struct read_stream *s, struct strbuf *out)
{
	cJSON *e = cJSON_CreateObject();
	cJSON_AddStringToObject(e, "type", "metadata");
	cJSON_AddStringToObject(e, "mimeType", s->mime);
	json_add_int(e, "size", (int64_t)s->size);
	cJSON_AddBoolToObject(e, "isBinary", !s->text);
	cJSON_AddStringToObject(e, "encoding", s->text ? "utf-8" : "base64");
	sse_append(out, e);
	cJSON_Delete(e);
	s->started = true;
}

/* The "chunk" event of the got bytes in buf, text keeping characters whole across chunks. */
static void stream_chunk(struct read_stream *s, struct strbuf *out, size_t got, bool eof)
{
	cJSON *e = cJSON_CreateObject();
	cJSON_AddStringToObject(e, "type", "chunk");
	if (s->text) {
		struct strbuf t = STRBUF_INIT;
		size_t n = got;
		if (s->ncarry) {
			memmove(s->buf + s->ncarry, s->buf, got);
			memcpy(s->buf, s->carry, s->ncarry);
			n += s->ncarry;
		}
		s->ncarry = utf8_append_lossy(&t, s->buf, n, eof);
		memcpy(s->carry, s->buf + n - s->ncarry, s->ncarry);
		cJSON_AddStringToObject(e, "data", t.data ? t.data : "");
		strbuf_free(&t);
	} else {
		char *b64 = base64_encode_alloc(s->buf, got);
		cJSON_AddStringToObject(e, "data", b64 ? b64 : "");
		free(b64);
	}
	sse_append(out, e);
	cJSON_Delete(e);
	s->done += got;
}

static int read_stream_next(void *ctx, struct strbuf *out, int timeout_ms)
{
	struct read_stream *s = ctx;
	(void)timeout_ms;
	if (s->error) {
		stream_event_error(out, s->error);
		return 0;
	}
	if (!s->started)
		stream_metadata(s, out);
	/* A few chunks per call keep the per-call overhead low without buffering much. */
	for (int i = 0; i < 8; i++) {
		size_t got;
		int err = fd_read_full(s->fd, (char *)s->buf, STREAM_CHUNK, &got);
		if (err) {
			stream_event_error(out, strerror(-err));
			return 0;
		}
		bool eof = got < STREAM_CHUNK;
		if (got || (s->text && s->ncarry && eof))
			stream_chunk(s, out, got, eof);
		if (eof) {
			cJSON *e = cJSON_CreateObject();
			cJSON_AddStringToObject(e, "type", "complete");
			json_add_int(e, "bytesRead", (int64_t)s->done);
			sse_append(out, e);
			cJSON_Delete(e);
			return 0;
		}
	}
	return 1;
}

static void read_stream_release(void *ctx)
{
	struct read_stream *s = ctx;
	if (s->fd >= 0)
		close(s->fd);
	free(s->error);
	free(s);
}

void route_read_stream(struct req *r)
{
	struct read_stream *s = calloc(1, sizeof *s);
	if (!s) {
		reply_error(r, 500, "INTERNAL_ERROR", ENOMEM, NULL, "out of memory");
		return;
	}
	s->fd = -1;
	const char *path = json_str(req_json(r), "path");
	char rel[WS_PATH_MAX + 1], abs[WS_PATH_MAX + 16];
	int err = path && *path ? ws_normalize(path, rel, sizeof rel) : -EINVAL;
	if (err) {
		if (asprintf(&s->error, "%s: %s", ws_strerror(err), path ? path : "") < 0)
			s->error = NULL;
	} else {
		ws_api_path(rel, abs, sizeof abs);
		struct stat st;
		const char *why = NULL;
		s->fd = open_for_read(rel, &st, &why);
		if (s->fd < 0) {
			err = s->fd;
			int k = err == -ENOENT || err == -EISDIR
					? asprintf(&s->error, "File not found: %s", abs)
					: asprintf(&s->error, "%s: %s", why ? why : ws_strerror(err), abs);
			if (k < 0)
				s->error = NULL;
		} else {
			s->size = (uint64_t)st.st_size;
			s->mime = content_type(path, s->fd, &s->text);
		}
	}
	if (err && !s->error)
		s->error = strdup("error");
	reply_sse(r, (struct sse_source){ read_stream_next, read_stream_release, s });
}

/* ---- /api/write ---- */

/* The bytes of the request's "content" (base64-decoded into *decoded when the encoding says
 * so); false after answering. */
static bool content_of(struct req *r, const char *abs, const char **data, size_t *len,
		       char **decoded)
{
	const cJSON *content = cJSON_GetObjectItemCaseSensitive(req_json(r), "content");
	const char *enc = json_str(req_json(r), "encoding");
	*decoded = NULL;
	if (!cJSON_IsString(content)) {
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL, "'content' must be a string");
		return false;
	}
	*data = content->valuestring;
	*len = strlen(*data);
	if (!enc || strcmp(enc, "base64") != 0)
		return true;
	ssize_t n = -1;
	if (strspn(*data, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") ==
	    *len) {
		if (!(*decoded = malloc(base64_decoded_max(*len) + 1)))
			abort();
		n = base64_decode(*data, *len, *decoded);
	}
	if (n < 0) {
		free(*decoded);
		cJSON *ctx = cJSON_CreateObject();
		cJSON *errs = cJSON_AddArrayToObject(ctx, "validationErrors");
		cJSON *e = cJSON_CreateObject();
		cJSON_AddStringToObject(e, "field", "content");
		cJSON_AddStringToObject(e, "message", "Invalid base64 characters");
		cJSON_AddStringToObject(e, "code", "INVALID_BASE64");
		cJSON_AddItemToArray(errs, e);
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, ctx,
			    "Invalid base64 content for '%s': must contain only A-Z, a-z, 0-9, +, /, "
			    "=", abs);
		return false;
	}
	*data = *decoded;
	*len = (size_t)n;
	return true;
}

/* Writes the file rel whole, making its missing parents; 0 or a negative errno. */
static int write_file(const char *rel, const char *data, size_t len)
{
	int err = 0;
	const char *slash = strrchr(rel, '/');
	if (slash) {
		char parent[WS_PATH_MAX + 1];
		memcpy(parent, rel, (size_t)(slash - rel));
		parent[slash - rel] = '\0';
		err = ws_mkdir_p(parent, 0777);
		if (err == -EEXIST)
			err = -ENOTDIR;
	}
	/* Not O_TRUNC yet: a FIFO or device must be refused before anything happens. */
	int fd = err ? -1 : ws_open_rel(rel, O_WRONLY | O_CREAT | O_NONBLOCK, 0666);
	if (!err && fd < 0)
		err = fd;
	struct stat st;
	if (!err && fstat(fd, &st))
		err = -errno;
	if (!err && !S_ISREG(st.st_mode))
		err = -EINVAL;
	if (!err && ftruncate(fd, 0))
		err = -errno;
	if (!err) {
		fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
		err = fd_write_full(fd, data, len);
	}
	if (fd >= 0 && close(fd) && !err)
		err = -errno;
	return err;
}

void route_write(struct req *r)
{
	char rel[WS_PATH_MAX + 1], abs[WS_PATH_MAX + 16], *decoded;
	const char *data;
	size_t len;
	if (!req_ws_path(r, "path", rel, abs) || !content_of(r, abs, &data, &len, &decoded))
		return;
	int err = write_file(rel, data, len);
	free(decoded);
	if (err)
		return reply_ws_errno(r, err, abs);
	reply_path(r, abs);
}

/* ---- /api/delete ---- */

void route_delete(struct req *r)
{
	char rel[WS_PATH_MAX + 1], abs[WS_PATH_MAX + 16];
	if (!req_ws_path(r, "path", rel, abs))
		return;
	/* The container tests existence following symlinks: a dangling link is "not found", a
	 * link to a directory counts as a directory. The entry itself is what gets removed. */
	struct stat st;
	int err = stat_existing(abs, &st);
	if (err == -ENOENT) {
		cJSON *ctx = cJSON_CreateObject();
		cJSON_AddStringToObject(ctx, "path", abs);
		cJSON_AddStringToObject(ctx, "operation", "file.delete");
		reply_error(r, 404, "FILE_NOT_FOUND", ENOENT, ctx, "File not found: %s", abs);
		return;
	}
	if (!err && S_ISDIR(st.st_mode)) {
		cJSON *ctx = cJSON_CreateObject();
		cJSON_AddStringToObject(ctx, "path", abs);
		cJSON_AddStringToObject(ctx, "operation", "file.delete");
		reply_error(r, 400, "IS_DIRECTORY", EISDIR, ctx,
			    "Cannot delete directory with deleteFile() at '%s'. Use exec('rm -rf "
			    "<path>') instead.", abs);
		return;
	}
	struct ws_entry e;
	if (!err)
		err = ws_parent(abs, &e);
	if (!err) {
		if (unlinkat(e.dirfd, e.name, 0))
			err = -errno;
		ws_entry_close(&e);
	}
	if (err) {
		reply_ws_errno(r, err, abs);
		return;
	}
	reply_path(r, abs);
}

/* ---- /api/rename, /api/move: mv semantics ---- */

static void rename_mv(struct req *r, const char *from_key, const char *to_key, const char *op)
{
	char frel[WS_PATH_MAX + 1], fabs[WS_PATH_MAX + 16];
	char trel[WS_PATH_MAX + 1], tabs[WS_PATH_MAX + 16];
	/* both must be there before either is looked at */
	if (!req_str_field(r, from_key) || !req_str_field(r, to_key) ||
	    !req_ws_path(r, from_key, frel, fabs) || !req_ws_path(r, to_key, trel, tabs))
		return;
	struct stat st;
	int err = ws_stat(fabs, &st, false);
	if (err == -ENOENT) {
		cJSON *ctx = cJSON_CreateObject();
		cJSON_AddStringToObject(ctx, "path", fabs);
		cJSON_AddStringToObject(ctx, "operation", op);
		reply_error(r, 404, "FILE_NOT_FOUND", ENOENT, ctx, "Source file not found: %s",
			    fabs);
		return;
	}
	/* mv moves *into* an existing directory (following a symlink to one). */
	struct stat tst;
	char dest[WS_PATH_MAX + 16];
	snprintf(dest, sizeof dest, "%s", tabs);
	if (!err && ws_stat(tabs, &tst, true) == 0 && S_ISDIR(tst.st_mode)) {
		const char *base = strrchr(fabs, '/');
		if (snprintf(dest, sizeof dest, "%s%s", tabs, base) >= (int)sizeof dest)
			err = -ENAMETOOLONG;
	}
	struct ws_entry fe, te;
	if (!err)
		err = ws_parent(fabs, &fe);
	if (!err) {
		err = ws_parent(dest, &te);
		if (!err) {
			if (renameat(fe.dirfd, fe.name, te.dirfd, te.name))
				err = -errno;
			ws_entry_close(&te);
		}
		ws_entry_close(&fe);
	}
	if (err) {
		int e = -err, status;
		const char *code = errno_to_code(e, &status);
		cJSON *ctx = cJSON_CreateObject();
		cJSON_AddStringToObject(ctx, "oldPath", fabs);
		cJSON_AddStringToObject(ctx, "newPath", dest);
		cJSON_AddStringToObject(ctx, "operation", op);
		reply_error(r, status, code, e, ctx, "cannot move '%s' to '%s': %s", fabs, dest,
			    ws_strerror(e));
		return;
	}
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "path", fabs);
	cJSON_AddStringToObject(o, "newPath", tabs);
	reply_ok(r, o);
}

void route_rename(struct req *r) { rename_mv(r, "oldPath", "newPath", "file.rename"); }
void route_move(struct req *r) { rename_mv(r, "sourcePath", "destinationPath", "file.move"); }

/* ---- /api/mkdir ---- */

/* The container runs `mkdir [-p]` and reports every failure of it alike, as a shell tool's:
 * 500 FILESYSTEM_ERROR with mkdir's message in context.stderr. Clients tell the cases apart
 * by that text (the SDK raises FileSystemError for all of them), so sbxd answers the same,
 * with the exact errno beside it. */
static void reply_mkdir_failed(struct req *r, int err, const char *abs, bool recursive)
{
	char tool[WS_PATH_MAX + 128];
	snprintf(tool, sizeof tool, "mkdir: cannot create directory \u2018%s\u2019: %s", abs,
		 strerror(-err));
	cJSON *ctx = cJSON_CreateObject();
	cJSON_AddStringToObject(ctx, "path", abs);
	cJSON *opts = cJSON_AddObjectToObject(ctx, "options");
	if (recursive)
		cJSON_AddBoolToObject(opts, "recursive", true);
	cJSON_AddNumberToObject(ctx, "exitCode", 1);
	cJSON_AddStringToObject(ctx, "stderr", tool);
	reply_error(r, 500, "FILESYSTEM_ERROR", -err, ctx, "mkdir operation failed with exit code 1");
}

void route_mkdir(struct req *r)
{
	char rel[WS_PATH_MAX + 1], abs[WS_PATH_MAX + 16];
	const char *path = req_ws_path(r, "path", rel, abs);
	if (!path)
		return;
	bool recursive = json_bool(req_json(r), "recursive", false);
	int err;
	if (recursive) {
		err = ws_mkdir_p(rel, 0777);
	} else {
		struct ws_entry e;
		err = ws_parent(abs, &e);
		if (!err) {
			if (mkdirat(e.dirfd, e.name, 0777))
				err = -errno;
			ws_entry_close(&e);
		}
	}
	if (err) {
		reply_mkdir_failed(r, err, abs, recursive);
		return;
	}
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "path", abs);
	cJSON_AddBoolToObject(o, "recursive", recursive);
	reply_ok(r, o);
}

/* ---- /api/list-files ---- */

struct list_opts {
	bool recursive, hidden;
	const char *base; /* the path as given, without trailing slashes */
	cJSON *files;
};

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void list_entry(struct list_opts *o, const char *relpath, const char *name,
		       const struct stat *st)
{
	char buf[64], mode[10];
	struct tm tm;
	cJSON *f = cJSON_CreateObject();
	cJSON_AddStringToObject(f, "name", name);
	char *absp;
	if (asprintf(&absp, "%s/%s", o->base, relpath) >= 0) {
		cJSON_AddStringToObject(f, "absolutePath", absp);
		free(absp);
	}
	cJSON_AddStringToObject(f, "relativePath", relpath);
	cJSON_AddStringToObject(f, "type", S_ISREG(st->st_mode) ? "file"
					   : S_ISDIR(st->st_mode) ? "directory"
					   : S_ISLNK(st->st_mode) ? "symlink"
								  : "other");
	json_add_int(f, "size", st->st_size);
	gmtime_r(&st->st_mtim.tv_sec, &tm);
	snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%09ldZ", tm.tm_year + 1900,
		 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, st->st_mtim.tv_nsec);
	cJSON_AddStringToObject(f, "modifiedAt", buf);
	for (int i = 0; i < 9; i++)
		mode[i] = st->st_mode & (0400 >> i) ? "rwx"[i % 3] : '-';
	mode[9] = '\0';
	cJSON_AddStringToObject(f, "mode", mode);
	cJSON *p = cJSON_AddObjectToObject(f, "permissions");
	cJSON_AddBoolToObject(p, "readable", st->st_mode & S_IRUSR);
	cJSON_AddBoolToObject(p, "writable", st->st_mode & S_IWUSR);
	cJSON_AddBoolToObject(p, "executable", st->st_mode & S_IXUSR);
	cJSON_AddItemToArray(o->files, f);
}

/* Lists the directory fd (consumed); sorted by name, pre-order, never following symlinks. */
static int list_dir(struct list_opts *o, int fd, const char *prefix, int depth)
{
	DIR *d = fdopendir(fd);
	if (!d) {
		int err = -errno;
		close(fd);
		return err;
	}
	char **names = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		if (n == cap) {
			cap = cap ? cap * 2 : 64;
			char **nn = realloc(names, cap * sizeof *names);
			if (!nn)
				break;
			names = nn;
		}
		names[n] = strdup(de->d_name);
		if (names[n])
			n++;
	}
	if (n)
		qsort(names, n, sizeof *names, cmp_names);
	for (size_t i = 0; i < n; i++) {
		struct stat st;
		char *relpath;
		if (fstatat(dirfd(d), names[i], &st, AT_SYMLINK_NOFOLLOW))
			continue; /* vanished meanwhile */
		if (asprintf(&relpath, "%s%s%s", prefix, *prefix ? "/" : "", names[i]) < 0)
			continue;
		if (o->hidden || names[i][0] != '.')
			list_entry(o, relpath, names[i], &st);
		if (o->recursive && S_ISDIR(st.st_mode) && depth < LIST_DEPTH_MAX) {
			int sub = openat(dirfd(d), names[i],
					 O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (sub >= 0)
				list_dir(o, sub, relpath, depth + 1);
		}
		free(relpath);
	}
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	closedir(d);
	return 0;
}

void route_list_files(struct req *r)
{
	char rel[WS_PATH_MAX + 1], abs[WS_PATH_MAX + 16];
	const char *path = req_ws_path(r, "path", rel, abs);
	if (!path)
		return;
	const cJSON *opts = cJSON_GetObjectItemCaseSensitive(req_json(r), "options");
	int fd = ws_open_rel(rel, O_RDONLY | O_DIRECTORY, 0);
	if (fd < 0) {
		cJSON *ctx = cJSON_CreateObject();
		cJSON_AddStringToObject(ctx, "path", abs);
		cJSON_AddStringToObject(ctx, "operation", "directory.list");
		if (fd == -ENOENT)
			reply_error(r, 404, "FILE_NOT_FOUND", ENOENT, ctx,
				    "Directory not found: %s", abs);
		else if (fd == -ENOTDIR)
			reply_error(r, 400, "NOT_DIRECTORY", ENOTDIR, ctx,
				    "Path is not a directory: %s", abs);
		else {
			cJSON_Delete(ctx);
			reply_ws_errno(r, fd, abs);
		}
		return;
	}
	char *base = strdup(path);
	if (!base) {
		close(fd);
		reply_error(r, 500, "INTERNAL_ERROR", ENOMEM, NULL, "out of memory");
		return;
	}
	for (size_t l = strlen(base); l > 1 && base[l - 1] == '/'; l--)
		base[l - 1] = '\0';
	struct list_opts o = {
		.recursive = json_bool(opts, "recursive", false),
		.hidden = json_bool(opts, "includeHidden", false),
		.base = base,
		.files = cJSON_CreateArray(),
	};
	int err = list_dir(&o, fd, "", 0);
	free(base);
	if (err) {
		cJSON_Delete(o.files);
		reply_ws_errno(r, err, abs);
		return;
	}
	cJSON *out = cJSON_CreateObject();
	cJSON_AddStringToObject(out, "path", abs);
	cJSON_AddNumberToObject(out, "count", cJSON_GetArraySize(o.files));
	cJSON_AddItemToObject(out, "files", o.files);
	reply_ok(r, out);
}

/* ---- /api/exists ---- */

void route_exists(struct req *r)
{
	char rel[WS_PATH_MAX + 1], abs[WS_PATH_MAX + 16];
	if (!req_ws_path(r, "path", rel, abs))
		return;
	struct stat st;
	int err = stat_existing(abs, &st);
	cJSON *o = cJSON_CreateObject();
	cJSON_AddStringToObject(o, "path", abs);
	cJSON_AddBoolToObject(o, "exists", err == 0);
	reply_ok(r, o);
}
