/* Between sandbox.c (the public API, probe, exec, watch) and its two backends: the operation
 * table each backend fills, the shared state of a sandbox, and the helpers both use. */
#ifndef SBX_SANDBOX_IMPL_H
#define SBX_SANDBOX_IMPL_H
#include <pthread.h>
#include <stdatomic.h>
#include "client/sandbox.h"

struct cJSON;

struct sbx_ops {
	const char *name;
	int (*lstat)(struct sbx *s, const char *path, struct stat *st, char **target);
	int (*readdir)(struct sbx *s, const char *path, struct sbx_dirent **ents, size_t *n);
	/* Optional (NULL: -ENOSYS). */
	int (*readtree)(struct sbx *s, const char *path, size_t max_entries, sbx_tree_fn fn,
			void *arg, bool *truncated);
	int (*mkdir)(struct sbx *s, const char *path, mode_t mode, struct stat *st);
	int (*unlink)(struct sbx *s, const char *path);
	int (*rmdir)(struct sbx *s, const char *path);
	int (*rename)(struct sbx *s, const char *from, const char *to, unsigned flags);
	int (*symlink)(struct sbx *s, const char *target, const char *path, struct stat *st);
	int (*readlink)(struct sbx *s, const char *path, char **target);
	int (*link)(struct sbx *s, const char *from, const char *to, struct stat *st);
	int (*statfs)(struct sbx *s, const char *path, struct statvfs *sv);
	int (*setattr)(struct sbx *s, const char *path, unsigned valid, const struct stat *want,
		       struct stat *st);

	int (*file_open)(struct sbx *s, const char *path, int flags, mode_t mode,
			 struct sbx_file **out, struct stat *st);
	ssize_t (*file_pread)(struct sbx_file *f, void *buf, size_t len, off_t off);
	ssize_t (*file_pwrite)(struct sbx_file *f, const void *buf, size_t len, off_t off);
	int (*file_flush)(struct sbx_file *f);
	int (*file_fsync)(struct sbx_file *f, bool datasync);
	int (*file_fstat)(struct sbx_file *f, struct stat *st);
	int (*file_setattr)(struct sbx_file *f, unsigned valid, const struct stat *want,
			    struct stat *st);
	int (*file_cached_stat)(struct sbx_file *f, struct stat *st);
	int (*file_ftruncate)(struct sbx_file *f, off_t size);
	int (*file_pin)(struct sbx_file *f);
	int (*file_set_path)(struct sbx_file *f, const char *path);
	int (*file_orphan)(struct sbx_file *f);
	void (*file_changed)(struct sbx_file *f); /* optional: see sbx_file_changed */
	int (*file_close)(struct sbx_file *f);

	int (*read_all)(struct sbx *s, const char *path, char **data, size_t *len);
	ssize_t (*pread_path)(struct sbx *s, const char *path, void *buf, size_t len, off_t off);

	/* Optional: makes the sandbox show everything this client has done so far (the
	 * fallback's queued attribute changes, files created but not yet sent), before a request
	 * runs something there that could look (a command, process, code, clone). */
	void (*settle)(struct sbx *s);
	/* Optional: a change event for path (NULL: events may have been lost), and whether a
	 * watch of /workspace is healthy (delivers events). */
	void (*changed)(struct sbx *s, const char *path);
	void (*watching)(struct sbx *s, bool healthy);
};

extern const struct sbx_ops sbx_ext_ops;
/* The body of a /api/x/pread of len bytes at off, by handle, else by path (caller frees). */
char *ext_pread_body(const char *handle, const char *path, off_t off, size_t len);

/* The heartbeat that keeps our lease, and with it our server-side handles (client/lease.c). */
struct sbx_lease;
struct sbx_lease *sbx_lease_start(struct sbx *s, long lease_ms);
/* Stops the heartbeat and ends the lease on the server (our handles close at once). */
void sbx_lease_stop(struct sbx_lease *l);
/* A handle we no longer use but could not close: the next heartbeat closes it. */
void sbx_lease_orphan(struct sbx_lease *l, const char *handle);
extern const struct sbx_ops sbx_fallback_ops;

struct sbx {
	struct http_client *http;
	_Atomic(const struct sbx_ops *) ops;
	struct sbx_info info;
	bool heartbeats; /* the server sends SSE keepalives (sbxd): streams get an idle timeout */
	bool keys;       /* the server honours idempotency keys: mutations carry one */
	bool tree;       /* the server lists subtrees (/api/x/tree) */
	bool content;    /* ... and sends small files' contents with a listing */
	struct sbx_lease *lease; /* the heartbeat that keeps our handles alive, or NULL */
	char *server, *version, *sandbox_id;
	long deadline_ms; /* the client's request deadline (-o timeout) */
	long lease_ms;    /* the server's lease on what it holds for us (0: no leases) */
	/* the fallback's local copies of open files, keyed by path (sandbox_fallback.c) */
	pthread_mutex_t copies_lock;
	struct fb_copy *copies;
	/* the rest of the fallback's state (client/fallback.h); NULL with the extensions */
	struct fb_state *fb;
	bool journal_route;          /* the server has POST /api/x/journal */
	bool pipeline;               /* ... which applies a batch "after" the one before it */
	/* the watch of /workspace, for changes the client itself must announce (echo_lock) */
	pthread_mutex_t echo_lock;
	struct sbx_watch *workspace_watch;
	struct sbx_journal *journal; /* the write-back journal in front of the backend, or NULL */
	/* the journal's name at the server, set before s is shared ("" without a journal):
	 * change events tagged with it, or with its lane's (SBX_LANE_SUFFIX appended), are the
	 * echoes of the mount's own changes */
	char journal_id[64];
};
#define SBX_LANE_SUFFIX "-lane"


