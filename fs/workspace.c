/* workspace/: the sandbox's /workspace as ordinary POSIX files.
 *
 * Caching, and what is guaranteed.
 *
 * Three caches sit between a process and the sandbox: the kernel's (dentries, attributes, page
 * cache; bounded by entry_timeout/attr_timeout/negative_timeout and by keep_cache at open), the
 * node table's attributes, and our directory listings, which answer lookups of children, found
 * or not, and opendir without a round trip (opendir only when every name's attributes are
 * known: readdirplus hands them to the kernel). Ours are trusted only while change events flow,
 * and then for dir_cache_timeout (attributes: attr_timeout if longer): the events keep them
 * current (2. below), so when the kernel's timeouts run out it asks us, not the sandbox.
 *
 * Listings come a subtree at a time (fs/tree.c): the first opendir of a directory, or a lookup
 * in one without a listing, fetches the listings of everything below it in one request. A
 * listed directory's node is pinned (fs/nodes.h): it stays in the table, found by its path,
 * after the kernel forgets it (drop_caches), so a cold walk costs no request either.
 *
 * 1. Changes made through this mount are never hidden by a cache. Every mutating handler
 *    updates the table before it replies: the node's attributes from the stat the sandbox API
 *    returns with every change, the parent's listing in place (put, remove, or "stale" for a
 *    name whose attributes a write changed), and a new generation stamp on what changed. The
 *    kernel updates its own caches from the reply. Handlers that read remotely store what they
 *    got only if nothing they cover was stamped after the request started (nodes.h), so a slow
 *    read racing a change never overwrites the change.
 * 2. Changes made in the sandbox arrive as change events; fs/invalidate.c turns them into
 *    kernel invalidations and drops our cached attributes and listings. A reply whose data was
 *    fetched while an event arrived goes out with zero timeouts and is not cached. While the
 *    event stream is down, nothing of ours is trusted and the kernel gets 1 s / 1 s / 0
 *    timeouts, so a sandbox-side change shows within about a second either way.
 *    Our own changes come back as events too; they only cost a revalidation, so they are not
 *    suppressed.
 * 3. Open files buffer writes in the client (no kernel writeback cache: sshfs dropped it as
 *    unsafe for network filesystems). The kernel learns sizes from its own writes; anything
 *    that would hand it attributes of a file with open handles (getattr, lookup, setattr)
 *    asks a handle: a sole writer with no change event since knows them itself (buffered size,
 *    deferred chmod/chown/utimens included: no round trip); otherwise the handles are flushed
 *    and one is asked. Either way a size is never reported short.
 *    readdirplus hands out attributes only for names not changed since the listing was
 *    fetched and without open files. An upload error seen by such a flush is kept on the
 *    handle and returned by the next flush, so close() reports it.
 * 4. Page cache: keep_cache at open only when the file's (mtime, size) equal those of the last
 *    open and no change event touched it since (with the change stream healthy, an open whose
 *    attributes had expired counts as one: the events say what changed); otherwise the kernel
 *    drops its pages.
 *
 * An open file stays usable when its name goes away: before unlink or a rename over it, every
 * open handle is pinned (sbx_file_pin), and a rename tells the handles below the moved name
 * their new path (sbx_file_set_path), which the fallback backend uploads to.
 *
 * Workers block only on bounded requests (the client's deadline, -o timeout). */
#include "fs/workspace.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "client/journal.h"
#include "client/sandbox.h"
#include "common/log.h"
#include "fs/dirsnap.h"
#include "fs/entry.h"
#include "fs/internal.h"
#include "fs/invalidate.h"
#include "fs/prefetch.h"
#include "fs/timeouts.h"
#include "fs/tree.h"

static char *child_path(const struct node *dir, const char *name)
{
	char *dp = nodes_path(dir);
	if (!dp)
		return NULL;
	char *p;
	if (asprintf(&p, "%s/%s", dp, name) < 0)
		abort();
	free(dp);
	return p;
}

static bool list_valid(struct sbxfs *fs, const struct node *dir)
{
	return dir->list && fs_caches_trusted(fs) && fs_now() < dir->list_expiry;
}

static bool attr_fresh(struct sbxfs *fs, const struct node *n)
{
	return n->attr_valid && fs_caches_trusted(fs) && fs_now() < n->attr_expiry;
}

static bool writable(int flags)
{
	return (flags & O_ACCMODE) != O_RDONLY;
}

static void put_ofile(struct sbxfs *fs, struct ofile *of)
{
	nodes_lock(&fs->nodes);
	bool last = nodes_ofile_put(&fs->nodes, of);
	nodes_unlock(&fs->nodes);
	if (last) {
		int err = sbx_file_close(of->file);
		if (err < 0)
			log_error("closing a released file: %s", sbx_last_error());
		free(of);
	}
}

static void release_ofiles(struct sbxfs *fs, struct ofile **v, size_t count)
{
	for (size_t i = 0; i < count; i++)
		put_ofile(fs, v[i]);
	free(v);
}

/* Lock held: n's content changed through the mount (a write, a truncation): what its other
 * open files read ahead is not its content any more. */
static void others_changed(struct node *n, const struct ofile *except)
{
	for (struct ofile *o = n->open; o; o = o->next)
		if (o != except)
			sbx_file_changed(o->file);
}

static void latch_error(struct sbxfs *fs, struct ofile *of, int err)
{
	if (err >= 0 || !writable(of->flags))
		return;
	nodes_lock(&fs->nodes);
	if (!of->err)
		of->err = err;
	nodes_unlock(&fs->nodes);
}

/* Hard links: a node has one name, so another name of the same file is another node (and
 * another kernel inode). When a file with st_nlink > 1 changes through one of them, the
 * others are marked changed (no keep_cache at their next open) and the kernel is told to drop
 * their attributes and pages, by the invalidator, right after the reply. Rare, so a scan. */
struct alias_scan {
	struct nodes *t;
	const struct node *n;
	uint64_t ids[64];
	size_t count;
};

static void alias_visit(struct node *m, void *arg)
{
	struct alias_scan *a = arg;
	if (m == a->n || !m->ino || m->ino != a->n->ino || m->type != S_IFREG || a->count == 64)
		return;
	nodes_touch(a->t, m);
	m->attr_valid = false;
	m->data_changed = true;
	m->clean_blob = 0;
	if (m->parent && m->parent->list) /* its link count there is old too */
		dirlist_stale(m->parent->list, m->name);
	a->ids[a->count++] = m->id;
}

