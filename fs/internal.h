/* What the parts of fs/ share: the filesystem state, the per-kind handler tables and the
 * helpers every handler uses. Not for use outside fs/. */
#ifndef SBX_FS_INTERNAL_H
#define SBX_FS_INTERNAL_H
#include <stdatomic.h>
#include <stdbool.h>
#include <fuse_lowlevel.h>
#include "fs/fs.h"
#include "fs/nodes.h"

#define EVENT_RING 256

struct invalidator;
struct sbx_watch;
struct dirsnap;

struct sbxfs {
	struct sbxfs_config cfg;
	struct sbx *sbx;
	struct fuse_session *se;
	struct nodes nodes;
	/* The change-event stream is up: long kernel timeouts and our caches are trusted. */
	atomic_bool healthy;
	/* Bumped for every change event received: a reply built from data fetched before an
	 * event arrived is sent with zero timeouts and not cached. */
	atomic_uint_fast64_t events;
	/* The paths of the last EVENT_RING events (NULL: a resync, which concerns every path),
	 * so a reply can tell whether an event that arrived meanwhile concerns it at all: the
	 * echo of a request's own change usually overtakes the request's answer. */
	pthread_mutex_t ring_lock;
	struct ring_event {
		char *path;
		bool created;
	} ring[EVENT_RING];
	struct invalidator *inval;
	struct sbx_watch *watch;
	/* The kernel can expire a name instead of dropping it (FUSE_CAP_EXPIRE_ONLY): a
	 * directory that is some process's cwd stays usable when the lookup confirms it. */
	atomic_bool expire_only;
	struct timespec mount_time;
	uid_t uid;
	gid_t gid;
};

/* Handlers of one node kind. `n` is held for the duration of the call; for operations on a
 * name (lookup, mkdir, ...) it is the parent directory. A NULL handler answers EPERM for
 * changes and ENOSYS otherwise. */
struct kind_ops {
	void (*lookup)(fuse_req_t req, struct sbxfs *fs, struct node *n, const char *name);
	void (*getattr)(fuse_req_t req, struct sbxfs *fs, struct node *n,
			struct fuse_file_info *fi);
	void (*setattr)(fuse_req_t req, struct sbxfs *fs, struct node *n, struct stat *attr,
			int to_set, struct fuse_file_info *fi);
	void (*readlink)(fuse_req_t req, struct sbxfs *fs, struct node *n);
	void (*mknod)(fuse_req_t req, struct sbxfs *fs, struct node *n, const char *name,
		      mode_t mode, dev_t rdev);
	void (*mkdir)(fuse_req_t req, struct sbxfs *fs, struct node *n, const char *name,
		      mode_t mode);
	void (*unlink)(fuse_req_t req, struct sbxfs *fs, struct node *n, const char *name);
	void (*rmdir)(fuse_req_t req, struct sbxfs *fs, struct node *n, const char *name);
	void (*symlink)(fuse_req_t req, struct sbxfs *fs, const char *link, struct node *n,
			const char *name);
	/* Both directories are of this kind (else EXDEV). */
	void (*rename)(fuse_req_t req, struct sbxfs *fs, struct node *n, const char *name,
		       struct node *newparent, const char *newname, unsigned flags);
	void (*link)(fuse_req_t req, struct sbxfs *fs, struct node *n, struct node *newparent,
		     const char *newname);
	void (*open)(fuse_req_t req, struct sbxfs *fs, struct node *n,
		     struct fuse_file_info *fi);
	void (*create)(fuse_req_t req, struct sbxfs *fs, struct node *n, const char *name,
		       mode_t mode, struct fuse_file_info *fi);
	/* Fills the directory snapshot of opendir. */
	int (*list)(struct sbxfs *fs, struct node *n, struct dirsnap *snap);
	void (*statfs)(fuse_req_t req, struct sbxfs *fs, struct node *n);
};

extern const struct kind_ops root_kind_ops, workspace_kind_ops;

/* The control tree of a root row ("ctx"), or NULL (fs.c's root table). */
struct ctl_entry;
const struct ctl_entry *fs_control_tree(const char *name);

/* What opendir saw: served to readdir/readdirplus by offset. */
struct dirsnap_entry {
	char *name;
	char *target;
	struct stat st;
	enum node_kind kind;
};
struct dirsnap {
	struct dirsnap_entry *ents;
	size_t n, cap;
	uint64_t seq;    /* the table's seq before the listing was fetched */
	uint64_t events; /* fs->events likewise */
};
void dirsnap_add(struct dirsnap *snap, const char *name, const struct stat *st,
		 const char *target, enum node_kind kind);

