/* Whether the sandbox answers at all, as the HTTP client's circuit breaker sees it.
 *
 * One prober thread with its own connection sends GET /api/ping when asked (a request went
 * unanswered for a while, or lost its connection) and, while the sandbox is down, over and
 * over until it answers again. Any HTTP answer means up; only a transport failure (refused,
 * reset, no answer within the probe's timeout) on every attempt of a round means down. The
 * HTTP client holds back new attempts while the sandbox is down (sbxfs(1), FAILURES). */
#ifndef SBX_LIVENESS_H
#define SBX_LIVENESS_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct liveness;

struct liveness_opts {
	const char *url;            /* the ping URL */
	const char *hostport;       /* "host:port", for messages */
	const char *auth_header;    /* "Authorization: Bearer ..." or NULL */
	const char *user_agent;
	const char *ca_file;        /* may be NULL */
	bool insecure;
	long connect_timeout_ms;
	long probe_timeout_ms;      /* one probe attempt's deadline */
	/* Called on the prober thread after every change of state (must not block). */
	void (*on_change)(void *arg);
	void *arg;
};

struct liveness *liveness_start(const struct liveness_opts *o);
void liveness_stop(struct liveness *l);
/* Asks for a probe soon (from any thread; cheap, rate-limited). */
void liveness_suspect(struct liveness *l);
/* 0 while the sandbox is thought to answer; else the negative errno of the last failed
 * probe round, with its reason in msg (may be NULL) and when it was first seen down in *since
 * (monotonic ms; may be NULL). */
int liveness_down(struct liveness *l, char *msg, size_t n, int64_t *since);
#endif
