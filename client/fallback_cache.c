/* What the fallback backend knows of the sandbox's entries, so that it need not ask again
 * (docs/protocol.md, "Fallback").
 *
 * Why. Against a plain container every stat and listing is a command: milliseconds on loopback,
 * a round trip and more at a distance. Two patterns would ask for the same few answers over and
 * over: a walk of a tree (find, grep -r, du, rm -r, an IDE's indexer) lists every directory in
 * it, and every change in a directory makes the kernel ask for the directory's attributes again
 * (FUSE drops them after each create, unlink or rename in it, and so does the change event that
 * follows). So:
 *   - the listing of a directory comes with those of every directory below it, in one command
 *     (`find` twice: the directory's own entries, whatever their number, then the levels below
 *     it, cut off at TREE_BYTES); a directory listed this way is not listed with its subtree
 *     again for TREE_AGAIN_MS, so one that changes all the time costs one plain listing a look;
 *   - every stat a command returns is kept, and so is every listing, each entry's attributes
 *     with it: a lookup is answered from them, found (its attributes) or not (a complete listing
 *     of its directory without the name);
 *   - this client's own changes update what is kept as they are made (a new name in its
 *     directory, a directory's links; the directory's mtime and ctime become this client's
 *     clock, the one approximation here), and their change events, which follow within moments,
 *     are recognised as their echo (ECHO_MS after the last own change of that path) and change
 *     nothing.
 *
 * What is kept must not be older than what the change events allow, as for the filesystem's
 * own caches (fs/workspace.c): it is used only while a watch of /workspace is healthy (its
 * events arrive), for at most CACHE_TTL_MS after it was read; any other event drops what it
 * concerns (the entry and what lies below it, the listing and the attributes of its
 * directory); lost events (a resync) and an unhealthy watch drop everything. A fetch that a
 * change overtook (an event or an own change arrived while the command ran: the paths of the
 * last CACHE_RING are kept for that check) stores nothing that change concerns.
 *
 * Shape: a tree of nodes by path, each an entry known to exist (its directory's node exists
 * too), with or without its attributes, and for a directory whether its children are its
 * complete listing; a hash finds them by path. At most CACHE_MAX nodes: beyond that everything
 * is dropped and fetched again. Lock: k->lock, a leaf, never held across a command. */
#include "client/fallback.h"
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "client/fallback_parse.h"
#include "client/shellquote.h"
#include "common/log.h"

#define CACHE_TTL_MS 30000
#define CACHE_MAX 200000
#define CACHE_RING 512
#define ECHO_MS 5000
#define TREE_AGAIN_MS 30000
#define TREE_BYTES (1u << 20)   /* find output below the top, before base64 */
#define TREE_DEPTH 64
#define TREE_RECENT 64          /* directories listed with their subtree lately */

struct cnode {
	struct cnode *hnext;                    /* the hash chain */
	struct cnode *parent, *child, *prev, *next; /* the tree: children, siblings */
	char *path;
	bool attrs;             /* st (and target) hold its attributes */
	bool listed;            /* a directory whose children are its complete listing */
	long long ms;           /* when its attributes were read */
	long long list_ms;      /* when its listing was read */
	struct stat st;
	char *target;
};

struct echo {
	struct echo *hnext;     /* by path */
	struct echo *older, *newer; /* by time */
	long long until_ms;
	char path[];
};

struct fb_cache {
	pthread_mutex_t lock;
	struct cnode **hash;
	size_t nbuckets, n;
	unsigned healthy;       /* healthy watches of /workspace */
	uint64_t changes;       /* events and own changes so far */
	char *ring[CACHE_RING]; /* the paths of the last ones ("": everything) */
	struct echo **echoes;   /* own changes whose events are still to come */
	struct echo *oldest, *newest;
	struct recent {
		char *path;
		long long at_ms;
	} recent[TREE_RECENT];
	size_t next_recent;
};

#define ECHO_BUCKETS 1024

static long long mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static uint64_t hash_path(const char *s)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return h;
}

static bool at_or_below(const char *path, const char *top)
{
	size_t n = strlen(top);
	return strncmp(path, top, n) == 0 && (path[n] == 0 || path[n] == '/');
}

