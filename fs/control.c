/* The generic half of the control trees (fs/control.h): entry tables turned into FUSE handlers,
 * open control files, feeds and parked reads.
 *
 * Concurrency. Everything about feeds, parked reads and poll handles is guarded by one mutex,
 * ctl_lock: a feed is pushed to from the network thread while worker threads read, poll and
 * release, and the kernel's interrupt for a parked read arrives on yet another worker. One
 * lock keeps the interrupt path simple: ctl_interrupted() finds its request in the global
 * parked list without touching a feed that may be going away, and a parked read is answered
 * exactly once by whoever removes it from that list (push, end, interrupt, unmount). FUSE
 * replies and poll notifications are sent with ctl_lock held: they only write to /dev/fuse,
 * and libfuse calls an interrupt function with the request's own lock held but never ours, so
 * the order is always request lock -> ctl_lock -> session lock and cannot deadlock.
 *
 * A handle's `in`, `out` and commit state are guarded by its own mutex (two threads may read
 * or write one descriptor at once); commit callbacks run with it held and may block for a
 * bounded request, never on a stream. */
#include "fs/control.h"
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "client/sandbox.h"
#include "common/log.h"
#include "fs/dirsnap.h"
#include "fs/entry.h"
#include "fs/feed.h"
#include "fs/internal.h"

#define CTL_MAX_INPUT (64 * 1024 * 1024)
/* Names below a static entry never change; dynamic ones (ids) come and go elsewhere. */
#define STATIC_ENTRY_TIMEOUT 3600.0
#define DYNAMIC_ENTRY_TIMEOUT 1.0

/* The bytes and the readers' cursors are fs/feed.c's; this adds the end, the references and
 * the one log line. A replay feed keeps its last `stream_buffer` bytes for readers that come
 * later; a single-reader feed drops what its reader has taken, and its bytes beyond
 * `stream_buffer` only pile up under a reader that does not keep up. */
struct ctl_feed {
	unsigned refs;
	struct feed feed;
	bool trimmed;
	char *label;
	bool ended;
	int err;
};

static size_t stream_buffer = (size_t)64 << 20;

struct parked {
	fuse_req_t req;
	struct ctl_handle *h;
	size_t size;
	struct parked *next;
};

static pthread_mutex_t ctl_lock = PTHREAD_MUTEX_INITIALIZER;
static struct parked *parked;      /* every parked read */
static struct ctl_handle **pollers; /* handles holding a poll handle */
static size_t npollers, cap_pollers;

/* The handle's private lock lives beside it (struct ctl_handle is public and plain). */
struct handle_box {
	struct ctl_handle h;
	pthread_mutex_t lock;
	size_t taken; /* bytes of h.in that ctl_input_take() has handed out */
	struct feed_reader reader; /* its cursor in h.feed */
	atomic_bool interrupted; /* Ctrl-C on the request whose commit runs now */
};
#define BOX(hp) ((struct handle_box *)(hp))

void ctl_names_add(struct ctl_names *names, const char *name)
{
	if (names->n == names->cap) {
		names->cap = names->cap ? names->cap * 2 : 16;
		names->v = realloc(names->v, names->cap * sizeof(*names->v));
		if (!names->v)
			abort();
	}
	if (!(names->v[names->n++] = strdup(name)))
		abort();
}

static void names_free(struct ctl_names *names)
{
	for (size_t i = 0; i < names->n; i++)
		free(names->v[i]);
	free(names->v);
}

/* ---- resolving a node to its entry ---- */

struct resolved {
	const struct ctl_entry *e;
	struct ctl_args a;
	char *path;  /* "/ports/8080" */
	char *words; /* a copy of path cut at its slashes: owns the strings a points into */
};

/* The tree at the root named name (fs->trees), or NULL. */
static const struct ctl_entry *tree_named(struct sbxfs *fs, const char *name)
{
	for (const struct ctl_entry *const *t = fs->trees; *t; t++)
		if (strcmp((*t)->name, name) == 0)
			return *t;
	return NULL;
}

