/* workspace/ (fs/workspace.c): the sandbox's /workspace as ordinary POSIX files. */
#ifndef SBX_FS_WORKSPACE_H
#define SBX_FS_WORKSPACE_H
#include <fuse_lowlevel.h>

struct sbxfs;

/* NODE_WORKSPACE's handlers. */
extern const struct kind_ops workspace_kind_ops;

/* Operations on open workspace files: fi->fh is the struct ofile. fs/dispatch.c sends a file's
 * operations here unless the handle is a control file's (ctl_is_handle). */
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
#endif
