/* The routes of change events: POST /api/watch, a stream of the changes a filter wants, and
 * POST /api/watch/check, whether anything changed since a version (container-api.md §12,
 * docs/protocol.md), over the engine of server/watch.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "common/jsonutil.h"
#include "server/request.h"
#include "server/routes.h"
#include "server/watch.h"
#include "server/workspace.h"

#define GLOBS_MAX 64
#define GLOB_MAX 1024

static void reply_invalid(struct req *r, const char *msg)
{
	reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL, "%s", msg);
}

/* The entry to watch: normalised into f->root, its API form into abs; false after
 * answering. */
static bool watched_path(struct req *r, struct watch_filter *f, char abs[WS_PATH_MAX + 16])
{
	const char *path = json_str(req_json(r), "path");
	if (!path || !*path) {
		reply_invalid(r, "'path' is required");
		return false;
	}
	char rel[WS_PATH_MAX + 1];
	struct stat st;
	int err = ws_normalize(path, rel, sizeof rel);
	if (err == -EACCES) {
		cJSON *ctx = cJSON_CreateObject();
		cJSON_AddStringToObject(ctx, "path", path);
		cJSON_AddStringToObject(ctx, "resolvedPath", path);
		cJSON_AddStringToObject(ctx, "workspaceRoot", "/workspace");
		reply_error(r, 403, "PERMISSION_DENIED", EACCES, ctx,
			    "path must be inside /workspace");
		return false;
	}
	if (err) {
		reply_ws_errno(r, err, path);
		return false;
	}
	ws_api_path(rel, abs, WS_PATH_MAX + 16);
	if ((err = ws_stat(abs, &st, false)) == -ENOENT) {
		cJSON *ctx = cJSON_CreateObject();
		cJSON_AddStringToObject(ctx, "path", abs);
		reply_error(r, 404, "FILE_NOT_FOUND", ENOENT, ctx, "Path does not exist: %s", abs);
		return false;
	}
	if (err)
		reply_ws_errno(r, err, abs);
	else if (!(f->root = strdup(rel)))
		abort();
	return !err;
}

/* "events": which of them (default: all but attrib); false after answering. */
static bool events_of(struct req *r, const cJSON *events, unsigned *mask)
{
	*mask = WATCH_ALL & ~WATCH_ATTRIB;
	if (!events || cJSON_IsNull(events))
		return true;
	if (!cJSON_IsArray(events)) {
		reply_invalid(r, "'events' must be an array");
		return false;
	}
	unsigned m = 0;
	const cJSON *e;
	cJSON_ArrayForEach(e, events) {
		unsigned bit = cJSON_IsString(e) ? watch_event_named(e->valuestring) : 0;
		if (!bit) {
			reply_invalid(r, "events must be among create, modify, delete, move_from, "
					 "move_to, attrib");
			return false;
		}
		m |= bit;
	}
	if (m)
		*mask = m;
	return true;
}

/* include or exclude: an array of globs without [ ] { } (default: exclude .git,
 * node_modules and .DS_Store); false after answering. */
static bool globs_of(struct req *r, struct watch_filter *f)
{
	static const char *const dflt[] = { ".git", "node_modules", ".DS_Store", NULL };
	const cJSON *inc = cJSON_GetObjectItemCaseSensitive(req_json(r), "include");
	const cJSON *exc = cJSON_GetObjectItemCaseSensitive(req_json(r), "exclude");
	const cJSON *arr = inc ? inc : exc;
	if (inc && exc) {
		reply_invalid(r, "include and exclude cannot be used together");
		return false;
	}
	if (arr && (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) > GLOBS_MAX)) {
		reply_invalid(r, "include/exclude must be arrays of at most 64 glob strings");
		return false;
	}
	f->include = inc != NULL;
	f->globs = calloc(arr ? (size_t)cJSON_GetArraySize(arr) + 1 : 4, sizeof *f->globs);
	if (!f->globs)
		abort();
	for (const char *const *d = arr ? NULL : dflt; d && *d; d++)
		if (!(f->globs[f->nglobs++] = strdup(*d)))
			abort();
	const cJSON *g;
	cJSON_ArrayForEach(g, arr) {
		if (!cJSON_IsString(g) || !*g->valuestring || strlen(g->valuestring) > GLOB_MAX ||
		    strpbrk(g->valuestring, "[]{}")) {
			reply_invalid(r, "globs must be non-empty strings using only *, **, ? and /");
			return false;
		}
		if (!(f->globs[f->nglobs++] = strdup(g->valuestring)))
			abort();
	}
	return true;
}