static const struct ctl_entry *children_of(const struct ctl_entry *dir)
{
	return dir->same_as ? dir->same_as->children : dir->children;
}

static const struct ctl_entry *child_of(const struct ctl_entry *dir, const char *name,
					bool *dynamic)
{
	const struct ctl_entry *dyn = NULL;
	*dynamic = false;
	if (!children_of(dir))
		return NULL;
	for (const struct ctl_entry *c = children_of(dir); c->mode; c++) {
		if (!c->name)
			dyn = c;
		else if (strcmp(c->name, name) == 0)
			return c;
	}
	*dynamic = dyn != NULL;
	return dyn;
}

/* The entry of node n, or of its child `name` when name is not NULL. */
static int resolve(struct sbxfs *fs, struct node *n, const char *name, struct resolved *r)
{
	memset(r, 0, sizeof(*r));
	nodes_lock(&fs->nodes);
	char *p = nodes_path(n);
	nodes_unlock(&fs->nodes);
	if (!p)
		return -ESTALE;
	if (name) {
		char *q;
		if (asprintf(&q, "%s/%s", p, name) < 0)
			abort();
		free(p);
		p = q;
	}
	r->path = p;
	if (!(r->words = strdup(p)))
		abort();
	char *save = NULL, *seg = strtok_r(r->words, "/", &save);
	const struct ctl_entry *e = seg ? tree_named(fs, seg) : NULL;
	if (!e)
		return -ENOENT;
	while ((seg = strtok_r(NULL, "/", &save))) {
		bool dynamic;
		if (!S_ISDIR(e->mode))
			return -ENOTDIR;
		e = child_of(e, seg, &dynamic);
		if (!e)
			return -ENOENT;
		if (dynamic && (e->flags & CTL_SESSION)) {
			r->a.session = seg;
		} else if (dynamic) {
			if (r->a.n == CTL_MAX_ARGS)
				return -ENOENT;
			r->a.v[r->a.n++] = seg;
		}
	}
	r->e = e;
	return 0;
}

static void resolved_free(struct resolved *r)
{
	free(r->path);
	free(r->words);
}

ino_t ctl_ino(const char *path)
{
	uint64_t h = 1469598103934665603ULL;
	for (const char *c = path; *c; c++)
		h = (h ^ (unsigned char)*c) * 1099511628211ULL;
	return (ino_t)(h | (1ULL << 63));
}

static int entry_stat(struct sbxfs *fs, const struct ctl_entry *e, const struct ctl_args *a,
		      const char *path, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	if (e->stat) {
		int err = e->stat(fs, a, st);
		if (err < 0)
			return err;
	} else {
		st->st_atim = st->st_mtim = st->st_ctim = fs->mount_time;
	}
	st->st_ino = ctl_ino(path);
	st->st_mode = e->mode;
	st->st_nlink = S_ISDIR(e->mode) ? 2 : 1;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	st->st_blksize = 4096;
	st->st_blocks = (st->st_size + 511) / 512;
	return 0;
}

void ctl_tree_stat(struct sbxfs *fs, const struct ctl_entry *tree, struct stat *st)
{
	char path[64];
	const struct ctl_args none = { 0 };
	snprintf(path, sizeof path, "/%s", tree->name);
	if (entry_stat(fs, tree, &none, path, st) < 0) {
		/* Still listed, so `ls` shows what exists; lookup reports the error. */
		memset(st, 0, sizeof(*st));
		st->st_mode = tree->mode;
	}
}

/* ---- node handlers ---- */

static void reply_bound(fuse_req_t req, struct sbxfs *fs, struct node *parent, const char *name,
			const struct stat *st, bool dynamic, struct fuse_entry_param *e)
{
	struct reply_timeouts to = { 1.0, dynamic ? DYNAMIC_ENTRY_TIMEOUT : STATIC_ENTRY_TIMEOUT,
				     0 };
	nodes_lock(&fs->nodes);
	fs_bind_entry(fs, parent, name, NODE_CONTROL, st, NULL, false, &to, e);
	nodes_unlock(&fs->nodes);
}

