/* The write-back journal: a backend (struct sbx_ops) in front of the real one.
 *
 * What the mount changes is applied here first, to an overlay of the paths with changes the
 * sandbox has not acknowledged, and journaled as an operation (struct jop) in the order the
 * mount made it; the uploader (journal_upload.c) sends the operations in that order, many per
 * request, and once the sandbox acknowledges them the overlay forgets those paths. File
 * contents live in the spool (journal_spool.c), never in memory: a file made or rewritten
 * through the mount is a blob there until its upload is acknowledged.
 *
 * Reading through the overlay. A path with a node is answered by it (JN_GONE: it does not
 * exist). A path without one is the sandbox's, with one exception: below a directory the
 * mount made whose mkdir is not yet acknowledged (opaque) there is nothing but nodes. A
 * listing is the sandbox's merged with the nodes of that directory, taken before the listing
 * is fetched: an operation acknowledged in between shows in both, so nothing is lost.
 *
 * What is journaled, and what waits. Everything whose outcome the mount can know without
 * asking: creates (the kernel looked the name up first), writes, truncation, modes and times
 * of what the overlay holds, mkdir, symlink, unlink, rmdir (emptiness checked on the merged
 * listing), rename and link of a file the overlay holds whole. The rest (renaming a directory
 * or a file only the sandbox holds, rename flags, attributes of a path only the sandbox holds,
 * writing into a large file the sandbox holds) first waits for the journal to drain, then
 * goes to the backend directly, as without a journal: those would need the sandbox's side of
 * a path that pending operations still change.
 *
 * Locking: j->lock guards the overlay, the queue and the spool's log. Blob contents are read
 * and written without it (a blob's descriptor lives while something refers to it). Nothing
 * waits on the network with the lock held; waits for acknowledgements are bounded by the
 * client's deadline. */
#include "client/journal_impl.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>
#include "common/clock.h"
#include "common/log.h"

#define FETCH_MAX (64 << 20) /* a sandbox file rewritten in place is copied up to this size */
#define HANDOVER_MS 3000    /* an announced node the filesystem did not take goes anyway */

struct jfile {
	struct sbx_file base;
	struct sbx_journal *j;
	struct jinode *ino;
	bool writable, append;
};

static struct sbx_journal *J(struct sbx *s) { return s->journal; }

/* Calls into the backend from here: its own requests (a POST settles first) must not wait for
 * the journal, which would wait for nothing but itself here. */
static __thread int passing;
#define INNER(expr)                                   \
	__extension__({                               \
		passing++;                            \
		__typeof__(expr) inner_r_ = (expr);   \
		passing--;                            \
		inner_r_;                             \
	})

/* ---- the overlay ---- */

static size_t path_hash(const char *p)
{
	size_t h = 1469598103934665603u;
	for (; *p; p++)
		h = (h ^ (unsigned char)*p) * 1099511628211u;
	return h;
}

struct jnode *jnode_find(struct sbx_journal *j, const char *path)
{
	for (struct jnode *n = j->table[path_hash(path) % j->buckets]; n; n = n->next)
		if (strcmp(n->path, path) == 0)
			return n;
	return NULL;
}

static void table_grow(struct sbx_journal *j)
{
	size_t nb = j->buckets * 2;
	struct jnode **t = calloc(nb, sizeof *t);
	if (!t)
		abort();
	for (size_t i = 0; i < j->buckets; i++)
		for (struct jnode *n = j->table[i], *next; n; n = next) {
			next = n->next;
			size_t b = path_hash(n->path) % nb;
			n->next = t[b];
			t[b] = n;
		}
	free(j->table);
	j->table = t;
	j->buckets = nb;
}

/* The node of path, made (as JN_GONE) when there is none. */
static struct jnode *jnode_get(struct sbx_journal *j, const char *path)
{
	struct jnode *n = jnode_find(j, path);
	if (n)
		return n;
	if (j->nodes >= j->buckets)
		table_grow(j);
	n = calloc(1, sizeof *n);
	if (!n || !(n->path = strdup(path)))
		abort();
	n->kind = JN_GONE;
	size_t b = path_hash(path) % j->buckets;
	n->next = j->table[b];
	j->table[b] = n;
	j->nodes++;
	return n;
}

static void jnode_unlink_from_table(struct sbx_journal *j, struct jnode *n)
{
	struct jnode **pp = &j->table[path_hash(n->path) % j->buckets];
	while (*pp != n)
		pp = &(*pp)->next;
	*pp = n->next;
	j->nodes--;
}

void jinode_put(struct sbx_journal *j, struct jinode *ino)
{
	if (ino->links || ino->opens || ino->refs)
		return;
	if (ino->fd >= 0)
		close(ino->fd);
	if (!ino->kept)
		spool_blob_remove(j, ino->id);
	if (ino->clean_path)
		clean_closed(j, ino);
	free(ino);
}

void jop_release(struct sbx_journal *j, struct jop *op)
{
	if (op->ino) {
		op->ino->refs--;
		jinode_put(j, op->ino);
	}
	if (op->unlinked) {
		op->unlinked->refs--;
		jinode_put(j, op->unlinked);
	}
	jop_free(op);
}

/* Makes n a node of no kind (JN_GONE), letting go of what it held. */
static void jnode_clear(struct sbx_journal *j, struct jnode *n)
{
	if (n->kind == JN_FILE) {
		if (n->ino->name == n)
			n->ino->name = NULL;
		if (n->ino->st.st_nlink)
			n->ino->st.st_nlink--;
		n->ino->links--;
		jinode_put(j, n->ino);
	}
	n->ino = NULL;
	free(n->target);
	n->target = NULL;
	n->kind = JN_GONE;
	n->opaque = false;
}

static void jnode_free(struct sbx_journal *j, struct jnode *n)
{
	if (n->announced)
		j->lingering--;
	jnode_unlink_from_table(j, n);
	jnode_clear(j, n);
	free(n->path);
	free(n);
}

static void jnode_set_file(struct sbx_journal *j, struct jnode *n, struct jinode *ino)
{
	ino->links++; /* first: clearing n may drop the last link of this very inode */
	jnode_clear(j, n);
	n->kind = JN_FILE;
	n->ino = ino;
	ino->st.st_nlink++;
	if (!ino->name)
		ino->name = n;
}

static bool node_settled(const struct sbx_journal *j, const struct jnode *n)
{
	if (n->last_seq > j->acked)
		return false;
	if (n->kind == JN_FILE)
		return !n->ino->opens && !n->ino->dirty && n->ino->last_seq <= j->acked;
	return true;
}

/* The last operation that changed n: an announcement of it stands while this is the same. */
static uint64_t node_version(const struct jnode *n)
{
	uint64_t v = n->last_seq;
	return n->kind == JN_FILE && n->ino->last_seq > v ? n->ino->last_seq : v;
}

/* Announced and still as announced: the filesystem's to take. */
static bool node_announced(const struct sbx_journal *j, const struct jnode *n)
{
	return n->announced && node_settled(j, n) && node_version(n) == n->announced_version;
}

/* What the sandbox's answers say of settled n: its attributes there, if they still stand. */
static bool node_sandbox_st(const struct jnode *n, struct stat *st)
{
	const struct jinode *ino = n->kind == JN_FILE ? n->ino : NULL;
	bool known = ino ? ino->sandbox_known && !ino->changed_there &&
				   ino->sandbox_st.st_nlink == 1 /* one name: another's unlink
								    would have changed it */
			 : n->kind == JN_DIR && n->sandbox_known && !n->changed_there;
	if (known)
		*st = ino ? ino->sandbox_st : n->sandbox_st;
	return known;
}

struct settled *journal_settled(struct sbx_journal *j, size_t *count)
{
	struct settled *out = NULL;
	size_t n_out = 0, cap = 0;
	int64_t now = mono_ms();
	for (size_t i = 0; i < j->buckets; i++)
		for (struct jnode *n = j->table[i], *next; n; n = next) {
			next = n->next;
			if (n->kind == JN_DIR && n->opaque && n->made_seq <= j->acked)
				n->opaque = false;
			if (!node_settled(j, n))
				continue;
			bool again = node_announced(j, n);
			if (again && now - n->announced_ms >= HANDOVER_MS) {
				jnode_free(j, n); /* not taken in time: the sandbox answers */
				continue;
			}
			if (again && !n->declined)
				continue; /* the filesystem has yet to take it */
			struct stat st;
			bool has_st = n->kind != JN_GONE && node_sandbox_st(n, &st);
			if (n->kind != JN_GONE) {
				if (n_out == cap) {
					cap = cap ? cap * 2 : 64;
					out = realloc(out, cap * sizeof *out);
					if (!out)
						abort();
				}
				struct settled *o = &out[n_out++];
				*o = (struct settled){ .path = strdup(n->path),
						       .is_dir = n->kind == JN_DIR,
						       .has_st = has_st };
				if (!o->path)
					abort();
				if (has_st) {
					o->st = st;
					if (!n->announced)
						j->lingering++;
					o->handover = n->announced = ++j->announcements;
					n->declined = false;
					if (!again) {
						n->announced_version = node_version(n);
						n->announced_ms = now;
					}
					continue;
				}
			}
			jnode_free(j, n);
		}
	*count = n_out;
	return out;
}

