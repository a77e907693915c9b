/* The filesystem's frame: options, the low-level operations table, which resolves node ids and
 * hands each request to the handlers of the node's kind, the mount root, and directory
 * snapshots shared by every kind.
 *
 * The root is a static table of rows (plan9 acme's fsys.c style): a name, the kind of node it
 * leads to, its mode. workspace/ is the sandbox's /workspace; every other row is a control tree
 * (fs/control.h), whose table lives in its own file. The root's own attributes are synthetic, as
 * are the control trees'; workspace/'s come from the sandbox. */
#include "fs/internal.h"
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "client/sandbox.h"
#include "common/log.h"
#include "fs/control.h"

#define MIB (1024 * 1024)

struct root_row {
	const char *name;
	enum node_kind kind;
	const char *sandbox_path; /* workspace: where its attributes come from */
	const struct ctl_entry *tree; /* control trees */
};

static const struct root_row root_rows[] = {
	{ "workspace", NODE_WORKSPACE, "/workspace", NULL },
	{ "ctx", NODE_CONTROL, NULL, &ctl_ctx_tree },
	{ "proc", NODE_CONTROL, NULL, &ctl_proc_tree },
	{ "ports", NODE_CONTROL, NULL, &ctl_ports_tree },
	{ "git", NODE_CONTROL, NULL, &ctl_git_tree },
	{ "env", NODE_CONTROL, NULL, &ctl_env_file },
	{ "sessions", NODE_CONTROL, NULL, &ctl_sessions_tree },
	{ "watch", NODE_CONTROL, NULL, &ctl_watch_file },
};
#define N_ROWS (sizeof(root_rows) / sizeof(root_rows[0]))

static const struct kind_ops *const kinds[NODE_KINDS] = {
	[NODE_ROOT] = &root_kind_ops,
	[NODE_WORKSPACE] = &workspace_kind_ops,
	[NODE_CONTROL] = &control_kind_ops,
};

/* ---- options ---- */

#define FS_OPT(t, p) { t, offsetof(struct sbxfs_config, p), 1 }
static const struct fuse_opt fs_opts[] = {
	FS_OPT("attr_timeout=%lf", attr_timeout),
	FS_OPT("entry_timeout=%lf", entry_timeout),
	FS_OPT("negative_timeout=%lf", negative_timeout),
	FS_OPT("dir_cache_timeout=%lf", dir_cache_timeout),
	FS_OPT("dir_cache_max=%u", dir_cache_max),
	FS_OPT("no_watch", no_watch),
	FS_OPT("stream_buffer=%u", stream_buffer),
	FUSE_OPT_END
};

int sbxfs_config_parse(struct fuse_args *args, struct sbxfs_config *cfg)
{
	*cfg = (struct sbxfs_config){
		.attr_timeout = 10.0,
		.entry_timeout = 10.0,
		.negative_timeout = 5.0,
		.dir_cache_timeout = 20.0,
		.dir_cache_max = 65536,
		.stream_buffer = 64,
	};
	if (fuse_opt_parse(args, cfg, fs_opts, NULL) == -1)
		return -1;
	if (cfg->attr_timeout < 0 || cfg->entry_timeout < 0 || cfg->negative_timeout < 0 ||
	    cfg->dir_cache_timeout < 0) {
		fprintf(stderr, "sbxfs: cache timeouts must not be negative\n");
		return -1;
	}
	if (!cfg->dir_cache_max)
		cfg->dir_cache_max = 1;
	if (cfg->stream_buffer < 1 || cfg->stream_buffer > 65536) {
		fprintf(stderr, "sbxfs: stream_buffer is in MiB, from 1 to 65536\n");
		return -1;
	}
	return 0;
}

void sbxfs_config_help(void)
{
	printf("    -o attr_timeout=SECS     attribute cache while change events flow (10)\n"
	       "    -o entry_timeout=SECS    name cache while change events flow (10)\n"
	       "    -o negative_timeout=SECS cache of missing names while events flow (5)\n"
	       "    -o dir_cache_timeout=SECS  directory listings kept by sbxfs (20)\n"
	       "    -o dir_cache_max=N       directory listings kept at most (65536)\n"
	       "    -o no_watch              do not subscribe to change events (short timeouts)\n"
	       "    -o stream_buffer=MiB     output a stream file keeps (ctx out, proc follow) (64)\n");
}