static void ctl_lookup(fuse_req_t req, struct sbxfs *fs, struct node *n, const char *name)
{
	struct resolved r;
	int err = resolve(fs, n, name, &r);
	bool dynamic = !err && !r.e->name;
	if (!err && dynamic)
		err = r.e->exists ? r.e->exists(fs, &r.a) : -ENOENT;
	struct stat st;
	if (!err)
		err = entry_stat(fs, r.e, &r.a, r.path, &st);
	if (err) {
		/* Dynamic names must not be cached as missing: they appear from elsewhere. */
		fuse_reply_err(req, -err);
	} else {
		struct fuse_entry_param e;
		reply_bound(req, fs, n, name, &st, dynamic, &e);
		fuse_reply_entry(req, &e);
	}
	resolved_free(&r);
}

static void ctl_getattr(fuse_req_t req, struct sbxfs *fs, struct node *n,
			struct fuse_file_info *fi)
{
	struct resolved r;
	struct stat st;
	int err = resolve(fs, n, NULL, &r);
	if (!err)
		err = entry_stat(fs, r.e, &r.a, r.path, &st);
	if (err)
		fuse_reply_err(req, -err);
	else
		fuse_reply_attr(req, &st, 1.0);
	resolved_free(&r);
}

/* Control files take truncation and times silently (echo > f, touch f); ownership and modes
 * are the table's. */
static void ctl_setattr(fuse_req_t req, struct sbxfs *fs, struct node *n, struct stat *attr,
			int to_set, struct fuse_file_info *fi)
{
	if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	ctl_getattr(req, fs, n, fi);
}

static int ctl_list(struct sbxfs *fs, struct node *n, struct dirsnap *snap)
{
	struct resolved r;
	int err = resolve(fs, n, NULL, &r);
	if (!err && !S_ISDIR(r.e->mode))
		err = -ENOTDIR;
	for (const struct ctl_entry *c = r.e && !err ? children_of(r.e) : NULL; c && c->mode;
	     c++) {
		struct ctl_names names = { 0 };
		if (c->name)
			ctl_names_add(&names, c->name);
		else if (c->list && (err = c->list(fs, &r.a, &names)) < 0)
			log_warn("listing %s: %s", r.path, sbx_last_error());
		for (size_t i = 0; !err && i < names.n; i++) {
			struct ctl_args a = r.a;
			char *p;
			if (!c->name && (c->flags & CTL_SESSION))
				a.session = names.v[i];
			else if (!c->name && a.n < CTL_MAX_ARGS)
				a.v[a.n++] = names.v[i];
			if (asprintf(&p, "%s/%s", r.path, names.v[i]) < 0)
				abort();
			struct stat st;
			/* A file whose stat fails is still listed, as the root lists its rows. */
			if (entry_stat(fs, c, &a, p, &st) < 0) {
				memset(&st, 0, sizeof(st));
				st.st_mode = c->mode;
			}
			dirsnap_add(snap, names.v[i], &st, NULL, NODE_CONTROL);
			free(p);
		}
		names_free(&names);
		if (err)
			break;
	}
	resolved_free(&r);
	return err;
}

static void handle_free(struct ctl_handle *h);

