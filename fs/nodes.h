/* The node table: FUSE node ids <-> what they name.
 *
 * A node is one name the kernel was told about: (parent node, name) plus what we cache for it.
 * Node ids are ours and never reused (a 64-bit counter), so the FUSE generation is always 0;
 * the inode numbers users see are the sandbox's st_ino, reported in every attr reply.
 *
 * Lifetime. A node lives while any of these hold it:
 *   - the kernel: nlookup > 0 (every entry reply adds one, forget subtracts; passthrough_ll
 *     rules: an entry handed out by readdirplus counts as a lookup too);
 *   - refs: each child holds its parent (so a path can always be built by walking parents),
 *     each open file holds its node, and a request handler holds the node it works on for the
 *     duration of the request (nodes_hold/nodes_put), so a forget racing with a request or with
 *     the invalidator thread never frees a node in use.
 * When both drop to zero the node leaves both hashes, releases its parent and is freed. The root
 * (id 1) is held forever.
 *
 * Detaching. unlink, rmdir, rename over a target and a lookup that finds a different inode
 * under a known name detach the old node: it leaves the (parent, name) hash and its parent, so
 * the name can be bound to a new node at once, while the kernel may still use the old id (open
 * files, pending forgets). A detached node (or any node below one) has no path.
 *
 * Staleness. seq is a table-wide counter; every change to a node's attributes or, for a
 * directory, to its set of children stamps the node with gen = ++seq. A handler that fetched
 * data remotely remembers seq before the request and stores the answer in the cache only if the
 * node's gen is still older (sshfs's write_ctr idea): a racing mutation always wins over a
 * slower read.
 *
 * Locking. One mutex protects everything in the table, including the open-file lists and the
 * directory listings attached to nodes. It is held only for memory operations, never across a
 * network request or a FUSE reply or notification. Functions here expect the caller to hold it,
 * except nodes_init/nodes_destroy. */
#ifndef SBX_FS_NODES_H
#define SBX_FS_NODES_H
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include "fs/dircache.h"

#define NODE_ROOT_ID 1

enum node_kind {
	NODE_ROOT,      /* the mount's root: a static table of rows */
	NODE_WORKSPACE, /* /workspace and everything below it */
	NODE_CONTROL,   /* the control trees: ctx/, proc/, ports/, git/, env (fs/control.h) */
	NODE_KINDS
};

struct sbx_file;
struct node;

struct ofile {
	struct sbx_file *file;
	struct node *node;
	struct ofile *prev, *next;       /* the node's open files */
	struct ofile *all_prev, *all_next; /* every open file of the table */
	unsigned ref;                    /* the open itself + transient holders */
	int flags;
	int err;  /* an upload error seen outside flush (getattr, read), owed to close() */
	bool reported; /* close() or fsync() returned an upload error already */
	/* A change event touched the file since its handle last answered: the attributes the
	 * handle keeps are not to be trusted. */
	bool remote_change;
};

struct node {
	uint64_t id;
	struct node *parent; /* NULL for the root and detached nodes */
	char *name;
	enum node_kind kind;
	bool detached;
	uint64_t nlookup;
	unsigned ref;

	uint64_t gen;
	ino_t ino;        /* the sandbox's inode number, as last seen (0: not known yet) */
	/* Made before its file had an inode number in the sandbox (sandbox.h, SBX_O_NEW): the
	 * kernel knows it by a number of ours (FS_PROVISIONAL_INO | id) for the node's whole
	 * life, since programs compare the numbers they saw (tar replaces the placeholder of a
	 * symlink only if its number is unchanged); its real one is learned into ino. */
	bool ino_provisional;
	mode_t type;      /* S_IFMT bits, as last seen */
	struct stat attr;
	bool attr_valid;
	double attr_expiry;
	char *target;     /* symlink target; immutable for a given inode */

	/* keep_cache bookkeeping: (mtime, size) at the last open, and whether a change event
	 * touched the data since. */
	bool opened;
	bool data_changed;
	/* handlers between adopt_clean() and their call into the journal: the journal keeps
	 * answering for this file meanwhile (fs/invalidate.c declines its handover) */
	unsigned adopting;
	struct timespec open_mtime;
	off_t open_size;
	/* the journal's clean copy of the content the mount wrote (sbx_journal_open_clean),
	 * while no change event touched the file since: 0 none */
	uint64_t clean_blob;

