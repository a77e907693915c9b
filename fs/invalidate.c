/* The invalidator: turns the sandbox's change events into kernel invalidations.
 *
 * Change events arrive on the HTTP client's network thread, which must never block; FUSE
 * notifications may block (the kernel can wait for page locks) and must never be sent from a
 * request handler (libfuse doc/README.notifications: the kernel may be waiting for that very
 * request). So the watch callbacks only queue (path, type) and signal; one dedicated thread
 * drains the queue and, per event:
 *   - under the table lock: maps the path and its parent to nodes, drops our cached attributes
 *     of both, the parent's listing (for a name created, deleted or moved; for a modified or
 *     re-attributed name only that entry's attributes; when names changed, also the parent's
 *     own entry in the grandparent's listing, whose times changed), marks the node's data changed (so the
 *     next open does not keep the page cache), and stamps both as changed;
 *   - without any lock: fuse_lowlevel_notify_inval_inode for the node (attributes and data) and
 *     the parent (attributes), and for the name when names changed (also a name the kernel
 *     may only know as a cached negative entry) an expiry: fuse_lowlevel_notify_expire_entry
 *     makes the kernel look the name up again at its next use instead of unhashing it, so a
 *     directory that is some shell's cwd survives the (late) echo of its own mkdir; without
 *     FUSE_CAP_EXPIRE_ONLY (kernels before 6.2) fuse_lowlevel_notify_inval_entry.
 * -ENOENT from a notification (the kernel forgot the inode or never had the name) is normal.
 *
 * A resync (events may have been lost: reconnect, overflow, or a queue that grew past its
 * bound) drops every cached attribute and listing and invalidates every inode and name the
 * table knows. Negative entries the kernel cached for names we never bound cannot be listed;
 * they expire by negative_timeout (and none are handed out while the stream is down). */
#include "fs/invalidate.h"
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "client/journal.h"
#include "client/sandbox.h"
#include "common/log.h"
#include "fs/entry.h"
#include "fs/internal.h"

#define QUEUE_MAX 65536

struct event {
	struct event *next;
	uint64_t node; /* non-zero: only this node (invalidator_inode) */
	bool data;     /* with node: its pages too */
	bool names;    /* a name appeared, vanished or moved */
	int appeared;  /* with names: 1 the name exists now, 0 it is gone, -1 unknown */
	bool settled;  /* not a change: the sandbox's attributes of our own (st) */
	struct stat st;
	uint64_t handover; /* with settled: for sbx_journal_handover */
	char path[];
};

struct invalidator {
	struct sbxfs *fs;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct event *head, *tail;
	size_t n;
	bool resync, stop;
};

struct notice {
	uint64_t ino;
	off_t off;      /* -1: attributes only */
	uint64_t parent;
	char *name;     /* non-NULL: an entry notice */
};

struct notices {
	struct notice *v;
	size_t n, cap;
};

static void notice_add(struct notices *ns, struct notice no)
{
	if (ns->n == ns->cap) {
		ns->cap = ns->cap ? ns->cap * 2 : 16;
		ns->v = realloc(ns->v, ns->cap * sizeof(*ns->v));
		if (!ns->v)
			abort();
	}
	ns->v[ns->n++] = no;
}

static void notices_send(struct sbxfs *fs, struct notices *ns)
{
	for (size_t i = 0; i < ns->n; i++) {
		struct notice *no = &ns->v[i];
		int err;
		if (no->name && atomic_load(&fs->expire_only))
			err = fuse_lowlevel_notify_expire_entry(fs->se, no->parent, no->name,
								strlen(no->name),
								FUSE_LL_EXPIRE_ONLY);
		else if (no->name)
			err = fuse_lowlevel_notify_inval_entry(fs->se, no->parent, no->name,
							       strlen(no->name));
		else
			err = fuse_lowlevel_notify_inval_inode(fs->se, no->ino, no->off, 0);
		if (err < 0 && err != -ENOENT && err != -EBADF && err != -ENODEV &&
		    err != -ENOSYS)
			log_debug("invalidation: %s", strerror(-err));
		free(no->name);
	}
	ns->n = 0;
}

