/* Entry replies (fs/entry.h). */
#include "fs/entry.h"
#include <errno.h>
#include <string.h>
#include "fs/internal.h"

ino_t fs_node_shown_ino(const struct node *n)
{
	return n->ino_provisional ? FS_PROVISIONAL_INO | n->id : n->ino;
}

bool fs_node_is(const struct node *n, const struct stat *st)
{
	if (n->type != (st->st_mode & S_IFMT))
		return false;
	if (!st->st_ino)
		return n->ino_provisional;
	return n->ino == st->st_ino || st->st_ino == fs_node_shown_ino(n) ||
	       (n->ino_provisional && !n->ino);
}

void fs_node_ino(struct node *n, struct stat *st)
{
	/* the sandbox's number, learned; never the one shown, which is ours */
	if (n->ino_provisional && !n->ino && st->st_ino && st->st_ino != fs_node_shown_ino(n))
		n->ino = st->st_ino;
	st->st_ino = n->ino_provisional || !st->st_ino ? fs_node_shown_ino(n) : st->st_ino;
}

void fs_cache_attr(struct sbxfs *fs, struct node *n, const struct stat *st)
{
	if (!n->ino_provisional && st->st_ino)
		n->ino = st->st_ino;
	n->attr = *st;
	fs_node_ino(n, &n->attr);
	n->type = st->st_mode & S_IFMT;
	n->attr_valid = true;
	/* as long as a listing would hold them: events keep both current */
	double ttl = fs->cfg.attr_timeout > fs->cfg.dir_cache_timeout ? fs->cfg.attr_timeout
								     : fs->cfg.dir_cache_timeout;
	n->attr_expiry = fs_now() + ttl;
}

struct node *fs_bind_entry(struct sbxfs *fs, struct node *parent, const char *name,
			   enum node_kind kind, const struct stat *in, const char *target,
			   bool cache, const struct reply_timeouts *to, struct fuse_entry_param *e)
{
	struct nodes *t = &fs->nodes;
	struct stat st_fixed = *in;
	struct stat *st = &st_fixed;
	struct node *n = nodes_child(t, parent, name);
	if (n && !fs_node_is(n, st))
		nodes_detach(t, n), n = NULL;
	if (!n) {
		n = nodes_add(t, parent, name, kind);
		/* a file not yet in the sandbox (st_ino 0) gets a number of its own */
		n->ino_provisional = !st->st_ino;
		n->ino = st->st_ino;
		n->type = st->st_mode & S_IFMT;
		/* a file the mount wrote, forgotten by the kernel since: its clean copy */
		const struct dirlist_entry *de = parent->list ? dirlist_find(parent->list, name)
							      : NULL;
		if (de && de->clean_blob && de->st.st_size == st->st_size &&
		    de->st.st_mtim.tv_sec == st->st_mtim.tv_sec &&
		    de->st.st_mtim.tv_nsec == st->st_mtim.tv_nsec)
			n->clean_blob = de->clean_blob;
	}
	fs_node_ino(n, st);
	if (cache)
		fs_cache_attr(fs, n, st);
	else if (!n->attr_valid)
		n->attr = *st; /* not trusted, but st_nlink tells about hard links */
	if (target && !n->target)
		n->target = strdup(target);
	nodes_lookup(n);
	memset(e, 0, sizeof(*e));
	e->ino = n->id;
	e->attr = *st;
	e->attr_timeout = fs_attr_ttl(st, to->attr);
	e->entry_timeout = to->entry;
	return n;
}

void fs_reply_negative(fuse_req_t req, const struct reply_timeouts *to)
{
	if (to->negative <= 0) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	struct fuse_entry_param e = { .ino = 0, .entry_timeout = to->negative };
	fuse_reply_entry(req, &e);
}
