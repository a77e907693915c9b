/* Change events as a stream of their own (client/events.h).
 *
 * Life cycle. sbx_events_open() starts the stream and waits on e->cond until the server says
 * "watching" (the watch is established) or the stream ends. From then on everything happens
 * on the network thread: events become changes; a stream that ends after "watching" without
 * an error of its own (the container's idle cut, a clean close) is replaced from its own
 * on_end by a new one (opening only queues the request), the old one closed from there, which
 * frees it after its on_end returns; any other end is the end of the events. e->lock guards
 * the current stream pointer and the state: close and a reconnect cannot cross (close sets
 * `closing` first, and an on_end that sees it opens nothing). A server that keeps ending
 * established streams at once without sending anything is given up after a few tries.
 *
 * Pairing (network thread only, no lock): see the header. A move_from that has no new name
 * yet is held in e->from until the next event, or until the data received so far is used up
 * (on_pause): then it was a move out of the watched tree, reported as a delete. */
#include "client/events.h"
#include <cjson/cJSON.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "client/sandbox_impl.h"
#include "common/clock.h"
#include "common/jsonutil.h"
#include "common/log.h"

#define CONNECT_MS 15000
#define IDLE_MS 45000        /* sbxd sends keepalives well within this */
#define QUICK_END_MS 1000    /* an established stream ending sooner than this, */
#define QUICK_ENDS_MAX 3     /* this often in a row, with nothing sent: the server is broken */

static const char *const kind_names[] = { "create", "modify", "delete", "rename" };

const char *sbx_change_kind_name(enum sbx_change_kind kind)
{
	for (int i = 0; i < 4; i++)
		if ((unsigned)kind == 1u << i)
			return kind_names[i];
	return "?";
}

enum sbx_change_kind sbx_change_kind_parse(const char *name)
{
	for (int i = 0; i < 4; i++)
		if (strcmp(name, kind_names[i]) == 0)
			return (enum sbx_change_kind)(1 << i);
	return 0;
}

struct held {
	char *path, *timestamp;
	bool is_dir;
};

struct sbx_events {
	struct sbx *s;
	char *body;            /* the request, for every (re)connection */
	unsigned kinds;
	bool pairs;            /* the server pairs moves itself (sbxd) */
	struct sbx_events_ops ops;
	void *arg;

	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct http_stream *stream;
	bool established;      /* a stream got "watching": sbx_events_open has returned it */
	bool watching;         /* the current stream got "watching" */
	bool closing, done;
	int err;               /* why it could not be established */
	char reason[512];
	bool terminal;         /* the server sent "stopped" or "error" */
	int64_t watching_at;
	bool sent;             /* the current stream sent an event after "watching" */
	int quick_ends;

	struct held from;      /* network thread only */
	char *skip_to;         /* the move_to of a rename already reported */
};

static void held_clear(struct held *h)
{
	free(h->path);
	free(h->timestamp);
	*h = (struct held){ 0 };
}

static void emit(struct sbx_events *e, enum sbx_change_kind kind, const char *path,
		 const char *old_path, bool is_dir, const char *ts)
{
	if (!(e->kinds & kind) || !e->ops.on_change)
		return;
	struct sbx_change c = { kind, path, old_path, is_dir, ts };
	e->ops.on_change(e->arg, &c);
}

/* The held move_from found no move_to: the entry left the watched tree. */
static void flush_from(struct sbx_events *e)
{
	if (!e->from.path)
		return;
	emit(e, SBX_CHANGE_DELETE, e->from.path, NULL, e->from.is_dir, e->from.timestamp);
	held_clear(&e->from);
}

static void change(struct sbx_events *e, const cJSON *j)
{
	const char *type = json_str(j, "eventType"), *path = json_str(j, "path");
	if (!type || !path)
		return;
	char now[32];
	const char *ts = json_str(j, "timestamp") ? json_str(j, "timestamp") : json_timestamp(now);
	bool is_dir = json_bool(j, "isDirectory", false);
	if (strcmp(type, "move_from") == 0) {
		flush_from(e);
		const char *to = json_str(j, "newPath");
		if (to) {
			emit(e, SBX_CHANGE_RENAME, to, path, is_dir, ts);
			free(e->skip_to);
			e->skip_to = sbx_strdup(to);
		} else if (e->pairs) {
			emit(e, SBX_CHANGE_DELETE, path, NULL, is_dir, ts);
		} else {
			e->from = (struct held){ sbx_strdup(path), sbx_strdup(ts), is_dir };
		}
		return;
	}
	if (strcmp(type, "move_to") == 0) {
		const char *old = json_str(j, "oldPath");
		if (e->skip_to && strcmp(e->skip_to, path) == 0) {
			/* its move_from said it all */
		} else if (old) {
			flush_from(e);
			emit(e, SBX_CHANGE_RENAME, path, old, is_dir, ts);
		} else if (e->from.path) {
			emit(e, SBX_CHANGE_RENAME, path, e->from.path, is_dir, ts);
			held_clear(&e->from);
		} else {
			emit(e, SBX_CHANGE_CREATE, path, NULL, is_dir, ts);
		}
		free(e->skip_to);
		e->skip_to = NULL;
		return;
	}
	flush_from(e);
	free(e->skip_to);
	e->skip_to = NULL;
	enum sbx_change_kind kind = sbx_change_kind_parse(type);
	if (kind && kind != SBX_CHANGE_RENAME)
		emit(e, kind, path, NULL, is_dir, ts);
}

