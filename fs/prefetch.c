/* Whole small files with their directory's listing.
 *
 * A cold read is a round trip per file, and most reads come in runs through a directory
 * (grep -r, git add, a compiler reading headers, cat *). So the first time a small file of a
 * listed directory is read from the sandbox, the small files of that directory come whole,
 * with its listing, in one request (sbx_journal_prefetch: at most PREFETCH_EACH bytes a file
 * and PREFETCH_BUDGET bytes a request); the journal keeps them as clean copies (on disk, not in
 * memory) and the listing's entries and the nodes learn them, so the other files open without
 * asking. One try per listing: a directory whose small files add up to more than the budget
 * reads the rest one by one.
 *
 * Trust is the listing's (fs/workspace.c, "Caching"): a content is used only with the
 * attributes it came with, dropped with them by a change event, and not taken at all when an
 * event about the directory arrived while the request was under way. */
#include "fs/prefetch.h"
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "client/journal.h"
#include "common/log.h"
#include "fs/internal.h"
#include "fs/timeouts.h"

#define PREFETCH_EACH (64 << 10)
#define PREFETCH_BUDGET (4 << 20)

struct fetch {
	struct sbxfs *fs;
	struct node *dir;
	const struct dirlist *list; /* the listing it was asked for */
	const char *path;
	uint64_t events;
};

static bool same_content(const struct stat *a, const struct stat *b)
{
	/* one name: another name's write would not drop the copy */
	return S_ISREG(a->st_mode) && b->st_nlink == 1 && a->st_size == b->st_size &&
	       a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

static void learn(void *arg, const char *name, const struct stat *st, uint64_t blob)
{
	struct fetch *f = arg;
	struct nodes *t = &f->fs->nodes;
	nodes_lock(t);
	if (f->dir->list == f->list && !f->dir->detached &&
	    fs_listing_fresh(f->fs, f->events, f->path)) {
		struct dirlist_entry *de = dirlist_find(f->dir->list, name);
		if (de && de->st_valid && same_content(&de->st, st))
			de->clean_blob = blob;
		struct node *n = nodes_child(t, f->dir, name);
		if (n && !n->data_changed && n->attr_valid && same_content(&n->attr, st))
			n->clean_blob = blob;
	}
	nodes_unlock(t);
}

bool prefetch_dir(struct sbxfs *fs, struct node *dir)
{
	struct nodes *t = &fs->nodes;
	nodes_lock(t);
	struct dirlist *list = fs_caches_trusted(fs) && !dir->detached ? dir->list : NULL;
	char *path = list && !list->content_tried ? nodes_path(dir) : NULL;
	if (path)
		list->content_tried = true;
	nodes_unlock(t);
	if (!path)
		return false;
	struct fetch f = { fs, dir, list, path, atomic_load(&fs->events) };
	int err = sbx_journal_prefetch(fs->sbx, path, PREFETCH_EACH, PREFETCH_BUDGET, learn, &f);
	if (err && err != -ENOSYS && err != -EAGAIN)
		log_debug("prefetch %s: %s", path, strerror(-err));
	free(path);
	return !err;
}
