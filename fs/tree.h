/* Subtree listings (fs/tree.c): the listings of a directory and of everything below it, fetched
 * in one request and cached on the directories' nodes. */
#ifndef SBX_FS_TREE_H
#define SBX_FS_TREE_H
#include <stdint.h>

struct sbxfs;
struct node;
struct dirsnap;

/* Fetches the listings of dir (at sandbox path `path`, held by the caller) and of the
 * directories below it, and caches those that no change event or mutation touched meanwhile
 * (making nodes, pinned, for directories the table does not know yet). With snap, dir's own
 * listing also fills it. 0, or a negative errno (-ENOSYS: the backend lists one directory at a
 * time); nothing is cached while the change events are not trusted. */
int tree_fetch(struct sbxfs *fs, struct node *dir, const char *path, struct dirsnap *snap);
#endif