static void forget_cached(struct nodes *t, struct node *n, bool keep_list)
{
	nodes_touch(t, n);
	n->attr_valid = false;
	n->data_changed = true;
	n->clean_blob = 0;
	for (struct ofile *of = n->open; of; of = of->next) /* what they read ahead is old */
		sbx_file_changed(of->file);
	if (!keep_list)
		nodes_drop_list(t, n);
}

/* What the handles of n know about its attributes may be old now. */
static void open_files_changed(struct node *n)
{
	for (struct ofile *of = n->open; of; of = of->next)
		of->remote_change = true;
}

struct alias_walk {
	struct nodes *t;
	const struct node *n;
	struct notices *ns;
};

static void alias_visit(struct node *m, void *arg)
{
	struct alias_walk *w = arg;
	if (m != w->n && m->ino && m->ino == w->n->ino && S_ISREG(m->type)) {
		forget_cached(w->t, m, false);
		if (m->parent && m->parent->list) /* its link count there is old too */
			dirlist_stale(m->parent->list, m->name);
		notice_add(w->ns, (struct notice){ .ino = m->id, .off = 0 });
	}
}

/* Other names of a hard-linked file are other nodes: they changed too. */
static void aliases(struct nodes *t, const struct node *n, struct notices *ns)
{
	struct alias_walk w = { t, n, ns };
	nodes_foreach(t, alias_visit, &w);
}

/* A settled path without a node (the kernel forgot it, or never looked it up): its entry in
 * the cached listing of its directory, if there is one, takes the sandbox's attributes (and
 * the clean copy), or a lookup would answer with the journal's from there. Lock held. */
static void settled_in_listing(struct nodes *t, const struct event *ev, uint64_t blob)
{
	struct node *dir;
	struct dirlist_entry *de = nodes_listed(t, ev->path, &dir);
	if (!de || (de->st.st_mode & S_IFMT) != (ev->st.st_mode & S_IFMT))
		return;
	const char *name = strrchr(ev->path, '/') + 1; /* de may be replaced */
	nodes_touch(t, dir); /* a listing under way holds the journal's attributes */
	dirlist_put(dir->list, name, &ev->st, NULL);
	dirlist_set_clean(dir->list, name, S_ISREG(ev->st.st_mode) ? blob : 0);
}

/* Our own change, acknowledged: the kernel's pages are the file's (its writes made them), the
 * attributes become the sandbox's (a directory's listing stays: the changes were ours). Only
 * the kernel's attributes go (the next getattr is answered from the table); the stamp keeps a
 * slower remote read from overwriting these. In the same breath the journal, which answered
 * for the path until now, hands it over, with a clean copy of the content if it kept one; a
 * node that cannot take them now (open, or a handler between adopt_clean and its call into
 * the journal) declines, and the journal announces it again later.
 * (The journal's lock is taken under the table's; the journal never takes the table's.) */
static void apply_settled(struct sbxfs *fs, const struct event *ev, struct notices *ns)
{
	struct nodes *t = &fs->nodes;
	nodes_lock(t);
	struct node *n = nodes_resolve(t, ev->path);
	bool same_type = n && (ev->st.st_mode & S_IFMT) == n->type;
	bool ours = same_type && n->id != NODE_ROOT_ID;
	bool busy = ours && (n->adopting || (!S_ISDIR(n->type) && n->open));
	bool take = ours && !busy;
	/* declined only when busy: a path without a node here has nothing to update */
	uint64_t blob = sbx_journal_handover(fs->sbx, ev->path, ev->handover, !busy);
	if (take) {
		/* a listing of its directory under way holds the journal's attributes of it: it
		 * must not be kept (fs/tree.c checks the directory's stamp) */
		nodes_touch(t, n);
		if (n->parent)
			nodes_touch(t, n->parent);
		fs_cache_attr(fs, n, &ev->st);
		if (n->opened && !n->data_changed) { /* the next open keeps the pages */
			n->open_size = ev->st.st_size;
			n->open_mtime = ev->st.st_mtim;
		}
		n->clean_blob = n->data_changed ? 0 : blob;
		if (n->parent && n->parent->list) {
			dirlist_put(n->parent->list, n->name, &ev->st, NULL);
			dirlist_set_clean(n->parent->list, n->name, n->clean_blob);
		}
		notice_add(ns, (struct notice){ .ino = n->id, .off = -1 });
	} else if (!n) {
		settled_in_listing(t, ev, blob);
	}
	nodes_unlock(t);
}

