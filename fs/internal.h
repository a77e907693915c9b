/* What the parts of fs/ share: the filesystem's state and the handlers a kind of node has.
 * Not for use outside fs/. */
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
struct ctl_entry;

struct sbxfs {
	struct sbxfs_config cfg;
	struct sbx *sbx;
	struct fuse_session *se;
	struct nodes nodes;
	/* The control trees at the root (fs/root.c), NULL-terminated: fs/control.c resolves
	 * paths in them. */
	const struct ctl_entry *const *trees;
	/* The change-event stream is up: long kernel timeouts and our caches are trusted. */
	atomic_bool healthy;
	/* Bumped for every change event received: a reply built from data fetched before an
	 * event arrived is sent with zero timeouts and not cached (fs/timeouts.c). */
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
	/* Fills the directory snapshot of opendir (fs/dirsnap.h). */
	int (*list)(struct sbxfs *fs, struct node *n, struct dirsnap *snap);
	void (*statfs)(fuse_req_t req, struct sbxfs *fs, struct node *n);
};
#endif
