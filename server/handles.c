/* The handle table: slot = N % HANDLES_MAX, so a lookup is one index and one compare. Ids are
 * never reused (N only grows), which is how a closed or expired id is told from a bad one. */
#include "server/handles.h"
#include <errno.h>
#include <stdbool.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "server/leases.h"

#define IDLE_SECONDS 3600
#define SWEEP_SECONDS 60

struct handle {
	uint64_t n;
	int fd;
	int refs;       /* under lock */
	time_t used;    /* under lock */
	char owner[LEASE_ID_MAX]; /* "" without a lease: then idle handles expire */
	pthread_mutex_t wlock;    /* serialises writes, guards wseq */
	unsigned long long wseq;  /* the highest write sequence number started */
	struct handle *next_free; /* to close once the lock is released */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct handle *table[HANDLES_MAX];
static uint64_t next_n = 1;
static size_t count;
static time_t last_sweep;

static time_t now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec;
}

/* Drops a reference with the lock held; returns the handle to free after unlocking. */
static struct handle *unref_locked(struct handle *h)
{
	return --h->refs == 0 ? h : NULL;
}

static void destroy(struct handle *h)
{
	if (h) {
		close(h->fd);
		pthread_mutex_destroy(&h->wlock);
		free(h);
	}
}

static void destroy_list(struct handle *h)
{
	while (h) {
		struct handle *next = h->next_free;
		destroy(h);
		h = next;
	}
}

/* Takes the table's reference of the handle in slot i; returns the handle when that was the
 * last reference (to destroy after unlocking). */
static struct handle *remove_locked(size_t i)
{
	struct handle *h = table[i];
	table[i] = NULL;
	count--;
	return unref_locked(h);
}

/* Unlinks idle handles, at most once a minute, with the lock held; returns those whose last
 * reference went with them, to be closed after unlocking. */
static struct handle *sweep_locked(time_t now)
{
	struct handle *list = NULL;
	if (now - last_sweep < SWEEP_SECONDS)
		return NULL;
	last_sweep = now;
	for (size_t i = 0; i < HANDLES_MAX; i++) {
		struct handle *h = table[i];
		if (!h || h->owner[0] || now - h->used <= IDLE_SECONDS)
			continue;
		if ((h = remove_locked(i))) {
			h->next_free = list;
			list = h;
		}
	}
	return list;
}

int handles_add(int fd, const char *owner, char id[HANDLE_ID_MAX])
{
	struct handle *h = calloc(1, sizeof *h);
	if (!h) {
		close(fd);
		return -ENOMEM;
	}
	if (owner)
		snprintf(h->owner, sizeof h->owner, "%s", owner);
	pthread_mutex_init(&h->wlock, NULL);
	pthread_mutex_lock(&lock);
	time_t now = now_s();
	struct handle *idle = sweep_locked(now);
	int err = 0;
	uint64_t n = 0;
	if (count >= HANDLES_MAX) {
		err = -EMFILE;
	} else {
		while (table[next_n % HANDLES_MAX])
			next_n++;
		h->n = n = next_n++;
		h->fd = fd;
		h->refs = 1;
		h->used = now;
		table[h->n % HANDLES_MAX] = h;
		count++;
	}
	pthread_mutex_unlock(&lock);
	destroy_list(idle);
	if (err) {
		h->fd = fd;
		destroy(h);
		return err;
	}
	snprintf(id, HANDLE_ID_MAX, "h%llu", (unsigned long long)n);
	return 0;
}

static int parse_id(const char *id, uint64_t *n)
{
	char *end;
	if (!id || id[0] != 'h' || id[1] < '1' || id[1] > '9')
		return -EBADF;
	errno = 0;
	unsigned long long v = strtoull(id + 1, &end, 10);
	if (*end || errno)
		return -EBADF;
	*n = v;
	return 0;
}

int handles_get(const char *id, struct handle **out)
{
	uint64_t n;
	int err = parse_id(id, &n);
	if (err)
		return err;
	struct handle *stale = NULL;
	pthread_mutex_lock(&lock);
	struct handle *h = table[n % HANDLES_MAX];
	time_t now = now_s();
	if (!h || h->n != n) {
		err = n < next_n ? -ESTALE : -EBADF;
	} else if (!h->owner[0] && now - h->used > IDLE_SECONDS) {
		stale = remove_locked(n % HANDLES_MAX);
		err = -ESTALE;
	} else {
		h->refs++;
		h->used = now;
		*out = h;
	}
	pthread_mutex_unlock(&lock);
	destroy(stale);
	return err;
}

int handle_fd(const struct handle *h) { return h->fd; }

int handle_write_begin(struct handle *h, unsigned long long seq)
{
	pthread_mutex_lock(&h->wlock);
	if (seq && seq <= h->wseq) {
		pthread_mutex_unlock(&h->wlock);
		return -ESTALE;
	}
	if (seq)
		h->wseq = seq;
	return 0;
}

void handle_write_end(struct handle *h)
{
	pthread_mutex_unlock(&h->wlock);
}

void handles_put(struct handle *h)
{
	pthread_mutex_lock(&lock);
	h = unref_locked(h);
	pthread_mutex_unlock(&lock);
	destroy(h);
}

int handles_close(const char *id)
{
	struct handle *h;
	int err = handles_get(id, &h);
	if (err)
		return err;
	struct handle *gone = NULL;
	pthread_mutex_lock(&lock);
	if (table[h->n % HANDLES_MAX] == h) {
		gone = remove_locked(h->n % HANDLES_MAX); /* the table's; ours is still held */
	} else {
		err = -ESTALE; /* a concurrent close won */
	}
	pthread_mutex_unlock(&lock);
	destroy(gone);
	handles_put(h);
	return err;
}

static bool named(const char *const *ids, size_t n, uint64_t hn)
{
	char id[HANDLE_ID_MAX];
	snprintf(id, sizeof id, "h%llu", (unsigned long long)hn);
	for (size_t i = 0; i < n; i++)
		if (ids[i] && strcmp(ids[i], id) == 0)
			return true;
	return false;
}

size_t handles_close_owned(const char *owner, const char *const *ids, size_t n)
{
	struct handle *list = NULL;
	size_t closed = 0;
	pthread_mutex_lock(&lock);
	for (size_t i = 0; i < HANDLES_MAX; i++) {
		struct handle *h = table[i];
		if (!h || strcmp(h->owner, owner) != 0 || (ids && !named(ids, n, h->n)))
			continue;
		closed++;
		if ((h = remove_locked(i))) {
			h->next_free = list;
			list = h;
		}
	}
	pthread_mutex_unlock(&lock);
	destroy_list(list);
	return closed;
}

size_t handles_count_owned(const char *owner)
{
	size_t n = 0;
	pthread_mutex_lock(&lock);
	for (size_t i = 0; i < HANDLES_MAX; i++)
		n += table[i] && strcmp(table[i]->owner, owner) == 0;
	pthread_mutex_unlock(&lock);
	return n;
}

void handles_shutdown(void)
{
	struct handle *list = NULL;
	pthread_mutex_lock(&lock);
	for (size_t i = 0; i < HANDLES_MAX; i++) {
		struct handle *h = table[i] ? remove_locked(i) : NULL;
		if (h) {
			h->next_free = list;
			list = h;
		}
	}
	pthread_mutex_unlock(&lock);
	destroy_list(list);
}