/* The length of path's directory part ("/a/b" -> 2), or 0 for none. */
static size_t dir_len(const char *path)
{
	const char *slash = strrchr(path, '/');
	return slash && slash != path ? (size_t)(slash - path) : 0;
}

static bool is_parent(const char *dir, const char *path)
{
	size_t n = dir_len(path);
	return n && strlen(dir) == n && strncmp(dir, path, n) == 0;
}

struct fb_cache *fb_cache_new(void)
{
	struct fb_cache *k = calloc(1, sizeof *k);
	if (!k)
		abort();
	k->nbuckets = 1024;
	k->hash = calloc(k->nbuckets, sizeof *k->hash);
	k->echoes = calloc(ECHO_BUCKETS, sizeof *k->echoes);
	if (!k->hash || !k->echoes)
		abort();
	pthread_mutex_init(&k->lock, NULL);
	return k;
}

/* ---- nodes ---- */

static struct cnode *lookup(struct fb_cache *k, const char *path)
{
	struct cnode *n = k->hash[hash_path(path) & (k->nbuckets - 1)];
	while (n && strcmp(n->path, path) != 0)
		n = n->hnext;
	return n;
}

/* The node of path's directory, when it has one and the cache holds it. */
static struct cnode *lookup_parent(struct fb_cache *k, const char *path)
{
	size_t dl = dir_len(path);
	if (!dl)
		return NULL;
	char *dir = strndup(path, dl);
	if (!dir)
		abort();
	struct cnode *p = lookup(k, dir);
	free(dir);
	return p;
}

static void grow(struct fb_cache *k)
{
	size_t nb = k->nbuckets * 2;
	struct cnode **h = calloc(nb, sizeof *h);
	if (!h)
		abort();
	for (size_t i = 0; i < k->nbuckets; i++) {
		for (struct cnode *n = k->hash[i], *next; n; n = next) {
			next = n->hnext;
			size_t b = hash_path(n->path) & (nb - 1);
			n->hnext = h[b];
			h[b] = n;
		}
	}
	free(k->hash);
	k->hash = h;
	k->nbuckets = nb;
}

static void forget_attrs(struct cnode *n)
{
	n->attrs = false;
	free(n->target);
	n->target = NULL;
}

static void unlink_node(struct fb_cache *k, struct cnode *n)
{
	struct cnode **p = &k->hash[hash_path(n->path) & (k->nbuckets - 1)];
	while (*p != n)
		p = &(*p)->hnext;
	*p = n->hnext;
	if (n->prev)
		n->prev->next = n->next;
	else if (n->parent)
		n->parent->child = n->next;
	if (n->next)
		n->next->prev = n->prev;
	k->n--;
}

/* Drops n and everything below it. */
static void drop(struct fb_cache *k, struct cnode *n)
{
	/* drop() unlinks the child it frees, so n->child is the next one (the analyzer does
	 * not follow the unlinking) */
	while (n->child)
		drop(k, n->child); /* NOLINT(clang-analyzer-unix.Malloc) */
	unlink_node(k, n);
	forget_attrs(n);
	free(n->path);
	free(n);
}

static void drop_all(struct fb_cache *k)
{
	for (size_t i = 0; i < k->nbuckets; i++) {
		for (struct cnode *n = k->hash[i], *next; n; n = next) {
			next = n->hnext;
			forget_attrs(n);
			free(n->path);
			free(n);
		}
		k->hash[i] = NULL;
	}
	k->n = 0;
}

/* The node of path, made (without attributes) with its directories when missing; NULL when
 * path is not absolute or the cache is full. */
static struct cnode *get(struct fb_cache *k, const char *path)
{
	struct cnode *n = lookup(k, path);
	if (n || path[0] != '/' || k->n >= CACHE_MAX)
		return n;
	struct cnode *parent = NULL;
	size_t dl = dir_len(path);
	if (dl) {
		char *dir = strndup(path, dl);
		if (!dir)
			abort();
		parent = get(k, dir);
		free(dir);
		if (!parent)
			return NULL;
	}
	if (!(n = calloc(1, sizeof *n)) || !(n->path = strdup(path)))
		abort();
	size_t b = hash_path(path) & (k->nbuckets - 1);
	n->hnext = k->hash[b];
	k->hash[b] = n;
	n->parent = parent;
	if (parent) {
		n->next = parent->child;
		if (parent->child)
			parent->child->prev = n;
		parent->child = n;
	}
	if (++k->n > k->nbuckets)
		grow(k);
	return n;
}

