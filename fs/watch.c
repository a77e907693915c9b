/* watch: changes under /workspace as they happen, one JSON line each (docs/sessions.md, "watch").
 *
 *   cat watch                       every change, until Ctrl-C
 *   exec 3<>watch; echo 'path=src kind=create,delete' >&3; cat <&3
 *                                   only those under /workspace/src, only of those kinds
 *
 * Every open is its own stream (client/events.h) into its own feed, answered from the network
 * thread like proc/ID/follow: a reader parked on it holds no thread of sbxfs, Ctrl-C answers
 * it at once, poll works, and the mount's cache watcher is not involved. A read-only open
 * starts watching at open, so whatever changes after open() returns is seen; an open for
 * reading and writing takes a line of options and starts watching when that line is written
 * (CTL_LINE: the write returns once the watch is established, and fails on a bad option where
 * bash's echo sees it), or at its first read (CTL_REQUEST) when nothing was written. The
 * stream's end (the backend went away) ends the file with the error. */
#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "client/events.h"
#include "client/sandbox.h"
#include "common/jsonutil.h"
#include "common/log.h"
#include "fs/control.h"
#include "fs/internal.h"

#define GLOBS_MAX 64

/* An open watch file: its feed (the handle's reads) and its stream, whose callbacks push to
 * the feed through a reference of their own (arg), dropped when the stream is closed. */
struct watcher {
	struct ctl_feed *feed;
	struct sbx_events *events; /* NULL once closed (release, or unmount) */
	struct watcher *next;
};

/* Every watcher with an open stream, so that unmount can close them: a reader blocked in
 * read() keeps its file open, and its release may never come. Whoever takes a stream out of
 * its watcher (under the lock) closes it. */
static pthread_mutex_t watchers_lock = PTHREAD_MUTEX_INITIALIZER;
static struct watcher *watchers;

/* Caller holds watchers_lock: w leaves the list; its stream, if still there, is returned. */
static struct sbx_events *detach_locked(struct watcher *w)
{
	struct sbx_events *ev = w->events;
	w->events = NULL;
	for (struct watcher **pp = &watchers; *pp; pp = &(*pp)->next)
		if (*pp == w) {
			*pp = w->next;
			break;
		}
	return ev;
}

/* No callback runs once this returns; then the stream's reference to the feed goes. */
static void close_stream(struct sbx_events *ev, struct ctl_feed *f)
{
	if (!ev)
		return;
	sbx_events_close(ev);
	ctl_feed_unref(f);
}

static void push_json(struct ctl_feed *f, cJSON *j)
{
	char *text = json_print(j);
	cJSON_Delete(j);
	if (!text)
		abort();
	size_t n = strlen(text);
	text[n] = '\n'; /* json_print's NUL becomes the line end */
	ctl_feed_push(f, text, n + 1);
	free(text);
}

static void on_change(void *arg, const struct sbx_change *c)
{
	struct ctl_feed *feed = arg;
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "kind", sbx_change_kind_name(c->kind));
	cJSON_AddStringToObject(j, "path", c->path);
	if (c->old_path)
		cJSON_AddStringToObject(j, "oldPath", c->old_path);
	cJSON_AddBoolToObject(j, "isDirectory", c->is_dir);
	cJSON_AddStringToObject(j, "timestamp", c->timestamp);
	push_json(feed, j);
}

static void on_lost(void *arg, const char *why)
{
	struct ctl_feed *feed = arg;
	char ts[32];
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "kind", "overflow");
	cJSON_AddStringToObject(j, "reason", why);
	cJSON_AddStringToObject(j, "timestamp", json_timestamp(ts));
	push_json(feed, j);
}

static void on_end(void *arg, int err)
{
	ctl_feed_end(arg, err ? err : -EIO);
}

static const struct sbx_events_ops events_ops = {
	.on_change = on_change,
	.on_lost = on_lost,
	.on_end = on_end,
};

static void watcher_free(void *priv)
{
	struct watcher *w = priv;
	pthread_mutex_lock(&watchers_lock);
	struct sbx_events *ev = detach_locked(w);
	pthread_mutex_unlock(&watchers_lock);
	close_stream(ev, w->feed);
	ctl_feed_unref(w->feed);
	free(w);
}

/* Unmount: every stream stops; its reader, if any, sees the end. */
static void watch_stop(struct sbxfs *fs)
{
	for (;;) {
		pthread_mutex_lock(&watchers_lock);
		struct watcher *w = watchers;
		struct sbx_events *ev = w ? detach_locked(w) : NULL;
		struct ctl_feed *f = w ? w->feed : NULL;
		if (f)
			ctl_feed_ref(f); /* w may be freed by its release meanwhile */
		pthread_mutex_unlock(&watchers_lock);
		if (!w)
			break;
		close_stream(ev, f);
		ctl_feed_end(f, -ENOTCONN);
		ctl_feed_unref(f);
	}
}