/* Makes the handle of an opened entry and runs its open callback. */
static int handle_open(struct sbxfs *fs, const struct resolved *r, int flags,
		       struct ctl_handle **out)
{
	const struct ctl_entry *e = r->e;
	int acc = flags & O_ACCMODE;
	if (S_ISDIR(e->mode))
		return -EISDIR;
	if ((acc != O_WRONLY && !(e->mode & 0444)) || (acc != O_RDONLY && !(e->mode & 0222)))
		return -EACCES;
	struct handle_box *box = calloc(1, sizeof(*box));
	if (!box)
		abort();
	pthread_mutex_init(&box->lock, NULL);
	struct ctl_handle *h = &box->h;
	h->fs = fs;
	h->sbx = fs->sbx;
	h->entry = e;
	h->flags = flags;
	h->args.n = r->a.n;
	for (int i = 0; i < r->a.n; i++)
		if (!(h->args.v[i] = strdup(r->a.v[i])))
			abort();
	if (r->a.session && !(h->args.session = strdup(r->a.session)))
		abort();
	int err = e->open ? e->open(h) : 0;
	if (err < 0) {
		log_warn("open %s: %s", r->path, sbx_last_error());
		handle_free(h);
		return err;
	}
	*out = h;
	return 0;
}

/* Streams and request answers are read in sequence: a request's answer starts at 0 whatever
 * the descriptor's offset after the write that asked. */
static bool sequential(const struct ctl_handle *h)
{
	return h->feed || (h->entry->flags & (CTL_STREAM | CTL_REQUEST));
}

static void set_open_flags(struct fuse_file_info *fi, const struct ctl_handle *h)
{
	fi->fh = (uintptr_t)h | 1;
	fi->direct_io = 1;
	fi->keep_cache = 0;
	if (h->feed || (h->entry->flags & CTL_STREAM))
		fi->nonseekable = 1;
}

static void ctl_open(fuse_req_t req, struct sbxfs *fs, struct node *n, struct fuse_file_info *fi)
{
	struct resolved r;
	struct ctl_handle *h = NULL;
	int err = resolve(fs, n, NULL, &r);
	if (!err)
		err = handle_open(fs, &r, fi->flags, &h);
	resolved_free(&r);
	if (err) {
		fuse_reply_err(req, -err);
		return;
	}
	set_open_flags(fi, h);
	if (fuse_reply_open(req, fi) != 0)
		handle_free(h);
}

/* The dynamic child `name` of n that can be created with this type, or an errno. */
static int creatable(struct sbxfs *fs, struct node *n, const char *name, mode_t type,
		     struct resolved *r)
{
	int err = resolve(fs, n, name, r);
	if (err == -ENOENT && r->e == NULL)
		return -EPERM;
	if (err)
		return err;
	if (r->e->name || !r->e->create)
		return r->e->name ? -EEXIST : -EPERM;
	if ((r->e->mode & S_IFMT) != type)
		return S_ISDIR(type) ? -ENOTDIR : -EISDIR;
	return 0;
}

static void ctl_create(fuse_req_t req, struct sbxfs *fs, struct node *n, const char *name,
		       mode_t mode, struct fuse_file_info *fi)
{
	struct resolved r;
	struct ctl_handle *h = NULL;
	struct stat st;
	int err = creatable(fs, n, name, S_IFREG, &r);
	if (!err && (err = r.e->create(fs, &r.a, mode)) < 0)
		log_warn("create %s: %s", r.path, sbx_last_error());
	if (!err)
		err = entry_stat(fs, r.e, &r.a, r.path, &st);
	if (!err)
		err = handle_open(fs, &r, fi->flags & ~(O_CREAT | O_EXCL), &h);
	if (err) {
		resolved_free(&r);
		fuse_reply_err(req, -err);
		return;
	}
	struct fuse_entry_param e;
	reply_bound(req, fs, n, name, &st, true, &e);
	resolved_free(&r);
	set_open_flags(fi, h);
	if (fuse_reply_create(req, &e, fi) != 0)
		handle_free(h);
}

