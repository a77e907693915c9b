/* The store behind server/idempotency.h.
 *
 * Why: a client cannot tell a request that never arrived from one whose answer was lost on the
 * way back (a proxy's 503, a reset connection, libcurl resending on a fresh connection). With
 * a key it may simply send it again: the first copy to arrive runs, every other copy gets its
 * answer.
 *
 * Entries live in a hash table under one lock. A running entry is the one copy being carried
 * out; a repeat that arrives meanwhile waits on the shared condition variable for it (bounded
 * by the first copy's own run, and it gives up when its client hangs up). Finished entries are
 * kept on an age list, oldest first, for TTL_MS: far longer than any client retries one
 * request. The store is also bounded in entries and bytes; beyond that the oldest answers are
 * forgotten early, with a warning, since a very late repeat of one of them would run again.
 * An entry's memory is shared by the table and its waiters (refs) and freed by the last.
 *
 * Answers that mean "not carried out" (429, 502-504, and 499: stopped because the client hung
 * up, which a client that lost its connection did not mean) are not kept, so a retry runs
 * again; the entry is unlinked and its waiters start over as if they were first. */
#include "server/idempotency.h"
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include "common/clock.h"
#include "common/log.h"

#define BUCKETS 16384
#define TTL_MS (5 * 60 * 1000)
#define MAX_ENTRIES 100000
#define MAX_BYTES (32u << 20)
#define ANSWER_MAX (4u << 20)    /* a larger answer is not kept: repeats get IDEM_STREAMED */
#define WAIT_SLICE_MS 1000
#define FULL_WARN_MS 60000

enum state { RUNNING, DONE, STREAMED, FORGOTTEN };

