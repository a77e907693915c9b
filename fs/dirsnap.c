/* Directory snapshots (fs/dirsnap.h). */
#include "fs/dirsnap.h"
#include <stdlib.h>
#include <string.h>
#include "fs/entry.h"
#include "fs/internal.h"
#include "fs/timeouts.h"

struct dirsnap *dirsnap_new(struct sbxfs *fs)
{
	struct dirsnap *snap = calloc(1, sizeof(*snap));
	if (!snap)
		abort();
	nodes_lock(&fs->nodes);
	snap->seq = fs->nodes.seq;
	nodes_unlock(&fs->nodes);
	snap->events = atomic_load(&fs->events);
	return snap;
}

void dirsnap_add(struct dirsnap *snap, const char *name, const struct stat *st,
		 const char *target, enum node_kind kind)
{
	if (snap->n == snap->cap) {
		snap->cap = snap->cap ? snap->cap * 2 : 64;
		snap->ents = realloc(snap->ents, snap->cap * sizeof(*snap->ents));
		if (!snap->ents)
			abort();
	}
	struct dirsnap_entry *d = &snap->ents[snap->n++];
	d->name = strdup(name);
	d->target = target ? strdup(target) : NULL;
	if (!d->name || (target && !d->target))
		abort();
	d->st = *st;
	d->kind = kind;
}

void dirsnap_free(struct dirsnap *snap)
{
	for (size_t i = 0; i < snap->n; i++) {
		free(snap->ents[i].name);
		free(snap->ents[i].target);
	}
	free(snap->ents);
	free(snap);
}

void dirsnap_reply(fuse_req_t req, struct sbxfs *fs, struct dirsnap *snap, fuse_ino_t ino,
		   size_t size, off_t off, bool plus)
{
	char *buf = malloc(size);
	if (!buf)
		abort();
	size_t used = 0;
	struct node *dir = NULL;
	struct reply_timeouts to = fs_timeouts(fs, snap->events);
	nodes_lock(&fs->nodes);
	dir = nodes_get(&fs->nodes, ino);
	if (dir)
		nodes_hold(dir);
	/* Offsets: 0 ".", 1 "..", then entry i at i + 2; each entry carries the next offset. */
	for (off_t i = off; i < (off_t)snap->n + 2; i++) {
		const char *name;
		struct fuse_entry_param e = { 0 };
		struct node *child = NULL;
		if (i < 2) {
			name = i == 0 ? "." : "..";
			e.attr.st_ino = i == 0 ? ino : NODE_ROOT_ID;
			e.attr.st_mode = S_IFDIR;
		} else {
			struct dirsnap_entry *d = &snap->ents[i - 2];
			name = d->name;
			e.attr = d->st;
			if (plus && dir && !dir->detached) {
				child = nodes_child(&fs->nodes, dir, name);
				/* A node changed since the listing was fetched (or with open files,
				 * whose size the kernel knows better) gets a plain entry: stale
				 * attributes must not overwrite fresher ones in the kernel. */
				bool stale = child && (child->gen > snap->seq || child->open);
				if (!stale)
					child = fs_bind_entry(fs, dir, name, d->kind, &d->st,
							      d->target, to.attr > 0, &to, &e);
				else
					child = NULL;
			}
			/* a file the kernel knows by a number of ours is listed with it */
			struct node *c = dir && !child ? nodes_child(&fs->nodes, dir, name) : NULL;
			if (c && c->ino_provisional && fs_node_is(c, &d->st))
				e.attr.st_ino = fs_node_shown_ino(c);
		}
		size_t want = plus ? fuse_add_direntry_plus(req, buf + used, size - used, name,
							    &e, i + 1)
				   : fuse_add_direntry(req, buf + used, size - used, name,
						       &e.attr, i + 1);
		if (want > size - used) {
			if (child)
				nodes_forget(&fs->nodes, child, 1);
			break;
		}
		used += want;
	}
	if (dir)
		nodes_put(&fs->nodes, dir);
	nodes_unlock(&fs->nodes);
	fuse_reply_buf(req, buf, used);
	free(buf);
}