/* ---- helpers shared by the kinds ---- */

double fs_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

bool fs_caches_trusted(struct sbxfs *fs)
{
	return atomic_load(&fs->healthy);
}

struct reply_timeouts fs_timeouts(struct sbxfs *fs, uint64_t events)
{
	struct reply_timeouts to = { fs->cfg.attr_timeout, fs->cfg.entry_timeout,
				     fs->cfg.negative_timeout };
	if (atomic_load(&fs->events) != events)
		return (struct reply_timeouts){ 0, 0, 0 };
	if (!fs_caches_trusted(fs)) {
		if (to.attr > 1.0)
			to.attr = 1.0;
		if (to.entry > 1.0)
			to.entry = 1.0;
		to.negative = 0;
	}
	return to;
}

/* One of a and b is the other or lies below it. */
static bool paths_related(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b), l = la < lb ? la : lb;
	if (strncmp(a, b, l) != 0)
		return false;
	return la == lb || (la < lb ? b[la] == '/' : a[lb] == '/');
}

/* No event since `events` concerns path (see fs_timeouts_at). */
static bool events_spare(struct sbxfs *fs, uint64_t events, const char *path, bool created)
{
	pthread_mutex_lock(&fs->ring_lock);
	uint64_t cur = atomic_load(&fs->events);
	bool spare = cur - events <= EVENT_RING;
	for (uint64_t i = events + 1; spare && i <= cur; i++) {
		const struct ring_event *re = &fs->ring[i % EVENT_RING];
		spare = re->path && (!paths_related(re->path, path) ||
				     (created && re->created && strcmp(re->path, path) == 0));
	}
	pthread_mutex_unlock(&fs->ring_lock);
	return spare;
}

struct reply_timeouts fs_timeouts_at(struct sbxfs *fs, uint64_t events, const char *path,
				     bool created)
{
	uint64_t cur = atomic_load(&fs->events);
	if (cur != events && path && events_spare(fs, events, path, created))
		events = cur;
	return fs_timeouts(fs, events);
}

double fs_attr_ttl(const struct stat *st, double ttl)
{
	return S_ISREG(st->st_mode) && st->st_nlink > 1 ? 0 : ttl;
}

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
	n->attr_expiry = fs_now() + fs->cfg.attr_timeout;
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

static void dirsnap_free(struct dirsnap *snap)
{
	for (size_t i = 0; i < snap->n; i++) {
		free(snap->ents[i].name);
		free(snap->ents[i].target);
	}
	free(snap->ents);
	free(snap);
}

/* ---- the root ---- */

static const struct root_row *row_find(const char *name)
{
	for (size_t i = 0; i < N_ROWS; i++)
		if (strcmp(root_rows[i].name, name) == 0)
			return &root_rows[i];
	return NULL;
}

const struct ctl_entry *fs_control_tree(const char *name)
{
	const struct root_row *row = row_find(name);
	return row ? row->tree : NULL;
}

static mode_t row_mode(const struct root_row *row)
{
	return row->tree ? row->tree->mode : S_IFDIR | 0755;
}

static void root_stat(struct sbxfs *fs, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = NODE_ROOT_ID;
	st->st_mode = S_IFDIR | 0755;
	st->st_nlink = 2;
	for (size_t i = 0; i < N_ROWS; i++)
		if (S_ISDIR(row_mode(&root_rows[i])))
			st->st_nlink++;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	st->st_blksize = 4096;
	st->st_atim = st->st_mtim = st->st_ctim = fs->mount_time;
}

/* A row's attributes: the sandbox's own for workspace/, synthetic for a control tree. */
static int row_stat(struct sbxfs *fs, const struct root_row *row, struct stat *st)
{
	if (!row->tree)
		return sbx_lstat(fs->sbx, row->sandbox_path, st, NULL);
	char path[64];
	snprintf(path, sizeof(path), "/%s", row->name);
	memset(st, 0, sizeof(*st));
	st->st_ino = ctl_ino(path);
	st->st_mode = row->tree->mode;
	st->st_nlink = S_ISDIR(st->st_mode) ? 2 : 1;
	st->st_uid = fs->uid;
	st->st_gid = fs->gid;
	st->st_blksize = 4096;
	st->st_atim = st->st_mtim = st->st_ctim = fs->mount_time;
	return 0;
}