static void ctl_mkdir(fuse_req_t req, struct sbxfs *fs, struct node *n, const char *name,
		      mode_t mode)
{
	struct resolved r;
	struct stat st;
	int err = creatable(fs, n, name, S_IFDIR, &r);
	if (!err && (err = r.e->create(fs, &r.a, mode)) < 0)
		log_warn("mkdir %s: %s", r.path, sbx_last_error());
	if (!err)
		err = entry_stat(fs, r.e, &r.a, r.path, &st);
	if (err) {
		fuse_reply_err(req, -err);
	} else {
		struct fuse_entry_param e;
		reply_bound(req, fs, n, name, &st, true, &e);
		fuse_reply_entry(req, &e);
	}
	resolved_free(&r);
}

static void do_remove(fuse_req_t req, struct sbxfs *fs, struct node *n, const char *name,
		      mode_t type)
{
	struct resolved r;
	int err = resolve(fs, n, name, &r);
	if (!err && (r.e->mode & S_IFMT) != type)
		err = S_ISDIR(type) ? -ENOTDIR : -EISDIR;
	if (!err && (r.e->name || !r.e->remove))
		err = -EPERM;
	if (!err && (err = r.e->remove(fs, &r.a)) < 0)
		log_warn("remove %s: %s", r.path, sbx_last_error());
	if (!err) {
		nodes_lock(&fs->nodes);
		struct node *c = nodes_child(&fs->nodes, n, name);
		if (c)
			nodes_detach(&fs->nodes, c);
		nodes_unlock(&fs->nodes);
	}
	resolved_free(&r);
	fuse_reply_err(req, -err);
}

static void ctl_unlink(fuse_req_t req, struct sbxfs *fs, struct node *n, const char *name)
{
	do_remove(req, fs, n, name, S_IFREG);
}

static void ctl_rmdir(fuse_req_t req, struct sbxfs *fs, struct node *n, const char *name)
{
	do_remove(req, fs, n, name, S_IFDIR);
}

const struct kind_ops control_kind_ops = {
	.lookup = ctl_lookup,
	.getattr = ctl_getattr,
	.setattr = ctl_setattr,
	.mkdir = ctl_mkdir,
	.unlink = ctl_unlink,
	.rmdir = ctl_rmdir,
	.open = ctl_open,
	.create = ctl_create,
	.list = ctl_list,
};

/* ---- feeds ---- */

void ctl_set_stream_buffer(size_t bytes)
{
	stream_buffer = bytes ? bytes : 1;
}

struct ctl_feed *ctl_feed_new(bool replay, const char *label)
{
	struct ctl_feed *f = calloc(1, sizeof(*f));
	if (!f || !(f->label = strdup(label)))
		abort();
	f->refs = 1;
	feed_init(&f->feed, replay);
	return f;
}

void ctl_feed_ref(struct ctl_feed *f)
{
	pthread_mutex_lock(&ctl_lock);
	f->refs++;
	pthread_mutex_unlock(&ctl_lock);
}

void ctl_feed_unref(struct ctl_feed *f)
{
	if (!f)
		return;
	pthread_mutex_lock(&ctl_lock);
	bool last = --f->refs == 0;
	pthread_mutex_unlock(&ctl_lock);
	if (last) {
		feed_free(&f->feed);
		free(f->label);
		free(f);
	}
}

/* What a read of h at its cursor gets now: 1 with bytes replied, 0 when it must wait.
 * Caller holds ctl_lock. */
static int feed_answer(fuse_req_t req, struct ctl_handle *h, size_t size)
{
	struct ctl_feed *f = h->feed;
	struct feed_reader *r = &BOX(h)->reader;
	const char *bytes;
	size_t n = feed_peek(&f->feed, r, size, &bytes);
	if (n) {
		fuse_reply_buf(req, bytes, n);
		feed_advance(&f->feed, r, n);
		return 1;
	}
	if (f->ended) {
		if (f->err)
			fuse_reply_err(req, -f->err);
		else
			fuse_reply_buf(req, NULL, 0);
		return 1;
	}
	return 0;
}

