/* Whole small files with their directory's listing (fs/prefetch.c). */
#ifndef SBX_FS_PREFETCH_H
#define SBX_FS_PREFETCH_H
#include <stdbool.h>

struct sbxfs;
struct node;

/* Before a file of dir is read from the sandbox for the first time: fetches the small files
 * of dir whole, in one request, as clean copies for the listing's entries and their nodes
 * (once per listing). True when it asked. Caller holds dir (nodes_hold), not the lock. */
bool prefetch_dir(struct sbxfs *fs, struct node *dir);
#endif
