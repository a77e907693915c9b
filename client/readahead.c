/* Read-ahead of a file read in order.
 *
 * At a distance a ranged read costs a round trip: a file read 256 KiB at a time moves 256 KiB
 * per round trip, 5 MB/s at 50 ms, whatever the bandwidth. Once two reads of a file came in
 * order, the ranges after them are asked for, RA_CHUNK each and several at once through the
 * network thread (http_request_async), and the reads that follow are served from them. How far
 * ahead doubles with every read in order, up to RA_MAX per file and RA_BUDGET for all files
 * together (the data is in memory). A read out of order forgets it all and starts over; what
 * the ranges cannot serve (not fetched, failed, too old) the caller reads itself, so an error
 * is always the one its own read meets.
 *
 * Coherence. A fetched range is the file as it was when the range was read; it is used only
 * while nothing says the file changed: the owner calls readahead_forget when a change event
 * names the file or the mount changes it (fs/workspace.c), and a range older than
 * RA_FRESH_MS is not used at all (events may be late or missing).
 *
 * Lifetime. Answers come on the network thread, possibly after the owner closed the file: each
 * range on its way holds a reference to the read-ahead, and a range that is no longer wanted
 * (forgotten, or its owner gone) is marked an orphan and freed when its answer comes. A
 * reader waiting for a range notes the generation first: a forget while it waits (the range
 * may be freed by then) sends it back to look again. */
#include "client/readahead.h"
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "client/http.h"
#include "client/sandbox_impl.h"
#include "common/clock.h"

#define RA_CHUNK (1u << 20)   /* one ranged request */
#define RA_FIRST (2u << 20)   /* how far ahead after the second read in order */
#define RA_MAX (8u << 20)     /* how far ahead at most, per file */
#define RA_BUDGET (32u << 20) /* fetched or on its way, all files together */
#define RA_FRESH_MS 2000

static atomic_size_t budget_used;

struct range {
	struct range *next;
	struct readahead *ra;
	off_t off;
	size_t len;           /* asked */
	bool arrived, failed, orphan;
	char *data;
	size_t got;
	int64_t asked_ms;
};

struct readahead {
	pthread_mutex_t lock;
	pthread_cond_t arrived;
	struct sbx *s;
	char *handle, *path;
	unsigned refs;        /* the owner's and one per range on its way */
	uint64_t gen;         /* bumped by every forget */
	struct range *ranges; /* contiguous, in offset order */
	off_t next;           /* where a read in order starts */
	size_t run;           /* bytes read in order so far */
	size_t ahead;         /* 0 until reads come in order */
	off_t eof;            /* -1, or where a short answer said the file ends */
};

static void range_free(struct range *r)
{
	atomic_fetch_sub(&budget_used, r->len);
	free(r->data);
	free(r);
}

static void ra_destroy(struct readahead *ra)
{
	pthread_mutex_destroy(&ra->lock);
	pthread_cond_destroy(&ra->arrived);
	free(ra->handle);
	free(ra->path);
	free(ra);
}

struct readahead *readahead_new(struct sbx *s, const char *path)
{
	struct readahead *ra = calloc(1, sizeof *ra);
	if (!ra || !(ra->path = strdup(path)))
		abort();
	pthread_mutex_init(&ra->lock, NULL);
	pthread_cond_init(&ra->arrived, NULL);
	ra->s = s;
	ra->refs = 1;
	ra->eof = -1;
	return ra;
}

/* Lock held: every range goes; those on their way are freed when they come. */
static void forget_locked(struct readahead *ra)
{
	struct range *r = ra->ranges;
	ra->ranges = NULL;
	while (r) {
		struct range *next = r->next;
		if (r->arrived)
			range_free(r);
		else
			r->orphan = true;
		r = next;
	}
	ra->gen++;
	ra->ahead = 0;
	ra->eof = -1;
	pthread_cond_broadcast(&ra->arrived);
}

void readahead_forget(struct readahead *ra)
{
	if (!ra)
		return;
	pthread_mutex_lock(&ra->lock);
	forget_locked(ra);
	pthread_mutex_unlock(&ra->lock);
}

void readahead_free(struct readahead *ra)
{
	if (!ra)
		return;
	pthread_mutex_lock(&ra->lock);
	forget_locked(ra);
	bool last = --ra->refs == 0;
	pthread_mutex_unlock(&ra->lock);
	if (last)
		ra_destroy(ra);
}

static bool same(const char *a, const char *b) { return a == b || (a && b && !strcmp(a, b)); }

void readahead_set_source(struct readahead *ra, const char *handle, const char *path)
{
	char *h = handle ? strdup(handle) : NULL, *p = strdup(path);
	if ((handle && !h) || !p)
		abort();
	pthread_mutex_lock(&ra->lock);
	/* a handle for the file the path named: the same content; a new path without one: the
	 * ranges were read by the old path */
	if (!handle && !same(ra->path, path))
		forget_locked(ra);
	free(ra->handle);
	free(ra->path);
	ra->handle = h;
	ra->path = p;
	pthread_mutex_unlock(&ra->lock);
}

/* On the network thread: a range's answer. */
static void range_done(void *arg, struct http_response *resp)
{
	struct range *r = arg;
	struct readahead *ra = r->ra;
	pthread_mutex_lock(&ra->lock);
	if (r->orphan) {
		range_free(r);
	} else {
		r->arrived = true;
		r->failed = resp->err || resp->status != 200 || resp->body_len > r->len;
		if (!r->failed) {
			r->data = resp->body; /* taken: the client clears resp afterwards */
			r->got = resp->body_len;
			resp->body = NULL;
		}
		pthread_cond_broadcast(&ra->arrived);
	}
	bool last = --ra->refs == 0;
	pthread_mutex_unlock(&ra->lock);
	if (last)
		ra_destroy(ra);
}

