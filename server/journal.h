/* The server's side of sbxfs's write-back journal (docs/protocol.md, "The journal"): ordered
 * batches of filesystem operations, each carried out exactly once per (journal, seq).
 *
 * A journal is a client's stream of numbered operations. For each journal the engine keeps a
 * watermark, the highest seq carried out; an operation at or below it was carried out by an
 * earlier request and is skipped, whatever became of that request's answer. A failed
 * operation counts as carried out: its result is final. Batches of one journal are applied one
 * after the other, never interleaved. Watermarks are kept in sbxd's state directory and read
 * back at start, so a restarted sbxd skips what it did before; at most JOURNALS_MAX journals
 * are kept, the least recently used one is forgotten first.
 *
 * Paths are the sandbox's, confined to /workspace as on the /api/x/ file routes
 * (server/workspace.h): resolved beneath the workspace, the last component never followed.
 * Nothing here knows HTTP (journal_routes.c answers); results carry the protocol's stat
 * objects (server/fsops.h). */
#ifndef SBXD_JOURNAL_H
#define SBXD_JOURNAL_H
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#define JOURNAL_ID_MAX 64               /* an id is 1 to 64 of A-Z a-z 0-9 _ - */
#define JOURNAL_OPS_MAX 4096            /* operations in one batch */
#define JOURNAL_SEQ_MAX 9007199254740992ULL /* 2^53: a seq is exact as a JSON number */
#define JOURNALS_MAX 4096               /* journals remembered */

enum journal_op_kind {
	JOP_PUT,        /* path, mode, data, times, expect: the file's whole content */
	JOP_WRITE,      /* path, offset, data: into an existing file */
	JOP_MKDIR,      /* path, mode */
	JOP_SYMLINK,    /* target, path */
	JOP_LINK,       /* from, to */
	JOP_UNLINK,     /* path */
	JOP_RMDIR,      /* path */
	JOP_RENAME,     /* from, to, rename_flags */
	JOP_SETATTR,    /* path, and any of mode, size, uid, gid, times */
};

/* What a put's client believed the path held before. */
enum journal_expect {
	JOURNAL_EXPECT_NOTHING,
	JOURNAL_EXPECT_ABSENT,
	JOURNAL_EXPECT_STAT,    /* expect_size and/or expect_mtime, as has_* say */
};

/* An op: the fields its kind names (journal_op_kind), the others zero. */
struct journal_op {
	uint64_t seq;                   /* 1 to JOURNAL_SEQ_MAX, growing within a batch */
	enum journal_op_kind kind;
	const char *path, *from, *to, *target;
	const char *data;               /* put, write: the bytes */
	size_t len;
	off_t offset;                   /* write */
	bool has_mode, has_size, has_uid, has_gid, has_atime, has_mtime;
	mode_t mode;                    /* permission bits */
	off_t size;
	uid_t uid;
	gid_t gid;
	struct timespec atime, mtime;
	unsigned rename_flags;          /* RENAME_NOREPLACE, RENAME_EXCHANGE */
	enum journal_expect expect;
	bool expect_has_size, expect_has_mtime;
	off_t expect_size;
	struct timespec expect_mtime;
};

enum journal_outcome {
	JOURNAL_APPLIED,
	JOURNAL_SKIPPED,        /* seq at or below the watermark: carried out before */
	JOURNAL_FAILED,
};

struct journal_result {
	uint64_t seq;
	enum journal_outcome outcome;
	/* JOURNAL_APPLIED */
	cJSON *stat;            /* of path, or of `to` for link and rename; for unlink of a file
				 * with other names, of what they keep; else NULL */
	cJSON *parent;          /* of the directory of path (`to`) when names in it came or went */
	cJSON *from_parent;     /* rename: of the directory of `from` */
	bool conflict;          /* a put found the path other than it expected */
	cJSON *before;          /* with conflict: the stat found, NULL when the path was absent */
	/* JOURNAL_FAILED */
	int err;                /* the errno, positive */
	char *message;          /* "No such file or directory: /workspace/a" */
	const char *path, *to;  /* the path(s) concerned, from the op (to: link's and rename's) */
};

struct journals;

/* The engine, with the watermarks kept in state_dir/journals (made if missing); state_dir
 * NULL keeps them in memory only. NULL and *err when that directory cannot be used. */
struct journals *journals_new(const char *state_dir, int *err);
/* Frees the engine (no batch may be running). */
void journals_free(struct journals *js);

bool journal_id_valid(const char *id);

/* Applies the n ops of journal id in order into results[n] (each op gets one, a failing op
 * does not stop those after it), and sets *applied to the journal's watermark afterwards.
 * after: 0, or the seq of the last op of the batch this one follows (sent before it, maybe on
 * another connection): the batch waits up to JOURNAL_AFTER_WAIT_MS for the watermark to reach
 * it, and fails with -EAGAIN, applying nothing, when it does not (that batch never came: the
 * client sends both again). 0; -EINVAL for an invalid id, n outside 1..JOURNAL_OPS_MAX, seqs
 * out of order or after not below the first seq; -EBUSY when a new journal finds every one of
 * the JOURNALS_MAX in use; another negative errno when the watermark cannot be kept. Nothing is
 * applied when it fails. Free the results with journal_results_free, whatever it returned. */
#define JOURNAL_AFTER_WAIT_MS 5000
int journal_apply(struct journals *js, const char *id, uint64_t after,
		  const struct journal_op *ops, size_t n, struct journal_result *results,
		  uint64_t *applied);
void journal_results_free(struct journal_result *results, size_t n);
/* The watermark of journal id (0 when unknown), for tests and logs. */
uint64_t journal_watermark(struct journals *js, const char *id);
#endif