	struct ofile *open;

	struct dirlist *list; /* complete listing, when cached */
	double list_expiry;
	bool pinned;          /* kept (one ref) in the list of recently listed directories */
	struct node *lru_prev, *lru_next;

	struct node *next_by_id, *next_by_name;
};

struct nodes {
	pthread_mutex_t lock;
	struct node **by_id, **by_name;
	size_t nbuckets, count;
	uint64_t next_id;
	uint64_t seq;
	struct node *root;
	struct ofile *all_open;
	struct node *lru_head, *lru_tail; /* the pinned nodes, most recently listed first */
	size_t npinned, max_lists;
};

void nodes_init(struct nodes *t, size_t max_lists);
/* Frees every node and listing; open files left over are only unlinked, not closed (the
 * caller closes them first with nodes_take_open). */
void nodes_destroy(struct nodes *t);
static inline void nodes_lock(struct nodes *t) { pthread_mutex_lock(&t->lock); }
static inline void nodes_unlock(struct nodes *t) { pthread_mutex_unlock(&t->lock); }

struct node *nodes_get(struct nodes *t, uint64_t id);
struct node *nodes_child(struct nodes *t, const struct node *parent, const char *name);
/* Returns the attached child (parent, name), creating it (nlookup 0) if needed. */
struct node *nodes_add(struct nodes *t, struct node *parent, const char *name,
		       enum node_kind kind);
void nodes_hold(struct node *n);
void nodes_put(struct nodes *t, struct node *n);
/* One more kernel reference (an entry reply). */
static inline void nodes_lookup(struct node *n) { n->nlookup++; }
void nodes_forget(struct nodes *t, struct node *n, uint64_t count);

void nodes_detach(struct nodes *t, struct node *n);
/* Moves n to (parent, name); whatever was attached there is detached first. */
void nodes_move(struct nodes *t, struct node *n, struct node *parent, const char *name);
/* Swaps the names of two attached nodes (RENAME_EXCHANGE). */
void nodes_exchange(struct nodes *t, struct node *a, struct node *b);
/* Stamps n as changed now. */
static inline void nodes_touch(struct nodes *t, struct node *n) { n->gen = ++t->seq; }

/* "/workspace/a/b" (malloc'd); "" for the root; NULL when n or an ancestor is detached. */
char *nodes_path(const struct node *n);
/* The attached node of an absolute path, or NULL. */
struct node *nodes_resolve(struct nodes *t, const char *path);
/* The entry of path's name in the cached listing of its directory, with known attributes
 * (st_valid), or NULL; *dir: that directory's node. */
struct dirlist_entry *nodes_listed(struct nodes *t, const char *path, struct node **dir);
/* True when n is a or lies below a. */
bool nodes_below(const struct node *n, const struct node *a);
void nodes_foreach(struct nodes *t, void (*fn)(struct node *n, void *arg), void *arg);

/* Directory listings. A directory given one is pinned: it stays in the table, listing and
 * all, after the kernel forgot it (drop_caches, memory pressure), so that the next lookup finds
 * what was listed; the table is then a cache keyed by path that change events keep current
 * (nodes_resolve finds pinned nodes as any other). At most max_lists directories are pinned;
 * the least recently listed goes first, and with it the ancestors only it kept. */
void nodes_set_list(struct nodes *t, struct node *dir, struct dirlist *dl, double expiry);
/* Drops dir's listing; dir stays pinned (it is never freed here), so callers may go on using
 * it. Detaching a node unpins it. */
void nodes_drop_list(struct nodes *t, struct node *dir);

/* Open files. */
struct ofile *nodes_open(struct nodes *t, struct node *n, struct sbx_file *f, int flags);
/* Unlinks an ofile from its node (release); returns true when the caller must close the file
 * now (no transient holder left). */
bool nodes_close(struct nodes *t, struct ofile *of);
/* Drops a transient hold; true when the caller must close the file now. */
bool nodes_ofile_put(struct nodes *t, struct ofile *of);
/* The node's open files, each held (release with nodes_ofile_put); *n set. malloc'd array. */
struct ofile **nodes_ofiles(struct nodes *t, struct node *n, size_t *count);
#endif
