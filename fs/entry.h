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
 * `cache` (the caller checked staleness). st_ino 0 is a file the sandbox does not have yet
 * (sandbox.h, SBX_O_NEW): its node is shown with a number of ours (fs_node_ino). Caller holds
 * the table lock. */
struct node *fs_bind_entry(struct sbxfs *fs, struct node *parent, const char *name,
			   enum node_kind kind, const struct stat *st, const char *target,
			   bool cache, const struct reply_timeouts *to, struct fuse_entry_param *e);
/* Stores st as n's attributes, valid for attr_timeout or dir_cache_timeout, whichever is
 * longer (change events keep them current). Caller holds the table lock. */
void fs_cache_attr(struct sbxfs *fs, struct node *n, const struct stat *st);
/* Whether st (a stat a backend gave about n's name) is of n's file: the same type and inode
 * number (the sandbox's or the one n is shown by; st_ino 0, "not known yet", is a file the
 * sandbox does not have yet, sandbox.h SBX_O_NEW). */
bool fs_node_is(const struct node *n, const struct stat *st);
/* st as the kernel must see it: a node made before its file had an inode number in the sandbox
 * keeps the number it was shown by for its life (nodes.h); its real one is learned for the
 * comparisons above. Caller holds the table lock. */
void fs_node_ino(struct node *n, struct stat *st);
/* The number the kernel knows n by. */
ino_t fs_node_shown_ino(const struct node *n);
/* Numbers of ours: this bit and the node id, unique for the mount's life. */
#define FS_PROVISIONAL_INO (UINT64_C(1) << 63)
/* ENOENT, as a negative entry the kernel may keep for to->negative when that is not 0. */
void fs_reply_negative(fuse_req_t req, const struct reply_timeouts *to);
#endif
