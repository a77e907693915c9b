/* The invalidator (fs/invalidate.c): the sandbox's change events turned into kernel
 * invalidations, on a thread of its own. */
#ifndef SBX_FS_INVALIDATE_H
#define SBX_FS_INVALIDATE_H
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

struct sbxfs;
struct invalidator;

struct invalidator *invalidator_start(struct sbxfs *fs);
void invalidator_stop(struct invalidator *inv);
void invalidator_change(struct invalidator *inv, const char *path, const char *type,
			bool is_dir);
void invalidator_resync(struct invalidator *inv);
/* The mount's own change of the file at path is acknowledged and st is how the sandbox has
 * it: it becomes the cached attributes (the journal's gave the kernel other times), in order
 * with the events queued before; then the journal hands the path over (handover:
 * sbx_journal_handover), with a clean copy of its content to open if it kept one. */
void invalidator_settled(struct invalidator *inv, const char *path, const struct stat *st,
			 uint64_t handover);
/* Queues an invalidation of one node's attributes (and pages with data): for handlers, which
 * must not notify themselves. */
void invalidator_inode(struct invalidator *inv, uint64_t id, bool data);
#endif