uint64_t journal_handover(struct sbx_journal *j, const char *path, uint64_t handover, bool taken)
{
	struct jnode *n = handover ? jnode_find(j, path) : NULL;
	if (!n || n->announced != handover || !node_announced(j, n))
		return 0; /* changed since, or let go */
	if (!taken) { /* announced again by the next look at what is settled */
		n->declined = true;
		return 0;
	}
	uint64_t blob = n->kind == JN_FILE && clean_keep(j, n->ino) ? n->ino->id : 0;
	jnode_free(j, n);
	return blob;
}

uint64_t sbx_journal_handover(struct sbx *s, const char *path, uint64_t handover, bool taken)
{
	struct sbx_journal *j = s->journal;
	if (!j || !handover)
		return 0;
	pthread_mutex_lock(&j->lock);
	uint64_t blob = journal_handover(j, path, handover, taken);
	pthread_mutex_unlock(&j->lock);
	return blob;
}

/* What the overlay knows of path's existence: 1 it does not exist (removed, or below a
 * directory made here whose children are all nodes), 0 the sandbox knows, -ENOTDIR a file is
 * where a directory would be. */
static int known_absent(struct sbx_journal *j, const char *path)
{
	struct jnode *n = jnode_find(j, path);
	if (n)
		return n->kind == JN_GONE;
	char *p = strdup(path);
	if (!p)
		abort();
	int r = 0;
	for (char *slash; (slash = strrchr(p, '/')) && slash != p;) {
		*slash = 0;
		struct jnode *a = jnode_find(j, p);
		if (!a)
			continue;
		if (a->kind == JN_GONE)
			r = 1;
		else if (a->kind != JN_DIR)
			r = -ENOTDIR;
		else
			r = a->opaque;
		break;
	}
	free(p);
	return r;
}

static struct timespec now_ts(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return ts;
}

/* (A copy of a node, nodes_below's, has its file's attributes in st.) */
static void node_stat(const struct jnode *n, struct stat *st)
{
	*st = n->kind == JN_FILE && n->ino ? n->ino->st : n->st;
}

static void new_stat(struct sbx_journal *j, struct stat *st, mode_t mode)
{
	memset(st, 0, sizeof *st);
	st->st_mode = mode;
	st->st_nlink = S_ISDIR(mode) ? 2 : 1;
	st->st_uid = j->uid;
	st->st_gid = j->gid;
	st->st_blksize = 4096;
	st->st_atim = st->st_mtim = st->st_ctim = now_ts();
}

/* ---- the sandbox's directories, as last seen ----
 *
 * A change in a directory changes the directory's own mtime, and the kernel then asks for its
 * attributes again (a path walk checks its permissions). For a directory only the sandbox
 * holds that would be a round trip, or a timeout while the sandbox is down, on every change
 * in it. So the attributes of directories that went past on their way to the mount are kept
 * (a bounded table, the oldest replaced), and a change journaled in such a directory makes it
 * a node with those attributes and the time of the change, until the change is
 * acknowledged. */

#define DIRSEEN_MAX 4096

struct dirseen {
	char *path;
	struct stat st;
};

void journal_saw_dir(struct sbx_journal *j, const char *path, const struct stat *st)
{
	if (!S_ISDIR(st->st_mode))
		return;
	size_t h = path_hash(path) % DIRSEEN_MAX;
	struct dirseen *e = &j->dirseen[h];
	if (!e->path || strcmp(e->path, path) != 0) {
		free(e->path);
		if (!(e->path = strdup(path)))
			abort();
	}
	e->st = *st;
}

static const struct stat *dirseen_get(struct sbx_journal *j, const char *path)
{
	const struct dirseen *e = &j->dirseen[path_hash(path) % DIRSEEN_MAX];
	return e->path && strcmp(e->path, path) == 0 ? &e->st : NULL;
}

/* The directory of path, as a node for as long as the change made in it at seq is pending
 * (lock held). */
static void touch_parent(struct sbx_journal *j, const char *path, uint64_t seq)
{
	const char *slash = strrchr(path, '/');
	if (!slash || slash == path)
		return;
	char *dir = strndup(path, (size_t)(slash - path));
	if (!dir)
		abort();
	struct jnode *d = jnode_find(j, dir);
	const struct stat *seen = d ? NULL : dirseen_get(j, dir);
	if (seen) {
		d = jnode_get(j, dir);
		d->kind = JN_DIR;
		d->st = *seen;
	}
	if (d && d->kind == JN_DIR) {
		d->st.st_mtim = d->st.st_ctim = now_ts();
		if (d->last_seq < seq)
			d->last_seq = seq;
	}
	free(dir);
}

/* ---- the queue ---- */

static struct jop *jop_new(enum jop_kind kind, const char *path, const char *path2)
{
	struct jop *op = calloc(1, sizeof *op);
	if (!op || !(op->path = strdup(path)) || (path2 && !(op->path2 = strdup(path2))))
		abort();
	op->kind = kind;
	return op;
}

/* Journals op (lock held): it gets the next number, goes to the log and the queue, and the
 * paths it names remember it. */
static uint64_t enqueue(struct sbx_journal *j, struct jop *op, bool replayed)
{
	op->queued_ms = mono_ms();
	if (!replayed)
		op->seq = j->next_seq++;
	else if (op->seq >= j->next_seq)
		j->next_seq = op->seq + 1;
	if (op->kind == JOP_PUT) {
		op->ino->refs++;
		op->ino->dirty = false;
		op->blob = op->ino->id;
		j->bytes_pending += (uint64_t)op->ino->st.st_size;
	}
	if (op->ino)
		op->ino->last_seq = op->seq;
	jnode_get(j, op->path)->last_seq = op->seq;
	if (op->path2 && op->kind != JOP_SYMLINK)
		jnode_get(j, op->path2)->last_seq = op->seq;
	if (op->kind != JOP_SETATTR) { /* names come or go (a put may make one) */
		touch_parent(j, op->path, op->seq);
		if (op->path2 && op->kind != JOP_SYMLINK)
			touch_parent(j, op->path2, op->seq);
	}
	if (!replayed)
		spool_log_op(j, op);
	if (j->tail)
		j->tail->next = op;
	else
		j->head = op;
	j->tail = op;
	j->queued++;
	pthread_cond_broadcast(&j->changed);
	return op->seq;
}

/* Whether the sandbox answered for the op numbered seq and every op before it (lock held);
 * alone: for that op, and so for the ops before it it depends on (journal_upload.c, "the
 * lane": an op after a large put on its way may be answered before it). */
static bool acked(const struct sbx_journal *j, uint64_t seq, bool alone)
{
	if (j->acked >= seq)
		return true;
	if (alone)
		for (const struct jop *op = j->head; op && op->seq <= seq; op = op->next)
			if (op->seq == seq)
				return op->done;
	return false;
}

/* Waits (lock held) until the sandbox acknowledged everything up to seq (alone: seq and what
 * it depends on): 0, or -ETIMEDOUT. */
static int wait_acked(struct sbx_journal *j, uint64_t seq, bool alone, long timeout_ms)
{
	int64_t deadline = mono_ms() + timeout_ms;
	bool asked = false;
	if (!acked(j, seq, alone) && !j->urgent) {
		j->urgent = true;
		pthread_cond_broadcast(&j->changed);
	}
	while (!acked(j, seq, alone) && j->running) {
		if (j->offline && !asked) {
			/* not only the backoff's next try: one now (the sandbox may be back) */
			asked = true;
			j->retries_asked++;
			pthread_cond_broadcast(&j->changed);
		}
		if (mono_cond_wait_until(&j->changed, &j->lock, deadline))
			continue;
		if (j->offline)
			return sbx_fail(-ENOTCONN, "the sandbox does not answer: %zu change%s wait "
					"in the journal (%s) and are sent when it does", j->queued,
					j->queued == 1 ? "" : "s", j->dir);
		return sbx_fail(-ETIMEDOUT, "the sandbox has not acknowledged %zu change%s "
				"within %ld s: they stay in the journal (%s) and are sent "
				"when it answers", j->queued, j->queued == 1 ? "" : "s",
				timeout_ms / 1000, j->dir);
	}
	return acked(j, seq, alone) ? 0 : sbx_fail(-EIO, "the journal stopped");
}