static int on_event(void *arg, const struct sse_event *ev)
{
	struct sbx_events *e = arg;
	cJSON *j = cJSON_ParseWithLength(ev->data, ev->data_len);
	const char *type = json_str(j, "type");
	int stop = 0;
	if (!type) {
		/* not an event of this protocol: nothing to say */
	} else if (strcmp(type, "watching") == 0) {
		pthread_mutex_lock(&e->lock);
		bool again = e->established;
		e->established = e->watching = true;
		e->watching_at = mono_ms();
		e->sent = false;
		pthread_cond_broadcast(&e->cond);
		pthread_mutex_unlock(&e->lock);
		if (again && e->ops.on_lost)
			e->ops.on_lost(e->arg, "the watch was opened again");
	} else if (strcmp(type, "event") == 0) {
		e->sent = true;
		change(e, j);
	} else if (strcmp(type, "overflow") == 0) {
		e->sent = true;
		flush_from(e);
		if (e->ops.on_lost)
			e->ops.on_lost(e->arg, "the server's event queue overflowed");
	} else if (strcmp(type, "stopped") == 0 || strcmp(type, "error") == 0) {
		const char *why = json_str(j, "reason") ? json_str(j, "reason") : json_str(j, "error");
		pthread_mutex_lock(&e->lock);
		e->terminal = true;
		snprintf(e->reason, sizeof e->reason, "the server ended the watch (%s: %s)", type,
			 why ? why : "no reason given");
		pthread_mutex_unlock(&e->lock);
		stop = 1;
	}
	cJSON_Delete(j);
	return stop;
}

static void on_pause(void *arg)
{
	struct sbx_events *e = arg;
	if (!e->pairs)
		flush_from(e);
}

static void on_end(void *arg, int err, long status, const char *body, size_t body_len);

static const struct http_stream_ops stream_ops = {
	.on_event = on_event,
	.on_end = on_end,
	.on_pause = on_pause,
};

static struct http_stream *connect_stream(struct sbx_events *e)
{
	struct http_request req = {
		.method = "POST",
		.path = "/api/watch",
		.body = e->body,
		.body_len = strlen(e->body),
		.timeout_ms = CONNECT_MS,
		.idempotent = true, /* it only watches */
	};
	return http_stream_open(e->s->http, &req, &stream_ops, e,
				e->s->heartbeats ? IDLE_MS : 0);
}

/* Caller holds e->lock: the events are over. */
static void finish(struct sbx_events *e, int err)
{
	if (e->done)
		return;
	e->done = true;
	pthread_cond_broadcast(&e->cond);
	if (!e->established || e->closing)
		return; /* open reports it, or nobody wants to know */
	log_warn("watch: %s", e->reason);
	pthread_mutex_unlock(&e->lock);
	flush_from(e);
	if (e->ops.on_end)
		e->ops.on_end(e->arg, err);
	pthread_mutex_lock(&e->lock);
}

