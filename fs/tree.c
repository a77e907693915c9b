/* Subtree listings (fs/tree.h).
 *
 * At a distance every round trip costs 20 to 160 ms, so a walk that lists directory after
 * directory (find, git status, ls -lR, grep -r) costs that many times the number of
 * directories. One /api/x/tree request instead brings the complete listings of a whole subtree
 * (bounded by the server), and each is cached as the listing of its directory's node, as if
 * that directory had been listed: the walk then finds every name, and its attributes, without
 * asking again. Directories the kernel has not looked up yet get nodes of their own, pinned by
 * their listing (fs/nodes.h), made from the stat their parent's listing gives.
 *
 * Staleness, as for a single listing (fs/workspace.c, "Caching"): a listing is cached only if
 * no change event that could alter it arrived while the request was under way (about its
 * directory, an ancestor, a name in it or in a subdirectory: fs_listing_fresh; a build busy
 * deeper down does not keep the top from being cached), and its node was not changed through the mount
 * since the request started (gen <= seq); a directory whose parent's listing was not cached is
 * left out, since only that listing could lead to it. Events that arrive afterwards find the
 * listings on the nodes, as they find any other. */
#include "fs/tree.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "client/sandbox.h"
#include "fs/dirsnap.h"
#include "fs/entry.h"
#include "fs/internal.h"
#include "fs/timeouts.h"

struct fill {
	struct sbxfs *fs;
	struct node *top; /* held by the caller */
	const char *top_path;
	struct dirsnap *snap;
	uint64_t seq, events;
	double expiry;
	bool cache;
};

/* The node of a listed directory below the top, made if needed from its parent's (cached)
 * listing; NULL when the table cannot vouch for it. *made when it was made here (then it has
 * no holder yet: the caller pins it at once). Caller holds the lock. */
static struct node *listed_dir(struct fill *f, const char *dir, bool *made)
{
	struct nodes *t = &f->fs->nodes;
	*made = false;
	struct node *parent;
	struct dirlist_entry *de = nodes_listed(t, dir, &parent);
	if (!de || !S_ISDIR(de->st.st_mode))
		return NULL;
	const char *name = strrchr(dir, '/') + 1;
	struct node *n = nodes_child(t, parent, name);
	if (n)
		return fs_node_is(n, &de->st) && n->gen <= f->seq ? n : NULL;
	n = nodes_add(t, parent, name, NODE_WORKSPACE);
	/* as fs_bind_entry: a directory not yet in the sandbox (st_ino 0) gets a number of its
	 * own, and learns the sandbox's later */
	n->ino_provisional = !de->st.st_ino;
	n->ino = de->st.st_ino;
	n->type = S_IFDIR;
	fs_cache_attr(f->fs, n, &de->st);
	*made = true;
	return n;
}

static void fill_one(void *arg, const char *dir, const struct sbx_dirent *ents, size_t n)
{
	struct fill *f = arg;
	struct nodes *t = &f->fs->nodes;
	bool top = strcmp(dir, f->top_path) == 0;
	if (top && f->snap)
		for (size_t i = 0; i < n; i++)
			dirsnap_add(f->snap, ents[i].name, &ents[i].st, ents[i].target,
				    NODE_WORKSPACE);
	if (!f->cache)
		return;
	struct dirlist *dl = dirlist_new();
	for (size_t i = 0; i < n; i++)
		dirlist_put(dl, ents[i].name, &ents[i].st, ents[i].target);
	nodes_lock(t);
	if (fs_listing_fresh(f->fs, f->events, dir)) {
		bool made = false;
		struct node *d = top ? f->top : listed_dir(f, dir, &made);
		if (d && !d->detached && (made || d->gen <= f->seq))
			nodes_set_list(t, d, dl, f->expiry), dl = NULL;
	}
	nodes_unlock(t);
	dirlist_free(dl);
}

int tree_fetch(struct sbxfs *fs, struct node *dir, const char *path, struct dirsnap *snap)
{
	struct fill f = { .fs = fs, .top = dir, .top_path = path, .snap = snap };
	nodes_lock(&fs->nodes);
	f.seq = snap ? snap->seq : fs->nodes.seq;
	nodes_unlock(&fs->nodes);
	f.events = snap ? snap->events : atomic_load(&fs->events);
	f.cache = fs->cfg.dir_cache_timeout > 0 && fs_caches_trusted(fs);
	f.expiry = fs_now() + fs->cfg.dir_cache_timeout;
	bool truncated;
	return sbx_readtree(fs->sbx, path, 0, fill_one, &f, &truncated);
}
