/* The mount's root: a static list of names (plan9 acme's fsys.c style). workspace/ is the
 * sandbox's /workspace, and its attributes come from the sandbox; every other name is a control
 * tree (fs/control.h), whose table lives in its own file, with synthetic attributes, as the
 * root's own are. */
#include "fs/root.h"
#include <errno.h>
#include <string.h>
#include "client/sandbox.h"
#include "fs/control.h"
#include "fs/dirsnap.h"
#include "fs/entry.h"
#include "fs/internal.h"
#include "fs/timeouts.h"

#define WORKSPACE "workspace"
#define WORKSPACE_PATH "/workspace" /* where workspace/'s attributes come from */

const struct ctl_entry *const root_trees[] = {
	&ctl_ctx_tree, &ctl_proc_tree, &ctl_ports_tree, &ctl_git_tree,
	&ctl_env_file, &ctl_sessions_tree, &ctl_watch_file, &ctl_sync_file, NULL,
};

static const struct ctl_entry *tree_named(const char *name)
{
	for (const struct ctl_entry *const *t = root_trees; *t; t++)
		if (strcmp((*t)->name, name) == 0)
			return *t;
	return NULL;
}

static void root_stat(struct sbxfs *fs, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = NODE_ROOT_ID;
	st->st_mode = S_IFDIR | 0755;
	st->st_nlink = 3; /* ".", the parent's name for it, workspace/'s ".." */
	for (const struct ctl_entry *const *t = root_trees; *t; t++)
		if (S_ISDIR((*t)->mode))
			st->st_nlink++;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	st->st_blksize = 4096;
	st->st_atim = st->st_mtim = st->st_ctim = fs->mount_time;
}

/* workspace/ itself always exists: the name may stay bound for good (its attributes still
 * expire), so walking through it never waits for the sandbox. When the sandbox does not
 * answer, the attributes it last gave do, rather than making every path under the mount fail
 * behind this one name (the kernel serialises lookups of a name). */
static void workspace_lookup(fuse_req_t req, struct sbxfs *fs, struct node *root)
{
	uint64_t ev = atomic_load(&fs->events);
	struct stat st;
	struct reply_timeouts to = fs_timeouts(fs, ev);
	int err = sbx_lstat(fs->sbx, WORKSPACE_PATH, &st, NULL);
	nodes_lock(&fs->nodes);
	if (err < 0 && err != -ENOENT) {
		struct node *known = nodes_child(&fs->nodes, root, WORKSPACE);
		if (known && known->attr_valid) {
			st = known->attr;
			to.attr = 0;
			err = 0;
		}
	}
	if (err < 0) {
		nodes_unlock(&fs->nodes);
		fuse_reply_err(req, -err);
		return;
	}
	to.entry = 86400.0; /* the name's binding never changes */
	struct fuse_entry_param e;
	fs_bind_entry(fs, root, WORKSPACE, NODE_WORKSPACE, &st, NULL, to.attr > 0, &to, &e);
	nodes_unlock(&fs->nodes);
	fuse_reply_entry(req, &e);
}

static void root_lookup(fuse_req_t req, struct sbxfs *fs, struct node *n, const char *name)
{
	/* The names never change: a missing one may be cached for as long as the kernel likes. */
	static const struct reply_timeouts forever = { 0, 0, 86400.0 };
	if (strcmp(name, WORKSPACE) == 0)
		workspace_lookup(req, fs, n);
	else if (tree_named(name))
		control_kind_ops.lookup(req, fs, n, name);
	else
		fs_reply_negative(req, &forever);
}

static void root_getattr(fuse_req_t req, struct sbxfs *fs, struct node *n,
			 struct fuse_file_info *fi)
{
	struct stat st;
	root_stat(fs, &st);
	fuse_reply_attr(req, &st, 86400.0);
}

static int root_list(struct sbxfs *fs, struct node *n, struct dirsnap *snap)
{
	struct stat st;
	if (sbx_lstat(fs->sbx, WORKSPACE_PATH, &st, NULL) < 0) {
		/* Still listed, so `ls` shows what exists; lookup reports the error. */
		memset(&st, 0, sizeof(st));
		st.st_mode = S_IFDIR | 0755;
	}
	dirsnap_add(snap, WORKSPACE, &st, NULL, NODE_WORKSPACE);
	for (const struct ctl_entry *const *t = root_trees; *t; t++) {
		ctl_tree_stat(fs, *t, &st);
		dirsnap_add(snap, (*t)->name, &st, NULL, NODE_CONTROL);
	}
	return 0;
}

static void root_statfs(fuse_req_t req, struct sbxfs *fs, struct node *n)
{
	struct statvfs sv;
	int err = sbx_statfs(fs->sbx, WORKSPACE_PATH, &sv);
	if (err < 0)
		fuse_reply_err(req, -err);
	else
		fuse_reply_statfs(req, &sv);
}

const struct kind_ops root_kind_ops = {
	.lookup = root_lookup,
	.getattr = root_getattr,
	.list = root_list,
	.statfs = root_statfs,
};