/* Lock held: a new range at the end of the list, to be asked for by ask(); NULL when the
 * budget is spent. */
static struct range *range_add(struct readahead *ra, off_t off)
{
	size_t used = atomic_fetch_add(&budget_used, RA_CHUNK);
	if (used + RA_CHUNK > RA_BUDGET) {
		atomic_fetch_sub(&budget_used, RA_CHUNK);
		return NULL;
	}
	struct range *r = calloc(1, sizeof *r);
	if (!r)
		abort();
	r->ra = ra;
	r->off = off;
	r->len = RA_CHUNK;
	r->asked_ms = mono_ms();
	struct range **p = &ra->ranges;
	while (*p)
		p = &(*p)->next;
	*p = r;
	ra->refs++;
	return r;
}

/* Without the lock: sends the request of r (in the list already). */
static void ask(struct readahead *ra, struct range *r, const char *handle, const char *path)
{
	char *text = ext_pread_body(handle, path, r->off, r->len);
	struct http_request req = {
		.method = "POST",
		.path = "/api/x/pread",
		.body = text,
		.body_len = text ? strlen(text) : 0,
		.idempotent = true,
	};
	if (text && http_request_async(ra->s->http, &req, range_done, r) == 0) {
		free(text);
		return;
	}
	free(text);
	struct http_response failed = { .err = -ENOMEM };
	range_done(r, &failed);
}

/* Lock held: the range holding pos, or NULL. */
static struct range *range_at(struct readahead *ra, off_t pos)
{
	for (struct range *r = ra->ranges; r; r = r->next)
		if (pos >= r->off && pos < r->off + (off_t)r->len)
			return r;
	return NULL;
}

/* Lock held: arrived ranges wholly before pos go (the reader is past them). */
static void drop_behind(struct readahead *ra, off_t pos)
{
	while (ra->ranges && ra->ranges->arrived && ra->ranges->off + (off_t)ra->ranges->len <= pos) {
		struct range *r = ra->ranges;
		ra->ranges = r->next;
		range_free(r);
	}
}

/* Lock held: the end of what is fetched or asked for, at least from. */
static off_t asked_end(const struct readahead *ra, off_t from)
{
	for (const struct range *r = ra->ranges; r; r = r->next)
		if (r->off + (off_t)r->len > from)
			from = r->off + (off_t)r->len;
	return from;
}

size_t readahead_read(struct readahead *ra, void *buf, size_t len, off_t off, bool *eof)
{
	*eof = false;
	pthread_mutex_lock(&ra->lock);
	/* in order: where the last read ended, or near it (the kernel's reads of one window
	 * come through several threads, not always in order) */
	bool in_order = off >= ra->next - (off_t)RA_MAX && off <= asked_end(ra, ra->next);
	if (!in_order) {
		forget_locked(ra);
		ra->run = 0;
		ra->next = off;
		pthread_mutex_unlock(&ra->lock);
		return 0;
	}
	size_t served = 0;
	while (served < len) {
		off_t pos = off + (off_t)served;
		struct range *r = range_at(ra, pos);
		if (!r)
			break;
		if (!r->arrived) {
			uint64_t gen = ra->gen;
			pthread_cond_wait(&ra->arrived, &ra->lock);
			if (gen != ra->gen)
				break; /* forgotten meanwhile: r may be gone */
			continue;
		}
		if (r->failed || mono_ms() - r->asked_ms > RA_FRESH_MS) {
			forget_locked(ra); /* the caller's own read says what is wrong */
			break;
		}
		size_t at = (size_t)(pos - r->off);
		if (at >= r->got) { /* a short answer: the file ends there */
			*eof = true;
			ra->eof = r->off + (off_t)r->got;
			break;
		}
		size_t n = r->got - at < len - served ? r->got - at : len - served;
		memcpy((char *)buf + served, r->data + at, n);
		served += n;
	}
	off_t end = off + (off_t)served;
	if (end > ra->next)
		ra->next = end;
	ra->run += served;
	drop_behind(ra, off - (off_t)RA_CHUNK);
	/* what to ask for next, once the reads went in order for a while (a `head` or `file`
	 * of a big file reads its first pages only) */
	struct range *asked[RA_MAX / RA_CHUNK];
	size_t n_asked = 0;
	if (ra->run + len >= RA_CHUNK) {
		ra->ahead = ra->ahead ? (ra->ahead * 2 < RA_MAX ? ra->ahead * 2 : RA_MAX) : RA_FIRST;
		off_t want = off + (off_t)len + (off_t)ra->ahead;
		for (off_t at = asked_end(ra, off + (off_t)len);
		     n_asked < RA_MAX / RA_CHUNK && at < want && (ra->eof < 0 || at < ra->eof);
		     at += RA_CHUNK) {
			struct range *r = range_add(ra, at);
			if (!r)
				break;
			asked[n_asked++] = r;
		}
	}
	char *handle = n_asked && ra->handle ? strdup(ra->handle) : NULL;
	char *path = n_asked ? strdup(ra->path) : NULL;
	pthread_mutex_unlock(&ra->lock);
	for (size_t i = 0; i < n_asked; i++)
		ask(ra, asked[i], handle, path);
	free(handle);
	free(path);
	return served;
}

void readahead_done(struct readahead *ra, off_t off, size_t got)
{
	pthread_mutex_lock(&ra->lock);
	if (off + (off_t)got > ra->next)
		ra->next = off + (off_t)got;
	ra->run += got;
	pthread_mutex_unlock(&ra->lock);
}
