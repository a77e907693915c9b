/* Control trees: ctx/, proc/, ports/, git/, sessions/, env and watch, files whose contents are computed by the
 * sandbox's API instead of stored.
 *
 * A tree is data (plan9 acme's fsys.c): a static table of entries, each a name, a mode and the
 * callbacks that make it do something. A directory lists its children; one child per directory
 * may be dynamic (name NULL): it stands for every name its `exists` callback accepts (a context
 * id, a process id, a port), and the names it takes on are passed to every callback below it as
 * `args` (ctx/<id>/out gets args {"<id>"}). fs/control.c turns the tables into FUSE handlers
 * (lookup, getattr, readdir, open, read, write, close, poll, unlink, rmdir, create), so a tree
 * file (fs/ctx.c, fs/proc.c, ...) holds only what is particular to it.
 *
 * Files come in three shapes, by what their callbacks do:
 *   - snapshot: `open` fills h->out; reads serve it by offset (cat, head, tail, a browser);
 *   - command: what is written (h->in) is handed to `commit` when the file is closed, and close()
 *     returns commit's error (echo code > ctx/ID/in). With CTL_REQUEST, the first read commits
 *     too and then returns what commit put in h->out, so one descriptor can send a request and
 *     read its answer: id=$(exec 3<>proc/new; echo cmd >&3; head -1 <&3);
 *     Closes come in numbers: bash's `echo x > f` opens f, dup2()s it onto stdout and closes
 *     the original (a flush with nothing written yet), writes, then dup2()s stdout back (a
 *     flush whose error the kernel drops). So a flush commits only when something was written
 *     since the last commit; a command file closed without ever being written (`: > f`)
 *     commits empty input at its last close (release), where an error can only be logged.
 *     With CTL_LINE, a write that ends a line commits at once and fails with commit's error,
 *     which is the only way bash's builtin echo ever sees one (echo INT > proc/ID/kill).
 *     A request file (CTL_REQUEST) starts each request afresh: its `in` holds what was written
 *     since the last commit; other files keep everything in `in` and a commit callback that
 *     wants only the new part takes it with ctl_input_take();
 *   - stream: `open` attaches a feed (ctl_handle_attach); reads return what was pushed to it,
 *     block while nothing is there, and see EOF once it has ended.
 *
 * A read that would block is parked, not slept on: the worker thread returns at once and the
 * reply is sent later by whichever thread pushes to the feed (the network thread, for an SSE
 * stream), by the interrupt handler (Ctrl-C: EINTR at once), or at unmount. So 50 readers parked
 * on out files cost no worker thread. poll/select/epoll work on streams (libfuse poll.c).
 *
 * Attributes are synthetic: the entry's mode, the mounting user, size 0 unless the entry's
 * `stat` callback knows better, and direct I/O, so a size of 0 never truncates a read. Errors
 * from callbacks are negative errnos; a callback that fails logs the readable reason
 * (log_warn with sbx_last_error()) so that the user can find out why. */
#ifndef SBX_FS_CONTROL_H
#define SBX_FS_CONTROL_H
#include <stdatomic.h>
#include <fuse_lowlevel.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>
#include "common/strbuf.h"

struct sbxfs;
struct node;
struct ctl_handle;
struct ctl_feed;

#define CTL_MAX_ARGS 4

/* The dynamic names along a path, outermost first, except the name of a session
 * (CTL_SESSION): sessions/<sid>/proc/<id>/status gets v {"<id>"} and session "<sid>", so the
 * proc/ and ctx/ tables serve both places unchanged. */
struct ctl_args {
	const char *v[CTL_MAX_ARGS];
	int n;
	const char *session; /* NULL outside sessions/ */
};

/* Names a dynamic entry's `list` callback returns (ctl_names_add copies). */
struct ctl_names {
	char **v;
	size_t n, cap;
};
void ctl_names_add(struct ctl_names *names, const char *name);

enum ctl_flags {
	CTL_REQUEST = 1 << 0, /* the first read commits what was written and reads its answer */
	CTL_STREAM = 1 << 1,  /* reads and writes are sequential (nonseekable); implied by
				 an attached feed. CTL_REQUEST files are sequential too but
				 seekable, because `head -1` seeks back to the end of its line */
	CTL_LINE = 1 << 2,    /* a write ending in '\n' commits at once (when `ready` agrees) */
	CTL_SESSION = 1 << 3, /* a dynamic directory whose name is a session: it goes to
				 args.session, not to args.v */
};

struct ctl_entry {
	const char *name; /* NULL: the dynamic child of its directory */
	mode_t mode;      /* S_IFDIR or S_IFREG, with permission bits (0 ends a children array) */
	unsigned flags;   /* CTL_* */
	const struct ctl_entry *children; /* directories */
	const struct ctl_entry *same_as;  /* directories: the children are this tree's */

