#include "fs/nodes.h"
#include <stdlib.h>
#include <string.h>

static void *xcalloc(size_t n, size_t sz)
{
	void *p = calloc(n, sz);
	if (!p)
		abort();
	return p;
}

static char *xstrdup(const char *s)
{
	char *p = strdup(s);
	if (!p)
		abort();
	return p;
}

static uint64_t mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	return x;
}

static uint64_t name_key(uint64_t parent, const char *name)
{
	uint64_t h = 1469598103934665603ULL ^ mix(parent);
	for (; *name; name++)
		h = (h ^ (unsigned char)*name) * 1099511628211ULL;
	return h;
}

static size_t id_slot(const struct nodes *t, uint64_t id)
{
	return mix(id) & (t->nbuckets - 1);
}

static size_t name_slot(const struct nodes *t, uint64_t parent, const char *name)
{
	return name_key(parent, name) & (t->nbuckets - 1);
}

static void hash_id_add(struct nodes *t, struct node *n)
{
	size_t k = id_slot(t, n->id);
	n->next_by_id = t->by_id[k];
	t->by_id[k] = n;
}

static void hash_name_add(struct nodes *t, struct node *n)
{
	size_t k = name_slot(t, n->parent->id, n->name);
	n->next_by_name = t->by_name[k];
	t->by_name[k] = n;
}

static void hash_id_del(struct nodes *t, struct node *n)
{
	struct node **p = &t->by_id[id_slot(t, n->id)];
	while (*p != n)
		p = &(*p)->next_by_id;
	*p = n->next_by_id;
}

static void hash_name_del(struct nodes *t, struct node *n)
{
	struct node **p = &t->by_name[name_slot(t, n->parent->id, n->name)];
	while (*p != n)
		p = &(*p)->next_by_name;
	*p = n->next_by_name;
}

static void grow(struct nodes *t)
{
	struct node **old = t->by_id;
	size_t oldn = t->nbuckets;
	free(t->by_name);
	t->nbuckets *= 2;
	t->by_id = xcalloc(t->nbuckets, sizeof(*t->by_id));
	t->by_name = xcalloc(t->nbuckets, sizeof(*t->by_name));
	for (size_t i = 0; i < oldn; i++) {
		struct node *n = old[i], *next;
		for (; n; n = next) {
			next = n->next_by_id;
			hash_id_add(t, n);
			if (n->parent)
				hash_name_add(t, n);
		}
	}
	free(old);
}

void nodes_init(struct nodes *t, size_t max_lists)
{
	memset(t, 0, sizeof(*t));
	pthread_mutex_init(&t->lock, NULL);
	t->nbuckets = 1024;
	t->by_id = xcalloc(t->nbuckets, sizeof(*t->by_id));
	t->by_name = xcalloc(t->nbuckets, sizeof(*t->by_name));
	t->next_id = NODE_ROOT_ID + 1;
	t->max_lists = max_lists ? max_lists : 1;
	struct node *root = xcalloc(1, sizeof(*root));
	root->id = NODE_ROOT_ID;
	root->name = xstrdup("");
	root->kind = NODE_ROOT;
	root->type = S_IFDIR;
	root->nlookup = 1;
	root->ref = 1;
	hash_id_add(t, root);
	t->count = 1;
	t->root = root;
}

static void lru_unlink(struct nodes *t, struct node *n)
{
	if (n->lru_prev)
		n->lru_prev->lru_next = n->lru_next;
	else
		t->lru_head = n->lru_next;
	if (n->lru_next)
		n->lru_next->lru_prev = n->lru_prev;
	else
		t->lru_tail = n->lru_prev;
	n->lru_prev = n->lru_next = NULL;
}

void nodes_drop_list(struct nodes *t, struct node *dir)
{
	dirlist_free(dir->list);
	dir->list = NULL;
}

/* The pin ends: the node may go now, and with it ancestors only it kept. */
static void unpin(struct nodes *t, struct node *n)
{
	lru_unlink(t, n);
	n->pinned = false;
	t->npinned--;
	nodes_drop_list(t, n);
	nodes_put(t, n);
}