/* Answers the parked reads and wakes the pollers of f. Caller holds ctl_lock. */
static void feed_wake(struct ctl_feed *f)
{
	for (struct parked **pp = &parked; *pp;) {
		struct parked *p = *pp;
		if (p->h->feed == f && feed_answer(p->req, p->h, p->size)) {
			*pp = p->next;
			free(p);
		} else {
			pp = &p->next;
		}
	}
	for (size_t i = 0; i < npollers;) {
		struct ctl_handle *h = pollers[i];
		if (h->feed == f) {
			fuse_lowlevel_notify_poll(h->ph);
			fuse_pollhandle_destroy(h->ph);
			h->ph = NULL;
			pollers[i] = pollers[--npollers];
		} else {
			i++;
		}
	}
}

void ctl_feed_push(struct ctl_feed *f, const void *data, size_t len)
{
	if (!len)
		return;
	pthread_mutex_lock(&ctl_lock);
	if (!f->ended) {
		if (feed_push(&f->feed, data, len, stream_buffer) && !f->trimmed) {
			f->trimmed = true;
			log_warn("%s: more than %zu MiB %s; the oldest is dropped (-o stream_buffer=MiB)",
				 f->label, stream_buffer >> 20,
				 f->feed.replay ? "of output" : "not yet read");
		}
		feed_wake(f);
	}
	pthread_mutex_unlock(&ctl_lock);
}

void ctl_feed_end(struct ctl_feed *f, int err)
{
	pthread_mutex_lock(&ctl_lock);
	if (!f->ended) {
		f->ended = true;
		f->err = err;
		feed_wake(f);
	}
	pthread_mutex_unlock(&ctl_lock);
}

bool ctl_feed_ended(struct ctl_feed *f)
{
	pthread_mutex_lock(&ctl_lock);
	bool ended = f->ended;
	pthread_mutex_unlock(&ctl_lock);
	return ended;
}

void ctl_handle_attach(struct ctl_handle *h, struct ctl_feed *f)
{
	pthread_mutex_lock(&ctl_lock);
	f->refs++;
	feed_attach(&f->feed, &BOX(h)->reader);
	pthread_mutex_unlock(&ctl_lock);
	h->feed = f;
}

/* Ctrl-C on a parked reader: the kernel's interrupt arrives here (from libfuse, with the
 * request's lock held). */
static void ctl_interrupted(fuse_req_t req, void *data)
{
	pthread_mutex_lock(&ctl_lock);
	for (struct parked **pp = &parked; *pp; pp = &(*pp)->next) {
		if ((*pp)->req == req) {
			struct parked *p = *pp;
			*pp = p->next;
			free(p);
			fuse_reply_err(req, EINTR);
			break;
		}
	}
	pthread_mutex_unlock(&ctl_lock);
}

static void feed_read(fuse_req_t req, struct ctl_handle *h, size_t size)
{
	/* Registered before parking: if the interrupt came first, the check below sees it. */
	fuse_req_interrupt_func(req, ctl_interrupted, NULL);
	pthread_mutex_lock(&ctl_lock);
	if (!feed_answer(req, h, size)) {
		if (fuse_req_interrupted(req)) {
			fuse_reply_err(req, EINTR);
		} else {
			struct parked *p = malloc(sizeof(*p));
			if (!p)
				abort();
			*p = (struct parked){ req, h, size, parked };
			parked = p;
		}
	}
	pthread_mutex_unlock(&ctl_lock);
}

/* ---- open control files ---- */

bool ctl_is_handle(const struct fuse_file_info *fi)
{
	return fi && (fi->fh & 1);
}

static struct ctl_handle *handle_of(const struct fuse_file_info *fi)
{
	return (struct ctl_handle *)(uintptr_t)(fi->fh & ~(uint64_t)1);
}