static void root_lookup(fuse_req_t req, struct sbxfs *fs, struct node *n, const char *name)
{
	const struct root_row *row = row_find(name);
	/* The rows never change: a missing name may be cached for as long as the kernel likes. */
	struct reply_timeouts forever = { 0, 0, 86400.0 };
	if (!row) {
		fs_reply_negative(req, &forever);
		return;
	}
	if (row->tree) {
		control_kind_ops.lookup(req, fs, n, name);
		return;
	}
	/* workspace/ itself always exists: the name may stay bound for good (its attributes still
	 * expire), so walking through it never waits for the sandbox. When the sandbox does not
	 * answer, the attributes it last gave do, rather than making every path under the mount
	 * fail behind this one name (the kernel serialises lookups of a name). */
	uint64_t ev = atomic_load(&fs->events);
	struct stat st;
	struct reply_timeouts to = fs_timeouts(fs, ev);
	int err = row_stat(fs, row, &st);
	nodes_lock(&fs->nodes);
	if (err < 0 && err != -ENOENT) {
		struct node *known = nodes_child(&fs->nodes, n, name);
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
	fs_bind_entry(fs, n, name, row->kind, &st, NULL, to.attr > 0, &to, &e);
	nodes_unlock(&fs->nodes);
	fuse_reply_entry(req, &e);
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
	for (size_t i = 0; i < N_ROWS; i++) {
		struct stat st;
		if (row_stat(fs, &root_rows[i], &st) < 0) {
			/* Still listed, so `ls` shows what exists; lookup reports the error. */
			memset(&st, 0, sizeof(st));
			st.st_mode = row_mode(&root_rows[i]);
		}
		dirsnap_add(snap, root_rows[i].name, &st, NULL, root_rows[i].kind);
	}
	return 0;
}

static void root_statfs(fuse_req_t req, struct sbxfs *fs, struct node *n)
{
	struct statvfs sv;
	int err = sbx_statfs(fs->sbx, "/workspace", &sv);
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

/* ---- dispatch ---- */

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

static void op_rename(fuse_req_t req, fuse_ino_t ino, const char *name, fuse_ino_t newino,
		      const char *newname, unsigned flags)
{
	struct sbxfs *fs = fs_of(req);
	struct node *n = hold(fs, ino), *np = hold(fs, newino);
	if (!n || !np)
		fuse_reply_err(req, ESTALE);
	else if (n->kind != np->kind && (n->kind == NODE_ROOT || np->kind == NODE_ROOT))
		fuse_reply_err(req, EPERM);
	else if (n->kind != np->kind)
		fuse_reply_err(req, EXDEV);
	else if (!kinds[n->kind]->rename)
		fuse_reply_err(req, EPERM);
	else
		kinds[n->kind]->rename(req, fs, n, name, np, newname, flags);
	if (n)
		put(fs, n);
	if (np)
		put(fs, np);
}

static void op_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newino, const char *newname)
{
	struct sbxfs *fs = fs_of(req);
	struct node *n = hold(fs, ino), *np = hold(fs, newino);
	if (!n || !np)
		fuse_reply_err(req, ESTALE);
	else if (n->kind != np->kind || !kinds[n->kind]->link)
		fuse_reply_err(req, n->kind == np->kind ? EPERM : EXDEV);
	else
		kinds[n->kind]->link(req, fs, n, np, newname);
	if (n)
		put(fs, n);
	if (np)
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
	const struct kind_ops *k = kinds[n->kind]->statfs ? kinds[n->kind] : &root_kind_ops;
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
	struct dirsnap *snap = calloc(1, sizeof(*snap));
	if (!snap)
		abort();
	nodes_lock(&fs->nodes);
	snap->seq = fs->nodes.seq;
	nodes_unlock(&fs->nodes);
	snap->events = atomic_load(&fs->events);
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

static void do_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi, bool plus)
{
	struct sbxfs *fs = fs_of(req);
	struct dirsnap *snap = (struct dirsnap *)(uintptr_t)fi->fh;
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

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		       struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, fi, false);
}