/* The filter of the request's path, recursive, events and include/exclude; false after
 * answering. abs receives the watched path. */
static bool filter_of(struct req *r, struct watch_filter *f, char abs[WS_PATH_MAX + 16])
{
	*f = (struct watch_filter){ .recursive = json_bool(req_json(r), "recursive", true) };
	bool ok = watched_path(r, f, abs) &&
		  events_of(r, cJSON_GetObjectItemCaseSensitive(req_json(r), "events"),
			    &f->events) &&
		  globs_of(r, f);
	if (!ok)
		watch_filter_free(f);
	return ok;
}

static void reply_not_running(struct req *r)
{
	reply_error(r, 500, "WATCH_START_ERROR", EAGAIN, NULL, "the file watcher is not running");
}

/* ---- POST /api/watch ---- */

static int sub_next(void *s, struct strbuf *out, int timeout_ms)
{
	return watch_next(s, out, timeout_ms);
}

static void sub_release(void *s)
{
	watch_unsubscribe(s);
}

void route_watch(struct req *r)
{
	char abs[WS_PATH_MAX + 16];
	struct watch_filter f;
	int err;
	if (!filter_of(r, &f, abs))
		return;
	struct watch_sub *s = watch_subscribe(&f, abs, &err);
	if (!s)
		return reply_not_running(r);
	reply_sse(r, (struct sse_source){ sub_next, sub_release, s });
}

/* ---- POST /api/watch/check ---- */

/* "<watch id>:<digits>": false for anything else. */
static bool parse_version(const char *v, char *id, size_t id_size, uint64_t *cursor)
{
	const char *colon = strrchr(v, ':');
	if (!colon || colon == v || !colon[1] || (size_t)(colon - v) >= id_size)
		return false;
	for (const char *p = colon + 1; *p; p++)
		if (*p < '0' || *p > '9')
			return false;
	errno = 0;
	char *end;
	unsigned long long c = strtoull(colon + 1, &end, 10);
	if (errno || c > (1ull << 53)) /* what the container's JavaScript numbers hold */
		return false;
	memcpy(id, v, (size_t)(colon - v));
	id[colon - v] = '\0';
	*cursor = c;
	return true;
}

static void reply_bad_since(struct req *r, const char *since, const char *version)
{
	cJSON *ctx = cJSON_CreateObject();
	cJSON_AddStringToObject(ctx, "since", since);
	if (!version)
		return reply_error(r, 400, "VALIDATION_FAILED", EINVAL, ctx,
				   "since must be a version returned by checkChanges()");
	cJSON_AddStringToObject(ctx, "currentVersion", version);
	reply_error(r, 400, "VALIDATION_FAILED", EINVAL, ctx,
		    "since refers to a newer version than the current watch state");
}

void route_watch_check(struct req *r)
{
	const cJSON *sincev = cJSON_GetObjectItemCaseSensitive(req_json(r), "since");
	if (sincev && !cJSON_IsNull(sincev) && !cJSON_IsString(sincev))
		return reply_invalid(r, "since must be a version returned by checkChanges()");
	const char *since = sincev && cJSON_IsString(sincev) ? sincev->valuestring : NULL;
	char abs[WS_PATH_MAX + 16], version[96], id[WATCH_ID_MAX];
	struct watch_filter f;
	struct watch_state w;
	uint64_t at = 0;
	if (!filter_of(r, &f, abs))
		return;
	if (watch_check(&f, abs, &w) < 0)
		return reply_not_running(r);
	snprintf(version, sizeof version, "%s:%llu", w.id, (unsigned long long)w.cursor);
	if (since && !parse_version(since, id, sizeof id, &at))
		return reply_bad_since(r, since, NULL);
	bool same = since && strcmp(id, w.id) == 0;
	if (same && at > w.cursor)
		return reply_bad_since(r, since, version);
	cJSON *o = cJSON_CreateObject();
	if (!since) {
		cJSON_AddStringToObject(o, "status", "unchanged");
	} else if (!same) {
		cJSON_AddStringToObject(o, "status", "resync");
		cJSON_AddStringToObject(o, "reason", w.created ? "expired" : "restarted");
	} else {
		cJSON_AddStringToObject(o, "status", at == w.cursor ? "unchanged" : "changed");
	}
	cJSON_AddStringToObject(o, "version", version);
	reply_ok(r, o);
}
