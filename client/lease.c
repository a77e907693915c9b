/* The client's side of a lease (docs/protocol.md, "Leases"): sbxd closes the handles of a
 * client it has not heard from for the lease's duration, so an idle mount must say it is
 * alive. One thread sends POST /api/x/lease every third of the lease, carrying the handles
 * whose close could not be delivered (a lost link, a stalled server): a live client's lease
 * never lapses, so without that those handles would stay open until the unmount. At the end
 * DELETE /api/x/lease closes whatever is left at once.
 *
 * The heartbeat is an ordinary request on the shared client (idempotent: closing a closed
 * handle does nothing), so it waits for no lock of ours and is bounded by the deadline. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include "client/sandbox_impl.h"
#include "common/clock.h"
#include "common/log.h"

#define ORPHANS_MAX 4096
#define END_TIMEOUT_MS 2000

struct sbx_lease {
	struct sbx *s;
	long interval_ms;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool stop;
	char **orphans;          /* under lock */
	size_t n_orphans;
};

/* Sends one heartbeat with the orphans as they are now; drops those it delivered. */
static void beat(struct sbx_lease *l)
{
	cJSON *b = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(b, "close");
	pthread_mutex_lock(&l->lock);
	size_t sent = l->n_orphans;
	for (size_t i = 0; i < sent; i++)
		cJSON_AddItemToArray(arr, cJSON_CreateString(l->orphans[i]));
	pthread_mutex_unlock(&l->lock);
	cJSON *j;
	int err = sbx_call_unsettled(l->s, "lease", "POST", "/api/x/lease", b, true, l->interval_ms, &j);
	cJSON_Delete(j);
	if (err) {
		log_debug("%s", sbx_last_error());
		return;
	}
	if (!sent)
		return;
	pthread_mutex_lock(&l->lock);
	for (size_t i = 0; i < sent; i++)
		free(l->orphans[i]);
	memmove(l->orphans, l->orphans + sent, (l->n_orphans - sent) * sizeof *l->orphans);
	l->n_orphans -= sent;
	pthread_mutex_unlock(&l->lock);
}

static void *heartbeat(void *arg)
{
	struct sbx_lease *l = arg;
	pthread_mutex_lock(&l->lock);
	while (!l->stop) {
		struct timespec t = mono_after_ms(l->interval_ms);
		pthread_cond_timedwait(&l->cond, &l->lock, &t);
		if (l->stop)
			break;
		pthread_mutex_unlock(&l->lock);
		beat(l);
		pthread_mutex_lock(&l->lock);
	}
	pthread_mutex_unlock(&l->lock);
	return NULL;
}

struct sbx_lease *sbx_lease_start(struct sbx *s, long lease_ms)
{
	struct sbx_lease *l = calloc(1, sizeof *l);
	if (!l)
		abort();
	l->s = s;
	l->interval_ms = lease_ms / 3 > 100 ? lease_ms / 3 : 100;
	pthread_mutex_init(&l->lock, NULL);
	mono_cond_init(&l->cond);
	if (pthread_create(&l->thread, NULL, heartbeat, l)) {
		log_warn("lease: cannot start the heartbeat: an idle mount's open files may be "
			 "closed by the server after %ld s", lease_ms / 1000);
		pthread_mutex_destroy(&l->lock);
		pthread_cond_destroy(&l->cond);
		free(l);
		return NULL;
	}
	return l;
}

void sbx_lease_orphan(struct sbx_lease *l, const char *handle)
{
	if (!l)
		return;
	pthread_mutex_lock(&l->lock);
	if (l->n_orphans < ORPHANS_MAX) {
		char **v = realloc(l->orphans, (l->n_orphans + 1) * sizeof *v);
		if (!v)
			abort();
		l->orphans = v;
		l->orphans[l->n_orphans++] = strdup(handle);
	}
	pthread_mutex_unlock(&l->lock);
}

void sbx_lease_stop(struct sbx_lease *l)
{
	if (!l)
		return;
	pthread_mutex_lock(&l->lock);
	l->stop = true;
	pthread_cond_signal(&l->cond);
	pthread_mutex_unlock(&l->lock);
	pthread_join(l->thread, NULL);
	cJSON *j;
	if (sbx_call(l->s, "end lease", "DELETE", "/api/x/lease", NULL, true, END_TIMEOUT_MS, &j))
		log_debug("%s (the server closes our files when the lease lapses)",
			  sbx_last_error());
	cJSON_Delete(j);
	for (size_t i = 0; i < l->n_orphans; i++)
		free(l->orphans[i]);
	free(l->orphans);
	pthread_mutex_destroy(&l->lock);
	pthread_cond_destroy(&l->cond);
	free(l);
}
