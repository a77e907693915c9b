/* Entry replies (fs/entry.c): a name bound to a node for the kernel, the attributes cached on
 * the way, and "no such name". */
#ifndef SBX_FS_ENTRY_H
#define SBX_FS_ENTRY_H
#include <stdbool.h>
#include <fuse_lowlevel.h>
#include "fs/nodes.h"
#include "fs/timeouts.h"

struct sbxfs;

/* Binds (parent, name) to a node for the inode in st, detaching a stale node of a different
 * inode or type, takes a kernel reference and fills e. Stores st in the node's cache when
 * `cache` (the caller checked staleness). Caller holds the table lock. */
struct node *fs_bind_entry(struct sbxfs *fs, struct node *parent, const char *name,
			   enum node_kind kind, const struct stat *st, const char *target,
			   bool cache, const struct reply_timeouts *to, struct fuse_entry_param *e);
/* Stores st as n's attributes, valid for attr_timeout. Caller holds the table lock. */
void fs_cache_attr(struct sbxfs *fs, struct node *n, const struct stat *st);
/* ENOENT, as a negative entry the kernel may keep for to->negative when that is not 0. */
void fs_reply_negative(fuse_req_t req, const struct reply_timeouts *to);
#endif