static void set_attrs(struct cnode *n, const struct stat *st, const char *target, long long ms)
{
	char *t = S_ISLNK(st->st_mode) ? sbx_strdup(target) : NULL; /* target may be n's */
	forget_attrs(n);
	n->st = *st;
	n->target = t;
	n->attrs = true;
	n->ms = ms;
}

static bool fresh(const struct fb_cache *k, const struct cnode *n, long long now)
{
	return k->healthy && now - n->ms < CACHE_TTL_MS;
}

/* ---- changes ---- */

static void note_change(struct fb_cache *k, const char *path)
{
	size_t i = k->changes++ % CACHE_RING;
	free(k->ring[i]);
	k->ring[i] = sbx_strdup(path ? path : "");
}

/* Whether a change at `changed` ("": anything) may have made what was read of dir's listing,
 * or of dir itself, untrue. */
static bool concerns(const char *changed, const char *dir)
{
	if (!*changed || at_or_below(dir, changed) || is_parent(dir, changed))
		return true;
	/* changed's directory is an entry of dir: its attributes in dir's listing changed */
	size_t n = dir_len(changed);
	if (!n)
		return false;
	char *pdir = strndup(changed, n);
	if (!pdir)
		abort();
	bool r = is_parent(dir, pdir) || strcmp(pdir, dir) == 0;
	free(pdir);
	return r;
}

/* Whether anything since `since` concerns path. Caller holds the lock. */
static bool overtaken(const struct fb_cache *k, uint64_t since, const char *path)
{
	if (k->changes - since > CACHE_RING)
		return true;
	for (uint64_t c = since; c < k->changes; c++)
		if (concerns(k->ring[c % CACHE_RING], path))
			return true;
	return false;
}

/* A change at path: its node and what lies below go, and its directory's listing and
 * attributes (its mtime changed). */
static void invalidate(struct fb_cache *k, const char *path)
{
	struct cnode *n = lookup(k, path);
	if (n)
		drop(k, n);
	struct cnode *p = lookup_parent(k, path);
	if (p) {
		p->listed = false;
		forget_attrs(p);
	}
}

static struct echo **echo_slot(struct fb_cache *k, const char *path)
{
	struct echo **p = &k->echoes[hash_path(path) & (ECHO_BUCKETS - 1)];
	while (*p && strcmp((*p)->path, path) != 0)
		p = &(*p)->hnext;
	return p;
}

static void echo_remove(struct fb_cache *k, struct echo *e)
{
	*echo_slot(k, e->path) = e->hnext;
	if (e->older)
		e->older->newer = e->newer;
	else
		k->oldest = e->newer;
	if (e->newer)
		e->newer->older = e->older;
	else
		k->newest = e->older;
	free(e);
}

static void expect_echo(struct fb_cache *k, const char *path, long long now)
{
	while (k->oldest && k->oldest->until_ms < now)
		echo_remove(k, k->oldest);
	struct echo *e = *echo_slot(k, path);
	if (e) {
		echo_remove(k, e);
	}
	size_t len = strlen(path) + 1;
	if (!(e = calloc(1, sizeof *e + len)))
		abort();
	memcpy(e->path, path, len);
	e->until_ms = now + ECHO_MS;
	struct echo **slot = echo_slot(k, path);
	e->hnext = *slot;
	*slot = e;
	e->older = k->newest;
	if (k->newest)
		k->newest->newer = e;
	else
		k->oldest = e;
	k->newest = e;
}

void fb_cache_expect(struct sbx *s, const char *path)
{
	struct fb_cache *k = s->fb->cache;
	pthread_mutex_lock(&k->lock);
	expect_echo(k, path, mono_ms());
	pthread_mutex_unlock(&k->lock);
}

void fb_cache_event(struct sbx *s, const char *path)
{
	struct fb_cache *k = s->fb->cache;
	pthread_mutex_lock(&k->lock);
	if (!path) {
		note_change(k, NULL);
		drop_all(k);
	} else {
		struct echo *e = *echo_slot(k, path);
		if (!e || e->until_ms < mono_ms()) {
			note_change(k, path);
			invalidate(k, path);
		}
	}
	pthread_mutex_unlock(&k->lock);
}

