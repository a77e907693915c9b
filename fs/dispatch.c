/* The dispatcher: the low-level operations table, which resolves each request's node id and
 * hands the request to the handlers of the node's kind (fs/internal.h, struct kind_ops): the
 * root (fs/root.c), workspace/ (fs/workspace.c) or a control tree (fs/control.c). An open
 * file's requests go to the kind its handle belongs to, and a directory's listing is the
 * snapshot its opendir took (fs/dirsnap.c). The mount's life is fs/mount.c; the helpers that
 * the kinds share are fs/entry.c, fs/timeouts.c and fs/dirsnap.c. */
#include "fs/fs.h"
#include <errno.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "fs/control.h"
#include "fs/dirsnap.h"
#include "fs/internal.h"
#include "fs/root.h"
#include "fs/workspace.h"

#define MIB (1024 * 1024)

static const struct kind_ops *const kinds[NODE_KINDS] = {
	[NODE_ROOT] = &root_kind_ops,
	[NODE_WORKSPACE] = &workspace_kind_ops,
	[NODE_CONTROL] = &control_kind_ops,
};

static struct sbxfs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

/* Holds the node of id, or NULL (a stale id: the kernel raced a forget). */
static struct node *hold(struct sbxfs *fs, fuse_ino_t id)
{
	nodes_lock(&fs->nodes);
	struct node *n = nodes_get(&fs->nodes, id);
	if (n)
		nodes_hold(n);
	nodes_unlock(&fs->nodes);
	return n;
}

static void put(struct sbxfs *fs, struct node *n)
{
	nodes_lock(&fs->nodes);
	nodes_put(&fs->nodes, n);
	nodes_unlock(&fs->nodes);
}

/* Resolves ino to a held node and its handler table, or replies and returns. Changes answer
 * EPERM where a kind has no handler; other requests ENOSYS. */