static void op_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			   struct fuse_file_info *fi)
{
	do_readdir(req, ino, size, off, fi, true);
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

struct sbxfs *sbxfs_new(const struct sbxfs_config *cfg)
{
	struct sbxfs *fs = calloc(1, sizeof(*fs));
	if (!fs)
		abort();
	fs->cfg = *cfg;
	ctl_set_stream_buffer((size_t)cfg->stream_buffer << 20);
	nodes_init(&fs->nodes, cfg->dir_cache_max);
	atomic_init(&fs->healthy, false);
	atomic_init(&fs->events, 0);
	pthread_mutex_init(&fs->ring_lock, NULL);
	atomic_init(&fs->expire_only, false);
	clock_gettime(CLOCK_REALTIME, &fs->mount_time);
	fs->uid = getuid();
	fs->gid = getgid();
	return fs;
}

/* Counts an event and remembers its path (NULL: every path). */
static void note_event(struct sbxfs *fs, const char *path, bool created)
{
	char *copy = path ? strdup(path) : NULL;
	if (path && !copy)
		abort();
	pthread_mutex_lock(&fs->ring_lock);
	uint64_t n = atomic_load(&fs->events) + 1;
	struct ring_event *re = &fs->ring[n % EVENT_RING];
	free(re->path);
	re->path = copy;
	re->created = created;
	atomic_store(&fs->events, n);
	pthread_mutex_unlock(&fs->ring_lock);
}

static void on_change(void *arg, const char *path, const char *type, bool is_dir)
{
	struct sbxfs *fs = arg;
	note_event(fs, path, strcmp(type, "create") == 0);
	invalidator_change(fs->inval, path, type, is_dir);
}

static void on_resync(void *arg)
{
	struct sbxfs *fs = arg;
	note_event(fs, NULL, false);
	invalidator_resync(fs->inval);
}

static void on_state(void *arg, bool healthy)
{
	struct sbxfs *fs = arg;
	if (healthy)
		log_info("change events flowing: caches trusted");
	else
		log_warn("change events interrupted: short cache timeouts until they resume");
	/* Whatever happened while the stream was down is unknown: start over. */
	if (healthy && !atomic_load(&fs->healthy))
		on_resync(fs);
	atomic_store(&fs->healthy, healthy);
}

static const struct sbx_watch_ops watch_ops = {
	.on_change = on_change,
	.on_resync = on_resync,
	.on_state = on_state,
};

int sbxfs_start(struct sbxfs *fs, struct sbx *sandbox, struct fuse_session *se)
{
	fs->sbx = sandbox;
	fs->se = se;
	fs->inval = invalidator_start(fs);
	if (!fs->inval)
		return -ENOMEM;
	if (!fs->cfg.no_watch) {
		fs->watch = sbx_watch_start(sandbox, "/workspace", &watch_ops, fs);
		if (!fs->watch)
			log_warn("no change events (%s): sandbox-side changes show up within "
				 "1 s (short cache timeouts)", sbx_last_error());
	}
	return 0;
}

void sbxfs_stop(struct sbxfs *fs)
{
	for (size_t i = 0; fs->sbx && i < N_ROWS; i++)
		if (root_rows[i].tree && root_rows[i].tree->stop)
			root_rows[i].tree->stop(fs);
	ctl_stop(fs);
	if (fs->watch)
		sbx_watch_stop(fs->watch);
	fs->watch = NULL;
	atomic_store(&fs->healthy, false);
	if (fs->inval)
		invalidator_stop(fs->inval);
	fs->inval = NULL;
}

void sbxfs_free(struct sbxfs *fs)
{
	if (!fs)
		return;
	sbxfs_stop(fs);
	if (fs->sbx)
		workspace_close_all(fs);
	nodes_destroy(&fs->nodes);
	for (size_t i = 0; i < EVENT_RING; i++)
		free(fs->ring[i].path);
	pthread_mutex_destroy(&fs->ring_lock);
	free(fs);
}