/* Everything journaled so far acknowledged (for what must see the sandbox as the mount does). */
static int drain(struct sbx_journal *j)
{
	if (upload_is_self() || passing)
		return 0;
	return wait_acked(j, j->next_seq - 1, false, j->s->deadline_ms);
}

/* Journals the content of n's file, with its mode and times (lock held). A put reads the
 * content when it is sent: one of the same file and name last in the queue, not sent yet,
 * takes the new mode and times instead of a second upload of the same bytes (a shell's `>`
 * and dd flush once before they write: they dup2 the new file and close it). Logged again
 * with its number, which the replay reads as the newer copy of the same op. */
static void journal_put(struct sbx_journal *j, struct jnode *n)
{
	struct jinode *ino = n->ino;
	struct jop *last = j->tail;
	if (last && last->kind == JOP_PUT && !last->sent && last->ino == ino &&
	    strcmp(last->path, n->path) == 0) {
		last->mode = ino->st.st_mode & 07777;
		last->atime = ino->st.st_atim;
		last->mtime = ino->st.st_mtim;
		ino->dirty = false;
		spool_log_op(j, last);
		return;
	}
	struct jop *op = jop_new(JOP_PUT, n->path, NULL);
	op->ino = ino;
	op->mode = ino->st.st_mode & 07777;
	op->atime = ino->st.st_atim;
	op->mtime = ino->st.st_mtim;
	op->expect_absent = ino->expect_absent;
	op->expect_stat = ino->expect_stat;
	op->expect_size = ino->expect_size;
	op->expect_mtime = ino->expect_mtime;
	ino->expect_absent = ino->expect_stat = false; /* only the first put knows */
	enqueue(j, op, false);
}

/* One name of ino (lock held): NULL when it has none left. */
static struct jnode *name_of(struct sbx_journal *j, struct jinode *ino)
{
	if (ino->name || !ino->links)
		return ino->name;
	for (size_t i = 0; i < j->buckets; i++)
		for (struct jnode *n = j->table[i]; n; n = n->next)
			if (n->kind == JN_FILE && n->ino == ino)
				return ino->name = n;
	return NULL;
}

/* A dirty inode's content journaled under one of its names (lock held). */
static void put_if_dirty(struct sbx_journal *j, struct jinode *ino)
{
	if (!ino->dirty)
		return;
	struct jnode *n = name_of(j, ino);
	if (n)
		journal_put(j, n);
	else
		ino->dirty = false; /* no name left: nothing to upload */
}

/* ---- the backend's operations ---- */

static int j_lstat(struct sbx *s, const char *path, struct stat *st, char **target)
{
	struct sbx_journal *j = J(s);
	pthread_mutex_lock(&j->lock);
	struct jnode *n = jnode_find(j, path);
	int absent = known_absent(j, path);
	if (n && n->kind != JN_GONE) {
		node_stat(n, st);
		if (target && n->kind == JN_SYMLINK)
			*target = strdup(n->target);
	}
	pthread_mutex_unlock(&j->lock);
	if (n && n->kind != JN_GONE)
		return 0;
	if (absent < 0)
		return sbx_fail(absent, "lstat %s: %s", path, strerror(-absent));
	if (absent)
		return sbx_fail(-ENOENT, "lstat %s: %s", path, strerror(ENOENT));
	int err = INNER(j->inner->lstat(s, path, st, target));
	if (!err && S_ISDIR(st->st_mode)) {
		pthread_mutex_lock(&j->lock);
		journal_saw_dir(j, path, st);
		pthread_mutex_unlock(&j->lock);
	}
	return err;
}

struct listing {
	struct sbx_dirent *ents;
	size_t n, cap;
};

static void listing_set(struct listing *l, const char *name, const struct jnode *n)
{
	size_t i = 0;
	while (i < l->n && strcmp(l->ents[i].name, name) != 0)
		i++;
	if (n->kind == JN_GONE) {
		if (i < l->n) {
			free(l->ents[i].name);
			free(l->ents[i].target);
			l->ents[i] = l->ents[--l->n];
		}
		return;
	}
	if (i == l->n) {
		if (l->n == l->cap) {
			l->cap = l->cap ? l->cap * 2 : 16;
			l->ents = realloc(l->ents, l->cap * sizeof *l->ents);
			if (!l->ents)
				abort();
		}
		l->ents[l->n++] = (struct sbx_dirent){ .name = strdup(name) };
	} else {
		free(l->ents[i].target);
		l->ents[i].target = NULL;
	}
	node_stat(n, &l->ents[i].st);
	if (n->kind == JN_SYMLINK && n->target)
		l->ents[i].target = strdup(n->target);
}

/* The overlay's nodes below dir (direct: only its entries), copied (lock held): what a
 * listing of the sandbox is merged with. */
static struct jnode *nodes_below(struct sbx_journal *j, const char *dir, bool direct,
				 size_t *count)
{
	size_t dl = strlen(dir), n = 0, cap = 0;
	struct jnode *out = NULL;
	for (size_t i = 0; i < j->buckets; i++)
		for (struct jnode *c = j->table[i]; c; c = c->next) {
			if (strncmp(c->path, dir, dl) != 0 || c->path[dl] != '/' ||
			    (direct && strchr(c->path + dl + 1, '/')))
				continue;
			if (n == cap) {
				cap = cap ? cap * 2 : 16;
				out = realloc(out, cap * sizeof *out);
				if (!out)
					abort();
			}
			out[n] = *c;
			if (!(out[n].path = strdup(c->path)))
				abort();
			out[n].target = c->kind == JN_SYMLINK ? strdup(c->target) : NULL;
			if (c->kind == JN_FILE)
				out[n].st = c->ino->st;
			out[n].ino = NULL;
			n++;
		}
	*count = n;
	return out;
}

static int j_readdir(struct sbx *s, const char *path, struct sbx_dirent **ents, size_t *n)
{
	struct sbx_journal *j = J(s);
	pthread_mutex_lock(&j->lock);
	struct jnode *d = jnode_find(j, path);
	int absent = known_absent(j, path);
	bool opaque = d && d->kind == JN_DIR && d->opaque;
	bool notdir = d && d->kind != JN_DIR && d->kind != JN_GONE;
	size_t nc = 0;
	struct jnode *kids = nodes_below(j, path, true, &nc);
	pthread_mutex_unlock(&j->lock);
	struct listing l = { 0 };
	int err = 0;
	if (notdir || absent)
		err = sbx_fail(notdir || absent < 0 ? -ENOTDIR : -ENOENT, "readdir %s: %s", path,
			       strerror(notdir || absent < 0 ? ENOTDIR : ENOENT));
	else if (!opaque)
		err = INNER(j->inner->readdir(s, path, &l.ents, &l.n));
	l.cap = l.n;
	if (!err && l.n) {
		pthread_mutex_lock(&j->lock);
		for (size_t i = 0; i < l.n; i++)
			if (S_ISDIR(l.ents[i].st.st_mode)) {
				char *p;
				if (asprintf(&p, "%s/%s", path, l.ents[i].name) < 0)
					abort();
				journal_saw_dir(j, p, &l.ents[i].st);
				free(p);
			}
		pthread_mutex_unlock(&j->lock);
	}
	for (size_t i = 0; i < nc; i++) {
		if (!err)
			listing_set(&l, strrchr(kids[i].path, '/') + 1, &kids[i]);
		free(kids[i].path);
		free(kids[i].target);
	}
	free(kids);
	if (err) {
		sbx_dirents_free(l.ents, l.n);
		return err;
	}
	*ents = l.ents;
	*n = l.n;
	return 0;
}

struct tree_merge {
	sbx_tree_fn fn;
	void *arg;
	struct jnode *below;
	size_t n;
};

/* One directory of the sandbox's subtree, as the mount shows it: the snapshot's changes
 * applied; a directory the mount removed (or one below it) is not passed on. */