/* Timeouts for a reply built from data fetched when fs->events was `events`. */
struct reply_timeouts {
	double attr, entry, negative;
};
struct reply_timeouts fs_timeouts(struct sbxfs *fs, uint64_t events);
/* The same for a reply about one sandbox path: events since then about other paths (neither
 * an ancestor nor below it) do not matter, nor, when `created`, the creation of path itself
 * (the echo of the request's own mkdir or create; a removal in between still counts). */
struct reply_timeouts fs_timeouts_at(struct sbxfs *fs, uint64_t events, const char *path,
				     bool created);
/* The kernel's attribute timeout for st: none for a file with several names. A change through
 * one name changes the others' attributes (st_nlink, ctime, data), and telling the kernel
 * about those takes an invalidation that can only be sent after the reply, too late for a
 * stat right after `mv x name`; without a timeout the kernel asks, and the node table,
 * updated before the reply, answers. */
double fs_attr_ttl(const struct stat *st, double ttl);
double fs_now(void);
bool fs_caches_trusted(struct sbxfs *fs);

/* Binds (parent, name) to a node for the inode in st, detaching a stale node of a different
 * inode or type, takes a kernel reference and fills e. Stores st in the node's cache when
 * `cache` (the caller checked staleness). st_ino 0 is a file the sandbox does not have yet
 * (sandbox.h, SBX_O_NEW): its node is shown with a number of ours (fs_node_ino). Caller holds
 * the table lock. */
struct node *fs_bind_entry(struct sbxfs *fs, struct node *parent, const char *name,
			   enum node_kind kind, const struct stat *st, const char *target,
			   bool cache, const struct reply_timeouts *to, struct fuse_entry_param *e);
void fs_cache_attr(struct sbxfs *fs, struct node *n, const struct stat *st);
/* Whether st (a stat a backend gave about n's name) is of n's file: the same type and inode
 * number (the sandbox's or the one n is shown by; st_ino 0, "not known yet", is a file the
 * sandbox does not have yet, sandbox.h SBX_O_NEW). */
bool fs_node_is(const struct node *n, const struct stat *st);
/* st as the kernel must see it: a node made before its file had an inode number in the sandbox
 * keeps the number it was shown by for its life (nodes.h); its real one is learned for the
 * comparisons above. Caller holds the table lock. */
void fs_node_ino(struct node *n, struct stat *st);
/* The number the kernel knows n by. */
ino_t fs_node_shown_ino(const struct node *n);
/* Numbers of ours: this bit and the node id, unique for the mount's life. */
#define FS_PROVISIONAL_INO (UINT64_C(1) << 63)
void fs_reply_negative(fuse_req_t req, const struct reply_timeouts *to);

/* The invalidator (fs/invalidate.c). */
struct invalidator *invalidator_start(struct sbxfs *fs);
void invalidator_stop(struct invalidator *inv);
void invalidator_change(struct invalidator *inv, const char *path, const char *type,
			bool is_dir);
void invalidator_resync(struct invalidator *inv);
/* Queues an invalidation of one node's attributes (and pages with data): for handlers, which
 * must not notify themselves. */
void invalidator_inode(struct invalidator *inv, uint64_t id, bool data);

/* Operations on open workspace files (fs/workspace.c): fi->fh is the struct ofile. fs.c sends
 * a file's operations here unless the handle is a control file's (ctl_is_handle). */
void workspace_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi);
void workspace_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi);
void workspace_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void workspace_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi);
void workspace_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi);

/* The mount made path by other means than workspace/ (git/clone): what its caches say of the
 * name goes now, before the change event that the sandbox may send only moments later, so a
 * lookup right after the clone finds it. */
void workspace_made(struct sbxfs *fs, const char *path);

/* Closes every file left open (unmount). */
void workspace_close_all(struct sbxfs *fs);

/* The lines of an env file (fs/env.c: "NAME=VALUE" sets, "-NAME" unsets, '#' comments) as
 * the changes they ask for, each name once, in the state its last line left it; -EINVAL with
 * a reason for a malformed line. Also sessions/<id>/env's format (fs/sessions.c). */
struct env_change {
	char **set, **unset; /* "NAME=VALUE", "NAME" */
	size_t nset, nunset;
};
int env_parse(const char *text, size_t len, struct env_change *c);
void env_change_free(struct env_change *c);
#endif
