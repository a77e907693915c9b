/* Between the journal's parts: the overlay and its operations (journal.c), the files on disk
 * (journal_spool.c) and the uploader (journal_upload.c). One lock, j->lock, guards all of it
 * but the spool's file writes, which take it too. */
#ifndef SBX_JOURNAL_IMPL_H
#define SBX_JOURNAL_IMPL_H
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>
#include "client/journal.h"
#include "client/sandbox_impl.h"

/* A file's content and attributes, shared by its hard links: the data lives in the spool
 * (blobs/<id>), so memory holds no file contents. */
struct jinode {
	uint64_t id;
	int fd;
	struct stat st;  /* what the mount shows (st_ino 0: the sandbox's is not known yet) */
	unsigned links;  /* names (jnodes) pointing at it */
	unsigned opens;  /* open files */
	unsigned writers; /* ... of them open for writing */
	unsigned refs;   /* operations not yet acknowledged that send its content */
	bool dirty;      /* written since its last put was journaled */
	int error;       /* an upload of it failed for good: its next flush reports it once */
	uint64_t last_seq; /* the last operation that sends or names it */
	/* what the sandbox answered for the last acknowledged operation on it (sandbox_known:
	 * that answer still stands), and whether a change event the mount did not cause named
	 * it since it was journaled (then only a fresh look at the sandbox tells) */
	struct stat sandbox_st;
	bool sandbox_known, changed_there;
	bool kept;          /* its blob stays when it goes: a clean copy (journal_clean.c) */
	bool adopted;       /* a copy of a clean copy (sbx_journal_adopt_clean) */
	/* an open clean copy: the path it was opened by, whether it follows the sandbox now,
	 * and the next open one */
	char *clean_path;
	bool clean_stale;
	struct jinode *clean_next;
	struct jnode *name; /* one of its names, NULL when it has none (or only others) */
	/* for its first put: what the sandbox held at that name before (a conflict if not) */
	bool expect_absent, expect_stat;
	off_t expect_size;
	struct timespec expect_mtime;
};

enum jnode_kind { JN_FILE, JN_DIR, JN_SYMLINK, JN_GONE };

/* A path with a change the sandbox has not acknowledged yet (or a file open on it). */
struct jnode {
	char *path;
	enum jnode_kind kind;
	struct jinode *ino; /* JN_FILE */
	struct stat st;     /* JN_DIR, JN_SYMLINK */
	char *target;       /* JN_SYMLINK */
	bool opaque;        /* JN_DIR whose mkdir is not acknowledged: no children in the sandbox */
	uint64_t made_seq;  /* JN_DIR made here: its mkdir (opaque until that is acknowledged) */
	uint64_t last_seq;  /* the last operation naming this path */
	/* JN_DIR: how the sandbox has it after the last acknowledged operation that changed it
	 * (sandbox_known), and whether a change there the mount did not make touched it since */
	struct stat sandbox_st;
	bool sandbox_known, changed_there;
	/* settled, and its sandbox attributes announced to the filesystem (on_settled) under
	 * this number: the node stays until the filesystem took them (journal_handover), so
	 * that nothing asks the sandbox for it in between; version: its last op's then */
	uint64_t announced, announced_version;
	int64_t announced_ms; /* when this version was first announced */
	bool declined;        /* the filesystem could not take it (open there): again, later */
	struct jnode *next; /* hash chain */
};

enum jop_kind { JOP_PUT, JOP_MKDIR, JOP_SYMLINK, JOP_LINK, JOP_UNLINK, JOP_RMDIR,
		JOP_RENAME, JOP_SETATTR };

/* One change, in the order the mount made it. */
struct jop {
	uint64_t seq;
	enum jop_kind kind;
	char *path;
	char *path2;        /* RENAME, LINK: the new name; SYMLINK: the target */
	struct jinode *ino; /* PUT: whose content is sent (read when it is sent) */
	struct jinode *unlinked; /* UNLINK of one of a file's names: the file its others keep */
	uint64_t blob;      /* PUT: ino's id, as journaled */
	unsigned valid;     /* SETATTR: SBX_SET_* */
	mode_t mode;        /* PUT, MKDIR, SETATTR */
	off_t size;         /* SETATTR */
	uid_t uid;
	gid_t gid;
	struct timespec atime, mtime; /* PUT, SETATTR */
	/* PUT: what the mount believed the sandbox held at that path (a conflict otherwise) */
	bool expect_absent, expect_stat;
	off_t expect_size;
	struct timespec expect_mtime;
	bool sent;          /* in a batch: sent, or on its way (never superseded then) */
	bool lane;          /* goes on the lane (journal_upload.c), and again there */
	bool on_lane;       /* ... and is in its list: */
	struct jop *lane_next; /* the next op on the lane */
	bool decided;       /* read back from the log, which says which journal it goes on
			     * (lane: a lane record; else the main journal, where it may have been
			     * applied already) */
	bool done;          /* the sandbox answered for it: it leaves the queue once every op
			     * before it did too */
	int64_t queued_ms;  /* when it was queued (mono_ms) */
	struct jop *next;
};

