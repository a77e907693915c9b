/* The prober behind client/liveness.h.
 *
 * Why a thread of its own, with its own connection: the probe must tell "the sandbox does not
 * answer" from "the sandbox is busy". Sent through the shared multi it could queue behind the
 * very transfers it is checking on (all connections busy with long commands) and time out
 * although the sandbox is fine. A blocking curl_easy_perform() on a dedicated handle avoids
 * that and keeps its connection warm between probes.
 *
 * A round is up to ROUND_ATTEMPTS pings, stopping at the first HTTP answer of any status: a
 * proxy that answers 503 or resets one connection in ten must not make a healthy sandbox look
 * down. An attempt that timed out ends the round (it already took the probe timeout).
 *
 * Pacing: while up, a suspicion starts a round at once unless one ended less than
 * SUSPECT_GAP_MS ago; while down, rounds follow each other DOWN_GAP_MS apart, so a sandbox
 * that comes back is seen within about that (a probe stuck on a stopped server is answered
 * the moment it resumes). */
#include "client/liveness.h"
#include <curl/curl.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/clock.h"
#include "common/log.h"

#define ROUND_ATTEMPTS 3
#define SUSPECT_GAP_MS 250
#define DOWN_GAP_MS 200

struct liveness {
	struct liveness_opts o;
	char *url, *hostport, *auth_header, *user_agent, *ca_file;
	CURL *easy;
	struct curl_slist *headers;
	pthread_t thread;

	pthread_mutex_t lock;
	pthread_cond_t cond;
	atomic_bool stop;        /* also read by the probe's progress callback */
	bool wanted;
	atomic_int down;         /* 0 or the negative errno of the last failed round; read
				    without the lock on every request's attempt */
	char reason[256];        /* why it is down, under the lock */
	int64_t down_since;      /* under the lock */
	int64_t round_end;       /* when the last round ended */
};

static size_t discard(char *p, size_t size, size_t n, void *ud)
{
	(void)p;
	(void)ud;
	return size * n;
}

/* Lets liveness_stop() end a probe that waits on a stopped server. */
static int progress(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
	struct liveness *l = ud;
	(void)dt;
	(void)dn;
	(void)ut;
	(void)un;
	return atomic_load(&l->stop) ? 1 : 0;
}

/* One ping; 0 when any HTTP answer came back, else the reason in the words the HTTP client
 * uses for its requests. */
static int ping(struct liveness *l, char *msg, size_t n)
{
	char errbuf[CURL_ERROR_SIZE] = "";
	curl_easy_setopt(l->easy, CURLOPT_ERRORBUFFER, errbuf);
	CURLcode rc = curl_easy_perform(l->easy);
	if (rc == CURLE_OK)
		return 0;
	long os_err = 0;
	curl_easy_getinfo(l->easy, CURLINFO_OS_ERRNO, &os_err);
	const char *detail = errbuf[0] ? errbuf : curl_easy_strerror(rc);
	if (rc == CURLE_OPERATION_TIMEDOUT) {
		snprintf(msg, n, "%s gave no answer to a ping within %ld ms", l->hostport,
			 l->o.probe_timeout_ms);
		return -ETIMEDOUT;
	}
	if (rc == CURLE_COULDNT_CONNECT)
		snprintf(msg, n, "connect to %s failed: %s", l->hostport,
			 os_err ? strerror((int)os_err) : detail);
	else
		snprintf(msg, n, "connection to %s lost: %s", l->hostport, detail);
	return -ENOTCONN;
}

static int probe_round(struct liveness *l, char *msg, size_t n)
{
	int64_t start = mono_ms();
	int err = 0;
	for (int i = 0; i < ROUND_ATTEMPTS; i++) {
		err = ping(l, msg, n);
		if (!err || err == -ETIMEDOUT || mono_ms() - start >= l->o.probe_timeout_ms)
			break;
	}
	return err;
}

