/* A directory's complete listing, name -> attributes, as the filesystem caches it after a
 * readdir so that lookups of children (found or not) need no round trip. Not locked: the node
 * table's lock protects every listing attached to a node. */
#ifndef SBX_FS_DIRCACHE_H
#define SBX_FS_DIRCACHE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

struct dirlist_entry {
	struct dirlist_entry *next;
	char *target;  /* symlinks, when known */
	struct stat st;
	bool st_valid; /* false: the name exists, its attributes must be fetched */
	/* with st_valid: the journal's clean copy of the file's content (fs/nodes.h), kept
	 * here too so that it outlives the kernel's forgetting the file */
	uint64_t clean_blob;
	char name[];
};

struct dirlist {
	struct dirlist_entry **buckets;
	size_t nbuckets; /* power of two */
	size_t n;
	bool content_tried; /* its small files were fetched whole once (fs/prefetch.c) */
};

struct dirlist *dirlist_new(void);
void dirlist_free(struct dirlist *dl);
struct dirlist_entry *dirlist_find(const struct dirlist *dl, const char *name);
/* Inserts or replaces name; st NULL records the name with unknown attributes. */
void dirlist_put(struct dirlist *dl, const char *name, const struct stat *st, const char *target);
void dirlist_remove(struct dirlist *dl, const char *name);
/* Keeps the name but forgets its attributes (a write changed size and mtime). */
void dirlist_stale(struct dirlist *dl, const char *name);
/* The clean copy of name's content (after a put of its attributes). */
void dirlist_set_clean(struct dirlist *dl, const char *name, uint64_t blob);
#endif