	/* Dynamic entries. `a` ends with the name in question (for list: the names so far). */
	int (*list)(struct sbxfs *fs, const struct ctl_args *a, struct ctl_names *out);
	int (*exists)(struct sbxfs *fs, const struct ctl_args *a);
	int (*create)(struct sbxfs *fs, const struct ctl_args *a, mode_t mode); /* creat, mkdir */
	int (*remove)(struct sbxfs *fs, const struct ctl_args *a);              /* unlink, rmdir */

	/* Files. */
	int (*open)(struct ctl_handle *h);
	int (*commit)(struct ctl_handle *h);
	/* Optional: size and times, for files whose size a reader may want before reading. */
	int (*stat)(struct sbxfs *fs, const struct ctl_args *a, struct stat *st);

	/* Tree roots only: called at unmount, before the sandbox is closed (may be called twice). */
	void (*stop)(struct sbxfs *fs);

	/* CTL_LINE files, optional: whether what was written so far is a whole request, so that
	 * the line just written commits it (proc/new: not while only option lines came). */
	bool (*ready)(const struct ctl_handle *h);
};

/* One open control file. Callbacks fill `out`, read `in`, and may keep their own state in priv
 * (freed with priv_free at release). */
struct ctl_handle {
	struct sbxfs *fs;
	struct sbx *sbx;
	const struct ctl_entry *entry;
	struct ctl_args args; /* owned copies */
	int flags;            /* open(2) flags */
	struct strbuf in;     /* everything written, by offset */
	struct strbuf out;    /* what reads return (snapshot, request answer) */
	void *priv;
	void (*priv_free)(void *priv);

	/* control.c's own */
	bool committed, dirty;
	size_t rpos;          /* read cursor of sequential handles without a feed */
	struct ctl_feed *feed;
	struct fuse_pollhandle *ph;
};

/* Feeds: an append-only byte log with an end. Push and end may be called from any thread,
 * including the network thread; both answer parked reads at once. A replay feed is shared by
 * the handles attached to it, each reading from the start (several readers of ctx/ID/out see
 * the same events); otherwise one handle reads it and what it has read is dropped. Either way
 * a feed holds at most about the stream buffer (ctl_set_stream_buffer): beyond it the oldest
 * bytes are dropped (whole lines) and a reader that had not read them skips ahead, after the
 * rest of a line it had begun (fs/feed.h). label names the file in the log line that says
 * so. */
void ctl_set_stream_buffer(size_t bytes);
struct ctl_feed *ctl_feed_new(bool replay, const char *label);
void ctl_feed_ref(struct ctl_feed *f);
void ctl_feed_unref(struct ctl_feed *f);
void ctl_feed_push(struct ctl_feed *f, const void *data, size_t len);
/* After the data already pushed, readers see EOF (err 0) or the error (a negative errno)
 * once. Pushes after the end are dropped. Idempotent: the first end wins. */
void ctl_feed_end(struct ctl_feed *f, int err);
bool ctl_feed_ended(struct ctl_feed *f);
/* Reads of h come from f, from its beginning (takes a reference). Call from `open`. */
void ctl_handle_attach(struct ctl_handle *h, struct ctl_feed *f);
/* For commit callbacks: what was written since the previous call (h->in keeps everything, and
 * a CTL_LINE file commits at every line, so a second line must not act on the first again).
 * The text runs to the end of h->in, which is NUL-terminated. */
const char *ctl_input_take(struct ctl_handle *h, size_t *len);
/* For commit callbacks that wait long (a clone): set when the user interrupts the write or
 * close that runs the commit (Ctrl-C); hand it to the client call as its cancel flag. */
const atomic_bool *ctl_interrupt_flag(struct ctl_handle *h);

/* The handlers fs/dispatch.c dispatches to: NODE_CONTROL's kind_ops, and the file operations of a
 * control handle (fi->fh tagged by ctl_fh). */
extern const struct kind_ops control_kind_ops;
bool ctl_is_handle(const struct fuse_file_info *fi);
void ctl_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi);
void ctl_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
	       struct fuse_file_info *fi);
void ctl_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void ctl_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void ctl_poll(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi,
	      struct fuse_pollhandle *ph);
/* Stable inode numbers from the path ("/ctx/ID/out"): the same name is the same file for find
 * and tar; the top bit keeps them apart from the sandbox's own inode numbers. */
ino_t ctl_ino(const char *path);
/* The attributes of a tree at the root, for the root's listing: as a lookup gives them. */
void ctl_tree_stat(struct sbxfs *fs, const struct ctl_entry *tree, struct stat *st);
/* Unmount: the trees' stop hooks (when a sandbox was bound), then every parked read is
 * answered (ENOTCONN). */
void ctl_stop(struct sbxfs *fs);

/* The trees, defined by fs/ctx.c, fs/proc.c, ... and listed at the root (fs/root.c), which
 * hands them to this file as fs->trees. */
extern const struct ctl_entry ctl_ctx_tree, ctl_proc_tree, ctl_ports_tree, ctl_git_tree,
	ctl_env_file, ctl_sessions_tree, ctl_watch_file, ctl_sync_file;
#endif
