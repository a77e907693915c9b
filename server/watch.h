/* Change events of the workspace (watch.c): subscribers that get every change their filter
 * wants as server-sent events, and retained watches that count them between two checks. The
 * routes (POST /api/watch and /api/watch/check) are watch_routes.c; nothing here knows HTTP. */
#ifndef SBXD_WATCH_H
#define SBXD_WATCH_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct strbuf;

enum watch_event {
	WATCH_CREATE = 1 << 0,
	WATCH_MODIFY = 1 << 1,
	WATCH_DELETE = 1 << 2,
	WATCH_MOVE_FROM = 1 << 3,
	WATCH_MOVE_TO = 1 << 4,
	WATCH_ATTRIB = 1 << 5,
	WATCH_ALL = (1 << 6) - 1,
};
/* The event a name stands for ("create", "modify", "delete", "move_from", "move_to",
 * "attrib"), 0 for none. */
unsigned watch_event_named(const char *name);

/* What a subscriber wants; its strings are its own (watch_filter_free). */
struct watch_filter {
	char *root;            /* the watched entry, normalised ("." for /workspace itself) */
	bool recursive;
	unsigned events;       /* enum watch_event bits */
	char **globs;          /* matched against the whole path, any run of components */
	size_t nglobs;
	bool include;          /* the globs are an include list (else an exclude list) */
};
void watch_filter_free(struct watch_filter *f);

/* Starts the inotify thread (after ws_init); failures are logged and make subscriptions fail
 * with -EAGAIN. */
void watch_init(void);
/* Ends every subscriber's stream with a "stopped" event and stops the thread. */
void watch_shutdown(void);

#define WATCH_ID_MAX 64

struct watch_sub;
/* A subscriber of f (taken), whose first event is "watching" (abs, a new id); NULL with
 * -EAGAIN in *err when the watcher is not running (it is waited for a few seconds). */
struct watch_sub *watch_subscribe(struct watch_filter *f, const char *abs, int *err);
/* Moves the subscriber's events to out, waiting at most timeout_ms for one: 1 while more may
 * come, 0 after the "stopped" event (the contract of an sse_source's next()). */
int watch_next(struct watch_sub *s, struct strbuf *out, int timeout_ms);
void watch_unsubscribe(struct watch_sub *s);

/* A retained watch as a check finds it. */
struct watch_state {
	char id[WATCH_ID_MAX];
	uint64_t cursor;       /* the events it counted */
	bool created;          /* by this check */
};
/* The retained watch of f's parameters (taken), made when there is none, and kept for ten
 * minutes after this check: 0, or -EAGAIN when the watcher is not running. */
int watch_check(struct watch_filter *f, const char *abs, struct watch_state *out);
#endif