static void *prober(void *arg)
{
	struct liveness *l = arg;
	pthread_mutex_lock(&l->lock);
	for (;;) {
		while (!atomic_load(&l->stop) && !l->wanted && !atomic_load(&l->down))
			pthread_cond_wait(&l->cond, &l->lock);
		if (atomic_load(&l->stop))
			break;
		/* pacing, see the top of the file */
		int64_t due = l->round_end + (atomic_load(&l->down) ? DOWN_GAP_MS : SUSPECT_GAP_MS);
		if (mono_ms() < due) {
			struct timespec t = mono_after_ms((long)(due - mono_ms()));
			pthread_cond_timedwait(&l->cond, &l->lock, &t);
			continue;
		}
		l->wanted = false;
		pthread_mutex_unlock(&l->lock);
		char msg[sizeof l->reason];
		int err = probe_round(l, msg, sizeof msg);
		pthread_mutex_lock(&l->lock);
		l->round_end = mono_ms();
		if (atomic_load(&l->stop))
			break;
		bool changed = (err != 0) != (atomic_load(&l->down) != 0);
		if (err)
			snprintf(l->reason, sizeof l->reason, "%s", msg);
		if (err && !atomic_load(&l->down))
			l->down_since = l->round_end;
		atomic_store(&l->down, err);
		if (!changed)
			continue;
		if (err)
			log_warn("the sandbox does not answer (%s): requests fail at once until it "
				 "does", msg);
		else
			log_info("the sandbox answers again");
		pthread_mutex_unlock(&l->lock);
		l->o.on_change(l->o.arg);
		pthread_mutex_lock(&l->lock);
	}
	pthread_mutex_unlock(&l->lock);
	return NULL;
}

static void destroy(struct liveness *l)
{
	if (l->easy)
		curl_easy_cleanup(l->easy);
	curl_slist_free_all(l->headers);
	free(l->url);
	free(l->hostport);
	free(l->auth_header);
	free(l->user_agent);
	free(l->ca_file);
	pthread_mutex_destroy(&l->lock);
	pthread_cond_destroy(&l->cond);
	free(l);
}

static char *dup_or_null(const char *s)
{
	char *d = s ? strdup(s) : NULL;
	if (s && !d)
		abort();
	return d;
}

struct liveness *liveness_start(const struct liveness_opts *o)
{
	struct liveness *l = calloc(1, sizeof *l);
	if (!l)
		return NULL;
	l->o = *o;
	l->url = dup_or_null(o->url);
	l->hostport = dup_or_null(o->hostport);
	l->auth_header = dup_or_null(o->auth_header);
	l->user_agent = dup_or_null(o->user_agent);
	l->ca_file = dup_or_null(o->ca_file);
	pthread_mutex_init(&l->lock, NULL);
	mono_cond_init(&l->cond);
	l->easy = curl_easy_init();
	if (!l->easy) {
		destroy(l);
		return NULL;
	}
	if (l->auth_header)
		l->headers = curl_slist_append(NULL, l->auth_header);
	CURL *e = l->easy;
	curl_easy_setopt(e, CURLOPT_URL, l->url);
	curl_easy_setopt(e, CURLOPT_HTTPGET, 1L);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, l->headers);
	curl_easy_setopt(e, CURLOPT_USERAGENT, l->user_agent);
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, o->connect_timeout_ms);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, o->probe_timeout_ms);
	curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, progress);
	curl_easy_setopt(e, CURLOPT_XFERINFODATA, l);
	if (o->insecure) {
		curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
		curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
	}
	if (l->ca_file)
		curl_easy_setopt(e, CURLOPT_CAINFO, l->ca_file);
	int rc = pthread_create(&l->thread, NULL, prober, l);
	if (rc) {
		destroy(l);
		errno = rc;
		return NULL;
	}
	return l;
}

void liveness_stop(struct liveness *l)
{
	if (!l)
		return;
	pthread_mutex_lock(&l->lock);
	atomic_store(&l->stop, true);
	pthread_cond_signal(&l->cond);
	pthread_mutex_unlock(&l->lock);
	/* A probe in flight notices within about a second (progress callback). */
	pthread_join(l->thread, NULL);
	destroy(l);
}

void liveness_suspect(struct liveness *l)
{
	pthread_mutex_lock(&l->lock);
	if (!l->wanted) {
		l->wanted = true;
		pthread_cond_signal(&l->cond);
	}
	pthread_mutex_unlock(&l->lock);
}

int liveness_down(struct liveness *l, char *msg, size_t n, int64_t *since)
{
	if (!atomic_load(&l->down))
		return 0;
	pthread_mutex_lock(&l->lock);
	int err = atomic_load(&l->down);
	if (msg)
		snprintf(msg, n, "%s", err ? l->reason : "");
	if (since)
		*since = l->down_since;
	pthread_mutex_unlock(&l->lock);
	return err;
}