/* Tells the watcher of /workspace (the filesystem) that what it was shown of path changes
 * without an event of the sandbox's: the journal's attributes of it give way to the
 * sandbox's, which are st when known (the answer to the journal's last operation on it),
 * else to be asked for. True when st went to on_settled with handover, which the watcher
 * passes to sbx_journal_handover once it has taken st; false: nobody will. */
bool sbx_local_settled(struct sbx *s, const char *path, bool is_dir, const struct stat *st,
		       uint64_t handover);
/* Tells the watcher of /workspace that whether path exists, and as what, is not known any
 * more (a change the sandbox refused): as a change event of unknown kind. */
void sbx_local_unknown(struct sbx *s, const char *path);
/* Whether a change event tagged with journal (NULL: untagged) is the mount's own. */
bool sbx_own_change(const struct sbx *s, const char *journal);

/* Sends what the journal still holds (for at most the deadline; the rest stays on disk for
 * the next mount), then takes it away from the backend (client/journal.c). */
void sbx_journal_stop(struct sbx *s);

/* The fallback backend's own state: made when sbx_open() or sbx_force_fallback() picks it
 * (aborts when out of memory, as every allocation here does), freed (after applying what it
 * still holds back) by sbx_close(). */
void sbx_fallback_init(struct sbx *s);
/* 0 when path (following a symlink) is a directory in the sandbox, else the errno a chdir
 * would give: a plain container's process start hangs on a cwd that is none. */
int sbx_fallback_check_dir(struct sbx *s, const char *path);
void sbx_fallback_fini(struct sbx *s);

/* Every backend's open file starts with this, so the public calls dispatch on the backend that
 * opened the file even after sbx_force_fallback(). */
struct sbx_file {
	const struct sbx_ops *ops;
	struct sbx *s;
};

/* A fresh idempotency key in buf for a mutation, or NULL when the server knows no keys. */
const char *sbx_key(struct sbx *s, char buf[HTTP_KEY_MAX]);
/* http_response.lost of this thread's last sbx_call: attempts that may have reached the server
 * unanswered. For a request sent without a key but marked idempotent (a fallback command whose
 * repeat cannot do harm but may report "already done"), non-zero means an earlier copy may have
 * done it. */
int sbx_last_lost(void);

/* One JSON round trip: sends body (consumed, may be NULL for a GET), returns 0 with *out set
 * (caller frees) for a 2xx answer, else a negative errno with sbx_last_error() set to
 * "<what>: <server's message>". timeout_ms 0 = the client's default. */
int sbx_call(struct sbx *s, const char *what, const char *method, const char *path,
	     struct cJSON *body, bool idempotent, long timeout_ms, struct cJSON **out);
/* sbx_call without settling first (a POST through sbx_call first lets the backend settle):
 * for a backend's own requests. */
/* What a JSON request came to (err: the transport's, 0 when an HTTP answer came): 0 and *out
 * (caller frees) for a 2xx answer, else the failure as sbx_call gives it. repeatable: it had
 * an idempotency key or was idempotent (a lost answer then says nothing of its outcome). */
struct http_response;
int sbx_json_answer(const char *what, int err, const struct http_response *resp, bool repeatable,
		    struct cJSON **out);
int sbx_call_unsettled(struct sbx *s, const char *what, const char *method, const char *path,
		       struct cJSON *body, bool idempotent, long timeout_ms, struct cJSON **out);
/* sbx_call for an answer that carries one string: *out is field's value (caller frees);
 * EPROTO when it is missing or empty. */
int sbx_call_string(struct sbx *s, const char *what, const char *method, const char *path,
		    struct cJSON *body, bool idempotent, long timeout_ms, const char *field,
		    char **out);
/* A GET whose answer lists records in the array field: *answer (caller frees) and *items,
 * the array inside it; EPROTO when there is no such array. */
int sbx_call_list(struct sbx *s, const char *what, const char *path, const char *field,
		  struct cJSON **answer, const struct cJSON **items);
/* strdup that keeps NULL and aborts when out of memory, as every allocation here does. */
char *sbx_strdup(const char *v);

/* The errno of a non-2xx response (its JSON error body, or the HTTP status), with the reason
 * recorded as for sbx_call. */
int sbx_fail_response(const char *what, long status, const char *body, size_t body_len);
/* The errno a shell tool's LC_ALL=C message stands for ("mv: ...: Directory not empty" ->
 * ENOTEMPTY); EIO when nothing matches. */
int sbx_errno_from_text(const char *text);

/* The "stat" object of an answer (plus its "target" for symlinks, caller frees), checked
 * by client/entry_check.c: -EPROTO for one that cannot be used. */
int sbx_parse_stat(const struct cJSON *obj, struct stat *st, char **target);
/* The same for the stat of path, warning (rate-limited) about what was dropped or adjusted. */
int sbx_parse_stat_at(const char *path, const struct cJSON *obj, struct stat *st,
		      char **target);

/* The HTTP deadline of one operation moving about `bytes` bytes: the client's deadline, plus
 * time for the transfer itself when it is large. */
long sbx_deadline(const struct sbx *s, size_t bytes);
/* An /api/execute answer into r (its output decoded when the server sent base64). */
int sbx_exec_answer(const char *what, const struct cJSON *j, struct sbx_exec_result *r);
/* sbx_exec with an explicit HTTP deadline; the command's own timeout is set a little shorter,
 * so the server kills it and answers before the client gives up. For the fallback's helper
 * commands only: they are sent again after a lost answer (see sandbox_fallback.c, "Lost
 * answers"). */
int sbx_exec_within(struct sbx *s, const char *command, const char *cwd, long http_ms,
		    struct sbx_exec_result *r);
#endif
