#include "fs/dircache.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t name_hash(const char *s)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ULL;
	return h;
}

static void *xcalloc(size_t n, size_t sz)
{
	void *p = calloc(n, sz);
	if (!p)
		abort();
	return p;
}

struct dirlist *dirlist_new(void)
{
	struct dirlist *dl = xcalloc(1, sizeof(*dl));
	dl->nbuckets = 16;
	dl->buckets = xcalloc(dl->nbuckets, sizeof(*dl->buckets));
	return dl;
}

static void entry_free(struct dirlist_entry *e)
{
	free(e->target);
	free(e);
}

void dirlist_free(struct dirlist *dl)
{
	if (!dl)
		return;
	for (size_t i = 0; i < dl->nbuckets; i++) {
		struct dirlist_entry *e = dl->buckets[i], *next;
		for (; e; e = next) {
			next = e->next;
			entry_free(e);
		}
	}
	free(dl->buckets);
	free(dl);
}

static struct dirlist_entry **slot(const struct dirlist *dl, const char *name)
{
	struct dirlist_entry **p = &dl->buckets[name_hash(name) & (dl->nbuckets - 1)];
	while (*p && strcmp((*p)->name, name) != 0)
		p = &(*p)->next;
	return p;
}

struct dirlist_entry *dirlist_find(const struct dirlist *dl, const char *name)
{
	return *slot(dl, name);
}

static void grow(struct dirlist *dl)
{
	size_t nb = dl->nbuckets * 2;
	struct dirlist_entry **b = xcalloc(nb, sizeof(*b));
	for (size_t i = 0; i < dl->nbuckets; i++) {
		struct dirlist_entry *e = dl->buckets[i], *next;
		for (; e; e = next) {
			next = e->next;
			size_t k = name_hash(e->name) & (nb - 1);
			e->next = b[k];
			b[k] = e;
		}
	}
	free(dl->buckets);
	dl->buckets = b;
	dl->nbuckets = nb;
}

void dirlist_put(struct dirlist *dl, const char *name, const struct stat *st, const char *target)
{
	struct dirlist_entry **p = slot(dl, name), *e = *p;
	if (!e) {
		size_t len = strlen(name) + 1;
		e = xcalloc(1, sizeof(*e) + len);
		memcpy(e->name, name, len);
		*p = e;
		if (++dl->n > dl->nbuckets)
			grow(dl);
	}
	free(e->target);
	e->target = target ? strdup(target) : NULL;
	if (st)
		e->st = *st;
	e->st_valid = st != NULL;
	e->clean_blob = 0;
}

void dirlist_remove(struct dirlist *dl, const char *name)
{
	struct dirlist_entry **p = slot(dl, name), *e = *p;
	if (!e)
		return;
	*p = e->next;
	entry_free(e);
	dl->n--;
}

void dirlist_stale(struct dirlist *dl, const char *name)
{
	struct dirlist_entry *e = dirlist_find(dl, name);
	if (e) {
		e->st_valid = false;
		e->clean_blob = 0;
	}
}

void dirlist_set_clean(struct dirlist *dl, const char *name, uint64_t blob)
{
	struct dirlist_entry *e = dirlist_find(dl, name);
	if (e && e->st_valid)
		e->clean_blob = blob;
}