static void handle_free(struct ctl_handle *h)
{
	pthread_mutex_lock(&ctl_lock);
	for (size_t i = 0; i < npollers; i++)
		if (pollers[i] == h) {
			pollers[i] = pollers[--npollers];
			break;
		}
	if (h->ph)
		fuse_pollhandle_destroy(h->ph);
	if (h->feed)
		feed_detach(&h->feed->feed, &BOX(h)->reader);
	pthread_mutex_unlock(&ctl_lock);
	ctl_feed_unref(h->feed);
	if (h->priv_free)
		h->priv_free(h->priv);
	for (int i = 0; i < h->args.n; i++)
		free((char *)h->args.v[i]);
	free((char *)h->args.session);
	strbuf_free(&h->in);
	strbuf_free(&h->out);
	pthread_mutex_destroy(&BOX(h)->lock);
	free(BOX(h));
}

const char *ctl_input_take(struct ctl_handle *h, size_t *len)
{
	size_t from = BOX(h)->taken < h->in.len ? BOX(h)->taken : h->in.len;
	BOX(h)->taken = h->in.len;
	*len = h->in.len - from;
	return h->in.data ? h->in.data + from : "";
}

static void commit_interrupted(fuse_req_t req, void *data)
{
	atomic_store(&((struct handle_box *)data)->interrupted, true);
}

const atomic_bool *ctl_interrupt_flag(struct ctl_handle *h)
{
	return &BOX(h)->interrupted;
}

/* Runs the commit callback for req (NULL at release: nobody waits); caller holds the
 * handle's lock. A long commit may watch ctl_interrupt_flag(), set on Ctrl-C. */
static int commit(struct ctl_handle *h, fuse_req_t req)
{
	h->committed = true;
	h->dirty = false;
	strbuf_reset(&h->out);
	h->rpos = 0;
	atomic_store(&BOX(h)->interrupted, false);
	if (req)
		fuse_req_interrupt_func(req, commit_interrupted, BOX(h));
	int err = h->entry->commit(h);
	if (req)
		fuse_req_interrupt_func(req, NULL, NULL);
	if (sequential(h)) {
		strbuf_reset(&h->in);
		BOX(h)->taken = 0;
	}
	if (err < 0)
		log_warn("%s: %s", h->entry->name ? h->entry->name : "control file",
			 sbx_last_error());
	return err;
}

/* Whether what was written is a whole request (see `ready`); caller holds the handle's lock. */
static bool ready(const struct ctl_handle *h)
{
	return !h->entry->ready || h->entry->ready(h);
}

void ctl_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct ctl_handle *h = handle_of(fi);
	pthread_mutex_t *lock = &BOX(h)->lock;
	pthread_mutex_lock(lock);
	if ((h->entry->flags & CTL_REQUEST) && h->entry->commit && (!h->committed || h->dirty)) {
		int err = commit(h, req);
		if (err < 0) {
			pthread_mutex_unlock(lock);
			fuse_reply_err(req, -err);
			return;
		}
	}
	if (h->feed) {
		pthread_mutex_unlock(lock);
		feed_read(req, h, size);
		return;
	}
	size_t pos = sequential(h) ? h->rpos : (size_t)off;
	size_t n = pos < h->out.len ? h->out.len - pos : 0;
	if (n > size)
		n = size;
	if (sequential(h))
		h->rpos += n;
	fuse_reply_buf(req, n ? h->out.data + pos : NULL, n);
	pthread_mutex_unlock(lock);
}

