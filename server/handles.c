/* The handle table: slot = N % HANDLES_MAX, so a lookup is one index and one compare. Ids are
 * never reused (N only grows), which is how a closed or expired id is told from a bad one. */
#include "server/handles.h"
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define IDLE_SECONDS 3600
#define SWEEP_SECONDS 60

struct handle {
	uint64_t n;
	int fd;
	int refs;       /* under lock */
	time_t used;    /* under lock */
	struct handle *next_free; /* sweep: to close once the lock is released */
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
		free(h);
	}
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
		if (!h || now - h->used <= IDLE_SECONDS)
			continue;
		table[i] = NULL;
		count--;
		if ((h = unref_locked(h))) {
			h->next_free = list;
			list = h;
		}
	}
	return list;
}

int handles_add(int fd, char id[HANDLE_ID_MAX])
{
	struct handle *h = calloc(1, sizeof *h);
	if (!h) {
		close(fd);
		return -ENOMEM;
	}
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
	while (idle) {
		struct handle *next = idle->next_free;
		destroy(idle);
		idle = next;
	}
	if (err) {
		close(fd);
		free(h);
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
	} else if (now - h->used > IDLE_SECONDS) {
		table[n % HANDLES_MAX] = NULL;
		count--;
		stale = unref_locked(h);
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
		table[h->n % HANDLES_MAX] = NULL;
		count--;
		gone = unref_locked(h); /* the table's reference; ours is still held */
	} else {
		err = -ESTALE; /* a concurrent close won */
	}
	pthread_mutex_unlock(&lock);
	destroy(gone);
	handles_put(h);
	return err;
}

void handles_shutdown(void)
{
	pthread_mutex_lock(&lock);
	for (size_t i = 0; i < HANDLES_MAX; i++) {
		struct handle *h = table[i];
		if (!h)
			continue;
		table[i] = NULL;
		count--;
		h = unref_locked(h);
		if (h) {
			close(h->fd);
			free(h);
		}
	}
	pthread_mutex_unlock(&lock);
}