static void merge_listing(void *arg, const char *dir, const struct sbx_dirent *ents, size_t n)
{
	struct tree_merge *m = arg;
	size_t dl = strlen(dir);
	for (size_t i = 0; i < m->n; i++) {
		const char *p = m->below[i].path;
		size_t pl = strlen(p);
		if (m->below[i].kind != JN_DIR && pl <= dl && strncmp(dir, p, pl) == 0 &&
		    (dir[pl] == 0 || dir[pl] == '/'))
			return;
	}
	struct listing l = { .cap = n, .n = n };
	l.ents = calloc(n ? n : 1, sizeof *l.ents);
	if (!l.ents)
		abort();
	for (size_t i = 0; i < n; i++) {
		l.ents[i] = ents[i];
		l.ents[i].name = strdup(ents[i].name);
		l.ents[i].target = ents[i].target ? strdup(ents[i].target) : NULL;
	}
	for (size_t i = 0; i < m->n; i++) {
		const char *p = m->below[i].path;
		if (strncmp(p, dir, dl) == 0 && p[dl] == '/' && !strchr(p + dl + 1, '/'))
			listing_set(&l, p + dl + 1, &m->below[i]);
	}
	m->fn(m->arg, dir, l.ents, l.n);
	sbx_dirents_free(l.ents, l.n);
}

static int j_readtree(struct sbx *s, const char *path, size_t max_entries, sbx_tree_fn fn,
		      void *arg, bool *truncated)
{
	struct sbx_journal *j = J(s);
	if (!j->inner->readtree)
		return sbx_fail(-ENOSYS, "readtree: not with this backend");
	pthread_mutex_lock(&j->lock);
	struct jnode *d = jnode_find(j, path);
	bool local = known_absent(j, path) || (d && (d->kind != JN_DIR || d->opaque));
	struct tree_merge m = { .fn = fn, .arg = arg };
	if (!local)
		m.below = nodes_below(j, path, false, &m.n);
	pthread_mutex_unlock(&j->lock);
	if (local) /* the sandbox has nothing of it yet: listings come from readdir */
		return sbx_fail(-ENOSYS, "readtree %s: made by the mount, not yet in the sandbox", path);
	int err = INNER(j->inner->readtree(s, path, max_entries, merge_listing, &m, truncated));
	for (size_t i = 0; i < m.n; i++) {
		free(m.below[i].path);
		free(m.below[i].target);
	}
	free(m.below);
	return err;
}

static int j_mkdir(struct sbx *s, const char *path, mode_t mode, struct stat *st)
{
	struct sbx_journal *j = J(s);
	pthread_mutex_lock(&j->lock);
	struct jnode *n = jnode_find(j, path);
	int err = 0;
	if (n && n->kind != JN_GONE) {
		err = sbx_fail(-EEXIST, "mkdir %s: %s", path, strerror(EEXIST));
	} else {
		n = jnode_get(j, path);
		n->kind = JN_DIR;
		new_stat(j, &n->st, S_IFDIR | (mode & 07777));
		n->opaque = true;
		struct jop *op = jop_new(JOP_MKDIR, path, NULL);
		op->mode = mode & 07777;
		n->made_seq = enqueue(j, op, false);
		if (st)
			*st = n->st;
	}
	pthread_mutex_unlock(&j->lock);
	return err;
}

static int j_unlink(struct sbx *s, const char *path)
{
	struct sbx_journal *j = J(s);
	pthread_mutex_lock(&j->lock);
	struct jnode *n = jnode_find(j, path);
	int err = 0;
	if (n && n->kind == JN_DIR)
		err = sbx_fail(-EISDIR, "unlink %s: %s", path, strerror(EISDIR));
	else if (known_absent(j, path))
		err = sbx_fail(-ENOENT, "unlink %s: %s", path, strerror(ENOENT));
	if (!err) {
		n = jnode_get(j, path);
		struct jinode *kept = n->kind == JN_FILE && n->ino->links > 1 ? n->ino : NULL;
		jnode_clear(j, n);
		struct jop *op = jop_new(JOP_UNLINK, path, NULL);
		if (kept) { /* its answer says how the other names' file is now */
			op->unlinked = kept;
			kept->refs++;
		}
		enqueue(j, op, false);
		if (kept)
			kept->last_seq = op->seq;
	}
	pthread_mutex_unlock(&j->lock);
	return err;
}

/* The rmdir of a directory known to be empty, journaled. */
static int rmdir_journaled(struct sbx_journal *j, const char *path)
{
	int err = 0;
	pthread_mutex_lock(&j->lock);
	struct jnode *n = jnode_get(j, path);
	if (n->kind != JN_GONE && n->kind != JN_DIR) {
		err = sbx_fail(-ENOTDIR, "rmdir %s: %s", path, strerror(ENOTDIR));
	} else {
		jnode_clear(j, n);
		enqueue(j, jop_new(JOP_RMDIR, path, NULL), false);
	}
	pthread_mutex_unlock(&j->lock);
	return err;
}

static int j_rmdir(struct sbx *s, const char *path)
{
	struct sbx_journal *j = J(s);
	struct sbx_dirent *ents;
	size_t count;
	int err = j_readdir(s, path, &ents, &count);
	if (err)
		return err;
	sbx_dirents_free(ents, count);
	if (count)
		return sbx_fail(-ENOTEMPTY, "rmdir %s: %s", path, strerror(ENOTEMPTY));
	return rmdir_journaled(j, path);
}

bool sbx_journal_holds(struct sbx *s, const char *path)
{
	struct sbx_journal *j = s->journal;
	if (!j)
		return false;
	pthread_mutex_lock(&j->lock);
	bool held = jnode_find(j, path) != NULL;
	pthread_mutex_unlock(&j->lock);
	return held;
}

int sbx_journal_rmdir_empty(struct sbx *s, const char *path)
{
	struct sbx_journal *j = s->journal;
	return j ? rmdir_journaled(j, path) : -ENOSYS;
}

/* After the backend itself renamed from to `to`: the nodes below from are below to now (open
 * files of a moved directory), and what the overlay had at to is gone. Lock held. */
static void moved_by_backend(struct sbx_journal *j, const char *from, const char *to)
{
	struct jnode *t = jnode_find(j, to);
	if (t)
		jnode_free(j, t);
	size_t fl = strlen(from);
	for (size_t i = 0; i < j->buckets; i++)
		for (struct jnode *c = j->table[i], *next; c; c = next) {
			next = c->next;
			if (strncmp(c->path, from, fl) != 0 || (c->path[fl] && c->path[fl] != '/'))
				continue;
			char *np;
			if (asprintf(&np, "%s%s", to, c->path + fl) < 0)
				abort();
			jnode_unlink_from_table(j, c);
			free(c->path);
			c->path = np;
			struct jnode *old = jnode_find(j, np);
			if (old)
				jnode_free(j, old);
			size_t b = path_hash(np) % j->buckets;
			c->next = j->table[b];
			j->table[b] = c;
			j->nodes++;
		}
}

static int j_rename(struct sbx *s, const char *from, const char *to, unsigned flags)
{
	struct sbx_journal *j = J(s);
	pthread_mutex_lock(&j->lock);
	struct jnode *a = jnode_find(j, from);
	struct jnode *b = jnode_find(j, to);
	bool local = !flags && a && (a->kind == JN_FILE || a->kind == JN_SYMLINK) &&
		     !(b && b->kind == JN_DIR) && known_absent(j, to) >= 0;
	if (local) {
		if (a->kind == JN_FILE)
			put_if_dirty(j, a->ino); /* the rename must find the content there */
		b = jnode_get(j, to);
		if (a->kind == JN_FILE) {
			jnode_set_file(j, b, a->ino);
		} else {
			jnode_clear(j, b);
			b->kind = JN_SYMLINK;
			b->st = a->st;
			b->target = strdup(a->target);
		}
		jnode_clear(j, a);
		enqueue(j, jop_new(JOP_RENAME, from, to), false);
		pthread_mutex_unlock(&j->lock);
		return 0;
	}
	int err = drain(j);
	pthread_mutex_unlock(&j->lock);
	if (err)
		return err;
	err = INNER(j->inner->rename(s, from, to, flags));
	if (err)
		return err;
	pthread_mutex_lock(&j->lock);
	moved_by_backend(j, from, to);
	pthread_mutex_unlock(&j->lock);
	return 0;
}

