/* How long the kernel may cache a reply (fs/timeouts.h).
 *
 * A reply carries attributes or names fetched from the sandbox; if a change event arrived
 * while it was being made, what it carries may already be old, so it goes out with no timeout
 * at all. Most such events are the echo of the request's own change, or about another path
 * altogether: the last EVENT_RING events' paths are kept (fs->ring) so that a reply can tell
 * whether any of them concerns it. */
#include "fs/timeouts.h"
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "fs/internal.h"

double fs_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

bool fs_caches_trusted(struct sbxfs *fs)
{
	return atomic_load(&fs->healthy);
}

struct reply_timeouts fs_timeouts(struct sbxfs *fs, uint64_t events)
{
	struct reply_timeouts to = { fs->cfg.attr_timeout, fs->cfg.entry_timeout,
				     fs->cfg.negative_timeout };
	if (atomic_load(&fs->events) != events)
		return (struct reply_timeouts){ 0, 0, 0 };
	if (!fs_caches_trusted(fs)) {
		if (to.attr > 1.0)
			to.attr = 1.0;
		if (to.entry > 1.0)
			to.entry = 1.0;
		to.negative = 0;
	}
	return to;
}

/* One of a and b is the other or lies below it. */
static bool paths_related(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b), l = la < lb ? la : lb;
	if (strncmp(a, b, l) != 0)
		return false;
	return la == lb || (la < lb ? b[la] == '/' : a[lb] == '/');
}

/* A change at `changed` can alter the listing of dir: it is dir or an ancestor, a name in dir,
 * or a name in one of dir's subdirectories (whose times and link count the listing holds). */
static bool touches_listing(const char *changed, const char *dir)
{
	size_t lc = strlen(changed), ld = strlen(dir);
	if (lc <= ld)
		return paths_related(changed, dir);
	if (strncmp(changed, dir, ld) != 0 || changed[ld] != '/')
		return false;
	const char *rest = changed + ld + 1, *slash = strchr(rest, '/');
	return !slash || !strchr(slash + 1, '/');
}

/* No event since `events` concerns path (see fs_timeouts_at); with listing, path's listing
 * (touches_listing). */
static bool events_spare(struct sbxfs *fs, uint64_t events, const char *path, bool created,
			 bool listing)
{
	pthread_mutex_lock(&fs->ring_lock);
	uint64_t cur = atomic_load(&fs->events);
	bool spare = cur - events <= EVENT_RING;
	for (uint64_t i = events + 1; spare && i <= cur; i++) {
		const struct ring_event *re = &fs->ring[i % EVENT_RING];
		bool related = re->path && (listing ? touches_listing(re->path, path)
						    : paths_related(re->path, path));
		spare = re->path && (!related ||
				     (created && re->created && strcmp(re->path, path) == 0));
	}
	pthread_mutex_unlock(&fs->ring_lock);
	return spare;
}

bool fs_listing_fresh(struct sbxfs *fs, uint64_t events, const char *dir)
{
	uint64_t cur = atomic_load(&fs->events);
	if (cur != events && events_spare(fs, events, dir, false, true))
		events = cur;
	return fs_caches_trusted(fs) && atomic_load(&fs->events) == events;
}

struct reply_timeouts fs_timeouts_at(struct sbxfs *fs, uint64_t events, const char *path,
				     bool created)
{
	uint64_t cur = atomic_load(&fs->events);
	if (cur != events && path && events_spare(fs, events, path, created, false))
		events = cur;
	return fs_timeouts(fs, events);
}

double fs_attr_ttl(const struct stat *st, double ttl)
{
	return S_ISREG(st->st_mode) && st->st_nlink > 1 ? 0 : ttl;
}

void fs_note_event(struct sbxfs *fs, const char *path, bool created)
{
	char *copy = path ? strdup(path) : NULL;
	if (path && !copy)
		abort();
	pthread_mutex_lock(&fs->ring_lock);
	uint64_t n = atomic_load(&fs->events) + 1;
	struct ring_event *re = &fs->ring[n % EVENT_RING];
	free(re->path);
	re->path = copy;
	re->created = created;
	atomic_store(&fs->events, n);
	pthread_mutex_unlock(&fs->ring_lock);
}
