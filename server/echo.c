/* The notes behind server/echo.h: a bounded table of the paths journals changed lately.
 *
 * A note is keyed by the normalised path and holds the state the last op left it in. The
 * table is a ring of NOTES_MAX slots, reused oldest first, with a hash index on the path; a
 * note older than NOTE_TTL_MS no longer matches. A note lost to the ring or the clock only
 * costs the client a revalidation: an untagged event is always safe, a wrongly tagged one
 * would hide a change, which is why a match needs the whole state (ctime included, which the
 * kernel sets on every change) and an event the op causes: a write by a sandbox process
 * after a journaled chmod matches neither (another mtime, and "modify" is not the chmod's). */
#include "server/echo.h"
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include "common/clock.h"
#include "server/journal.h"
#include "server/workspace.h"

#define NOTES_MAX 16384
#define BUCKETS 8192
#define NOTE_TTL_MS 60000

struct note {
	char *rel;                   /* NULL: unused */
	char journal[JOURNAL_ID_MAX + 1];
	unsigned events;
	uint64_t batch;              /* the events of ops of one batch add up */
	int64_t at;                  /* mono_ms() when noted */
	bool exists;
	struct stat st;
	int next;                    /* index + 1 of the next in the bucket, 0 ends */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct note *notes;       /* NOTES_MAX, allocated at the first note */
static int buckets[BUCKETS];     /* index + 1 of the first note, 0: none */
static int ring;                 /* the slot the next new note takes */

void echo_lock(void) { pthread_mutex_lock(&lock); }
void echo_unlock(void) { pthread_mutex_unlock(&lock); }

static unsigned bucket_of(const char *rel)
{
	uint32_t h = 2166136261u;
	for (const unsigned char *p = (const unsigned char *)rel; *p; p++)
		h = (h ^ *p) * 16777619u;
	return h % BUCKETS;
}

static struct note *find(const char *rel)
{
	if (!notes)
		return NULL;
	for (int i = buckets[bucket_of(rel)]; i; i = notes[i - 1].next)
		if (strcmp(notes[i - 1].rel, rel) == 0)
			return &notes[i - 1];
	return NULL;
}

static void unhash(struct note *n)
{
	int self = (int)(n - notes) + 1;
	for (int *p = &buckets[bucket_of(n->rel)]; *p; p = &notes[*p - 1].next)
		if (*p == self) {
			*p = n->next;
			break;
		}
	free(n->rel);
	n->rel = NULL;
}

static struct note *take_slot(const char *rel)
{
	if (!notes && !(notes = calloc(NOTES_MAX, sizeof *notes)))
		return NULL;
	struct note *n = &notes[ring];
	ring = (ring + 1) % NOTES_MAX;
	if (n->rel)
		unhash(n);
	if (!(n->rel = strdup(rel)))
		return NULL;
	unsigned b = bucket_of(rel);
	n->next = buckets[b];
	buckets[b] = (int)(n - notes) + 1;
	return n;
}

void echo_note(const char *journal, uint64_t batch, const char *api_path, unsigned events)
{
	char rel[WS_PATH_MAX + 1];
	if (ws_normalize(api_path, rel, sizeof rel))
		return;
	struct stat st;
	int err = ws_stat(api_path, &st, false);
	struct note *n = find(rel);
	if (!n && !(n = take_slot(rel)))
		return;
	if (n->batch == batch && strcmp(n->journal, journal) == 0)
		events |= n->events;
	snprintf(n->journal, sizeof n->journal, "%s", journal);
	n->batch = batch;
	n->events = events;
	n->at = mono_ms();
	n->exists = err == 0;
	n->st = err ? (struct stat){ 0 } : st;
	if (err && err != -ENOENT) /* a state that cannot be told: no echo */
		n->events = 0;
}

void echo_renote_dir_of(const char *api_path)
{
	const char *slash = strrchr(api_path, '/');
	char dir[WS_PATH_MAX + 16], rel[WS_PATH_MAX + 1];
	if (!slash || (size_t)(slash - api_path) >= sizeof dir)
		return;
	snprintf(dir, sizeof dir, "%.*s", (int)(slash - api_path), api_path);
	struct note *n = ws_normalize(dir, rel, sizeof rel) ? NULL : find(rel);
	if (n && n->exists && ws_stat(dir, &n->st, false))
		n->events = 0;
}

void echo_renote_inode(const struct stat *st)
{
	if (!notes)
		return;
	for (int i = 0; i < NOTES_MAX; i++) {
		struct note *n = &notes[i];
		if (!n->rel || !n->exists || n->st.st_dev != st->st_dev || n->st.st_ino != st->st_ino)
			continue;
		char api[WS_PATH_MAX + 16];
		ws_api_path(n->rel, api, sizeof api);
		if (ws_stat(api, &n->st, false))
			n->events = 0;
	}
}

uint64_t echo_batch(void)
{
	static _Atomic uint64_t batches;
	return ++batches;
}

static bool same_state(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_mode == b->st_mode &&
	       a->st_nlink == b->st_nlink && a->st_size == b->st_size &&
	       a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
	       a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

bool echo_origin(const char *rel, unsigned event, char *out)
{
	bool echo = false;
	pthread_mutex_lock(&lock);
	struct note *n = find(rel);
	if (n && (n->events & event) && mono_ms() - n->at <= NOTE_TTL_MS) {
		char api[WS_PATH_MAX + 16];
		ws_api_path(rel, api, sizeof api);
		struct stat st;
		int err = ws_stat(api, &st, false);
		echo = n->exists ? !err && same_state(&n->st, &st) : err == -ENOENT;
		if (echo)
			memcpy(out, n->journal, sizeof n->journal);
	}
	pthread_mutex_unlock(&lock);
	return echo;
}

void echo_clear(void)
{
	pthread_mutex_lock(&lock);
	if (notes)
		for (int i = 0; i < NOTES_MAX; i++)
			free(notes[i].rel);
	free(notes);
	notes = NULL;
	memset(buckets, 0, sizeof buckets);
	ring = 0;
	pthread_mutex_unlock(&lock);
}
