/* The lease table behind server/leases.h.
 *
 * A small hash table of client ids under one lock. The reaper thread ticks every TICK_MS and
 * advances its own clock, alive_ms, by the time since its last tick but never by more than
 * two ticks: when sbxd was stopped (SIGSTOP), suspended or starved of CPU, its clients could
 * not reach it either, so that time must not count against them. Lease times are read on that
 * clock. Handles are closed outside the lock (handles.c has its own). */
#include "server/leases.h"
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "common/clock.h"
#include "common/log.h"
#include "server/handles.h"
#include "server/idempotency.h"

#define BUCKETS 1024
#define TICK_MS 1000
#define MAX_LEASES 65536

struct lease {
	struct lease *next;
	char id[LEASE_ID_MAX];
	int64_t seen;            /* alive_ms of the last renewal */
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake;
static struct lease *table[BUCKETS];
static size_t count;
static long duration_ms = 30000;
static int64_t alive_ms;
static bool running, stopping;
static pthread_t reaper;

bool lease_id_valid(const char *id)
{
	size_t n = strspn(id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-");
	return n > 0 && n < LEASE_ID_MAX && !id[n];
}

static struct lease **slot(const char *id)
{
	struct lease **pp = &table[idem_hash(IDEM_HASH_INIT, id, strlen(id)) % BUCKETS];
	while (*pp && strcmp((*pp)->id, id) != 0)
		pp = &(*pp)->next;
	return pp;
}

bool leases_renew(const char *id)
{
	if (!lease_id_valid(id))
		return false;
	pthread_mutex_lock(&lock);
	struct lease **pp = slot(id);
	bool ok = true;
	if (*pp) {
		(*pp)->seen = alive_ms;
	} else if (count < MAX_LEASES) {
		struct lease *l = calloc(1, sizeof *l);
		if (!l)
			abort();
		strcpy(l->id, id);
		l->seen = alive_ms;
		*pp = l;
		count++;
	} else {
		ok = false;
	}
	pthread_mutex_unlock(&lock);
	if (!ok)
		log_warn("leases: %d clients at once; client %s gets none (its handles expire "
			 "when idle, as those of clients without a lease)", MAX_LEASES, id);
	return ok;
}

long leases_end(const char *id)
{
	pthread_mutex_lock(&lock);
	struct lease **pp = slot(id), *l = *pp;
	if (l) {
		*pp = l->next;
		count--;
	}
	pthread_mutex_unlock(&lock);
	free(l);
	return (long)handles_close_owned(id, NULL, 0);
}

long leases_duration_ms(void) { return duration_ms; }

/* Unlinks the expired leases, returning them as a list. */
static struct lease *take_expired_locked(void)
{
	struct lease *gone = NULL;
	for (size_t b = 0; b < BUCKETS; b++) {
		for (struct lease **pp = &table[b]; *pp;) {
			struct lease *l = *pp;
			if (alive_ms - l->seen <= duration_ms) {
				pp = &l->next;
				continue;
			}
			*pp = l->next;
			count--;
			l->next = gone;
			gone = l;
		}
	}
	return gone;
}

static void *reap(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&lock);
	int64_t last = mono_ms();
	while (!stopping) {
		struct timespec t = mono_after_ms(TICK_MS);
		pthread_cond_timedwait(&wake, &lock, &t);
		int64_t now = mono_ms(), d = now - last;
		last = now;
		alive_ms += d < 2 * TICK_MS ? d : 2 * TICK_MS;
		struct lease *gone = take_expired_locked();
		pthread_mutex_unlock(&lock);
		while (gone) {
			struct lease *next = gone->next;
			size_t n = handles_close_owned(gone->id, NULL, 0);
			if (n)
				log_info("client %s went away (no request for %ld s): closed its %zu "
					 "open files", gone->id, duration_ms / 1000, n);
			free(gone);
			gone = next;
		}
		pthread_mutex_lock(&lock);
	}
	pthread_mutex_unlock(&lock);
	return NULL;
}

void leases_start(long lease_ms)
{
	mono_cond_init(&wake);
	if (lease_ms > 0)
		duration_ms = lease_ms;
	stopping = false;
	running = pthread_create(&reaper, NULL, reap, NULL) == 0;
	if (!running)
		log_error("leases: cannot start the reaper: clients' handles expire only when idle");
}

void leases_stop(void)
{
	if (running) {
		pthread_mutex_lock(&lock);
		stopping = true;
		pthread_cond_signal(&wake);
		pthread_mutex_unlock(&lock);
		pthread_join(reaper, NULL);
		running = false;
	}
	pthread_mutex_lock(&lock);
	for (size_t b = 0; b < BUCKETS; b++) {
		while (table[b]) {
			struct lease *l = table[b];
			table[b] = l->next;
			free(l);
		}
	}
	count = 0;
	pthread_mutex_unlock(&lock);
	pthread_cond_destroy(&wake);
}