static int j_symlink(struct sbx *s, const char *target, const char *path, struct stat *st)
{
	struct sbx_journal *j = J(s);
	pthread_mutex_lock(&j->lock);
	struct jnode *n = jnode_find(j, path);
	int err = 0;
	if (n && n->kind != JN_GONE) {
		err = sbx_fail(-EEXIST, "symlink %s: %s", path, strerror(EEXIST));
	} else {
		n = jnode_get(j, path);
		n->kind = JN_SYMLINK;
		new_stat(j, &n->st, S_IFLNK | 0777);
		n->st.st_size = (off_t)strlen(target);
		n->target = strdup(target);
		enqueue(j, jop_new(JOP_SYMLINK, path, target), false);
		if (st)
			*st = n->st;
	}
	pthread_mutex_unlock(&j->lock);
	return err;
}

static int j_readlink(struct sbx *s, const char *path, char **target)
{
	struct sbx_journal *j = J(s);
	pthread_mutex_lock(&j->lock);
	struct jnode *n = jnode_find(j, path);
	int absent = known_absent(j, path);
	int err = 1;
	if (n && n->kind == JN_SYMLINK) {
		*target = strdup(n->target);
		err = 0;
	} else if (n && n->kind != JN_GONE) {
		err = sbx_fail(-EINVAL, "readlink %s: %s", path, strerror(EINVAL));
	} else if (absent) {
		err = sbx_fail(-ENOENT, "readlink %s: %s", path, strerror(ENOENT));
	}
	pthread_mutex_unlock(&j->lock);
	return err <= 0 ? err : INNER(j->inner->readlink(s, path, target));
}

static int j_link(struct sbx *s, const char *from, const char *to, struct stat *st)
{
	struct sbx_journal *j = J(s);
	pthread_mutex_lock(&j->lock);
	struct jnode *a = jnode_find(j, from);
	struct jnode *b = jnode_find(j, to);
	if (a && a->kind == JN_FILE && !(b && b->kind != JN_GONE)) {
		b = jnode_get(j, to);
		jnode_set_file(j, b, a->ino);
		put_if_dirty(j, a->ino); /* the link must find the content there */
		enqueue(j, jop_new(JOP_LINK, from, to), false);
		if (st)
			*st = a->ino->st;
		pthread_mutex_unlock(&j->lock);
		return 0;
	}
	if (b && b->kind != JN_GONE) {
		pthread_mutex_unlock(&j->lock);
		return sbx_fail(-EEXIST, "link %s: %s", to, strerror(EEXIST));
	}
	int err = drain(j);
	pthread_mutex_unlock(&j->lock);
	if (err)
		return err;
	err = INNER(j->inner->link(s, from, to, st));
	if (!err) {
		pthread_mutex_lock(&j->lock);
		moved_by_backend(j, to, to);
		pthread_mutex_unlock(&j->lock);
	}
	return err;
}

static int j_statfs(struct sbx *s, const char *path, struct statvfs *sv)
{
	return INNER(J(s)->inner->statfs(s, path, sv));
}

/* Applies valid/want to what node n shows and journals it (lock held). */
static int setattr_local(struct sbx_journal *j, struct jnode *n, unsigned valid,
			 const struct stat *want, struct stat *st, bool journal)
{
	struct stat *cur = n->kind == JN_FILE ? &n->ino->st : &n->st;
	if (valid & SBX_SET_SIZE) {
		if (n->kind != JN_FILE)
			return sbx_fail(-EISDIR, "truncate %s: %s", n->path, strerror(EISDIR));
		if (ftruncate(n->ino->fd, want->st_size) < 0)
			return sbx_fail(-errno, "truncate %s in the journal: %s", n->path,
					strerror(errno));
		cur->st_size = want->st_size;
		cur->st_blocks = (want->st_size + 511) / 512;
		cur->st_mtim = now_ts();
		n->ino->dirty = true;
	}
	struct timespec now = now_ts();
	if (valid & SBX_SET_MODE)
		cur->st_mode = (cur->st_mode & S_IFMT) | (want->st_mode & 07777);
	if (valid & SBX_SET_UID)
		cur->st_uid = want->st_uid;
	if (valid & SBX_SET_GID)
		cur->st_gid = want->st_gid;
	if (valid & SBX_SET_ATIME)
		cur->st_atim = want->st_atim.tv_nsec == UTIME_NOW ? now : want->st_atim;
	if (valid & SBX_SET_MTIME)
		cur->st_mtim = want->st_mtim.tv_nsec == UTIME_NOW ? now : want->st_mtim;
	cur->st_ctim = now;
	unsigned sent = valid & (SBX_SET_MODE | SBX_SET_UID | SBX_SET_GID | SBX_SET_ATIME |
				 SBX_SET_MTIME);
	if (!journal) {
		/* only the open file of a removed name sees it */
	} else if (n->kind == JN_FILE && n->ino->dirty) {
		/* the put that the dirty content needs carries modes and times anyway */
		journal_put(j, n);
	} else if (sent) {
		struct jop *op = jop_new(JOP_SETATTR, n->path, NULL);
		op->valid = sent;
		op->mode = cur->st_mode & 07777;
		op->uid = cur->st_uid;
		op->gid = cur->st_gid;
		op->atime = cur->st_atim;
		op->mtime = cur->st_mtim;
		enqueue(j, op, false);
	}
	if (st)
		*st = *cur;
	return 0;
}

static int j_setattr(struct sbx *s, const char *path, unsigned valid, const struct stat *want,
		     struct stat *st)
{
	struct sbx_journal *j = J(s);
	pthread_mutex_lock(&j->lock);
	struct jnode *n = jnode_find(j, path);
	int err;
	if (n && n->kind != JN_GONE) {
		err = setattr_local(j, n, valid, want, st, true);
		pthread_mutex_unlock(&j->lock);
		return err;
	}
	if (known_absent(j, path)) {
		pthread_mutex_unlock(&j->lock);
		return sbx_fail(-ENOENT, "setattr %s: %s", path, strerror(ENOENT));
	}
	err = drain(j);
	pthread_mutex_unlock(&j->lock);
	return err ? err : INNER(j->inner->setattr(s, path, valid, want, st));
}

/* ---- files ---- */

static struct jinode *jinode_new(struct sbx_journal *j, mode_t mode)
{
	struct jinode *ino = calloc(1, sizeof *ino);
	if (!ino)
		abort();
	ino->fd = spool_blob_new(j, &ino->id);
	if (ino->fd < 0) {
		int err = ino->fd;
		free(ino);
		errno = -err;
		return NULL;
	}
	new_stat(j, &ino->st, S_IFREG | (mode & 07777));
	ino->st.st_nlink = 0; /* its names count themselves in (jnode_set_file) */
	return ino;
}

static struct sbx_file *jfile_new(struct sbx_journal *j, struct jinode *ino, int flags);

/* Copies the sandbox's file into a blob, for a write that does not replace it all. */
static int fetch_whole(struct sbx_journal *j, const char *path, int fd, off_t size)
{
	char *buf = malloc(1 << 20);
	if (!buf)
		abort();
	int err = 0;
	for (off_t off = 0; off < size && !err;) {
		ssize_t got = INNER(j->inner->pread_path(j->s, path, buf, 1 << 20, off));
		if (got < 0)
			err = (int)got;
		else if (got == 0)
			break;
		else if (pwrite(fd, buf, (size_t)got, off) != got)
			err = sbx_fail(-errno, "%s: writing the journal: %s", path, strerror(errno));
		else
			off += got;
	}
	free(buf);
	return err;
}