#define WIRE_ID_MAX 40

struct clean_copy {
	uint64_t blob, bytes;
};
struct clean_copies {
	struct clean_copy *v; /* a ring, oldest at head */
	size_t head, n, cap;
	uint64_t bytes;
};

struct sbx_journal {
	struct sbx *s;
	const struct sbx_ops *inner; /* the backend underneath */
	pthread_mutex_t lock;
	pthread_cond_t changed; /* acknowledgements, failures, new work, stop */

	/* the overlay */
	struct jnode **table;
	size_t buckets, nodes;
	struct dirseen *dirseen; /* the sandbox's directories as last seen (journal.c) */
	uid_t uid;   /* owner of what the mount makes, as the sandbox shows /workspace's */
	gid_t gid;

	struct clean_copies clean;    /* journal_clean.c */
	struct jinode *clean_open;

	/* the queue: what the sandbox has not acknowledged, oldest first; acked: every op up to
	 * it is (ops after a large put on its way may be done before it: jop.done) */
	struct jop *head, *tail;
	size_t queued;
	uint64_t next_seq, acked;
	uint64_t announcements; /* settled nodes announced so far (jnode.announced) */
	size_t lingering;       /* announced nodes the filesystem has not taken yet */
	uint64_t bytes_pending;
	/* failures for good: the last one's seq, errno and reason */
	uint64_t fail_seq, fail_reported; /* fail_reported: the last one a sync reported */
	int fail_err;
	char fail_reason[512];
	uint64_t failures;

	/* the spool (journal_spool.c) */
	char *dir;       /* <cache_dir>/<key> */
	int dir_fd, blobs_fd, log_fd, lock_fd;
	char wire_id[WIRE_ID_MAX]; /* the journal's name at the server: random, kept in the spool */
	uint64_t next_blob;
	_Atomic int64_t synced_ms; /* last syncfs of the spool */

	/* the uploader (journal_upload.c) */
	pthread_t thread;
	bool running, stopping;
	bool route;    /* the server has POST /api/x/journal: batches; else one call each */
	struct retry {      /* of the main journal's sender, and of the lane's */
		int backoff_ms; /* while the sandbox cannot be reached */
		unsigned seen;  /* the last of retries_asked an attempt answered */
	} main_retry, lane_retry;
	bool offline;
	unsigned retries_asked; /* bumped by a waiter that wants an attempt now, not after the
				 * backoff (of each sender) */
	bool urgent;       /* a waiter wants the queue sent now, not after the coalescing wait */
	char **refused;    /* paths of ops refused since the last announcement */
	size_t n_refused, cap_refused;
	/* the lane: a large put on a journal of its own at the server, sent by a thread of its
	 * own, while the ops after it that do not depend on it go on (journal_upload.c) */
	char lane_id[WIRE_ID_MAX + sizeof SBX_LANE_SUFFIX];
	struct jop *lane_head, *lane_tail; /* its ops not answered for yet, oldest first */
	pthread_cond_t lane_wake; /* an op put on the empty lane, or stop */
	pthread_t lane_thread;
	bool lane_running;
};

/* journal.c */
struct jnode *jnode_find(struct sbx_journal *j, const char *path);
/* Drops what the acknowledgement of everything up to j->acked makes unneeded (lock held), and
 * returns the paths whose attributes now come from the sandbox (caller frees each path and
 * the array), to be announced with sbx_local_settled(), the lock still held: a change event
 * for such a path that comes later is then queued after the announcement. has_st: the
 * sandbox's attributes are known (a file whose last operation's answer still stands); such a
 * node stays, answering as before, until the filesystem hands it over (journal_handover;
 * HANDOVER_MS at most). */
