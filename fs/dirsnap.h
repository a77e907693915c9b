/* Directory snapshots (fs/dirsnap.c): what opendir saw, served to readdir and readdirplus by
 * offset, so a listing read in several calls is one consistent listing. */
#ifndef SBX_FS_DIRSNAP_H
#define SBX_FS_DIRSNAP_H
#include <stdbool.h>
#include <stdint.h>
#include <fuse_lowlevel.h>
#include "fs/nodes.h"

struct sbxfs;

struct dirsnap_entry {
	char *name;
	char *target;
	struct stat st;
	enum node_kind kind;
};
struct dirsnap {
	struct dirsnap_entry *ents;
	size_t n, cap;
	uint64_t seq;    /* the table's seq before the listing was fetched */
	uint64_t events; /* fs->events likewise */
};

/* An empty snapshot, stamped now: fill it, then fetch nothing older. */
struct dirsnap *dirsnap_new(struct sbxfs *fs);
void dirsnap_add(struct dirsnap *snap, const char *name, const struct stat *st,
		 const char *target, enum node_kind kind);
void dirsnap_free(struct dirsnap *snap);
/* Replies to readdir (plus: readdirplus) of directory ino with what fits in size bytes from
 * offset off: "." and ".." first, then the snapshot's entries. readdirplus binds each entry's
 * name to a node, as a lookup would, unless the node changed since the snapshot was taken. */
void dirsnap_reply(fuse_req_t req, struct sbxfs *fs, struct dirsnap *snap, fuse_ino_t ino,
		   size_t size, off_t off, bool plus);
#endif