static int j_file_open(struct sbx *s, const char *path, int flags, mode_t mode,
		       struct sbx_file **out, struct stat *st)
{
	struct sbx_journal *j = J(s);
	bool writing = (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
	pthread_mutex_lock(&j->lock);
	struct jnode *n = jnode_find(j, path);
	int absent = known_absent(j, path);
	if (n && n->kind == JN_DIR && writing) {
		pthread_mutex_unlock(&j->lock);
		return sbx_fail(-EISDIR, "open %s: %s", path, strerror(EISDIR));
	}
	if (n && n->kind == JN_FILE) {
		if ((flags & O_CREAT) && (flags & O_EXCL)) {
			pthread_mutex_unlock(&j->lock);
			return sbx_fail(-EEXIST, "open %s: %s", path, strerror(EEXIST));
		}
		if ((flags & O_TRUNC) && n->ino->st.st_size) {
			if (ftruncate(n->ino->fd, 0) < 0) {
				int e = errno;
				pthread_mutex_unlock(&j->lock);
				return sbx_fail(-e, "open %s: truncating: %s", path, strerror(e));
			}
			n->ino->st.st_size = n->ino->st.st_blocks = 0;
			n->ino->st.st_mtim = n->ino->st.st_ctim = now_ts();
			n->ino->dirty = true;
		}
		*out = jfile_new(j, n->ino, flags);
		if (st)
			*st = n->ino->st;
		pthread_mutex_unlock(&j->lock);
		return 0;
	}
	if (absent < 0 || (absent && !(flags & O_CREAT))) {
		pthread_mutex_unlock(&j->lock);
		int e = absent < 0 ? ENOTDIR : ENOENT;
		return sbx_fail(-e, "open %s: %s", path, strerror(e));
	}
	bool create_new = absent || ((flags & O_CREAT) && (flags & (O_EXCL | SBX_O_NEW)));
	pthread_mutex_unlock(&j->lock);

	struct stat cur = { 0 };
	int err = 0;
	if (!create_new) {
		if (!writing)
			return INNER(j->inner->file_open(s, path, flags & ~SBX_O_NEW, mode, out, st));
		err = INNER(j->inner->lstat(s, path, &cur, NULL));
		if (err == -ENOENT && (flags & O_CREAT))
			create_new = true, err = 0;
		else if (!err && S_ISDIR(cur.st_mode))
			err = sbx_fail(-EISDIR, "open %s: %s", path, strerror(EISDIR));
		else if (!err && !S_ISREG(cur.st_mode))
			return INNER(j->inner->file_open(s, path, flags & ~SBX_O_NEW, mode, out, st));
		if (err)
			return err;
		if (!create_new && !(flags & O_TRUNC) && cur.st_size > FETCH_MAX) {
			/* too big to copy: written in place, after the journal is through */
			pthread_mutex_lock(&j->lock);
			err = drain(j);
			pthread_mutex_unlock(&j->lock);
			return err ? err : j->inner->file_open(s, path, flags & ~SBX_O_NEW, mode,
								 out, st);
		}
	}
	struct jinode *ino = jinode_new(j, create_new ? mode : cur.st_mode);
	if (!ino)
		return sbx_fail(-errno, "open %s: the journal: %s", path, strerror(errno));
	if (!create_new) {
		ino->st.st_uid = cur.st_uid;
		ino->st.st_gid = cur.st_gid;
		ino->st.st_atim = cur.st_atim;
		ino->st.st_mtim = cur.st_mtim;
		ino->st.st_ino = cur.st_ino; /* rewritten in place: the sandbox's file still */
		ino->st.st_nlink = cur.st_nlink ? cur.st_nlink - 1 : 0; /* its other names */
		if (!(flags & O_TRUNC)) {
			err = fetch_whole(j, path, ino->fd, cur.st_size);
			ino->st.st_size = cur.st_size;
			ino->st.st_blocks = (cur.st_size + 511) / 512;
		} else {
			ino->st.st_mtim = now_ts();
		}
	}
	pthread_mutex_lock(&j->lock);
	n = jnode_find(j, path);
	if (!err && n && n->kind != JN_GONE) /* made meanwhile through the mount */
		err = sbx_fail(-EAGAIN, "open %s: changed while it was opened", path);
	if (err) {
		jinode_put(j, ino);
		pthread_mutex_unlock(&j->lock);
		return err;
	}
	n = jnode_get(j, path);
	jnode_set_file(j, n, ino);
	if (create_new) /* a name came: its directory changed (its put will come later) */
		touch_parent(j, path, j->next_seq);
	/* journaled at its first flush (or before anything that names it), with what the
	 * sandbox held there, so that a change made there meanwhile is seen */
	ino->dirty = create_new || (flags & O_TRUNC);
	ino->expect_absent = create_new;
	ino->expect_stat = !create_new;
	ino->expect_size = cur.st_size;
	ino->expect_mtime = cur.st_mtim;
	*out = jfile_new(j, ino, flags);
	if (st)
		*st = ino->st;
	pthread_mutex_unlock(&j->lock);
	return 0;
}

/* Copies len bytes of src into dst from the start; 0 or -errno. */
static int copy_blob(int src, int dst, off_t len)
{
	loff_t in = 0, out = 0;
	while (in < len) {
		ssize_t n = copy_file_range(src, &in, dst, &out, (size_t)(len - in), 0);
		if (n > 0)
			continue;
		if (n == 0)
			return -EIO; /* shorter than it was */
		if (errno != EXDEV && errno != ENOSYS && errno != EINVAL)
			return -errno;
		char buf[65536]; /* a filesystem that cannot: by hand */
		ssize_t got = pread(src, buf, sizeof buf, in);
		if (got <= 0)
			return got < 0 ? -errno : -EIO;
		if (pwrite(dst, buf, (size_t)got, out) != got)
			return -errno;
		in += got;
		out += got;
	}
	return 0;
}

int sbx_journal_adopt_clean(struct sbx *s, const char *path, uint64_t blob, const struct stat *st)
{
	struct sbx_journal *j = s->journal;
	if (!j || !blob || !S_ISREG(st->st_mode) || st->st_nlink != 1 || st->st_size > FETCH_MAX)
		return -ENOENT;
	pthread_mutex_lock(&j->lock);
	int src = -1;
	struct jinode *ino = NULL;
	if (jnode_find(j, path) || known_absent(j, path) || (src = spool_blob_open(j, blob)) < 0 ||
	    !(ino = jinode_new(j, st->st_mode)) || copy_blob(src, ino->fd, st->st_size)) {
		if (ino)
			jinode_put(j, ino);
		if (src >= 0)
			close(src);
		pthread_mutex_unlock(&j->lock);
		return -ENOENT;
	}
	close(src);
	ino->st = *st;
	ino->st.st_nlink = 0; /* its name counts itself in */
	ino->sandbox_st = *st;
	ino->sandbox_known = ino->adopted = true;
	/* a put of it, if one comes, is a rewrite of what the sandbox holds */
	ino->expect_stat = true;
	ino->expect_size = st->st_size;
	ino->expect_mtime = st->st_mtim;
	jnode_set_file(j, jnode_get(j, path), ino);
	pthread_mutex_unlock(&j->lock);
	return 0;
}

static const struct sbx_ops *journal_ops(void);

struct sbx_file *journal_file_new(struct sbx_journal *j, struct jinode *ino, int flags)
{
	return jfile_new(j, ino, flags);
}

static struct sbx_file *jfile_new(struct sbx_journal *j, struct jinode *ino, int flags)
{
	struct jfile *f = calloc(1, sizeof *f);
	if (!f)
		abort();
	f->base.ops = journal_ops();
	f->base.s = j->s;
	f->j = j;
	f->ino = ino;
	f->writable = (flags & O_ACCMODE) != O_RDONLY;
	f->append = flags & O_APPEND;
	ino->opens++;
	ino->writers += f->writable;
	return &f->base;
}

static struct jfile *JF(struct sbx_file *f) { return (struct jfile *)f; }

/* The path of an open clean copy that follows the sandbox now (caller frees), else NULL. */
static char *clean_stale_path(struct jfile *jf)
{
	pthread_mutex_lock(&jf->j->lock);
	char *p = jf->ino->clean_path && jf->ino->clean_stale ? strdup(jf->ino->clean_path) : NULL;
	pthread_mutex_unlock(&jf->j->lock);
	return p;
}

static ssize_t jf_pread(struct sbx_file *f, void *buf, size_t len, off_t off)
{
	char *there = clean_stale_path(JF(f));
	if (there) {
		ssize_t r = INNER(JF(f)->j->inner->pread_path(f->s, there, buf, len, off));
		free(there);
		return r;
	}
	ssize_t r = pread(JF(f)->ino->fd, buf, len, off);
	return r < 0 ? sbx_fail(-errno, "read: the journal: %s", strerror(errno)) : r;
}

static ssize_t jf_pwrite(struct sbx_file *f, const void *buf, size_t len, off_t off)
{
	struct jfile *jf = JF(f);
	struct sbx_journal *j = jf->j;
	pthread_mutex_lock(&j->lock);
	struct stat *st = &jf->ino->st;
	if (jf->append) /* at the end as this file knows it, which the kernel may not */
		off = st->st_size;
	ssize_t r = pwrite(jf->ino->fd, buf, len, off);
	if (r < 0) {
		int e = errno;
		pthread_mutex_unlock(&j->lock);
		return sbx_fail(-e, "write: the journal: %s", strerror(e));
	}
	if (off + r > st->st_size) {
		st->st_size = off + r;
		st->st_blocks = (st->st_size + 511) / 512;
	}
	st->st_mtim = st->st_ctim = now_ts();
	jf->ino->dirty = true;
	pthread_mutex_unlock(&j->lock);
	return r;
}

/* The error an upload of this file met for good, reported once (lock held). */
static int take_error(struct jinode *ino)
{
	int err = ino->error;
	ino->error = 0;
	return err;
}

static int jf_flush(struct sbx_file *f)
{
	struct jfile *jf = JF(f);
	struct sbx_journal *j = jf->j;
	pthread_mutex_lock(&j->lock);
	put_if_dirty(j, jf->ino);
	int err = take_error(jf->ino);
	pthread_mutex_unlock(&j->lock);
	return err;
}

static int jf_fsync(struct sbx_file *f, bool datasync)
{
	(void)datasync;
	struct jfile *jf = JF(f);
	struct sbx_journal *j = jf->j;
	pthread_mutex_lock(&j->lock);
	put_if_dirty(j, jf->ino);
	int err = wait_acked(j, jf->ino->last_seq, true, j->s->deadline_ms);
	if (!err)
		err = take_error(jf->ino);
	pthread_mutex_unlock(&j->lock);
	return err;
}

static int jf_fstat(struct sbx_file *f, struct stat *st)
{
	struct jfile *jf = JF(f);
	char *there = clean_stale_path(jf);
	if (there) {
		int err = INNER(jf->j->inner->lstat(f->s, there, st, NULL));
		free(there);
		return err;
	}
	pthread_mutex_lock(&jf->j->lock);
	*st = jf->ino->st;
	pthread_mutex_unlock(&jf->j->lock);
	return 0;
}

static int jf_setattr(struct sbx_file *f, unsigned valid, const struct stat *want,
		      struct stat *st)
{
	struct jfile *jf = JF(f);
	struct sbx_journal *j = jf->j;
	pthread_mutex_lock(&j->lock);
	if (jf->ino->clean_path) { /* a clean copy: what changes is the file at its path */
		char *path = strdup(jf->ino->clean_path);
		pthread_mutex_unlock(&j->lock);
		if (!path)
			abort();
		int err = j_setattr(f->s, path, valid, want, st);
		free(path);
		return err;
	}
	struct jnode *named = name_of(j, jf->ino);
	struct jnode removed = { .path = "(deleted)", .kind = JN_FILE, .ino = jf->ino };
	int err = setattr_local(j, named ? named : &removed, valid, want, st, named != NULL);
	if (!named)
		jf->ino->dirty = false;
	pthread_mutex_unlock(&j->lock);
	return err;
}

static int jf_ftruncate(struct sbx_file *f, off_t size)
{
	struct stat want = { .st_size = size };
	return jf_setattr(f, SBX_SET_SIZE, &want, NULL);
}

static int jf_noop(struct sbx_file *f)
{
	(void)f;
	return 0;
}

static int jf_set_path(struct sbx_file *f, const char *path)
{
	struct jfile *jf = JF(f);
	pthread_mutex_lock(&jf->j->lock);
	if (jf->ino->clean_path) { /* the journal followed other renames itself */
		char *p = strdup(path);
		if (!p)
			abort();
		free(jf->ino->clean_path);
		jf->ino->clean_path = p;
	}
	pthread_mutex_unlock(&jf->j->lock);
	return 0;
}

static int jf_close(struct sbx_file *f)
{
	struct jfile *jf = JF(f);
	struct sbx_journal *j = jf->j;
	pthread_mutex_lock(&j->lock);
	put_if_dirty(j, jf->ino);
	int err = take_error(jf->ino);
	jf->ino->opens--;
	jf->ino->writers -= jf->writable;
	pthread_cond_broadcast(&j->changed); /* an upload may have waited for this close */
	struct jinode *ino = jf->ino;
	jinode_put(j, ino);
	pthread_mutex_unlock(&j->lock);
	free(jf);
	return err;
}

static int j_read_all(struct sbx *s, const char *path, char **data, size_t *len)
{
	struct sbx_journal *j = J(s);
	pthread_mutex_lock(&j->lock);
	struct jnode *n = jnode_find(j, path);
	if (!n || n->kind != JN_FILE) {
		int absent = known_absent(j, path);
		pthread_mutex_unlock(&j->lock);
		if (absent)
			return sbx_fail(-ENOENT, "read %s: %s", path, strerror(ENOENT));
		return INNER(j->inner->read_all(s, path, data, len));
	}
	struct sbx_file *f = jfile_new(j, n->ino, O_RDONLY);
	size_t size = (size_t)n->ino->st.st_size;
	pthread_mutex_unlock(&j->lock);
	*data = malloc(size + 1);
	if (!*data)
		abort();
	ssize_t got = jf_pread(f, *data, size, 0);
	jf_close(f);
	if (got < 0) {
		free(*data);
		*data = NULL;
		return (int)got;
	}
	(*data)[got] = 0;
	*len = (size_t)got;
	return 0;
}

static ssize_t j_pread_path(struct sbx *s, const char *path, void *buf, size_t len, off_t off)
{
	struct sbx_journal *j = J(s);
	pthread_mutex_lock(&j->lock);
	struct jnode *n = jnode_find(j, path);
	if (!n || n->kind != JN_FILE) {
		int absent = known_absent(j, path);
		pthread_mutex_unlock(&j->lock);
		if (absent)
			return sbx_fail(-ENOENT, "read %s: %s", path, strerror(ENOENT));
		return INNER(j->inner->pread_path(s, path, buf, len, off));
	}
	struct sbx_file *f = jfile_new(j, n->ino, O_RDONLY);
	pthread_mutex_unlock(&j->lock);
	ssize_t got = jf_pread(f, buf, len, off);
	jf_close(f);
	return got;
}

static void j_settle(struct sbx *s)
{
	struct sbx_journal *j = J(s);
	if (!upload_is_self() && !passing) {
		pthread_mutex_lock(&j->lock);
		if (drain(j))
			log_warn("journal: %s", sbx_last_error());
		pthread_mutex_unlock(&j->lock);
	}
	if (j->inner->settle)
		j->inner->settle(s);
}

/* A change the mount did not make names n: a settled node goes (the sandbox answers for it
 * now: an announced one not taken yet, or one closed since its last acknowledgement), another
 * no longer knows how the sandbox has it. */
static void mark_changed_there(struct sbx_journal *j, struct jnode *n)
{
	if (n && node_settled(j, n))
		jnode_free(j, n);
	else if (n && n->kind == JN_FILE)
		n->ino->changed_there = true;
	else if (n && n->kind == JN_DIR)
		n->changed_there = true;
}

/* A change the mount did not make (its own come tagged and are not passed on): what the
 * sandbox answered for the files it names no longer says how they are there. */
static void j_changed(struct sbx *s, const char *path)
{
	struct sbx_journal *j = J(s);
	pthread_mutex_lock(&j->lock);
	clean_changed(j, path);
	if (!path) {
		for (size_t i = 0; i < j->buckets; i++)
			for (struct jnode *n = j->table[i], *next; n; n = next) {
				next = n->next;
				mark_changed_there(j, n);
			}
	} else {
		mark_changed_there(j, jnode_find(j, path));
		const char *slash = strrchr(path, '/'); /* a name in it came, went or changed */
		char *dir = slash ? strndup(path, (size_t)(slash - path)) : NULL;
		if (dir)
			mark_changed_there(j, jnode_find(j, dir));
		free(dir);
	}
	pthread_mutex_unlock(&j->lock);
	if (J(s)->inner->changed)
		J(s)->inner->changed(s, path);
}

static void j_watching(struct sbx *s, bool healthy)
{
	if (!healthy) { /* changes may go unseen: open clean copies ask the sandbox */
		pthread_mutex_lock(&J(s)->lock);
		clean_changed(J(s), NULL);
		pthread_mutex_unlock(&J(s)->lock);
	}
	if (J(s)->inner->watching)
		J(s)->inner->watching(s, healthy);
}

static int jf_cached_stat(struct sbx_file *f, struct stat *st) { return jf_fstat(f, st); }
static int jf_pin(struct sbx_file *f) { return jf_noop(f); }
static int jf_orphan(struct sbx_file *f) { return jf_noop(f); }

static const struct sbx_ops sbx_journal_ops = {
	.name = "journal",
	.lstat = j_lstat,
	.readdir = j_readdir,
	.readtree = j_readtree,
	.mkdir = j_mkdir,
	.unlink = j_unlink,
	.rmdir = j_rmdir,
	.rename = j_rename,
	.symlink = j_symlink,
	.readlink = j_readlink,
	.link = j_link,
	.statfs = j_statfs,
	.setattr = j_setattr,
	.file_open = j_file_open,
	.file_pread = jf_pread,
	.file_pwrite = jf_pwrite,
	.file_flush = jf_flush,
	.file_fsync = jf_fsync,
	.file_fstat = jf_fstat,
	.file_setattr = jf_setattr,
	.file_cached_stat = jf_cached_stat,
	.file_ftruncate = jf_ftruncate,
	.file_pin = jf_pin,
	.file_set_path = jf_set_path,
	.file_orphan = jf_orphan,
	.file_close = jf_close,
	.read_all = j_read_all,
	.pread_path = j_pread_path,
	.settle = j_settle,
	.changed = j_changed,
	.watching = j_watching,
};

static const struct sbx_ops *journal_ops(void) { return &sbx_journal_ops; }

/* ---- replay, start, stop ---- */

/* An operation read back from the log: the overlay as it was when the mount journaled it. */
static void replay_op(struct sbx_journal *j, struct jop *op)
{
	struct jnode *n = jnode_get(j, op->path);
	switch (op->kind) {
	case JOP_PUT: {
		struct jinode *ino = NULL;
		for (size_t i = 0; i < j->buckets && !ino; i++)
			for (struct jnode *c = j->table[i]; c; c = c->next)
				if (c->kind == JN_FILE && c->ino->id == op->blob) {
					ino = c->ino;
					break;
				}
		if (!ino) {
			ino = calloc(1, sizeof *ino);
			if (!ino)
				abort();
			ino->id = op->blob;
			ino->fd = spool_blob_open(j, op->blob);
			new_stat(j, &ino->st, S_IFREG);
			ino->st.st_nlink = 0;
			struct stat bs;
			if (ino->fd >= 0 && fstat(ino->fd, &bs) == 0)
				ino->st.st_size = bs.st_size;
		}
		ino->st.st_mode = S_IFREG | op->mode;
		ino->st.st_atim = op->atime;
		ino->st.st_mtim = op->mtime;
		if (n->ino != ino)
			jnode_set_file(j, n, ino);
		op->ino = ino;
		break;
	}
	case JOP_MKDIR:
		jnode_clear(j, n);
		n->kind = JN_DIR;
		new_stat(j, &n->st, S_IFDIR | op->mode);
		break;
	case JOP_SYMLINK:
		jnode_clear(j, n);
		n->kind = JN_SYMLINK;
		new_stat(j, &n->st, S_IFLNK | 0777);
		n->st.st_size = (off_t)strlen(op->path2);
		n->target = strdup(op->path2);
		break;
	case JOP_UNLINK:
	case JOP_RMDIR:
		jnode_clear(j, n);
		break;
	case JOP_LINK:
	case JOP_RENAME: {
		struct jnode *b = jnode_get(j, op->path2);
		n = jnode_find(j, op->path); /* b may have moved the table */
		if (n->kind == JN_FILE) {
			jnode_set_file(j, b, n->ino);
		} else if (n->kind == JN_SYMLINK) {
			jnode_clear(j, b);
			b->kind = JN_SYMLINK;
			b->st = n->st;
			b->target = strdup(n->target);
		}
		if (op->kind == JOP_RENAME)
			jnode_clear(j, n);
		break;
	}
	case JOP_SETATTR:
		if (n->kind != JN_GONE) {
			struct stat *cur = n->kind == JN_FILE ? &n->ino->st : &n->st;
			if (op->valid & SBX_SET_MODE)
				cur->st_mode = (cur->st_mode & S_IFMT) | op->mode;
			if (op->valid & SBX_SET_ATIME)
				cur->st_atim = op->atime;
			if (op->valid & SBX_SET_MTIME)
				cur->st_mtim = op->mtime;
		}
		break;
	}
	enqueue(j, op, true);
}

bool sbx_journal_batches(const struct sbx *s) { return s->journal_route; }

int sbx_journal_start(struct sbx *s, const struct sbx_journal_opts *o)
{
	struct sbx_journal *j = calloc(1, sizeof *j);
	if (!j)
		abort();
	j->s = s;
	j->inner = atomic_load(&s->ops);
	pthread_mutex_init(&j->lock, NULL);
	mono_cond_init(&j->changed);
	pthread_cond_init(&j->lane_wake, NULL);
	j->buckets = 1024;
	j->table = calloc(j->buckets, sizeof *j->table);
	if (!j->table)
		abort();
	j->next_seq = 1;
	j->dirseen = calloc(DIRSEEN_MAX, sizeof *j->dirseen);
	if (!j->dirseen)
		abort();
	j->dir_fd = j->blobs_fd = j->log_fd = j->lock_fd = -1;
	struct stat ws;
	if (INNER(j->inner->lstat(s, "/workspace", &ws, NULL)) == 0) {
		j->uid = ws.st_uid;
		j->gid = ws.st_gid;
	}
	char *dflt = o->cache_dir ? NULL : sbx_journal_default_dir();
	int err = spool_open(j, o->cache_dir ? o->cache_dir : dflt);
	free(dflt);
	if (!err) {
		pthread_mutex_lock(&j->lock);
		err = spool_replay(j, replay_op);
		pthread_mutex_unlock(&j->lock);
	}
	if (!err)
		err = upload_start(j);
	if (err) {
		spool_close(j);
		free(j->dirseen);
		free(j->table);
		pthread_mutex_destroy(&j->lock);
		pthread_cond_destroy(&j->changed);
		pthread_cond_destroy(&j->lane_wake);
		free(j);
		return err;
	}
	if (j->queued)
		log_info("journal: %zu change%s left by an earlier mount, sending them", j->queued,
			 j->queued == 1 ? "" : "s");
	s->journal = j;
	snprintf(s->journal_id, sizeof s->journal_id, "%s", j->wire_id);
	atomic_store(&s->ops, &sbx_journal_ops);
	return 0;
}

void sbx_journal_stop(struct sbx *s)
{
	struct sbx_journal *j = s->journal;
	if (!j)
		return;
	pthread_mutex_lock(&j->lock);
	if (j->queued && wait_acked(j, j->next_seq - 1, false, s->deadline_ms))
		log_warn("journal: %zu change%s not yet acknowledged by the sandbox stay in %s; "
			 "the next mount of this sandbox sends them", j->queued,
			 j->queued == 1 ? "" : "s", j->dir);
	pthread_mutex_unlock(&j->lock);
	upload_stop(j);
	atomic_store(&s->ops, j->inner);
	s->journal = NULL;
	pthread_mutex_lock(&j->lock);
	spool_sync(j, true);
	while (j->head) {
		struct jop *op = j->head;
		j->head = op->next;
		jop_release(j, op);
	}
	j->tail = j->lane_head = j->lane_tail = NULL;
	for (size_t i = 0; i < j->buckets; i++)
		while (j->table[i]) /* jnode_free takes it out of the chain first */
			jnode_free(j, j->table[i]); /* NOLINT(clang-analyzer-unix.Malloc) */
	clean_drop_all(j);
	pthread_mutex_unlock(&j->lock);
	spool_close(j);
	for (size_t i = 0; i < DIRSEEN_MAX; i++)
		free(j->dirseen[i].path);
	free(j->dirseen);
	free(j->table);
	pthread_mutex_destroy(&j->lock);
	pthread_cond_destroy(&j->changed);
	pthread_cond_destroy(&j->lane_wake);
	free(j);
}

int sbx_journal_sync(struct sbx *s, long timeout_ms)
{
	struct sbx_journal *j = s->journal;
	if (!j)
		return 0;
	pthread_mutex_lock(&j->lock);
	int err = wait_acked(j, j->next_seq - 1, false,
			     timeout_ms > 0 ? timeout_ms : s->deadline_ms);
	if (!err) {
		spool_sync(j, true);
		if (j->fail_seq > j->fail_reported) {
			j->fail_reported = j->fail_seq;
			err = sbx_fail(-j->fail_err, "%s", j->fail_reason);
		}
	}
	pthread_mutex_unlock(&j->lock);
	return err;
}

int sbx_journal_status(struct sbx *s, char *buf, size_t len)
{
	struct sbx_journal *j = s->journal;
	if (!j)
		return snprintf(buf, len, "writeback off\n");
	pthread_mutex_lock(&j->lock);
	int r = snprintf(buf, len,
			 "writeback on, journal %s: %zu change%s pending (%ju bytes), %s, "
			 "%ju failed for good%s%s\n",
			 j->dir, j->queued, j->queued == 1 ? "" : "s",
			 (uintmax_t)j->bytes_pending,
			 j->offline ? "the sandbox does not answer" : "uploading",
			 (uintmax_t)j->failures, j->failures ? ", the last: " : "",
			 j->failures ? j->fail_reason : "");
	pthread_mutex_unlock(&j->lock);
	return r;
}