/* Caller holds the lock; send with aliases_notify after unlocking. */
static void aliases_changed(struct sbxfs *fs, const struct node *n, struct alias_scan *a)
{
	a->t = &fs->nodes;
	a->n = n;
	a->count = 0;
	if (n->type == S_IFREG && n->attr.st_nlink > 1)
		nodes_foreach(&fs->nodes, alias_visit, a);
}

static void aliases_notify(struct sbxfs *fs, const struct alias_scan *a)
{
	for (size_t i = 0; i < a->count; i++)
		invalidator_inode(fs->inval, a->ids[i], true);
}

/* A file the mount wrote that no change event touched since goes back into the journal, from
 * its clean copy: what comes next (a rename, a link, an attribute change, a write that keeps
 * the content) is journaled instead of waiting for the sandbox. Without the lock. Until the
 * caller's adopt_done(), after its call into the journal, the journal keeps answering for the
 * file if it does now (a handover in between would leave neither a node nor a copy). */
static void adopt_clean(struct sbxfs *fs, struct node *n, const char *path)
{
	nodes_lock(&fs->nodes);
	n->adopting++;
	uint64_t blob = S_ISREG(n->type) && !n->open && !n->data_changed && n->attr_valid &&
				fs_caches_trusted(fs)
			? n->clean_blob : 0;
	struct stat st = { 0 };
	if (blob) {
		st = n->attr;
		st.st_ino = n->ino; /* the sandbox's, not the one shown */
	}
	nodes_unlock(&fs->nodes);
	if (blob)
		(void)sbx_journal_adopt_clean(fs->sbx, path, blob, &st);
}

static void adopt_done(struct sbxfs *fs, struct node *n)
{
	nodes_lock(&fs->nodes);
	n->adopting--;
	nodes_unlock(&fs->nodes);
}

/* The only writable open file of n, held, or NULL. Caller holds the lock. */
static struct ofile *sole_writer(struct node *n)
{
	struct ofile *w = NULL;
	for (struct ofile *of = n->open; of; of = of->next) {
		if (!writable(of->flags))
			continue;
		if (w)
			return NULL;
		w = of;
	}
	if (w)
		w->ref++;
	return w;
}

/* Attributes of a node with open files. With one writer and no change event since its
 * handle last answered, the handle knows them (what it buffers and defers included): no
 * round trip. Otherwise flushed, then from a handle (which also works for an unlinked
 * file). Caller holds nothing; n is held. Returns 1 when n has no open files. */
static int stat_open_handles(struct sbxfs *fs, struct node *n, struct stat *st);

static int stat_open_node(struct sbxfs *fs, struct node *n, struct stat *st)
{
	int err = stat_open_handles(fs, n, st);
	if (!err) {
		nodes_lock(&fs->nodes);
		fs_node_ino(n, st);
		nodes_unlock(&fs->nodes);
	}
	return err;
}

static int stat_open_handles(struct sbxfs *fs, struct node *n, struct stat *st)
{
	size_t count;
	nodes_lock(&fs->nodes);
	struct ofile **v = nodes_ofiles(&fs->nodes, n, &count);
	struct ofile *w = sole_writer(n);
	bool trusted = w && !w->remote_change && fs_caches_trusted(fs);
	if (w)
		w->remote_change = false; /* the handle answers below; an event now sets it again */
	nodes_unlock(&fs->nodes);
	if (w) {
		int e = trusted ? sbx_file_cached_stat(w->file, st) : -EAGAIN;
		put_ofile(fs, w);
		if (!e) {
			release_ofiles(fs, v, count);
			return 0;
		}
	}
	if (!count)
		return 1;
	int err = 0;
	for (size_t i = 0; i < count; i++) {
		if (!writable(v[i]->flags))
			continue;
		int e = sbx_file_flush(v[i]->file);
		latch_error(fs, v[i], e);
	}
	err = -EIO;
	for (size_t i = 0; i < count && err < 0; i++)
		err = sbx_file_fstat(v[i]->file, st);
	release_ofiles(fs, v, count);
	return err;
}

/* Flushes the node's open files so a change by path is not undone by buffered data. */
static void flush_node(struct sbxfs *fs, struct node *n)
{
	size_t count;
	nodes_lock(&fs->nodes);
	struct ofile **v = nodes_ofiles(&fs->nodes, n, &count);
	nodes_unlock(&fs->nodes);
	for (size_t i = 0; i < count; i++)
		if (writable(v[i]->flags))
			latch_error(fs, v[i], sbx_file_flush(v[i]->file));
	release_ofiles(fs, v, count);
}

/* The name these files were opened under is gone: they must never upload to it again. */
static void orphan_files(struct ofile **v, size_t count)
{
	for (size_t i = 0; i < count; i++)
		if (sbx_file_orphan(v[i]->file) < 0)
			log_warn("an open file whose name went away: %s", sbx_last_error());
}

static void pin_files(struct sbxfs *fs, struct ofile **v, size_t count)
{
	for (size_t i = 0; i < count; i++) {
		int err = sbx_file_pin(v[i]->file);
		if (err < 0)
			log_warn("keeping an open file usable after its name goes away: %s",
				 sbx_last_error());
	}
}

/* A new name in dir with attributes st (create, mkdir, symlink, link), made at path: the
 * table and the listing learn it; e is filled for the reply. Returns the node. */
static struct node *entry_made(struct sbxfs *fs, struct node *dir, const char *name,
			       const char *path, const struct stat *st, const char *target,
			       uint64_t events, struct fuse_entry_param *e)
{
	struct nodes *t = &fs->nodes;
	struct reply_timeouts to = fs_timeouts_at(fs, events, path, true);
	nodes_touch(t, dir);
	dir->attr_valid = false;
	struct node *n = fs_bind_entry(fs, dir, name, NODE_WORKSPACE, st, target, to.attr > 0, &to,
				       e);
	if (dir->list)
		dirlist_put(dir->list, name, &e->attr, target);
	return n;
}

/* A lookup in a directory without a listing fetches the listings of its subtree first: who
 * looks up one name there tends to look up its neighbours and what lies below (git status,
 * make, an editor's project scan), and one request for all of them costs what one stat does. */
static void list_before_lookup(struct sbxfs *fs, struct node *dir)
{
	if (!fs_caches_trusted(fs) || fs->cfg.dir_cache_timeout <= 0)
		return;
	nodes_lock(&fs->nodes);
	char *path = dir->list ? NULL : nodes_path(dir);
	nodes_unlock(&fs->nodes);
	if (path && tree_fetch(fs, dir, path, NULL) < 0)
		log_debug("listing %s: %s", path, sbx_last_error());
	free(path);
}