static void apply(struct sbxfs *fs, const struct event *ev, struct notices *ns)
{
	struct nodes *t = &fs->nodes;
	if (ev->settled) {
		apply_settled(fs, ev, ns);
		return;
	}
	if (ev->node) {
		notice_add(ns, (struct notice){ .ino = ev->node, .off = ev->data ? 0 : -1 });
		return;
	}
	const char *slash = strrchr(ev->path, '/');
	if (!slash || !slash[1])
		return;
	char *parent_path = strndup(ev->path, slash - ev->path);
	if (!parent_path)
		abort();
	const char *name = slash + 1;
	nodes_lock(t);
	struct node *n = nodes_resolve(t, ev->path);
	struct node *p = nodes_resolve(t, parent_path);
	if (n && n->id != NODE_ROOT_ID) {
		/* A directory's own listing changes only by events about its children; its
		 * creation (the echo of a mkdir that seeded an empty listing) keeps it. */
		forget_cached(t, n, !ev->names || ev->appeared == 1);
		/* The file an open handle is on was created before it was opened: a creation
		 * says nothing new about it. */
		if (!(ev->names && ev->appeared == 1))
			open_files_changed(n);
		notice_add(ns, (struct notice){ .ino = n->id, .off = 0 });
		if (S_ISREG(n->type) && n->attr.st_nlink > 1)
			aliases(t, n, ns);
	}
	if (p) {
		nodes_touch(t, p);
		p->attr_valid = false;
		/* The listing stays complete: the event says which name came or went. A name
		 * that went is not dropped but left to be checked: the event may be the late
		 * echo of our own rename or unlink, after which the name was made again
		 * through the mount (its own creation event has not arrived yet). */
		if (p->list && (!ev->names || ev->appeared == 0))
			dirlist_stale(p->list, name);
		else if (p->list && ev->appeared == 1)
			dirlist_put(p->list, name, NULL, NULL);
		else
			nodes_drop_list(t, p);
		/* A name that came or went changed the directory's times: its own entry in
		 * its parent's listing (which may outlive the kernel's entry: fs/nodes.h). */
		if (ev->names && p->parent && p->parent->list)
			dirlist_stale(p->parent->list, p->name);
		notice_add(ns, (struct notice){ .ino = p->id, .off = -1 });
		if (ev->names) {
			char *nm = strdup(name);
			if (!nm)
				abort();
			notice_add(ns, (struct notice){ .parent = p->id, .name = nm });
		}
	}
	nodes_unlock(t);
	free(parent_path);
}

struct resync_walk {
	struct nodes *t;
	struct notices *ns;
};

static void resync_node(struct node *n, void *arg)
{
	struct resync_walk *w = arg;
	forget_cached(w->t, n, false);
	open_files_changed(n);
	if (n->id == NODE_ROOT_ID)
		return;
	notice_add(w->ns, (struct notice){ .ino = n->id, .off = 0 });
	if (n->parent) {
		char *nm = strdup(n->name);
		if (!nm)
			abort();
		notice_add(w->ns, (struct notice){ .parent = n->parent->id, .name = nm });
	}
}

static void resync(struct sbxfs *fs, struct notices *ns)
{
	struct resync_walk w = { &fs->nodes, ns };
	nodes_lock(&fs->nodes);
	nodes_foreach(&fs->nodes, resync_node, &w);
	nodes_unlock(&fs->nodes);
	log_debug("resync: invalidating %zu cached entries", ns->n);
}

static void free_events(struct event *e)
{
	for (struct event *next; e; e = next) {
		next = e->next;
		free(e);
	}
}