void fb_cache_watching(struct sbx *s, bool healthy)
{
	struct fb_cache *k = s->fb->cache;
	pthread_mutex_lock(&k->lock);
	if (healthy) {
		/* what this client changed while no events came is all that is known */
		if (!k->healthy++)
			drop_all(k);
	} else {
		if (k->healthy)
			k->healthy--;
		note_change(k, NULL);
		drop_all(k); /* events may have been missed */
	}
	pthread_mutex_unlock(&k->lock);
}

/* The link count of a file with several names changed: what is kept of its names (of every
 * file with several names, for ino 0) goes. */
static void forget_links(struct fb_cache *k, ino_t ino)
{
	for (size_t i = 0; i < k->nbuckets; i++)
		for (struct cnode *n = k->hash[i]; n; n = n->hnext)
			if (n->attrs && S_ISREG(n->st.st_mode) && n->st.st_nlink > 1 &&
			    (!ino || n->st.st_ino == ino))
				forget_attrs(n);
}

void fb_cache_links_changed(struct sbx *s, ino_t ino)
{
	struct fb_cache *k = s->fb->cache;
	pthread_mutex_lock(&k->lock);
	forget_links(k, ino);
	pthread_mutex_unlock(&k->lock);
}

/* The directory of path gained (+1) or lost (-1) an entry, a directory when subdir: its
 * mtime and ctime are now (this client's clock), and its link count follows. */
static void dir_changed(struct fb_cache *k, const char *path, int delta, bool subdir)
{
	struct cnode *p = lookup_parent(k, path);
	if (!p || !p->attrs)
		return;
	clock_gettime(CLOCK_REALTIME, &p->st.st_mtim);
	p->st.st_ctim = p->st.st_mtim;
	if (subdir && (delta > 0 || p->st.st_nlink > 2))
		p->st.st_nlink += delta;
}

void fb_cache_own(struct sbx *s, enum fb_change what, const char *path, const struct stat *st)
{
	struct fb_cache *k = s->fb->cache;
	long long now = mono_ms();
	pthread_mutex_lock(&k->lock);
	note_change(k, path);
	expect_echo(k, path, now);
	struct cnode *n = lookup(k, path);
	switch (what) {
	case FB_MADE: {
		if (n)
			drop(k, n);
		size_t dl = dir_len(path);
		char *dir = dl ? strndup(path, dl) : NULL;
		if (dl && !dir)
			abort();
		struct cnode *p = dir ? lookup(k, dir) : NULL;
		free(dir);
		/* a new name: known in a listing kept whole, or with its attributes */
		if (p && (p->listed || st) && (n = get(k, path))) {
			if (st)
				set_attrs(n, st, NULL, now);
			/* a directory just made is empty */
			n->listed = st && S_ISDIR(st->st_mode);
			n->list_ms = now;
		}
		dir_changed(k, path, 1, st && S_ISDIR(st->st_mode));
		break;
	}
	case FB_WRITTEN:
	case FB_SET:
		if (n && st)
			set_attrs(n, st, n->target, n->attrs ? n->ms : now);
		else if (n)
			forget_attrs(n);
		break;
	case FB_GONE: {
		bool dir = n && n->attrs && S_ISDIR(n->st.st_mode);
		bool unknown = !n || !n->attrs;
		/* the file's other names lost a link */
		if (unknown)
			forget_links(k, 0);
		else if (S_ISREG(n->st.st_mode) && n->st.st_nlink > 1)
			forget_links(k, n->st.st_ino);
		if (n)
			drop(k, n);
		dir_changed(k, path, -1, dir);
		if (unknown) {
			/* a directory's link count may have changed */
			size_t dl = dir_len(path);
			char *d = dl ? strndup(path, dl) : NULL;
			struct cnode *p = d ? lookup(k, d) : NULL;
			free(d);
			if (p)
				forget_attrs(p);
		}
		break;
	}
	}
	pthread_mutex_unlock(&k->lock);
}