static void ws_lookup(fuse_req_t req, struct sbxfs *fs, struct node *dir, const char *name)
{
	struct nodes *t = &fs->nodes;
	list_before_lookup(fs, dir);
	uint64_t ev = atomic_load(&fs->events);
	struct stat st;
	char *target = NULL;
	bool have = false;
	int err = 0;

	nodes_lock(t);
	char *path = child_path(dir, name);
	uint64_t seq = t->seq;
	struct node *child = nodes_child(t, dir, name);
	if (child)
		nodes_hold(child);
	bool busy = child && child->open;
	if (path && !busy && list_valid(fs, dir)) {
		struct dirlist_entry *de = dirlist_find(dir->list, name);
		if (!de) {
			nodes_unlock(t);
			struct reply_timeouts to = fs_timeouts_at(fs, ev, path, false);
			fs_reply_negative(req, &to);
			goto out;
		}
		if (de->st_valid) {
			st = de->st;
			target = de->target ? strdup(de->target) : NULL;
			have = true;
		}
	}
	if (path && !have && !busy && child && attr_fresh(fs, child)) {
		st = child->attr;
		have = true;
	}
	nodes_unlock(t);
	if (!path) {
		fuse_reply_err(req, ENOENT);
		goto out;
	}

	if (!have) {
		err = busy ? stat_open_node(fs, child, &st) : 1;
		if (err == 1)
			err = sbx_lstat(fs->sbx, path, &st, &target);
	}
	if (err == -ENOENT) {
		nodes_lock(t);
		struct node *gone = nodes_child(t, dir, name);
		if (gone && gone->gen <= seq)
			nodes_detach(t, gone);
		if (dir->list && dir->gen <= seq)
			dirlist_remove(dir->list, name);
		nodes_unlock(t);
		struct reply_timeouts to = fs_timeouts_at(fs, ev, path, false);
		fs_reply_negative(req, &to);
		goto out;
	}
	if (err < 0) {
		fuse_reply_err(req, -err);
		goto out;
	}

	struct fuse_entry_param e;
	nodes_lock(t);
	struct reply_timeouts to = fs_timeouts_at(fs, ev, path, false);
	struct node *cur = nodes_child(t, dir, name);
	bool cache = to.attr > 0 && !busy && (!cur || cur->gen <= seq);
	fs_bind_entry(fs, dir, name, NODE_WORKSPACE, &st, target, cache, &to, &e);
	nodes_unlock(t);
	fuse_reply_entry(req, &e);
out:
	if (child) {
		nodes_lock(t);
		nodes_put(t, child);
		nodes_unlock(t);
	}
	free(path);
	free(target);
}

static void ws_getattr(fuse_req_t req, struct sbxfs *fs, struct node *n,
		       struct fuse_file_info *fi)
{
	struct nodes *t = &fs->nodes;
	uint64_t ev = atomic_load(&fs->events);
	struct stat st;
	int err = stat_open_node(fs, n, &st);
	if (err <= 0) {
		if (err < 0)
			fuse_reply_err(req, -err);
		else
			fuse_reply_attr(req, &st, fs_attr_ttl(&st, fs_timeouts(fs, ev).attr));
		return;
	}
	nodes_lock(t);
	if (attr_fresh(fs, n)) {
		st = n->attr;
		nodes_unlock(t);
		fuse_reply_attr(req, &st, fs_attr_ttl(&st, fs_timeouts(fs, ev).attr));
		return;
	}
	char *path = nodes_path(n);
	uint64_t seq = t->seq;
	nodes_unlock(t);
	if (!path) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	err = sbx_lstat(fs->sbx, path, &st, NULL);
	if (err < 0) {
		free(path);
		fuse_reply_err(req, -err);
		return;
	}
	nodes_lock(t);
	struct reply_timeouts to = fs_timeouts_at(fs, ev, path, false);
	free(path);
	if (!fs_node_is(n, &st)) {
		/* The name now holds another file: this inode is gone for good. */
		nodes_detach(t, n);
		nodes_unlock(t);
		fuse_reply_err(req, ESTALE);
		return;
	}
	fs_node_ino(n, &st);
	if (to.attr > 0 && n->gen <= seq)
		fs_cache_attr(fs, n, &st);
	nodes_unlock(t);
	fuse_reply_attr(req, &st, fs_attr_ttl(&st, to.attr));
}

/* The handle a size change goes through: the request's, else a writable one of the node (so
 * the client's buffered or local copy stays consistent), else none (by path). */
static struct ofile *size_handle(struct sbxfs *fs, struct node *n, struct fuse_file_info *fi)
{
	nodes_lock(&fs->nodes);
	struct ofile *of = fi ? (struct ofile *)(uintptr_t)fi->fh : NULL;
	if (!of)
		for (of = n->open; of && !writable(of->flags); of = of->next)
			;
	if (of)
		of->ref++;
	nodes_unlock(&fs->nodes);
	return of;
}

static void ws_setattr(fuse_req_t req, struct sbxfs *fs, struct node *n, struct stat *attr,
		       int to_set, struct fuse_file_info *fi)
{
	struct nodes *t = &fs->nodes;
	uint64_t ev = atomic_load(&fs->events);
	unsigned valid = 0;
	struct stat want = *attr, st;
	if (to_set & FUSE_SET_ATTR_MODE)
		valid |= SBX_SET_MODE;
	if (to_set & FUSE_SET_ATTR_UID)
		valid |= SBX_SET_UID;
	if (to_set & FUSE_SET_ATTR_GID)
		valid |= SBX_SET_GID;
	if (to_set & FUSE_SET_ATTR_SIZE)
		valid |= SBX_SET_SIZE;
	if (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_ATIME_NOW)) {
		valid |= SBX_SET_ATIME;
		if (to_set & FUSE_SET_ATTR_ATIME_NOW)
			want.st_atim.tv_nsec = UTIME_NOW;
	}
	if (to_set & (FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW)) {
		valid |= SBX_SET_MTIME;
		if (to_set & FUSE_SET_ATTR_MTIME_NOW)
			want.st_mtim.tv_nsec = UTIME_NOW;
	}

	int err = 0;
	struct ofile *of = NULL;
	nodes_lock(t);
	char *where = nodes_path(n);
	nodes_unlock(t);
	/* One writer: through its handle, which keeps its buffered data, size and attributes
	 * coherent and may defer the change to its next flush (sandbox.h). */
	nodes_lock(t);
	struct ofile *w = sole_writer(n);
	nodes_unlock(t);
	if (w) {
		err = sbx_file_setattr(w->file, valid, &want, &st);
		put_ofile(fs, w);
		if (err != -ENOSYS)
			goto done;
		err = 0;
	}
	/* Buffered data landing after a utimens or truncate by path would undo it. */
	flush_node(fs, n);
	if (valid & SBX_SET_SIZE) {
		of = size_handle(fs, n, fi);
		if (of) {
			err = sbx_file_ftruncate(of->file, attr->st_size);
			valid &= ~SBX_SET_SIZE;
		}
	}
	if (!err) {
		nodes_lock(t);
		char *path = nodes_path(n);
		nodes_unlock(t);
		if (valid && path) {
			adopt_clean(fs, n, path);
			err = sbx_setattr(fs->sbx, path, valid, &want, &st);
			adopt_done(fs, n);
		} else if (valid)
			err = -ENOENT;
		else if (of)
			err = sbx_file_fstat(of->file, &st);
		else
			err = path ? sbx_lstat(fs->sbx, path, &st, NULL) : -ENOENT;
		free(path);
	}
	if (of)
		put_ofile(fs, of);