static void *run(void *arg)
{
	struct invalidator *inv = arg;
	struct notices ns = { 0 };
	pthread_mutex_lock(&inv->lock);
	for (;;) {
		while (!inv->stop && !inv->head && !inv->resync)
			pthread_cond_wait(&inv->cond, &inv->lock);
		if (inv->stop)
			break;
		struct event *batch = inv->head;
		bool full = inv->resync;
		inv->head = inv->tail = NULL;
		inv->n = 0;
		inv->resync = false;
		pthread_mutex_unlock(&inv->lock);

		if (full) {
			resync(inv->fs, &ns);
			notices_send(inv->fs, &ns);
		} else {
			for (struct event *e = batch; e; e = e->next) {
				apply(inv->fs, e, &ns);
				notices_send(inv->fs, &ns);
			}
		}
		free_events(batch);
		pthread_mutex_lock(&inv->lock);
	}
	pthread_mutex_unlock(&inv->lock);
	free(ns.v);
	return NULL;
}

struct invalidator *invalidator_start(struct sbxfs *fs)
{
	struct invalidator *inv = calloc(1, sizeof(*inv));
	if (!inv)
		return NULL;
	inv->fs = fs;
	pthread_mutex_init(&inv->lock, NULL);
	pthread_cond_init(&inv->cond, NULL);
	if (pthread_create(&inv->thread, NULL, run, inv) != 0) {
		pthread_mutex_destroy(&inv->lock);
		pthread_cond_destroy(&inv->cond);
		free(inv);
		return NULL;
	}
	return inv;
}

void invalidator_stop(struct invalidator *inv)
{
	pthread_mutex_lock(&inv->lock);
	inv->stop = true;
	pthread_cond_signal(&inv->cond);
	pthread_mutex_unlock(&inv->lock);
	pthread_join(inv->thread, NULL);
	free_events(inv->head);
	pthread_mutex_destroy(&inv->lock);
	pthread_cond_destroy(&inv->cond);
	free(inv);
}

static void enqueue(struct invalidator *inv, struct event *e)
{
	pthread_mutex_lock(&inv->lock);
	if (inv->resync || inv->n >= QUEUE_MAX) {
		/* Too far behind to replay one by one: start over instead. */
		free(e);
		free_events(inv->head);
		inv->head = inv->tail = NULL;
		inv->n = 0;
		inv->resync = true;
	} else {
		if (inv->tail)
			inv->tail->next = e;
		else
			inv->head = e;
		inv->tail = e;
		inv->n++;
	}
	pthread_cond_signal(&inv->cond);
	pthread_mutex_unlock(&inv->lock);
}

/* A zeroed event about path. */
static struct event *event_new(const char *path)
{
	size_t len = strlen(path) + 1;
	struct event *e = calloc(1, sizeof(*e) + len);
	if (!e)
		abort();
	memcpy(e->path, path, len);
	return e;
}

void invalidator_change(struct invalidator *inv, const char *path, const char *type,
			bool is_dir)
{
	if (!inv)
		return;
	struct event *e = event_new(path);
	e->names = strcmp(type, "modify") != 0 && strcmp(type, "attrib") != 0;
	e->appeared = !strcmp(type, "create") || !strcmp(type, "move_to")	  ? 1
		      : !strcmp(type, "delete") || !strcmp(type, "move_from") ? 0
									  : -1;
	enqueue(inv, e);
}

void invalidator_settled(struct invalidator *inv, const char *path, const struct stat *st,
			 uint64_t handover)
{
	if (!inv)
		return;
	struct event *e = event_new(path);
	e->settled = true;
	e->st = *st;
	e->handover = handover;
	enqueue(inv, e);
}

void invalidator_inode(struct invalidator *inv, uint64_t id, bool data)
{
	if (!inv)
		return;
	struct event *e = calloc(1, sizeof(*e) + 1);
	if (!e)
		abort();
	e->node = id;
	e->data = data;
	enqueue(inv, e);
}

void invalidator_resync(struct invalidator *inv)
{
	if (!inv)
		return;
	pthread_mutex_lock(&inv->lock);
	free_events(inv->head);
	inv->head = inv->tail = NULL;
	inv->n = 0;
	inv->resync = true;
	pthread_cond_signal(&inv->cond);
	pthread_mutex_unlock(&inv->lock);
}