void fb_cache_renamed(struct sbx *s, const char *from, const char *to)
{
	struct fb_cache *k = s->fb->cache;
	pthread_mutex_lock(&k->lock);
	struct cnode *n = lookup(k, from);
	bool known = n && n->attrs;
	struct stat st = known ? n->st : (struct stat){ 0 };
	char *target = known ? sbx_strdup(n->target) : NULL;
	pthread_mutex_unlock(&k->lock);
	fb_cache_own(s, FB_GONE, to, NULL); /* what it replaced */
	fb_cache_own(s, FB_GONE, from, NULL);
	if (!known || S_ISDIR(st.st_mode)) {
		/* what lay below a directory is not known under the new names */
		fb_cache_own(s, FB_MADE, to, NULL);
		if (known) {
			/* its new directory gained a link, which FB_MADE without st cannot know */
			pthread_mutex_lock(&k->lock);
			dir_changed(k, to, 1, true);
			pthread_mutex_unlock(&k->lock);
		}
	} else {
		/* the entry moved with its inode: the same attributes, a new ctime */
		clock_gettime(CLOCK_REALTIME, &st.st_ctim);
		fb_cache_own(s, FB_MADE, to, &st);
		pthread_mutex_lock(&k->lock);
		struct cnode *m = lookup(k, to);
		if (m && m->attrs && target)
			set_attrs(m, &st, target, m->ms);
		pthread_mutex_unlock(&k->lock);
	}
	free(target);
}

/* ---- reads ---- */

uint64_t fb_cache_now(struct sbx *s)
{
	struct fb_cache *k = s->fb->cache;
	pthread_mutex_lock(&k->lock);
	uint64_t c = k->changes;
	pthread_mutex_unlock(&k->lock);
	return c;
}

int fb_cache_lstat(struct sbx *s, const char *path, struct stat *st, char **target)
{
	struct fb_cache *k = s->fb->cache;
	long long now = mono_ms();
	int r = 1;
	pthread_mutex_lock(&k->lock);
	struct cnode *n = lookup(k, path);
	/* a symlink this client made is kept without its target: that is asked for */
	bool whole = n && n->attrs && (!target || !S_ISLNK(n->st.st_mode) || n->target);
	if (whole && fresh(k, n, now)) {
		*st = n->st;
		if (target)
			*target = sbx_strdup(n->target);
		r = 0;
	} else if (!n && k->healthy) {
		size_t dl = dir_len(path);
		char *dir = dl ? strndup(path, dl) : NULL;
		if (dl && !dir)
			abort();
		struct cnode *p = dir ? lookup(k, dir) : NULL;
		free(dir);
		if (p && p->listed && now - p->list_ms < CACHE_TTL_MS)
			r = -ENOENT;
	}
	pthread_mutex_unlock(&k->lock);
	return r;
}

void fb_cache_put(struct sbx *s, const char *path, const struct stat *st, const char *target,
		  uint64_t since)
{
	struct fb_cache *k = s->fb->cache;
	pthread_mutex_lock(&k->lock);
	struct cnode *n;
	if (k->healthy && !overtaken(k, since, path) && (n = get(k, path))) {
		/* another file now: what was known of the old one goes */
		if (n->attrs && (n->st.st_ino != st->st_ino ||
				 (n->st.st_mode & S_IFMT) != (st->st_mode & S_IFMT)))
			while (n->child)
				drop(k, n->child);
		set_attrs(n, st, target, mono_ms());
		if (!S_ISDIR(st->st_mode))
			n->listed = false;
	}
	pthread_mutex_unlock(&k->lock);
}

/* Stores the listing of dir fetched since `since`: its entries with their attributes. */
static void put_listing(struct fb_cache *k, const char *dir, const struct sbx_dirent *ents,
			size_t n, uint64_t since, long long now)
{
	if (!k->healthy || overtaken(k, since, dir) || n + TREE_DEPTH > CACHE_MAX)
		return;
	/* full: everything goes, to be fetched again when needed */
	if (k->n + n + TREE_DEPTH > CACHE_MAX)
		drop_all(k);
	struct cnode *d = get(k, dir);
	if (!d)
		return;
	/* what is not in the listing is gone; what is keeps its own listing if the same */
	for (struct cnode *c = d->child, *next; c; c = next) {
		next = c->next;
		drop(k, c);
	}
	for (size_t i = 0; i < n; i++) {
		char *path;
		if (asprintf(&path, "%s/%s", dir, ents[i].name) < 0)
			abort();
		struct cnode *c = get(k, path);
		free(path);
		if (!c)
			return;
		set_attrs(c, &ents[i].st, ents[i].target, now);
	}
	d->listed = true;
	d->list_ms = now;
}