#define DISPATCH(op, change, ...)                                            \
	do {                                                                 \
		struct sbxfs *fs = fs_of(req);                               \
		struct node *n = hold(fs, ino);                              \
		if (!n) {                                                    \
			fuse_reply_err(req, ESTALE);                         \
			return;                                              \
		}                                                            \
		const struct kind_ops *k = kinds[n->kind];                   \
		if (k->op)                                                   \
			k->op(req, fs, n, ##__VA_ARGS__);                    \
		else                                                         \
			fuse_reply_err(req, (change) ? EPERM : ENOSYS);      \
		put(fs, n);                                                  \
	} while (0)

static void op_lookup(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	if (strlen(name) > 255) {
		fuse_reply_err(req, ENAMETOOLONG);
		return;
	}
	DISPATCH(lookup, false, name);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	DISPATCH(getattr, false, fi);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
		       struct fuse_file_info *fi)
{
	DISPATCH(setattr, true, attr, to_set, fi);
}

static void op_readlink(fuse_req_t req, fuse_ino_t ino)
{
	DISPATCH(readlink, false);
}

static void op_mknod(fuse_req_t req, fuse_ino_t ino, const char *name, mode_t mode, dev_t rdev)
{
	DISPATCH(mknod, true, name, mode, rdev);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t ino, const char *name, mode_t mode)
{
	DISPATCH(mkdir, true, name, mode);
}

static void op_unlink(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	DISPATCH(unlink, true, name);
}

static void op_rmdir(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	DISPATCH(rmdir, true, name);
}

static void op_symlink(fuse_req_t req, const char *link, fuse_ino_t ino, const char *name)
{
	struct sbxfs *fs = fs_of(req);
	struct node *n = hold(fs, ino);
	if (!n) {
		fuse_reply_err(req, ESTALE);
		return;
	}
	const struct kind_ops *k = kinds[n->kind];
	if (k->symlink)
		k->symlink(req, fs, link, n, name);
	else
		fuse_reply_err(req, EPERM);
	put(fs, n);
}

/* Holds the nodes of two ids, for rename and link: false (neither held) when either is
 * stale. */
static bool hold_two(struct sbxfs *fs, fuse_ino_t a, fuse_ino_t b, struct node **na,
		     struct node **nb)
{
	*na = hold(fs, a);
	*nb = hold(fs, b);
	if (*na && *nb)
		return true;
	if (*na)
		put(fs, *na);
	if (*nb)
		put(fs, *nb);
	return false;
}

static void op_rename(fuse_req_t req, fuse_ino_t ino, const char *name, fuse_ino_t newino,
		      const char *newname, unsigned flags)
{
	struct sbxfs *fs = fs_of(req);
	struct node *n, *np;
	if (!hold_two(fs, ino, newino, &n, &np)) {
		fuse_reply_err(req, ESTALE);
		return;
	}
	/* between two kinds: EXDEV, as between filesystems, but nothing leaves the root */
	if (n->kind != np->kind && n->kind != NODE_ROOT && np->kind != NODE_ROOT)
		fuse_reply_err(req, EXDEV);
	else if (n->kind != np->kind || !kinds[n->kind]->rename)
		fuse_reply_err(req, EPERM);
	else
		kinds[n->kind]->rename(req, fs, n, name, np, newname, flags);
	put(fs, n);
	put(fs, np);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newino, const char *newname)
{
	struct sbxfs *fs = fs_of(req);
	struct node *n, *np;
	if (!hold_two(fs, ino, newino, &n, &np)) {
		fuse_reply_err(req, ESTALE);
		return;
	}
	if (n->kind != np->kind || !kinds[n->kind]->link)
		fuse_reply_err(req, n->kind == np->kind ? EPERM : EXDEV);
	else
		kinds[n->kind]->link(req, fs, n, np, newname);
	put(fs, n);
	put(fs, np);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	DISPATCH(open, false, fi);
}

static void op_create(fuse_req_t req, fuse_ino_t ino, const char *name, mode_t mode,
		      struct fuse_file_info *fi)
{
	DISPATCH(create, true, name, mode, fi);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct sbxfs *fs = fs_of(req);
	struct node *n = hold(fs, ino);
	if (!n)
		n = hold(fs, NODE_ROOT_ID);
	const struct kind_ops *k = kinds[n->kind]->statfs ? kinds[n->kind] : kinds[NODE_ROOT];
	k->statfs(req, fs, n);
	put(fs, n);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	struct sbxfs *fs = fs_of(req);
	nodes_lock(&fs->nodes);
	struct node *n = nodes_get(&fs->nodes, ino);
	if (n)
		nodes_forget(&fs->nodes, n, nlookup);
	nodes_unlock(&fs->nodes);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	struct sbxfs *fs = fs_of(req);
	nodes_lock(&fs->nodes);
	for (size_t i = 0; i < count; i++) {
		struct node *n = nodes_get(&fs->nodes, forgets[i].ino);
		if (n)
			nodes_forget(&fs->nodes, n, forgets[i].nlookup);
	}
	nodes_unlock(&fs->nodes);
	fuse_reply_none(req);
}

/* ---- directories: one listing per opendir, served by offset ---- */

static void op_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct sbxfs *fs = fs_of(req);
	struct node *n = hold(fs, ino);
	if (!n) {
		fuse_reply_err(req, ESTALE);
		return;
	}
	const struct kind_ops *k = kinds[n->kind];
	struct dirsnap *snap = dirsnap_new(fs);
	int err = k->list ? k->list(fs, n, snap) : -ENOTDIR;
	put(fs, n);
	if (err < 0) {
		dirsnap_free(snap);
		fuse_reply_err(req, -err);
		return;
	}
	fi->fh = (uintptr_t)snap;
	if (fuse_reply_open(req, fi) != 0)
		dirsnap_free(snap);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	dirsnap_reply(req, fs_of(req), (struct dirsnap *)(uintptr_t)fi->fh, ino, size, off, false);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			   struct fuse_file_info *fi)
{
	dirsnap_reply(req, fs_of(req), (struct dirsnap *)(uintptr_t)fi->fh, ino, size, off, true);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	dirsnap_free((struct dirsnap *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
}

/* ---- session ---- */

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	struct sbxfs *fs = userdata;
	if (conn->capable & FUSE_CAP_EXPIRE_ONLY) {
		conn->want |= FUSE_CAP_EXPIRE_ONLY;
		atomic_store(&fs->expire_only, true);
	}
	if (conn->capable & FUSE_CAP_READDIRPLUS)
		conn->want |= FUSE_CAP_READDIRPLUS;
	conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
	conn->want |= conn->capable & (FUSE_CAP_ASYNC_READ | FUSE_CAP_ATOMIC_O_TRUNC |
				       FUSE_CAP_CACHE_SYMLINKS | FUSE_CAP_PARALLEL_DIROPS);
	/* keep_cache at open decides about the page cache; writeback caching is unsafe for a
	 * network filesystem (sshfs 3.3.0 dropped it after data loss with O_APPEND). */
	conn->want &= ~(FUSE_CAP_EXPORT_SUPPORT | FUSE_CAP_WRITEBACK_CACHE |
			FUSE_CAP_AUTO_INVAL_DATA);
	conn->max_write = MIB;
	if (conn->max_readahead > MIB)
		conn->max_readahead = MIB;
	conn->time_gran = 1;
}

static void op_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
			 struct fuse_file_info *fi)
{
	fuse_reply_err(req, EOPNOTSUPP);
}

