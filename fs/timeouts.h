/* How long the kernel may cache a reply (fs/timeouts.c): the configured timeouts while change
 * events flow, short ones while they do not, none when an event about the reply's path arrived
 * while the reply was being made. */
#ifndef SBX_FS_TIMEOUTS_H
#define SBX_FS_TIMEOUTS_H
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

struct sbxfs;

/* Timeouts for a reply built from data fetched when fs->events was `events`. */
struct reply_timeouts {
	double attr, entry, negative;
};
struct reply_timeouts fs_timeouts(struct sbxfs *fs, uint64_t events);
/* The same for a reply about one sandbox path: events since then about other paths (neither
 * an ancestor nor below it) do not matter, nor, when `created`, the creation of path itself
 * (the echo of the request's own mkdir or create; a removal in between still counts). */
struct reply_timeouts fs_timeouts_at(struct sbxfs *fs, uint64_t events, const char *path,
				     bool created);
/* A listing of dir fetched when fs->events was `events` may be cached: the change events are
 * trusted and none since then could have changed it (about dir or an ancestor, a name in it or
 * in one of its subdirectories; changes deeper down leave it as it is). */
bool fs_listing_fresh(struct sbxfs *fs, uint64_t events, const char *dir);
/* The kernel's attribute timeout for st: none for a file with several names. A change through
 * one name changes the others' attributes (st_nlink, ctime, data), and telling the kernel
 * about those takes an invalidation that can only be sent after the reply, too late for a
 * stat right after `mv x name`; without a timeout the kernel asks, and the node table,
 * updated before the reply, answers. */
double fs_attr_ttl(const struct stat *st, double ttl);
/* Seconds of CLOCK_MONOTONIC: the clock of the node table's expiry times. */
double fs_now(void);
/* The change-event stream is up: long kernel timeouts and our own caches are trusted. */
bool fs_caches_trusted(struct sbxfs *fs);
/* Counts a change event and remembers its path (NULL: a resync, which concerns every path). */
void fs_note_event(struct sbxfs *fs, const char *path, bool created);
#endif