struct settled {
	char *path;
	bool is_dir;
	bool has_st;
	struct stat st;
	uint64_t handover; /* with has_st: the announcement, for journal_handover */
};
struct settled *journal_settled(struct sbx_journal *j, size_t *count);
/* Lets go of the announced node of path (lock held): its clean copy's blob, or 0. Not taken:
 * it stays, to be announced again. */
uint64_t journal_handover(struct sbx_journal *j, const char *path, uint64_t handover, bool taken);
void jinode_put(struct sbx_journal *j, struct jinode *ino);
/* Lets go of op, off the queue: its files' references, then op itself (lock held). */
void jop_release(struct sbx_journal *j, struct jop *op);
/* The attributes of a directory as the sandbox gave them (its st_ino is the sandbox's): a
 * change in it later keeps them local until acknowledged. Lock held. */
void journal_saw_dir(struct sbx_journal *j, const char *path, const struct stat *st);

/* A file open on ino (lock held). */
struct sbx_file *journal_file_new(struct sbx_journal *j, struct jinode *ino, int flags);

/* journal_clean.c, lock held */
bool clean_keep(struct sbx_journal *j, struct jinode *ino);
void clean_drop_all(struct sbx_journal *j);
void clean_changed(struct sbx_journal *j, const char *path);
void clean_closed(struct sbx_journal *j, struct jinode *ino);

/* journal_spool.c: the journal on disk. Everything but open/close with j->lock held. */
int spool_open(struct sbx_journal *j, const char *cache_dir);
void spool_close(struct sbx_journal *j);
/* A new empty blob: its id and an open descriptor. */
int spool_blob_new(struct sbx_journal *j, uint64_t *id);
int spool_blob_open(struct sbx_journal *j, uint64_t id);
void spool_blob_remove(struct sbx_journal *j, uint64_t id);
/* Keeps a copy of a blob that could not be uploaded (lost+found/), named after path; returns
 * the copy's path (caller frees) or NULL. */
char *spool_blob_rescue(struct sbx_journal *j, uint64_t id, const char *path);
/* Appends op (or an acknowledgement up to seq) to the log. */
void spool_log_op(struct sbx_journal *j, const struct jop *op);
void spool_log_ack(struct sbx_journal *j, uint64_t seq);
/* Records which journal ops go on (journal_upload.c, "the lane"): the op numbered seq goes
 * on the lane; the ops up to seq that are not on the lane go on the main journal. The next
 * mount sends them there too. */
void spool_log_lane(struct sbx_journal *j, uint64_t seq);
void spool_log_main(struct sbx_journal *j, uint64_t seq);
/* Once nothing is pending: starts the log afresh. */
void spool_compact(struct sbx_journal *j);
/* Makes what the log and blobs hold durable (syncfs), at most once a second unless force. */
void spool_sync(struct sbx_journal *j, bool force);
/* Reads the log back: calls replay for every operation not acknowledged, in order. */
int spool_replay(struct sbx_journal *j, void (*replay)(struct sbx_journal *j, struct jop *op));
void jop_free(struct jop *op);

/* The outcome of one operation: 0, a failure for good (err < 0, why), or not known yet. */
struct outcome {
	int err;
	char why[256];
	bool conflict;
	bool has_stat; /* st: what the sandbox answered for the op's path */
	struct stat st;
	/* the directories whose names the op changed, as it left them (sbxd says) */
	bool has_parent, has_from_parent;
	struct stat parent, from_parent;
};

/* journal_order.c: whether op, made after before, could come out otherwise if it were
 * applied first (lock held). */
bool jop_depends_on(const struct jop *op, const struct jop *before);

/* journal_fallback.c: without the journal route, ops[0..n) as the backend's own calls,
 * several at once, each after those of them it depends on (lock not held). Returns how many
 * have an outcome, moved with their outcomes to the front of ops and oc (the others are to be
 * sent again: the sandbox could not be reached; they stay in the queue, not in ops). */
size_t fallback_send(struct sbx_journal *j, struct jop **ops, size_t n, struct outcome *oc);

/* journal_upload.c */
/* Whether a request's error is the network's or the sandbox's for now: sent again. */
bool upload_transient(int err);
int upload_start(struct sbx_journal *j);
void upload_stop(struct sbx_journal *j);
/* True on the uploader's own thread (its requests must not wait for the journal). */
bool upload_is_self(void);
#endif