done:
	if (err < 0) {
		free(where);
		fuse_reply_err(req, -err);
		return;
	}
	nodes_lock(t);
	struct reply_timeouts to = fs_timeouts_at(fs, ev, where, false);
	free(where);
	fs_node_ino(n, &st);
	nodes_touch(t, n);
	if (to.attr > 0)
		fs_cache_attr(fs, n, &st);
	else
		n->attr_valid = false;
	if (n->parent && n->parent->list)
		dirlist_put(n->parent->list, n->name, &st, n->target);
	if (to_set & FUSE_SET_ATTR_SIZE)
		others_changed(n, NULL);
	struct alias_scan a;
	aliases_changed(fs, n, &a);
	nodes_unlock(t);
	aliases_notify(fs, &a);
	fuse_reply_attr(req, &st, fs_attr_ttl(&st, to.attr));
}

static void ws_readlink(fuse_req_t req, struct sbxfs *fs, struct node *n)
{
	struct nodes *t = &fs->nodes;
	nodes_lock(t);
	char *target = n->target ? strdup(n->target) : NULL;
	char *path = target ? NULL : nodes_path(n);
	nodes_unlock(t);
	if (!target) {
		if (!path) {
			fuse_reply_err(req, ENOENT);
			return;
		}
		int err = sbx_readlink(fs->sbx, path, &target);
		free(path);
		if (err < 0) {
			fuse_reply_err(req, -err);
			return;
		}
		/* A symlink's target never changes; a new one is a new inode, so a new node. */
		nodes_lock(t);
		if (!n->target)
			n->target = strdup(target);
		nodes_unlock(t);
	}
	fuse_reply_readlink(req, target);
	free(target);
}

/* Locks, builds the path of (dir, name), unlocks; replies ENOENT when dir is gone. */
static char *name_path(fuse_req_t req, struct sbxfs *fs, struct node *dir, const char *name)
{
	nodes_lock(&fs->nodes);
	char *path = child_path(dir, name);
	nodes_unlock(&fs->nodes);
	if (!path)
		fuse_reply_err(req, ENOENT);
	return path;
}

/* The end of mknod, mkdir and symlink: replies err, or binds the made name and replies its
 * entry. Frees path. */
static void reply_made(fuse_req_t req, struct sbxfs *fs, struct node *dir, const char *name,
		       char *path, int err, const struct stat *st, const char *target, uint64_t ev,
		       bool new_dir)
{
	if (err < 0) {
		free(path);
		fuse_reply_err(req, -err);
		return;
	}
	struct fuse_entry_param e;
	nodes_lock(&fs->nodes);
	struct node *n = entry_made(fs, dir, name, path, st, target, ev, &e);
	/* A new directory is empty: its listing is known without asking (unless an event
	 * about it or below it came meanwhile: then e has zero timeouts). */
	if (new_dir && fs->cfg.dir_cache_timeout > 0 && e.attr_timeout > 0)
		nodes_set_list(&fs->nodes, n, dirlist_new(), fs_now() + fs->cfg.dir_cache_timeout);
	nodes_unlock(&fs->nodes);
	free(path);
	fuse_reply_entry(req, &e);
}

/* SBX_O_NEW for a create of name in dir when the listing, kept current by change events,
 * says the name is free: the backend may then make the file later (sandbox.h). Only for a
 * create that would replace whatever a process in the sandbox made meanwhile anyway (O_EXCL
 * fails instead, O_TRUNC empties it): an append must not lose what it did not see. */
static int create_flags(struct sbxfs *fs, struct node *dir, const char *name, int flags)
{
	if (!(flags & (O_EXCL | O_TRUNC)))
		return flags;
	nodes_lock(&fs->nodes);
	bool free_name = list_valid(fs, dir) && !dirlist_find(dir->list, name);
	nodes_unlock(&fs->nodes);
	return free_name ? flags | SBX_O_NEW : flags;
}