/* ---- open files: workspace files or control files, told apart by the handle ---- */

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	if (ctl_is_handle(fi))
		ctl_read(req, ino, size, off, fi);
	else
		workspace_read(req, ino, size, off, fi);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	if (ctl_is_handle(fi))
		ctl_write(req, ino, buf, size, off, fi);
	else
		workspace_write(req, ino, buf, size, off, fi);
}

static void op_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ctl_is_handle(fi))
		ctl_flush(req, ino, fi);
	else
		workspace_flush(req, ino, fi);
}

static void op_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	if (ctl_is_handle(fi))
		ctl_release(req, ino, fi);
	else
		workspace_release(req, ino, fi);
}

static void op_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	if (ctl_is_handle(fi))
		fuse_reply_err(req, 0); /* nothing is kept: commands act at close */
	else
		workspace_fsync(req, ino, datasync, fi);
}

static void op_poll(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi,
		    struct fuse_pollhandle *ph)
{
	if (ctl_is_handle(fi)) {
		ctl_poll(req, ino, fi, ph);
		return;
	}
	/* A regular file is always ready, as on a local disk. */
	if (ph)
		fuse_pollhandle_destroy(ph);
	fuse_reply_poll(req, POLLIN | POLLRDNORM | POLLOUT | POLLWRNORM);
}

/* No xattr handlers: libfuse answers ENOSYS, and the kernel stops asking after the first. */
static const struct fuse_lowlevel_ops ops = {
	.init = op_init,
	.lookup = op_lookup,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.getattr = op_getattr,
	.setattr = op_setattr,
	.readlink = op_readlink,
	.mknod = op_mknod,
	.mkdir = op_mkdir,
	.unlink = op_unlink,
	.rmdir = op_rmdir,
	.symlink = op_symlink,
	.rename = op_rename,
	.link = op_link,
	.open = op_open,
	.create = op_create,
	.read = op_read,
	.write = op_write,
	.flush = op_flush,
	.release = op_release,
	.fsync = op_fsync,
	.poll = op_poll,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.readdirplus = op_readdirplus,
	.releasedir = op_releasedir,
	.statfs = op_statfs,
	.fallocate = op_fallocate,
};

const struct fuse_lowlevel_ops *sbxfs_lowlevel_ops(void)
{
	return &ops;
}