struct idem_entry {
	struct idem_entry *chain;        /* hash bucket */
	struct idem_entry *older, *newer; /* age list, finished entries only */
	char key[IDEM_KEY_MAX];
	uint64_t fingerprint;
	enum state state;
	int refs;
	int64_t done_at;
	struct idem_answer answer;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t finished;
static pthread_once_t once = PTHREAD_ONCE_INIT;
static struct idem_entry *table[BUCKETS];
static struct idem_entry *oldest, *newest;
static size_t n_entries, n_bytes;
static int64_t last_full_warning = -FULL_WARN_MS;

static void init_cond(void)
{
	mono_cond_init(&finished);
}

/* FNV-1a, eight bytes a step: a journal request's body is megabytes, and its fingerprint
 * must not cost more than its decoding. */
uint64_t idem_hash(uint64_t h, const void *data, size_t len)
{
	const unsigned char *p = data;
	size_t i = 0;
	for (; i + 8 <= len; i += 8) {
		uint64_t w;
		memcpy(&w, p + i, 8);
		h ^= w;
		h *= 0x100000001b3ULL;
		h ^= h >> 29;
	}
	for (; i < len; i++) {
		h ^= p[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

int idem_key_valid(const char *key)
{
	size_t n = 0;
	for (; key[n]; n++)
		if (key[n] <= ' ' || key[n] > '~')
			return 0;
	return n > 0 && n < IDEM_KEY_MAX;
}

static struct idem_entry **bucket(const char *key)
{
	return &table[idem_hash(IDEM_HASH_INIT, key, strlen(key)) % BUCKETS];
}

static void put_locked(struct idem_entry *e)
{
	if (--e->refs)
		return;
	free(e->answer.content_type);
	free(e->answer.body);
	free(e);
}

static void unlink_locked(struct idem_entry *e)
{
	struct idem_entry **pp = bucket(e->key);
	while (*pp != e)
		pp = &(*pp)->chain;
	*pp = e->chain;
	if (e->state != RUNNING) {
		if (e->older)
			e->older->newer = e->newer;
		else
			oldest = e->newer;
		if (e->newer)
			e->newer->older = e->older;
		else
			newest = e->older;
		n_bytes -= e->answer.len;
	}
	n_entries--;
	put_locked(e);
}

/* Drops expired answers, and the oldest ones while the store is over its bounds. */
static void trim_locked(int64_t now)
{
	while (oldest && now - oldest->done_at > TTL_MS)
		unlink_locked(oldest);
	bool early = false;
	while (oldest && (n_entries > MAX_ENTRIES || n_bytes > MAX_BYTES)) {
		unlink_locked(oldest);
		early = true;
	}
	if (early && now - last_full_warning >= FULL_WARN_MS) {
		last_full_warning = now;
		log_warn("idempotency keys: more than %u answers or %u MiB within %d minutes; "
			 "forgetting the oldest early (a very late repeat of one would run again)",
			 MAX_ENTRIES, MAX_BYTES >> 20, TTL_MS / 60000);
	}
}

static struct idem_entry *find_locked(const char *key)
{
	for (struct idem_entry *e = *bucket(key); e; e = e->chain)
		if (strcmp(e->key, key) == 0)
			return e;
	return NULL;
}

static char *dup_bytes(const char *p, size_t n)
{
	char *d = malloc(n + 1);
	if (!d)
		abort();
	if (n)
		memcpy(d, p, n);
	d[n] = '\0';
	return d;
}

enum idem_verdict idem_begin(const char *key, uint64_t fingerprint,
			     int (*client_gone)(void *arg), void *arg, struct idem_entry **out_e,
			     struct idem_answer *out)
{
	pthread_once(&once, init_cond);
	*out_e = NULL;
	memset(out, 0, sizeof *out);
	pthread_mutex_lock(&lock);
	trim_locked(mono_ms());
	struct idem_entry *e;
	while ((e = find_locked(key)) && e->state == RUNNING && e->fingerprint == fingerprint) {
		e->refs++;
		while (e->state == RUNNING) {
			struct timespec t = mono_after_ms(WAIT_SLICE_MS);
			pthread_cond_timedwait(&finished, &lock, &t);
			if (e->state == RUNNING && client_gone(arg)) {
				put_locked(e);
				pthread_mutex_unlock(&lock);
				return IDEM_GONE;
			}
		}
		put_locked(e); /* FORGOTTEN: look again, it may now be ours to run */
	}
	enum idem_verdict v;
	if (e && e->fingerprint != fingerprint) {
		v = IDEM_REUSED;
	} else if (e && e->state == STREAMED) {
		v = IDEM_STREAMED;
	} else if (e) {
		v = IDEM_REPLAY;
		out->status = e->answer.status;
		out->content_type = e->answer.content_type ? strdup(e->answer.content_type) : NULL;
		out->body = dup_bytes(e->answer.body, e->answer.len);
		out->len = e->answer.len;
	} else {
		v = IDEM_RUN;
		e = calloc(1, sizeof *e);
		if (!e)
			abort();
		strcpy(e->key, key);
		e->fingerprint = fingerprint;
		e->state = RUNNING;
		e->refs = 1;
		struct idem_entry **b = bucket(key);
		e->chain = *b;
		*b = e;
		n_entries++;
		*out_e = e;
	}
	pthread_mutex_unlock(&lock);
	return v;
}

static void finish_locked(struct idem_entry *e, enum state state)
{
	e->state = state;
	e->done_at = mono_ms();
	e->older = newest;
	e->newer = NULL;
	if (newest)
		newest->newer = e;
	else
		oldest = e;
	newest = e;
	n_bytes += e->answer.len;
	trim_locked(e->done_at);
	pthread_cond_broadcast(&finished);
}

void idem_complete(struct idem_entry *e, int status, const char *content_type,
		   const char *body, size_t len)
{
	pthread_mutex_lock(&lock);
	if (status == 429 || status == 499 || (status >= 502 && status <= 504)) {
		e->refs++;
		unlink_locked(e);
		e->state = FORGOTTEN;
		pthread_cond_broadcast(&finished);
		put_locked(e);
	} else if (len > ANSWER_MAX) {
		finish_locked(e, STREAMED);
	} else {
		e->answer.status = status;
		e->answer.content_type = content_type ? strdup(content_type) : NULL;
		e->answer.body = dup_bytes(body ? body : "", len);
		e->answer.len = len;
		finish_locked(e, DONE);
	}
	pthread_mutex_unlock(&lock);
}

void idem_streamed(struct idem_entry *e)
{
	pthread_mutex_lock(&lock);
	finish_locked(e, STREAMED);
	pthread_mutex_unlock(&lock);
}

void idem_shutdown(void)
{
	pthread_mutex_lock(&lock);
	/* only finished entries are on the age list, and unlink_locked takes them off it before
	 * it drops them: the analyzer's path with a running one cannot be */
	while (oldest)
		unlink_locked(oldest); /* NOLINT(clang-analyzer-unix.Malloc) */
	pthread_mutex_unlock(&lock);
}