void nodes_set_list(struct nodes *t, struct node *dir, struct dirlist *dl, double expiry)
{
	nodes_drop_list(t, dir);
	if (dir->pinned) {
		lru_unlink(t, dir);
	} else {
		dir->pinned = true;
		dir->ref++;
		t->npinned++;
	}
	/* dir is out of the list, so neither it nor (held by it) its ancestors go here */
	while (t->npinned > t->max_lists && t->lru_tail)
		unpin(t, t->lru_tail);
	dir->list = dl;
	dir->list_expiry = expiry;
	dir->lru_next = t->lru_head;
	if (t->lru_head)
		t->lru_head->lru_prev = dir;
	t->lru_head = dir;
	if (!t->lru_tail)
		t->lru_tail = dir;
}

static void node_free(struct nodes *t, struct node *n)
{
	nodes_drop_list(t, n);
	hash_id_del(t, n);
	t->count--;
	free(n->name);
	free(n->target);
	free(n);
}

static void maybe_free(struct nodes *t, struct node *n)
{
	while (n && n->nlookup == 0 && n->ref == 0 && n->id != NODE_ROOT_ID) {
		struct node *parent = n->parent;
		if (parent)
			hash_name_del(t, n);
		node_free(t, n);
		if (!parent)
			break;
		parent->ref--;
		n = parent;
	}
}

void nodes_destroy(struct nodes *t)
{
	for (size_t i = 0; i < t->nbuckets; i++) {
		struct node *n = t->by_id[i], *next;
		for (; n; n = next) {
			next = n->next_by_id;
			dirlist_free(n->list);
			free(n->name);
			free(n->target);
			free(n);
		}
	}
	for (struct ofile *of = t->all_open, *next; of; of = next) {
		next = of->all_next;
		free(of);
	}
	free(t->by_id);
	free(t->by_name);
	pthread_mutex_destroy(&t->lock);
	memset(t, 0, sizeof(*t));
}

struct node *nodes_get(struct nodes *t, uint64_t id)
{
	struct node *n = t->by_id[id_slot(t, id)];
	while (n && n->id != id)
		n = n->next_by_id;
	return n;
}

struct node *nodes_child(struct nodes *t, const struct node *parent, const char *name)
{
	struct node *n = t->by_name[name_slot(t, parent->id, name)];
	while (n && !(n->parent == parent && strcmp(n->name, name) == 0))
		n = n->next_by_name;
	return n;
}

struct node *nodes_add(struct nodes *t, struct node *parent, const char *name,
		       enum node_kind kind)
{
	struct node *n = nodes_child(t, parent, name);
	if (n)
		return n;
	if (t->count >= t->nbuckets)
		grow(t);
	n = xcalloc(1, sizeof(*n));
	n->id = t->next_id++;
	n->name = xstrdup(name);
	n->kind = kind;
	n->parent = parent;
	parent->ref++;
	n->gen = ++t->seq;
	hash_id_add(t, n);
	hash_name_add(t, n);
	t->count++;
	return n;
}

void nodes_hold(struct node *n)
{
	n->ref++;
}

void nodes_put(struct nodes *t, struct node *n)
{
	n->ref--;
	maybe_free(t, n);
}

void nodes_forget(struct nodes *t, struct node *n, uint64_t count)
{
	if (n->id == NODE_ROOT_ID)
		return;
	n->nlookup = count >= n->nlookup ? 0 : n->nlookup - count;
	maybe_free(t, n);
}

void nodes_detach(struct nodes *t, struct node *n)
{
	struct node *parent = n->parent;
	if (!parent)
		return;
	hash_name_del(t, n);
	n->parent = NULL;
	n->detached = true;
	n->gen = ++t->seq;
	/* Hold n across the parent's release: freeing the parent chain must not free n. */
	n->ref++;
	if (n->pinned)
		unpin(t, n); /* nothing can find its listing any more */
	nodes_drop_list(t, n);
	nodes_put(t, parent);
	nodes_put(t, n);
}

void nodes_move(struct nodes *t, struct node *n, struct node *parent, const char *name)
{
	struct node *old = nodes_child(t, parent, name);
	if (old == n)
		return;
	if (old)
		nodes_detach(t, old);
	struct node *oldparent = n->parent;
	hash_name_del(t, n);
	free(n->name);
	n->name = xstrdup(name);
	n->parent = parent;
	parent->ref++;
	hash_name_add(t, n);
	n->gen = ++t->seq;
	nodes_put(t, oldparent);
}