/* The listing of dir when every entry's attributes are known and fresh. */
static bool get_listing(struct fb_cache *k, const char *dir, struct sbx_dirent **ents,
			size_t *n, long long now)
{
	struct cnode *d = lookup(k, dir);
	if (!d || !d->listed || !k->healthy || now - d->list_ms >= CACHE_TTL_MS)
		return false;
	size_t cnt = 0;
	for (struct cnode *c = d->child; c; c = c->next) {
		/* a file whose inode is not known yet cannot be listed (fb_cache_own) */
		if (!c->attrs || !c->st.st_ino || !fresh(k, c, now))
			return false;
		cnt++;
	}
	struct sbx_dirent *v = calloc(cnt ? cnt : 1, sizeof *v);
	if (!v)
		abort();
	size_t i = 0;
	for (struct cnode *c = d->child; c; c = c->next, i++) {
		v[i].name = sbx_strdup(c->path + strlen(dir) + 1);
		v[i].st = c->st;
		v[i].target = sbx_strdup(c->target);
	}
	*ents = v;
	*n = cnt;
	return true;
}

static bool listed_lately(struct fb_cache *k, const char *path, long long now)
{
	for (size_t i = 0; i < TREE_RECENT; i++)
		if (k->recent[i].path && now - k->recent[i].at_ms < TREE_AGAIN_MS &&
		    strcmp(k->recent[i].path, path) == 0)
			return true;
	return false;
}

/* One level: the listing command as it always was; 1 when entries were dropped from it (it
 * is not kept then: it cannot say that a name the server sent is absent). */
static int list_one(struct sbx *s, const char *path, struct sbx_dirent **ents, size_t *n)
{
	struct strbuf sb = STRBUF_INIT, dir = STRBUF_INIT;
	/* the trailing slash makes find fail with ENOTDIR on a non-directory */
	strbuf_appendf(&dir, "%s/", path);
	strbuf_appends(&sb, "find -- ");
	shell_append_quoted(&sb, dir.data);
	strbuf_free(&dir);
	strbuf_appends(&sb, " -mindepth 1 -maxdepth 1 -printf " FIND_STAT_FMT " | base64 -w0");
	char *out = NULL;
	size_t len = 0;
	int err = fb_run(s, FB_WHAT("readdir", path), sb.data, 0, true, &out, &len);
	strbuf_free(&sb);
	if (err)
		return err;
	bool exact = find_parse_listing(path, out, len, ents, n);
	free(out);
	return exact ? 0 : 1;
}

/* The directory and its subtree: the top's own entries first, whatever their number, then
 * what lies below up to TREE_BYTES and TREE_DEPTH (a directory find cannot read is listed
 * as 'U', its content not), then the end mark if nothing was cut off. Errors below the top
 * (an entry that vanished meanwhile) are not the listing's: the end mark is what counts. */
static int list_tree(struct sbx *s, const char *path, struct find_tree_dir **v, size_t *nv)
{
	struct strbuf sb = STRBUF_INIT, q = STRBUF_INIT, dir = STRBUF_INIT;
	strbuf_appendf(&q, "%s/", path);
	shell_append_quoted(&dir, q.data);
	strbuf_free(&q);
	/* the find formats hold '%': appended as they are */
	strbuf_appendf(&sb, "{ find -- %s -mindepth 1 -maxdepth 1 -printf ", dir.data);
	strbuf_appends(&sb, FIND_TREE_FMT);
	strbuf_appendf(&sb, " && { { find -- %s -mindepth 2 -maxdepth %d \\( -type d \\( "
		       "! -readable -o ! -executable \\) -printf ", dir.data, TREE_DEPTH);
	strbuf_appends(&sb, FIND_UNLISTED_FMT " -prune \\) -o -printf " FIND_TREE_FMT
		       "; printf " FIND_TREE_END);
	strbuf_appendf(&sb, "; } 2>/dev/null | head -c %u || true; }; } | base64 -w0", TREE_BYTES);
	strbuf_free(&dir);
	char *out = NULL;
	size_t len = 0;
	int err = fb_run(s, FB_WHAT("readdir", path), sb.data, TREE_BYTES, true, &out, &len);
	strbuf_free(&sb);
	if (err)
		return err;
	find_parse_tree(path, out, len, TREE_DEPTH, v, nv);
	free(out);
	return 0;
}

