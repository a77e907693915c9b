/* Change events under /workspace as a stream of their own, for a reader that wants to see
 * them (the mount's watch file, docs/sessions.md); the cache's watcher is sbx_watch_start().
 *
 * One POST /api/watch stream per sbx_events, on the shared network thread: nothing here
 * blocks that thread or holds a thread of its own. The server's events become changes of
 * four kinds: create, modify, delete, and rename with both names. sbxd pairs the two halves
 * of a rename itself (newPath on move_from, oldPath on move_to); against a plain container the
 * halves are paired when they arrive next to each other, as its inotifywait writes them (a
 * move_from with no move_to in the same piece of received data is a delete, a lone move_to a
 * create). A stream the server ends after it was established (the container cuts an idle one
 * after ~255 s) is opened again at once, and the reader is told that events may have been
 * lost in between; one that cannot be established ends the events with an error. */
#ifndef SBX_EVENTS_H
#define SBX_EVENTS_H
#include <stdbool.h>

struct sbx;

enum sbx_change_kind {
	SBX_CHANGE_CREATE = 1 << 0,
	SBX_CHANGE_MODIFY = 1 << 1,
	SBX_CHANGE_DELETE = 1 << 2,
	SBX_CHANGE_RENAME = 1 << 3,
	SBX_CHANGE_ALL = (1 << 4) - 1,
};
/* "create", "modify", "delete", "rename" (one kind). */
const char *sbx_change_kind_name(enum sbx_change_kind kind);
/* The kind called name, or 0. */
enum sbx_change_kind sbx_change_kind_parse(const char *name);

struct sbx_change {
	enum sbx_change_kind kind;
	const char *path;      /* absolute sandbox path; a rename's new name */
	const char *old_path;  /* a rename's old name, else NULL */
	bool is_dir;
	const char *timestamp; /* the server's, ISO-8601 */
};

struct sbx_events_opts {
	const char *path;             /* the watched subtree (absolute); NULL: /workspace */
	unsigned kinds;               /* SBX_CHANGE_* wanted; 0: all */
	const char *const *include;   /* globs (the SDK's), NULL-terminated, or NULL; */
	const char *const *exclude;   /* neither: the SDK's default (.git, node_modules) */
};

/* Callbacks run on the network thread and must not block. on_change gets the changes in
 * order; on_lost says that changes may have been missed (the server's queue overflowed, the
 * stream was opened again); on_end runs once when no more can come: a negative errno (the
 * backend went away, refused the watch), unless sbx_events_close() came first. */
struct sbx_events_ops {
	void (*on_change)(void *arg, const struct sbx_change *c);
	void (*on_lost)(void *arg, const char *why);
	void (*on_end)(void *arg, int err);
};

struct sbx_events;
/* Starts watching and returns once the server has established the watch, so every change
 * made after this returns is seen. NULL with errno and sbx_last_error() set when it could
 * not be (a path that does not exist: ENOENT, outside /workspace: EACCES, backend down:
 * ENOTCONN or ETIMEDOUT); then no callback runs. */
struct sbx_events *sbx_events_open(struct sbx *s, const struct sbx_events_opts *opts,
				   const struct sbx_events_ops *ops, void *arg);
/* Stops; no callback runs once this returns. Call it from outside the callbacks. */
void sbx_events_close(struct sbx_events *e);
#endif
