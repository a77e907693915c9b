/* Directory listings as the filesystem extensions send them (docs/protocol.md, /api/x/readdir
 * and /api/x/tree): one directory's entries, and the complete listings of a whole subtree.
 * Nothing here talks HTTP; server/fsx.c answers for the routes. */
#ifndef SBXD_LISTING_H
#define SBXD_LISTING_H
#include <stdbool.h>
#include <stddef.h>

struct cJSON;

/* The entries of the open directory fd (consumed, also on failure), "." and ".." left out:
 * [{"name", "stat"}...], a symlink's target in its stat. An entry removed while it is read is
 * left out. 0 with *entries set, or -errno. */
int listing_read(int fd, struct cJSON **entries);

#define CONTENT_EACH_CAP (1 << 20)
#define CONTENT_BUDGET_DEFAULT (4 << 20)
#define CONTENT_BUDGET_CAP (16 << 20)

/* listing_read, with the whole content of each regular file of at most each bytes as "data"
 * (base64) beside its stat, in listing order while the total stays within budget; a file
 * that changed while it was read (its stat before and after differ) goes without. */
int listing_read_content(int fd, size_t each, size_t budget, struct cJSON **entries);

#define TREE_MAX_ENTRIES_DEFAULT 20000
#define TREE_MAX_ENTRIES_CAP 100000

/* The complete listings of the directory fd (consumed, also on failure), which is API path
 * `path`, and of the directories below it, breadth-first: [{"path", "entries"}...]. A
 * directory is in it with all its entries or not at all; the listings stop before the one that
 * would take the total number of entries past max_entries (the first is always given whole),
 * and *truncated says whether some were left out. Subdirectories are opened beneath the first
 * without following any symlink, so a directory replaced by a symlink meanwhile is left out
 * (and the answer is truncated), never followed. 0 with *dirs set, or -errno (the first
 * directory could not be read). */
int listing_tree(int fd, const char *path, size_t max_entries, struct cJSON **dirs,
		 bool *truncated);
#endif