static void ws_mknod(fuse_req_t req, struct sbxfs *fs, struct node *dir, const char *name,
		     mode_t mode, dev_t rdev)
{
	if (!S_ISREG(mode)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	uint64_t ev = atomic_load(&fs->events);
	char *path = name_path(req, fs, dir, name);
	if (!path)
		return;
	struct sbx_file *f;
	struct stat st;
	int flags = create_flags(fs, dir, name, O_WRONLY | O_CREAT | O_EXCL);
	int err = sbx_file_open(fs->sbx, path, flags, mode & 07777, &f, &st);
	if (!err)
		err = sbx_file_close(f);
	reply_made(req, fs, dir, name, path, err, &st, NULL, ev, false);
}

static void ws_mkdir(fuse_req_t req, struct sbxfs *fs, struct node *dir, const char *name,
		     mode_t mode)
{
	uint64_t ev = atomic_load(&fs->events);
	char *path = name_path(req, fs, dir, name);
	if (!path)
		return;
	struct stat st;
	int err = sbx_mkdir(fs->sbx, path, mode & 07777, &st);
	reply_made(req, fs, dir, name, path, err, &st, NULL, ev, true);
}

static void ws_symlink(fuse_req_t req, struct sbxfs *fs, const char *link, struct node *dir,
		       const char *name)
{
	uint64_t ev = atomic_load(&fs->events);
	char *path = name_path(req, fs, dir, name);
	if (!path)
		return;
	struct stat st;
	int err = sbx_symlink(fs->sbx, link, path, &st);
	reply_made(req, fs, dir, name, path, err, &st, link, ev, false);
}

static void ws_link(fuse_req_t req, struct sbxfs *fs, struct node *n, struct node *newdir,
		    const char *newname)
{
	uint64_t ev = atomic_load(&fs->events);
	nodes_lock(&fs->nodes);
	char *from = nodes_path(n);
	char *to = child_path(newdir, newname);
	nodes_unlock(&fs->nodes);
	struct stat st;
	int err = -ENOENT;
	if (from && to) {
		adopt_clean(fs, n, from);
		err = sbx_link(fs->sbx, from, to, &st);
		adopt_done(fs, n);
	}
	free(from);
	if (err < 0) {
		free(to);
		fuse_reply_err(req, -err);
		return;
	}
	/* The new name gets a node of its own (a node has one name, so each name keeps a path
	 * when the other goes). The kernel's attributes of the linked inode now have a stale
	 * st_nlink; the invalidator tells it right after this reply. */
	struct fuse_entry_param e;
	struct alias_scan a;
	nodes_lock(&fs->nodes);
	nodes_touch(&fs->nodes, n);
	struct stat shown = st;
	fs_node_ino(n, &shown); /* a file just made learns its inode number here */
	n->attr = shown;
	n->attr_valid = false;
	struct node *m = entry_made(fs, newdir, newname, to, &st, n->target, ev, &e);
	aliases_changed(fs, m, &a);
	uint64_t source = n->id;
	nodes_unlock(&fs->nodes);
	free(to);
	/* `ln a b; stat a` must show two links: the kernel's attributes of a go before the reply.
	 * An exception to notifying from the invalidator only: invalidating attributes alone
	 * (offset -1) takes no lock of the inode or its pages, so it cannot wait for the link the
	 * kernel is waiting for. */
	err = fuse_lowlevel_notify_inval_inode(fs->se, source, -1, 0);
	if (err < 0 && err != -ENOENT)
		log_debug("link: invalidating the source's attributes: %s", strerror(-err));
	aliases_notify(fs, &a);
	fuse_reply_entry(req, &e);
}

/* unlink and rmdir: the name goes, its node is detached (open files keep working). */
static void remove_name(fuse_req_t req, struct sbxfs *fs, struct node *dir, const char *name,
			bool is_dir)
{
	struct nodes *t = &fs->nodes;
	size_t count = 0;
	struct ofile **v = NULL;
	nodes_lock(t);
	char *path = child_path(dir, name);
	struct node *child = nodes_child(t, dir, name);
	if (child)
		v = nodes_ofiles(t, child, &count);
	/* its listing says it is empty: no need to ask the sandbox again */
	bool empty = is_dir && child && list_valid(fs, child) && child->list->n == 0;
	nodes_unlock(t);
	int err = -ENOENT;
	if (path) {
		pin_files(fs, v, count);
		err = !is_dir ? sbx_unlink(fs->sbx, path)
		      : empty ? sbx_journal_rmdir_empty(fs->sbx, path) : -ENOSYS;
		if (err == -ENOSYS && is_dir)
			err = sbx_rmdir(fs->sbx, path);
	}
	struct alias_scan a = { .count = 0 };
	if (!err) {
		nodes_lock(t);
		child = nodes_child(t, dir, name);
		/* The file's other names lose a link. */
		if (child)
			aliases_changed(fs, child, &a);
		if (child)
			nodes_detach(t, child);
		nodes_touch(t, dir);
		dir->attr_valid = false;
		if (dir->list)
			dirlist_remove(dir->list, name);
		nodes_unlock(t);
		orphan_files(v, count);
	}
	release_ofiles(fs, v, count);
	free(path);
	aliases_notify(fs, &a);
	fuse_reply_err(req, -err);
}

static void ws_unlink(fuse_req_t req, struct sbxfs *fs, struct node *dir, const char *name)
{
	remove_name(req, fs, dir, name, false);
}

static void ws_rmdir(fuse_req_t req, struct sbxfs *fs, struct node *dir, const char *name)
{
	remove_name(req, fs, dir, name, true);
}

/* Open files at or below one of the moved nodes, each held, with its new path. */
struct moved {
	struct ofile *of;
	char *path;
};

static struct moved *moved_files(struct nodes *t, struct node *a, struct node *b, size_t *count)
{
	size_t k = 0, cap = 0;
	struct moved *v = NULL;
	for (struct ofile *of = t->all_open; of; of = of->all_next) {
		if (!(a && nodes_below(of->node, a)) && !(b && nodes_below(of->node, b)))
			continue;
		char *path = nodes_path(of->node);
		if (!path)
			continue;
		if (k == cap) {
			cap = cap ? cap * 2 : 8;
			v = realloc(v, cap * sizeof(*v));
			if (!v)
				abort();
		}
		of->ref++;
		v[k++] = (struct moved){ of, path };
	}
	*count = k;
	return v;
}

static void ws_rename(fuse_req_t req, struct sbxfs *fs, struct node *dir, const char *name,
		      struct node *newdir, const char *newname, unsigned flags)
{
	struct nodes *t = &fs->nodes;
	if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	size_t count = 0;
	struct ofile **v = NULL;
	nodes_lock(t);
	char *from = child_path(dir, name);
	char *to = child_path(newdir, newname);
	struct node *target = nodes_child(t, newdir, newname);
	if (target && !(flags & RENAME_EXCHANGE))
		v = nodes_ofiles(t, target, &count);
	struct node *source = flags ? NULL : nodes_child(t, dir, name);
	if (source)
		nodes_hold(source);
	nodes_unlock(t);
	if (source && from)
		adopt_clean(fs, source, from);
	int err = -ENOENT;
	if (from && to) {
		pin_files(fs, v, count);
		err = sbx_rename(fs->sbx, from, to, flags);
	}
	if (source && from)
		adopt_done(fs, source);
	if (source) {
		nodes_lock(t);
		nodes_put(t, source);
		nodes_unlock(t);
	}
	size_t nmoved = 0;
	struct alias_scan a = { .count = 0 };
	struct moved *moved = NULL;
	/* a rename the journal took: it knows the attributes (ctime) without asking */
	struct stat moved_st;
	bool known = !err && !flags && to && sbx_journal_holds(fs->sbx, to) &&
		     sbx_lstat(fs->sbx, to, &moved_st, NULL) == 0;
	if (!err) {
		nodes_lock(t);
		struct node *src = nodes_child(t, dir, name);
		struct node *dst = nodes_child(t, newdir, newname);
		if (flags & RENAME_EXCHANGE) {
			if (src && dst)
				nodes_exchange(t, src, dst);
			else if (src)
				nodes_move(t, src, newdir, newname);
			else if (dst)
				nodes_move(t, dst, dir, name);
			if (dir->list)
				dirlist_stale(dir->list, name);
			if (newdir->list)
				dirlist_stale(newdir->list, newname);
		} else {
			/* A replaced file's other names lose a link. */
			if (dst && dst != src)
				aliases_changed(fs, dst, &a);
			if (src)
				nodes_move(t, src, newdir, newname);
			else if (dst)
				nodes_detach(t, dst);
			dst = NULL;
			if (dir->list)
				dirlist_remove(dir->list, name);
			/* The name exists; its attributes (ctime) are asked for when needed. */
			if (newdir->list)
				dirlist_put(newdir->list, newname, known ? &moved_st : NULL, NULL);
		}
		for (struct node *m = src; m; m = m == src ? dst : NULL) {
			nodes_touch(t, m);
			m->attr_valid = false;
		}
		if (known && src && !(flags & RENAME_EXCHANGE) && fs_node_is(src, &moved_st))
			fs_cache_attr(fs, src, &moved_st);
		nodes_touch(t, dir);
		dir->attr_valid = false;
		nodes_touch(t, newdir);
		newdir->attr_valid = false;
		moved = moved_files(t, src, dst, &nmoved);
		nodes_unlock(t);
	}
	for (size_t i = 0; i < nmoved; i++) {
		int e = sbx_file_set_path(moved[i].of->file, moved[i].path);
		if (e < 0)
			log_warn("open file moved to %s: %s", moved[i].path, sbx_last_error());
		free(moved[i].path);
		put_ofile(fs, moved[i].of);
	}
	free(moved);
	if (!err)
		orphan_files(v, count);
	release_ofiles(fs, v, count);
	free(from);
	free(to);
	aliases_notify(fs, &a);
	fuse_reply_err(req, -err);
}

static void release_of(struct sbxfs *fs, struct ofile *of);
static bool journal_attrs(struct sbxfs *fs, struct ofile *of, struct stat *st);
static void keep_attrs(struct sbxfs *fs, struct node *n, const struct stat *st);

/* keep_cache: the pages the kernel holds are still the file's. st_mode == 0 when the open was
 * lazy (no round trip): then the node's fresh attributes stand in, and with the change stream
 * healthy, "no event touched it" is enough. Caller holds the lock. */
static bool note_open(struct sbxfs *fs, struct node *n, const struct stat *st)
{
	bool trusted = fs_caches_trusted(fs);
	/* attributes no event invalidated are the file's while events flow, expired or not */
	if (!st->st_mode && (attr_fresh(fs, n) || (n->attr_valid && trusted)))
		st = &n->attr;
	bool known = st->st_mode != 0;
	bool same = known && n->open_size == st->st_size &&
		    n->open_mtime.tv_sec == st->st_mtim.tv_sec &&
		    n->open_mtime.tv_nsec == st->st_mtim.tv_nsec;
	bool last_unknown = n->open_size == -1; /* the last open knew no attributes */
	bool keep = n->opened && !n->data_changed &&
		    (same || ((!known || last_unknown) && trusted));
	if (known) {
		n->opened = true;
		n->open_size = st->st_size;
		n->open_mtime = st->st_mtim;
	} else if (trusted) {
		/* what the kernel reads from now on is the file's until an event says otherwise
		 * (a walk longer than attr_timeout opens every file with its attributes expired) */
		n->opened = true;
		n->open_size = -1;
	}
	if (known || !keep)
		n->data_changed = !known && !trusted;
	return keep;
}

static void ws_open(fuse_req_t req, struct sbxfs *fs, struct node *n, struct fuse_file_info *fi)
{
	struct nodes *t = &fs->nodes;
	uint64_t ev = atomic_load(&fs->events);
	nodes_lock(t);
	char *path = nodes_path(n);
	nodes_unlock(t);
	if (!path) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	struct sbx_file *f;
	struct stat st;
	int flags = fi->flags & (O_ACCMODE | O_TRUNC | O_APPEND);
	/* what the mount wrote, read back: the journal's copy while no event touched it */
	bool reading = (flags & (O_ACCMODE | O_TRUNC)) == O_RDONLY;
	nodes_lock(t);
	uint64_t blob = reading && !n->data_changed && n->attr_valid && fs_caches_trusted(fs)
				? n->clean_blob : 0;
	if (!reading)
		n->clean_blob = 0;
	st = n->attr;
	/* the first small file of a directory read from the sandbox brings its neighbours */
	struct node *dir = reading && !blob && n->parent && n->attr_valid && S_ISREG(n->type) &&
				   n->attr.st_size <= (64 << 10) && n->parent->list &&
				   !n->parent->list->content_tried
			       ? n->parent : NULL;
	if (dir)
		nodes_hold(dir);
	nodes_unlock(t);
	if (dir) {
		if (prefetch_dir(fs, dir)) {
			nodes_lock(t);
			blob = !n->data_changed && n->attr_valid && fs_caches_trusted(fs)
				       ? n->clean_blob : 0;
			st = n->attr;
			nodes_unlock(t);
		}
		nodes_lock(t);
		nodes_put(t, dir);
		nodes_unlock(t);
	}
	bool adopt = !reading && !(flags & O_TRUNC);
	if (adopt)
		adopt_clean(fs, n, path); /* its content is kept: the journal has it already */
	int err = blob ? sbx_journal_open_clean(fs->sbx, path, blob, &st, &f) : -ENOENT;
	if (err)
		err = sbx_file_open(fs->sbx, path, flags, 0, &f, &st);
	if (adopt)
		adopt_done(fs, n);
	free(path);
	if (err < 0) {
		fuse_reply_err(req, -err);
		return;
	}
	nodes_lock(t);
	fs_node_ino(n, &st);
	struct ofile *of = nodes_open(t, n, f, flags);
	fi->keep_cache = note_open(fs, n, &st);
	/* a read-only file's close has nothing to send: no FLUSH for it (a grep of a tree opens
	 * thousands; the kernel holds POSIX locks itself, so none are released by one) */
	fi->noflush = (flags & (O_ACCMODE | O_TRUNC)) == O_RDONLY;
	if (flags & O_TRUNC) {
		others_changed(n, of);
		nodes_touch(t, n);
		if (n->parent && n->parent->list)
			dirlist_put(n->parent->list, n->name, &st, NULL);
	}
	if (fs_timeouts(fs, ev).attr > 0 && (flags & O_TRUNC))
		fs_cache_attr(fs, n, &st);
	nodes_unlock(t);
	fi->fh = (uintptr_t)of;
	if (fuse_reply_open(req, fi) != 0)
		release_of(fs, of);
}

static void ws_create(fuse_req_t req, struct sbxfs *fs, struct node *dir, const char *name,
		      mode_t mode, struct fuse_file_info *fi)
{
	struct nodes *t = &fs->nodes;
	uint64_t ev = atomic_load(&fs->events);
	char *path = name_path(req, fs, dir, name);
	if (!path)
		return;
	struct sbx_file *f;
	struct stat st;
	int flags = fi->flags & (O_ACCMODE | O_CREAT | O_EXCL | O_TRUNC | O_APPEND);
	int err = sbx_file_open(fs->sbx, path, create_flags(fs, dir, name, flags | O_CREAT),
				mode & 07777, &f, &st);
	if (err < 0) {
		free(path);
		fuse_reply_err(req, -err);
		return;
	}
	struct fuse_entry_param e;
	nodes_lock(t);
	struct node *n = entry_made(fs, dir, name, path, &st, NULL, ev, &e);
	free(path);
	struct ofile *of = nodes_open(t, n, f, flags & ~(O_CREAT | O_EXCL));
	note_open(fs, n, &st);
	nodes_unlock(t);
	fi->fh = (uintptr_t)of;
	if (fuse_reply_create(req, &e, fi) != 0) {
		nodes_lock(t);
		nodes_forget(t, n, 1);
		nodes_unlock(t);
		release_of(fs, of);
	}
}

/* The attributes of a listed name, if known: the listing's, else the child node's fresh ones;
 * NULL when a fetch is needed. A node whose attributes were dropped (a hard link's other name
 * changed) vetoes the listing's. Names with open files get plain entries from readdirplus, so
 * only their type and inode number matter. */
static const struct stat *cached_entry_stat(struct sbxfs *fs, struct node *dir,
					    const struct dirlist_entry *de)
{
	struct node *child = nodes_child(&fs->nodes, dir, de->name);
	if (child && !child->open && !child->attr_valid)
		return NULL;
	if (de->st_valid)
		return &de->st;
	return child && (child->open ? child->attr_valid : attr_fresh(fs, child)) ?
		       &child->attr : NULL;
}

/* Serves opendir from a valid complete listing (kept up to date by our own mutations and by
 * change events); false when it is absent or a name's attributes are unknown. Caller holds
 * the lock; snap->seq is the table's seq now, so readdirplus still skips names changed later. */
static bool list_from_cache(struct sbxfs *fs, struct node *dir, struct dirsnap *snap)
{
	if (!list_valid(fs, dir))
		return false;
	const struct dirlist *dl = dir->list;
	for (size_t b = 0; b < dl->nbuckets; b++)
		for (const struct dirlist_entry *de = dl->buckets[b]; de; de = de->next)
			if (!cached_entry_stat(fs, dir, de))
				return false;
	for (size_t b = 0; b < dl->nbuckets; b++)
		for (const struct dirlist_entry *de = dl->buckets[b]; de; de = de->next)
			dirsnap_add(snap, de->name, cached_entry_stat(fs, dir, de), de->target,
				    NODE_WORKSPACE);
	snap->seq = fs->nodes.seq;
	return true;
}

static int ws_list(struct sbxfs *fs, struct node *dir, struct dirsnap *snap)
{
	struct nodes *t = &fs->nodes;
	nodes_lock(t);
	if (list_from_cache(fs, dir, snap)) {
		nodes_unlock(t);
		return 0;
	}
	char *path = nodes_path(dir);
	nodes_unlock(t);
	if (!path)
		return -ENOENT;
	/* The whole subtree at once, while events keep what it brings current. */
	int err = fs_caches_trusted(fs) ? tree_fetch(fs, dir, path, snap) : -ENOSYS;
	if (err != -ENOSYS) {
		free(path);
		return err;
	}
	/* Names come valid and unique (sbx_readdir): the kernel fails a whole readdir for one
	 * with '/', and a name listed twice would be two entries here but one in the cache. */
	struct sbx_dirent *ents;
	size_t n;
	err = sbx_readdir(fs->sbx, path, &ents, &n);
	if (err < 0) {
		free(path);
		return err;
	}
	struct dirlist *dl = NULL;
	/* Events about other directories meanwhile do not matter (one below it does). */
	bool cacheable = fs->cfg.dir_cache_timeout > 0 &&
			 fs_timeouts_at(fs, snap->events, path, false).attr > 0;
	if (cacheable)
		dl = dirlist_new();
	for (size_t i = 0; i < n; i++) {
		dirsnap_add(snap, ents[i].name, &ents[i].st, ents[i].target, NODE_WORKSPACE);
		if (dl)
			dirlist_put(dl, ents[i].name, &ents[i].st, ents[i].target);
	}
	sbx_dirents_free(ents, n);
	if (dl) {
		nodes_lock(t);
		if (dir->gen <= snap->seq && !dir->detached &&
		    fs_timeouts_at(fs, snap->events, path, false).attr > 0)
			nodes_set_list(t, dir, dl, fs_now() + fs->cfg.dir_cache_timeout), dl = NULL;
		nodes_unlock(t);
		dirlist_free(dl);
	}
	free(path);
	return 0;
}

const struct kind_ops workspace_kind_ops = {
	.lookup = ws_lookup,
	.getattr = ws_getattr,
	.setattr = ws_setattr,
	.readlink = ws_readlink,
	.mknod = ws_mknod,
	.mkdir = ws_mkdir,
	.unlink = ws_unlink,
	.rmdir = ws_rmdir,
	.symlink = ws_symlink,
	.rename = ws_rename,
	.link = ws_link,
	.open = ws_open,
	.create = ws_create,
	.list = ws_list,
	/* statfs: the root's, which op_statfs uses for kinds without one. */
};

void workspace_made(struct sbxfs *fs, const char *path)
{
	const char *slash = strrchr(path, '/');
	if (!slash || slash == path || !slash[1])
		return;
	char *dir = strndup(path, (size_t)(slash - path));
	if (!dir)
		abort();
	nodes_lock(&fs->nodes);
	struct node *n = nodes_resolve(&fs->nodes, path);
	if (n) {
		nodes_touch(&fs->nodes, n);
		n->attr_valid = false;
		nodes_drop_list(&fs->nodes, n);
	}
	struct node *p = nodes_resolve(&fs->nodes, dir);
	if (p) {
		nodes_touch(&fs->nodes, p);
		p->attr_valid = false;
		if (p->list)
			dirlist_put(p->list, slash + 1, NULL, NULL);
	}
	nodes_unlock(&fs->nodes);
	free(dir);
	/* the kernel's own entries, as for an event (a handler must not notify) */
	invalidator_change(fs->inval, path, "create", true);
}

/* ---- open files ---- */

static struct ofile *ofile_of(struct fuse_file_info *fi)
{
	return (struct ofile *)(uintptr_t)fi->fh;
}

/* Each handle buffers its own writes: before one handle reads or writes, the other writable
 * handles of the same file push theirs, so the sandbox sees the writes in the order they were
 * made (two O_APPEND writers interleave correctly) and a read sees them all. Free when nothing
 * is buffered; skipped when the file has no other writer. */
static void flush_others(struct sbxfs *fs, struct ofile *of)
{
	nodes_lock(&fs->nodes);
	struct node *n = of->node;
	bool others = false;
	for (struct ofile *o = n->open; o && !others; o = o->next)
		others = o != of && writable(o->flags);
	size_t count = 0;
	struct ofile **v = others ? nodes_ofiles(&fs->nodes, n, &count) : NULL;
	nodes_unlock(&fs->nodes);
	for (size_t i = 0; i < count; i++)
		if (v[i] != of && writable(v[i]->flags))
			latch_error(fs, v[i], sbx_file_flush(v[i]->file));
	release_ofiles(fs, v, count);
}

void workspace_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct sbxfs *fs = fuse_req_userdata(req);
	struct ofile *of = ofile_of(fi);
	flush_others(fs, of);
	char *buf = malloc(size ? size : 1);
	if (!buf)
		abort();
	ssize_t r = sbx_file_pread(of->file, buf, size, off);
	if (r < 0) {
		latch_error(fs, of, (int)r);
		fuse_reply_err(req, (int)-r);
	} else {
		fuse_reply_buf(req, buf, r);
	}
	free(buf);
}

