/* The invalidator (fs/invalidate.c): the sandbox's change events turned into kernel
 * invalidations, on a thread of its own. */
#ifndef SBX_FS_INVALIDATE_H
#define SBX_FS_INVALIDATE_H
#include <stdbool.h>
#include <stdint.h>

struct sbxfs;
struct invalidator;

struct invalidator *invalidator_start(struct sbxfs *fs);
void invalidator_stop(struct invalidator *inv);
void invalidator_change(struct invalidator *inv, const char *path, const char *type,
			bool is_dir);
void invalidator_resync(struct invalidator *inv);
/* Queues an invalidation of one node's attributes (and pages with data): for handlers, which
 * must not notify themselves. */
void invalidator_inode(struct invalidator *inv, uint64_t id, bool data);
#endif