/* Lists path by a command, with what lies below unless that was done lately (or only_tree:
 * 1 then, nothing done), and keeps what it got; ents (may be NULL) receives path's entries. */
static int fetch(struct sbx *s, const char *path, bool only_tree, struct sbx_dirent **ents,
		 size_t *n)
{
	struct fb_cache *k = s->fb->cache;
	long long now = mono_ms();
	pthread_mutex_lock(&k->lock);
	bool tree = k->healthy && !listed_lately(k, path, now);
	uint64_t since = k->changes;
	if (tree) {
		struct recent *r = &k->recent[k->next_recent++ % TREE_RECENT];
		free(r->path);
		r->path = sbx_strdup(path);
		r->at_ms = now;
	}
	pthread_mutex_unlock(&k->lock);
	if (!tree && only_tree)
		return 1;
	struct sbx_dirent *mine = NULL;
	size_t nmine = 0;
	if (!ents) {
		ents = &mine;
		n = &nmine;
	}
	if (!tree) {
		int err = list_one(s, path, ents, n);
		if (err == 1)
			err = 0;
		else if (!err) {
			pthread_mutex_lock(&k->lock);
			put_listing(k, path, *ents, *n, since, mono_ms());
			pthread_mutex_unlock(&k->lock);
		}
		sbx_dirents_free(mine, nmine);
		return err;
	}
	struct find_tree_dir *v;
	size_t nv;
	int err = list_tree(s, path, &v, &nv);
	if (err)
		return err;
	now = mono_ms();
	pthread_mutex_lock(&k->lock);
	/* parents before children: a child's listing is not dropped by its parent's */
	for (size_t i = 0; i < nv; i++) {
		/* a listing that dropped entries is not kept: a lookup of a dropped name then asks
		 * the server for it by name, whose answer is judged on its own (EPROTO) */
		if (!v[i].complete || !v[i].exact)
			continue;
		char *dir;
		if (asprintf(&dir, "%s%s%s", path, *v[i].rel ? "/" : "", v[i].rel) < 0)
			abort();
		put_listing(k, dir, v[i].ents, v[i].n, since, now);
		free(dir);
	}
	pthread_mutex_unlock(&k->lock);
	/* the top comes first */
	*ents = v[0].ents;
	*n = v[0].n;
	v[0].ents = NULL;
	v[0].n = 0;
	find_tree_free(v, nv);
	sbx_dirents_free(mine, nmine);
	return 0;
}

int fb_cache_readdir(struct sbx *s, const char *path, struct sbx_dirent **ents, size_t *n)
{
	struct fb_cache *k = s->fb->cache;
	pthread_mutex_lock(&k->lock);
	bool hit = get_listing(k, path, ents, n, mono_ms());
	pthread_mutex_unlock(&k->lock);
	return hit ? 0 : fetch(s, path, false, ents, n);
}

int fb_cache_lookup(struct sbx *s, const char *path, struct stat *st, char **target)
{
	int r = fb_cache_lstat(s, path, st, target);
	size_t dl = dir_len(path);
	if (r != 1 || !dl)
		return r;
	char *dir = strndup(path, dl);
	if (!dir)
		abort();
	/* a failure is the stat's to report */
	if (fetch(s, dir, true, NULL, NULL) == 0)
		r = fb_cache_lstat(s, path, st, target);
	free(dir);
	return r;
}

void fb_cache_free(struct fb_cache *k)
{
	if (!k)
		return;
	drop_all(k);
	while (k->oldest) /* echo_remove unlinks what it frees, which the analyzer does not follow */
		echo_remove(k, k->oldest); /* NOLINT(clang-analyzer-unix.Malloc) */
	for (size_t i = 0; i < CACHE_RING; i++)
		free(k->ring[i]);
	for (size_t i = 0; i < TREE_RECENT; i++)
		free(k->recent[i].path);
	free(k->hash);
	free(k->echoes);
	pthread_mutex_destroy(&k->lock);
	free(k);
}