static void on_end(void *arg, int err, long status, const char *body, size_t body_len)
{
	struct sbx_events *e = arg;
	pthread_mutex_lock(&e->lock);
	if (e->done || e->closing) {
		e->done = true;
		pthread_cond_broadcast(&e->cond);
		goto out;
	}
	if (status && status != 200) {
		int saved_err = sbx_fail_response("watch", status, body, body_len);
		snprintf(e->reason, sizeof e->reason, "%s", sbx_last_error());
		e->err = saved_err;
		finish(e, saved_err);
		goto out;
	}
	bool cut = e->watching && !e->terminal && (err == 0 || err == -ETIMEDOUT);
	if (cut && !e->sent && mono_ms() - e->watching_at < QUICK_END_MS)
		e->quick_ends++;
	else if (cut)
		e->quick_ends = 0;
	if (!cut || e->quick_ends > QUICK_ENDS_MAX) {
		if (!e->terminal)
			snprintf(e->reason, sizeof e->reason, "the stream ended: %s",
				 err ? strerror(-err) : "closed by the server");
		e->err = err && err != -ECANCELED ? err : -EIO;
		if (e->err != -ENOTCONN && e->err != -ETIMEDOUT)
			e->err = -EIO;
		finish(e, e->err);
		goto out;
	}
	log_debug("watch: the server ended the stream; opening it again");
	struct http_stream *old = e->stream;
	e->watching = false;
	e->stream = connect_stream(e);
	if (!e->stream) {
		e->stream = old; /* still ours to free at close */
		snprintf(e->reason, sizeof e->reason, "cannot open the stream again: %s",
			 strerror(errno));
		finish(e, -errno);
		goto out;
	}
	/* From the network thread this only flags it: it is freed right after this returns. */
	http_stream_close(old);
out:
	pthread_mutex_unlock(&e->lock);
}

static char *request_body(const struct sbx_events_opts *o)
{
	cJSON *b = cJSON_CreateObject();
	cJSON_AddStringToObject(b, "path", o->path ? o->path : "/workspace");
	cJSON_AddBoolToObject(b, "recursive", true);
	static const char *const events[] = { "create", "modify", "delete", "move_from",
					      "move_to" };
	cJSON_AddItemToObject(b, "events", cJSON_CreateStringArray(events, 5));
	for (int k = 0; k < 2; k++) {
		const char *const *globs = k ? o->exclude : o->include;
		if (!globs)
			continue;
		cJSON *a = cJSON_AddArrayToObject(b, k ? "exclude" : "include");
		for (; *globs; globs++)
			cJSON_AddItemToArray(a, cJSON_CreateString(*globs));
	}
	char *text = json_print(b);
	cJSON_Delete(b);
	if (!text)
		abort();
	return text;
}

static void events_free(struct sbx_events *e)
{
	held_clear(&e->from);
	free(e->skip_to);
	free(e->body);
	pthread_cond_destroy(&e->cond);
	pthread_mutex_destroy(&e->lock);
	free(e);
}

struct sbx_events *sbx_events_open(struct sbx *s, const struct sbx_events_opts *opts,
				   const struct sbx_events_ops *ops, void *arg)
{
	/* a path the mount just made must be in the sandbox before it can be watched */
	sbx_settle(s);
	struct sbx_events *e = calloc(1, sizeof *e);
	if (!e)
		abort();
	e->s = s;
	e->body = request_body(opts);
	e->kinds = opts->kinds ? opts->kinds : SBX_CHANGE_ALL;
	e->pairs = s->info.extensions;
	e->ops = *ops;
	e->arg = arg;
	pthread_mutex_init(&e->lock, NULL);
	mono_cond_init(&e->cond);

	pthread_mutex_lock(&e->lock);
	e->stream = connect_stream(e);
	if (!e->stream) {
		int err = errno;
		pthread_mutex_unlock(&e->lock);
		events_free(e);
		sbx_fail(-err, "watch: cannot start the stream: %s", strerror(err));
		errno = err;
		return NULL;
	}
	/* the server establishes its watch within 10 s (the container's bound) */
	long wait_ms = (s->deadline_ms > CONNECT_MS ? s->deadline_ms : CONNECT_MS) + 10000;
	struct timespec until;
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += wait_ms / 1000;
	until.tv_nsec += (wait_ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	int timed_out = 0;
	while (!e->established && !e->done && !timed_out)
		timed_out = pthread_cond_timedwait(&e->cond, &e->lock, &until) == ETIMEDOUT;
	if (e->established) {
		pthread_mutex_unlock(&e->lock);
		return e;
	}
	int err = e->done ? (e->err ? e->err : -EIO) : -ETIMEDOUT;
	char reason[512];
	snprintf(reason, sizeof reason, "%s", e->done ? e->reason : "the server did not "
		 "establish the watch in time");
	e->closing = true;
	struct http_stream *st = e->stream;
	pthread_mutex_unlock(&e->lock);
	http_stream_close(st);
	events_free(e);
	/* the response's own message already starts with "watch: " */
	sbx_fail(err, "%s%s", strncmp(reason, "watch", 5) ? "watch: " : "", reason);
	errno = -err;
	return NULL;
}

void sbx_events_close(struct sbx_events *e)
{
	if (!e)
		return;
	pthread_mutex_lock(&e->lock);
	e->closing = true;
	struct http_stream *st = e->stream;
	pthread_mutex_unlock(&e->lock);
	/* Waits for its on_end, which sees `closing` and opens nothing. */
	http_stream_close(st);
	events_free(e);
}