void workspace_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	struct sbxfs *fs = fuse_req_userdata(req);
	struct ofile *of = ofile_of(fi);
	flush_others(fs, of);
	ssize_t r = sbx_file_pwrite(of->file, buf, size, off);
	if (r < 0) {
		fuse_reply_err(req, (int)-r);
		return;
	}
	nodes_lock(&fs->nodes);
	struct node *n = of->node;
	nodes_touch(&fs->nodes, n);
	n->attr_valid = false;
	if (n->parent && n->parent->list)
		dirlist_stale(n->parent->list, n->name);
	others_changed(n, of);
	nodes_unlock(&fs->nodes);
	fuse_reply_write(req, r);
}

void workspace_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct sbxfs *fs = fuse_req_userdata(req);
	struct ofile *of = ofile_of(fi);
	int err = writable(of->flags) ? sbx_file_flush(of->file) : 0;
	nodes_lock(&fs->nodes);
	bool linked = of->node->attr.st_nlink > 1;
	nodes_unlock(&fs->nodes);
	/* written into the journal: its attributes are the journal's until the upload is
	 * answered (fs/invalidate.c, settled), known without asking */
	struct stat fst;
	bool known = !err && writable(of->flags) && journal_attrs(fs, of, &fst);
	/* Its other names are the sandbox's files (the journal knows one name of a file): they
	 * show the change once it is uploaded, so a close waits for that. */
	if (!err && linked && writable(of->flags))
		err = sbx_file_fsync(of->file, true);
	nodes_lock(&fs->nodes);
	if (!err)
		err = of->err;
	of->err = 0;
	if (err)
		of->reported = true;
	struct alias_scan a = { .count = 0 };
	if (writable(of->flags)) {
		/* The sandbox set mtime at upload time. */
		struct node *n = of->node;
		nodes_touch(&fs->nodes, n);
		n->attr_valid = false;
		if (n->parent && n->parent->list)
			dirlist_stale(n->parent->list, n->name);
		if (known)
			keep_attrs(fs, n, &fst);
		aliases_changed(fs, of->node, &a);
	}
	nodes_unlock(&fs->nodes);
	aliases_notify(fs, &a);
	fuse_reply_err(req, -err);
}