void nodes_exchange(struct nodes *t, struct node *a, struct node *b)
{
	hash_name_del(t, a);
	hash_name_del(t, b);
	struct node *pa = a->parent;
	char *na = a->name;
	a->parent = b->parent;
	a->name = b->name;
	b->parent = pa;
	b->name = na;
	hash_name_add(t, a);
	hash_name_add(t, b);
	a->gen = ++t->seq;
	b->gen = ++t->seq;
}

char *nodes_path(const struct node *n)
{
	size_t len = 0;
	const struct node *p;
	for (p = n; p->parent; p = p->parent)
		len += strlen(p->name) + 1;
	if (p->id != NODE_ROOT_ID)
		return NULL;
	char *path = malloc(len + 1);
	if (!path)
		abort();
	path[len] = '\0';
	for (p = n; p->parent; p = p->parent) {
		size_t l = strlen(p->name);
		len -= l;
		memcpy(path + len, p->name, l);
		path[--len] = '/';
	}
	return path;
}

struct node *nodes_resolve(struct nodes *t, const char *path)
{
	struct node *n = t->root;
	char name[256];
	while (n && *path) {
		while (*path == '/')
			path++;
		if (!*path)
			break;
		size_t l = strcspn(path, "/");
		if (l >= sizeof(name))
			return NULL;
		memcpy(name, path, l);
		name[l] = '\0';
		n = nodes_child(t, n, name);
		path += l;
	}
	return n;
}

struct dirlist_entry *nodes_listed(struct nodes *t, const char *path, struct node **dir)
{
	*dir = NULL;
	const char *slash = strrchr(path, '/');
	if (!slash || slash == path)
		return NULL;
	char *dir_path = strndup(path, (size_t)(slash - path));
	if (!dir_path)
		abort();
	*dir = nodes_resolve(t, dir_path);
	free(dir_path);
	struct dirlist_entry *de = *dir && (*dir)->list ? dirlist_find((*dir)->list, slash + 1)
						       : NULL;
	return de && de->st_valid ? de : NULL;
}

bool nodes_below(const struct node *n, const struct node *a)
{
	for (; n; n = n->parent)
		if (n == a)
			return true;
	return false;
}

void nodes_foreach(struct nodes *t, void (*fn)(struct node *n, void *arg), void *arg)
{
	for (size_t i = 0; i < t->nbuckets; i++)
		for (struct node *n = t->by_id[i]; n; n = n->next_by_id)
			fn(n, arg);
}

struct ofile *nodes_open(struct nodes *t, struct node *n, struct sbx_file *f, int flags)
{
	struct ofile *of = xcalloc(1, sizeof(*of));
	of->file = f;
	of->node = n;
	of->flags = flags;
	of->ref = 1;
	n->ref++;
	of->next = n->open;
	if (n->open)
		n->open->prev = of;
	n->open = of;
	of->all_next = t->all_open;
	if (t->all_open)
		t->all_open->all_prev = of;
	t->all_open = of;
	return of;
}

bool nodes_close(struct nodes *t, struct ofile *of)
{
	struct node *n = of->node;
	if (of->prev)
		of->prev->next = of->next;
	else
		n->open = of->next;
	if (of->next)
		of->next->prev = of->prev;
	if (of->all_prev)
		of->all_prev->all_next = of->all_next;
	else
		t->all_open = of->all_next;
	if (of->all_next)
		of->all_next->all_prev = of->all_prev;
	of->node = NULL;
	nodes_put(t, n);
	return --of->ref == 0;
}

bool nodes_ofile_put(struct nodes *t, struct ofile *of)
{
	return --of->ref == 0 && !of->node;
}

struct ofile **nodes_ofiles(struct nodes *t, struct node *n, size_t *count)
{
	size_t k = 0;
	for (struct ofile *of = n->open; of; of = of->next)
		k++;
	*count = k;
	if (!k)
		return NULL;
	struct ofile **v = malloc(k * sizeof(*v));
	if (!v)
		abort();
	k = 0;
	for (struct ofile *of = n->open; of; of = of->next) {
		of->ref++;
		v[k++] = of;
	}
	return v;
}