/* Starts watching with these options and makes h read the changes. */
static int start(struct ctl_handle *h, const struct sbx_events_opts *opts)
{
	struct watcher *w = calloc(1, sizeof *w);
	if (!w)
		abort();
	w->feed = ctl_feed_new(false, "watch");
	ctl_feed_ref(w->feed); /* the stream's */
	w->events = sbx_events_open(h->sbx, opts, &events_ops, w->feed);
	if (!w->events) {
		int err = -errno;
		ctl_feed_unref(w->feed);
		ctl_feed_unref(w->feed);
		free(w);
		return err;
	}
	pthread_mutex_lock(&watchers_lock);
	w->next = watchers;
	watchers = w;
	pthread_mutex_unlock(&watchers_lock);
	ctl_handle_attach(h, w->feed);
	h->priv = w;
	h->priv_free = watcher_free;
	log_debug("watch: %s, kinds %#x", opts->path ? opts->path : "/workspace", opts->kinds);
	return 0;
}

static int watch_open(struct ctl_handle *h)
{
	if ((h->flags & O_ACCMODE) != O_RDONLY)
		return 0; /* options first, then the first read starts it */
	struct sbx_events_opts opts = { 0 };
	return start(h, &opts);
}

struct options {
	struct sbx_events_opts o;
	char *path;
	char *include[GLOBS_MAX + 1], *exclude[GLOBS_MAX + 1];
	size_t ninclude, nexclude;
};

static void options_free(struct options *op)
{
	free(op->path);
	for (size_t i = 0; i < op->ninclude; i++)
		free(op->include[i]);
	for (size_t i = 0; i < op->nexclude; i++)
		free(op->exclude[i]);
}

static int parse_kinds(const char *list, unsigned *kinds)
{
	char *copy = strdup(list), *save = NULL;
	if (!copy)
		abort();
	int err = 0;
	for (char *k = strtok_r(copy, ",", &save); k && !err; k = strtok_r(NULL, ",", &save)) {
		enum sbx_change_kind kind = sbx_change_kind_parse(k);
		if (!kind)
			err = sbx_fail(-EINVAL, "watch: unknown kind '%s' (create, modify, delete, "
				       "rename)", k);
		*kinds |= kind;
	}
	free(copy);
	return err;
}

/* "path=DIR kind=K,K include=GLOB exclude=GLOB", words separated by blanks or lines. */
static int parse_options(const char *text, struct options *op)
{
	memset(op, 0, sizeof *op);
	char *copy = strdup(text), *save = NULL;
	if (!copy)
		abort();
	int err = 0;
	for (char *w = strtok_r(copy, " \t\r\n", &save); w && !err;
	     w = strtok_r(NULL, " \t\r\n", &save)) {
		if (strncmp(w, "path=", 5) == 0 && w[5]) {
			char *path;
			if (w[5] == '/')
				path = strdup(w + 5);
			else if (asprintf(&path, "/workspace/%s", w + 5) < 0)
				path = NULL;
			if (!path)
				abort();
			free(op->path);
			op->path = path;
		} else if (strncmp(w, "kind=", 5) == 0) {
			unsigned kinds = 0;
			err = parse_kinds(w + 5, &kinds);
			op->o.kinds |= kinds;
		} else if (strncmp(w, "include=", 8) == 0 && w[8] && op->ninclude < GLOBS_MAX) {
			if (!(op->include[op->ninclude++] = strdup(w + 8)))
				abort();
		} else if (strncmp(w, "exclude=", 8) == 0 && w[8] && op->nexclude < GLOBS_MAX) {
			if (!(op->exclude[op->nexclude++] = strdup(w + 8)))
				abort();
		} else {
			err = sbx_fail(-EINVAL, "watch: '%s' is not an option (path=DIR, "
				       "kind=create,modify,delete,rename, include=GLOB, "
				       "exclude=GLOB; at most %d globs)", w, GLOBS_MAX);
		}
	}
	free(copy);
	if (!err && op->ninclude && op->nexclude)
		err = sbx_fail(-EINVAL, "watch: include= and exclude= cannot be used together");
	op->o.path = op->path;
	op->o.include = op->ninclude ? (const char *const *)op->include : NULL;
	op->o.exclude = op->nexclude ? (const char *const *)op->exclude : NULL;
	return err;
}

static int watch_commit(struct ctl_handle *h)
{
	size_t len;
	const char *text = ctl_input_take(h, &len);
	if (h->feed) {
		/* a read-only open's first read, or more after the stream started */
		return len ? sbx_fail(-EINVAL, "watch: options must come before the first read")
			   : 0;
	}
	if (memchr(text, '\0', len))
		return sbx_fail(-EINVAL, "watch: the options contain a NUL byte");
	struct options op;
	int err = parse_options(text, &op);
	if (!err && (h->flags & O_ACCMODE) == O_WRONLY)
		err = sbx_fail(-EINVAL, "watch: open it for reading (exec 3<>watch) and read the "
			       "changes from the same descriptor");
	if (!err)
		err = start(h, &op.o);
	options_free(&op);
	return err;
}

const struct ctl_entry ctl_watch_file = {
	.name = "watch", .mode = S_IFREG | 0666, .flags = CTL_REQUEST | CTL_STREAM | CTL_LINE,
	.open = watch_open, .commit = watch_commit, .stop = watch_stop,
};