void workspace_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct sbxfs *fs = fuse_req_userdata(req);
	struct ofile *of = ofile_of(fi);
	int err = sbx_file_fsync(of->file, datasync != 0);
	nodes_lock(&fs->nodes);
	if (!err)
		err = of->err;
	of->err = 0;
	if (err)
		of->reported = true;
	nodes_unlock(&fs->nodes);
	fuse_reply_err(req, -err);
}

/* The attributes of the file of of, when the journal answers for it (a written file until its
 * upload is answered): known without asking. */
static bool journal_attrs(struct sbxfs *fs, struct ofile *of, struct stat *st)
{
	nodes_lock(&fs->nodes);
	char *path = nodes_path(of->node);
	nodes_unlock(&fs->nodes);
	bool known = path && sbx_journal_holds(fs->sbx, path) && sbx_file_fstat(of->file, st) == 0;
	free(path);
	return known;
}

/* Caller holds the lock: n's attributes are st (see journal_attrs). */
static void keep_attrs(struct sbxfs *fs, struct node *n, const struct stat *st)
{
	if (!fs_node_is(n, st))
		return;
	fs_cache_attr(fs, n, st);
	if (n->parent && n->parent->list)
		dirlist_put(n->parent->list, n->name, &n->attr, NULL);
}