void ctl_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
	       struct fuse_file_info *fi)
{
	struct ctl_handle *h = handle_of(fi);
	if (!h->entry->commit) {
		fuse_reply_err(req, EBADF);
		return;
	}
	if (off < 0 || (size_t)off > CTL_MAX_INPUT || size > CTL_MAX_INPUT - (size_t)off) {
		fuse_reply_err(req, EFBIG);
		return;
	}
	pthread_mutex_lock(&BOX(h)->lock);
	/* Appends go at the end whatever the offset, as do writes to a file read in sequence. */
	size_t at = (h->flags & O_APPEND) || sequential(h) ? h->in.len : (size_t)off;
	if (at > h->in.len) {
		strbuf_reserve(&h->in, at - h->in.len);
		memset(h->in.data + h->in.len, 0, at - h->in.len);
		h->in.len = at;
	}
	size_t end = at + size;
	if (end > h->in.len) {
		strbuf_reserve(&h->in, end - h->in.len);
		h->in.len = end;
		h->in.data[end] = '\0';
	}
	memcpy(h->in.data + at, buf, size);
	h->dirty = true;
	int err = 0;
	if ((h->entry->flags & CTL_LINE) && size && buf[size - 1] == '\n' && ready(h))
		err = commit(h, req);
	pthread_mutex_unlock(&BOX(h)->lock);
	if (err < 0)
		fuse_reply_err(req, -err);
	else
		fuse_reply_write(req, size);
}

/* close(): a command or request file acts on what was written since its last commit, and
 * close() returns how that went. A request still incomplete waits: `echo cwd=x >&3` closes a
 * duplicate of the descriptor that goes on to write the command. So does a request opened for
 * reading too (exec 3<>ctx/new): its read commits and returns the error, which the flush of
 * bash's echo >&3 (through dup2) would have lost. */
void ctl_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct ctl_handle *h = handle_of(fi);
	int err = 0;
	pthread_mutex_lock(&BOX(h)->lock);
	int acc = h->flags & O_ACCMODE;
	bool answer_read = (h->entry->flags & CTL_REQUEST) && acc == O_RDWR;
	if (acc != O_RDONLY && !answer_read && h->entry->commit && h->dirty && ready(h))
		err = commit(h, req);
	pthread_mutex_unlock(&BOX(h)->lock);
	fuse_reply_err(req, -err);
}

/* The last close: a command file opened for writing and never written acts now, on empty
 * input (`: > proc/ID/kill`), and so does what was left incomplete; nobody is left to tell of
 * an error but the log. */
void ctl_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct ctl_handle *h = handle_of(fi);
	bool writer = (h->flags & O_ACCMODE) != O_RDONLY;
	bool never = !(h->entry->flags & CTL_REQUEST) && !h->committed;
	if (writer && h->entry->commit && (never || h->dirty)) {
		pthread_mutex_lock(&BOX(h)->lock);
		commit(h, NULL);
		pthread_mutex_unlock(&BOX(h)->lock);
	}
	handle_free(h);
	fuse_reply_err(req, 0);
}

void ctl_poll(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi,
	      struct fuse_pollhandle *ph)
{
	struct ctl_handle *h = handle_of(fi);
	unsigned revents = POLLOUT | POLLWRNORM;
	pthread_mutex_lock(&ctl_lock);
	const char *bytes;
	if (!h->feed || feed_peek(&h->feed->feed, &BOX(h)->reader, 1, &bytes) || h->feed->ended)
		revents |= POLLIN | POLLRDNORM;
	if (ph) {
		if (h->ph) {
			fuse_pollhandle_destroy(h->ph);
		} else {
			if (npollers == cap_pollers) {
				cap_pollers = cap_pollers ? cap_pollers * 2 : 16;
				pollers = realloc(pollers, cap_pollers * sizeof(*pollers));
				if (!pollers)
					abort();
			}
			pollers[npollers++] = h;
		}
		h->ph = ph;
	}
	pthread_mutex_unlock(&ctl_lock);
	fuse_reply_poll(req, revents);
}

void ctl_stop(struct sbxfs *fs)
{
	for (const struct ctl_entry *const *t = fs->trees; fs->sbx && *t; t++)
		if ((*t)->stop)
			(*t)->stop(fs);
	pthread_mutex_lock(&ctl_lock);
	while (parked) {
		struct parked *p = parked;
		parked = p->next;
		fuse_reply_err(p->req, ENOTCONN);
		free(p);
	}
	free(pollers);
	pollers = NULL;
	npollers = cap_pollers = 0;
	pthread_mutex_unlock(&ctl_lock);
}