static void release_of(struct sbxfs *fs, struct ofile *of)
{
	struct stat st;
	bool known = writable(of->flags) && journal_attrs(fs, of, &st);
	nodes_lock(&fs->nodes);
	if (writable(of->flags)) {
		nodes_touch(&fs->nodes, of->node);
		of->node->attr_valid = false;
		if (known)
			keep_attrs(fs, of->node, &st);
	}
	bool last = nodes_close(&fs->nodes, of);
	nodes_unlock(&fs->nodes);
	if (last) {
		int err = sbx_file_close(of->file);
		/* After close() returned an upload error, the same failure again is no news. */
		if (err < 0 && of->reported)
			log_debug("release: %s", sbx_last_error());
		else if (err < 0)
			log_error("release: %s", sbx_last_error());
		free(of);
	}
}

/* close() already got flush's answer; an error here can only be logged. */
void workspace_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	release_of(fuse_req_userdata(req), ofile_of(fi));
	fuse_reply_err(req, 0);
}

void workspace_close_all(struct sbxfs *fs)
{
	nodes_lock(&fs->nodes);
	struct ofile *all = fs->nodes.all_open;
	fs->nodes.all_open = NULL;
	nodes_unlock(&fs->nodes);
	for (struct ofile *of = all, *next; of; of = next) {
		next = of->all_next;
		int err = sbx_file_close(of->file);
		if (err < 0)
			log_error("closing a file left open at unmount: %s", sbx_last_error());
		free(of);
	}
}
