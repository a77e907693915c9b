/* Attribute changes the fallback backend applies in batches, and the registry that says which
 * changes may wait (docs/protocol.md, "Fallback").
 *
 * Why. Against a plain container a change of mode or times costs a command: a process started
 * in the sandbox, milliseconds each, where the file routes that carry data cost a fraction of
 * one. tar, cp -a and rsync set the mode and times of every file and directory they make; a
 * command for each would cost more than everything else together. So a change that cannot fail
 * waits here, and one command applies all that waits.
 *
 * What may wait: the times of an entry this client made (a directory by mkdir, a file it
 * created), which the registry below knows (the identity the sandbox's commands run as made
 * it, so its owner may set them), and a mode of such an entry whose delay harms no one
 * (fb_mode_may_wait: one that gives group and others more or the owner less). A mode that
 * hides something or lets the owner do more, anything on other entries, chown to another
 * owner: at once, by the caller (a flush applies the queue before it returns).
 *
 * When it is applied. Every helper command the backend runs carries the queue in front of its
 * own work (fb_settle_take, from fb_run), so a stat or listing always sees the changes, and so
 * does an unlink or rename, which comes after them. When no command comes, a settler thread
 * applies the queue: at once when the last batch is SETTLE_DELAY_MS old (a lone chmod or cp -p
 * waits for one command), else SETTLE_DELAY_MS after the last batch (tar: one batch per 100 ms,
 * not one per file). Before the client runs anything the user can watch in the sandbox (a
 * command, process, code: the settle hook) and before fsync returns, fb_settle_now applies it.
 * So nothing seen through the mount ever differs (its answers carry the wanted values from the
 * moment the change returned); a process in the sandbox that the mount did not start may see
 * an old mode or mtime for about SETTLE_DELAY_MS and a round trip after the change returned.
 *
 * Lost answers. Every queued change sets an absolute value (chmod 644, touch -d @S.N), so the
 * batch may run twice. An entry leaves the queue only when a command that carried it was
 * answered (with any exit status: the batch runs before the command's own part, separated by
 * ';', its errors discarded: an entry the sandbox removed meanwhile has nothing left to set).
 * After a lost answer it stays and goes with the next command. An entry changed while a command
 * carries it gets a new sequence number and stays for the next. Data sent again to a path waits
 * for the commands carrying its entry to be answered and drops its queued mtime (the upload sets
 * a newer one), so a late batch cannot set an old mtime on new data.
 *
 * The queue is bounded (SETTLE_MAX_BYTES of shell text: it must fit in one command line with the
 * command that carries it); a change that would overflow it first applies what waits.
 * Lock order: q->lock, then the cache's (fb_cache_expect); no command runs while it is held. */
#include "client/fallback.h"
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "client/shellquote.h"
#include "common/log.h"

#define SETTLE_DELAY_MS 100
#define SETTLE_MAX_BYTES (48u << 10)
#define SETTLE_BACKOFF_MAX_MS 5000
#define MADE_MAX 65536

struct fb_settle_entry {
	struct fb_settle_entry *prev, *next; /* the queue, oldest first */
	uint64_t seq;       /* bumped by every change */
	long long since_ms; /* monotonic time of the first change */
	unsigned inflight;  /* tickets holding it */
	bool queued;        /* still in the queue (else freed once no ticket holds it) */
	unsigned valid;     /* SBX_SET_MODE | SBX_SET_ATIME | SBX_SET_MTIME */
	mode_t mode;
	struct timespec atime, mtime;
	size_t cost;        /* bytes of shell text it adds, about */
	char path[];
};

struct made {
	struct made *next;
	char path[];
};

struct fb_settle {
	pthread_mutex_t lock;
	pthread_cond_t cond;     /* the settler's wake-up; waits of fb_settle_before_write */
	struct fb_settle_entry *head, *tail;
	size_t bytes;
	uint64_t seq;
	pthread_t thread;
	bool started, stopping;
	long long last_run_ms;   /* when the settler last applied the queue */
	/* the registry: a hash of paths */
	struct made **made;
	size_t nmade;
};

#define MADE_BUCKETS 4096

static long long mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static bool at_or_below(const char *path, const char *top)
{
	size_t n = strlen(top);
	return strncmp(path, top, n) == 0 && (path[n] == 0 || path[n] == '/');
}

struct fb_settle *fb_settle_new(void)
{
	struct fb_settle *q = calloc(1, sizeof *q);
	if (!q || !(q->made = calloc(MADE_BUCKETS, sizeof *q->made)))
		abort();
	pthread_mutex_init(&q->lock, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&q->cond, &ca);
	pthread_condattr_destroy(&ca);
	return q;
}

/* ---- the queue ---- */

static struct fb_settle_entry *find_entry(struct fb_settle *q, const char *path)
{
	for (struct fb_settle_entry *e = q->head; e; e = e->next)
		if (strcmp(e->path, path) == 0)
			return e;
	return NULL;
}

static void unqueue(struct fb_settle *q, struct fb_settle_entry *e)
{
	if (e->prev)
		e->prev->next = e->next;
	else
		q->head = e->next;
	if (e->next)
		e->next->prev = e->prev;
	else
		q->tail = e->prev;
	e->prev = e->next = NULL;
	e->queued = false;
	q->bytes -= e->cost;
	if (!e->inflight)
		free(e);
}

static size_t entry_cost(const struct fb_settle_entry *e)
{
	/* a quoted path in up to three groups, and a share of the groups' heads */
	return 3 * (strlen(e->path) + 8) + 16;
}

/* One tool invocation per distinct (tool, value): "chmod 644 -- 'a' 'b'" */
struct group {
	struct strbuf head;
	struct strbuf paths;
};

static void group_add(struct group **g, size_t *n, const char *head, const char *path)
{
	size_t i;
	for (i = 0; i < *n; i++)
		if (strcmp((*g)[i].head.data, head) == 0)
			break;
	if (i == *n) {
		*g = realloc(*g, (*n + 1) * sizeof **g);
		if (!*g)
			abort();
		(*g)[i] = (struct group){ STRBUF_INIT, STRBUF_INIT };
		strbuf_appends(&(*g)[i].head, head);
		(*n)++;
	}
	strbuf_appends(&(*g)[i].paths, " ");
	shell_append_quoted(&(*g)[i].paths, path);
}

void fb_settle_take(struct sbx *s, struct strbuf *cmd, struct fb_ticket *t)
{
	struct fb_settle *q = s->fb->settle;
	*t = (struct fb_ticket){ 0 };
	pthread_mutex_lock(&q->lock);
	size_t n = 0;
	for (struct fb_settle_entry *e = q->head; e; e = e->next)
		n++;
	if (!n) {
		pthread_mutex_unlock(&q->lock);
		return;
	}
	t->v = malloc(n * sizeof *t->v);
	t->seq = malloc(n * sizeof *t->seq);
	if (!t->v || !t->seq)
		abort();
	struct group *g = NULL;
	size_t ng = 0;
	struct strbuf head = STRBUF_INIT;
	for (struct fb_settle_entry *e = q->head; e; e = e->next) {
		fb_cache_expect(s, e->path); /* the cache's lock is a leaf too */
		e->inflight++;
		t->v[t->n] = e;
		t->seq[t->n++] = e->seq;
		if (e->valid & SBX_SET_MODE) {
			head.len = 0;
			strbuf_appendf(&head, "chmod %o ", (unsigned)(e->mode & 07777));
			group_add(&g, &ng, head.data, e->path);
		}
		bool both = (e->valid & SBX_SET_ATIME) && (e->valid & SBX_SET_MTIME) &&
			    e->atime.tv_sec == e->mtime.tv_sec && e->atime.tv_nsec == e->mtime.tv_nsec;
		for (int k = 0; k < 2; k++) {
			unsigned bit = k ? SBX_SET_MTIME : SBX_SET_ATIME;
			if (!(e->valid & bit) || (both && k))
				continue;
			head.len = 0;
			fb_append_touch_head(&head, both ? "" : k ? "-m" : "-a", k ? &e->mtime : &e->atime);
			group_add(&g, &ng, head.data, e->path);
		}
	}
	pthread_mutex_unlock(&q->lock);
	strbuf_appends(cmd, "{ ");
	for (size_t i = 0; i < ng; i++) {
		strbuf_appendf(cmd, "%s--%s; ", g[i].head.data, g[i].paths.data);
		strbuf_free(&g[i].head);
		strbuf_free(&g[i].paths);
	}
	strbuf_appends(cmd, "} 2>/dev/null; ");
	strbuf_free(&head);
	free(g);
}

void fb_settle_done(struct fb_settle *q, struct fb_ticket *t, bool answered)
{
	if (!t->n)
		return;
	pthread_mutex_lock(&q->lock);
	for (size_t i = 0; i < t->n; i++) {
		struct fb_settle_entry *e = t->v[i];
		e->inflight--;
		if (e->queued && answered && e->seq == t->seq[i])
			unqueue(q, e);
		else if (!e->queued && !e->inflight)
			free(e);
	}
	pthread_cond_broadcast(&q->cond);
	pthread_mutex_unlock(&q->lock);
	free(t->v);
	free(t->seq);
	*t = (struct fb_ticket){ 0 };
}

/* ---- applying ---- */

static int run_queue(struct sbx *s)
{
	/* fb_run puts the queue in front of the no-op */
	return fb_run(s, "applying the queued attribute changes", ":", 0, false, NULL, NULL);
}

int fb_settle_now(struct sbx *s, const char *path)
{
	struct fb_settle *q = s->fb->settle;
	pthread_mutex_lock(&q->lock);
	bool any = path ? find_entry(q, path) != NULL : q->head != NULL;
	pthread_mutex_unlock(&q->lock);
	return any ? run_queue(s) : 0;
}

/* The settler: applies the queue SETTLE_DELAY_MS after its oldest entry came, unless another
 * command carried it meanwhile; after a failure it waits longer, up to 5 s. */
static void *settler(void *arg)
{
	struct sbx *s = arg;
	struct fb_settle *q = s->fb->settle;
	long backoff = 0;
	bool warned = false;
	pthread_mutex_lock(&q->lock);
	while (!q->stopping) {
		if (!q->head) {
			pthread_cond_wait(&q->cond, &q->lock);
			continue;
		}
		/* at once after a quiet spell; in a burst, one batch every SETTLE_DELAY_MS */
		long long due = q->head->since_ms > q->last_run_ms + SETTLE_DELAY_MS ?
					q->head->since_ms : q->last_run_ms + SETTLE_DELAY_MS;
		due += backoff;
		long long now = mono_ms();
		if (now < due) {
			struct timespec ts;
			clock_gettime(CLOCK_MONOTONIC, &ts);
			long long ns = ts.tv_nsec + (due - now) * 1000000LL;
			ts.tv_sec += (time_t)(ns / 1000000000LL);
			ts.tv_nsec = (long)(ns % 1000000000LL);
			pthread_cond_timedwait(&q->cond, &q->lock, &ts);
			continue;
		}
		q->last_run_ms = now;
		pthread_mutex_unlock(&q->lock);
		int err = run_queue(s);
		if (err && !warned)
			log_warn("%s (tried again until it works)", sbx_last_error());
		else if (!err && warned)
			log_info("the queued attribute changes were applied");
		warned = err != 0;
		pthread_mutex_lock(&q->lock);
		backoff = !err ? 0 : backoff ? backoff * 2 : SETTLE_DELAY_MS;
		if (backoff > SETTLE_BACKOFF_MAX_MS)
			backoff = SETTLE_BACKOFF_MAX_MS;
	}
	pthread_mutex_unlock(&q->lock);
	return NULL;
}

void fb_settle_queue(struct sbx *s, const char *path, unsigned valid, const struct stat *want)
{
	struct fb_settle *q = s->fb->settle;
	valid &= SBX_SET_MODE | SBX_SET_ATIME | SBX_SET_MTIME;
	if (!valid)
		return;
	size_t cost = 3 * (strlen(path) + 8) + 16;
	pthread_mutex_lock(&q->lock);
	if (q->bytes + cost > SETTLE_MAX_BYTES && !find_entry(q, path)) {
		pthread_mutex_unlock(&q->lock);
		if (run_queue(s))
			log_warn("%s", sbx_last_error());
		pthread_mutex_lock(&q->lock);
	}
	struct fb_settle_entry *e = find_entry(q, path);
	if (!e) {
		size_t len = strlen(path) + 1;
		if (!(e = calloc(1, sizeof *e + len)))
			abort();
		memcpy(e->path, path, len);
		e->since_ms = mono_ms();
		e->queued = true;
		e->cost = entry_cost(e);
		q->bytes += e->cost;
		e->prev = q->tail;
		if (q->tail)
			q->tail->next = e;
		else
			q->head = e;
		q->tail = e;
	}
	e->seq = ++q->seq;
	e->valid |= valid;
	if (valid & SBX_SET_MODE)
		e->mode = want->st_mode & 07777;
	if (valid & SBX_SET_ATIME)
		e->atime = want->st_atim;
	if (valid & SBX_SET_MTIME)
		e->mtime = want->st_mtim;
	bool start = !q->started;
	q->started = true;
	pthread_cond_broadcast(&q->cond);
	pthread_mutex_unlock(&q->lock);
	if (start) {
		int err = pthread_create(&q->thread, NULL, settler, s);
		if (err) {
			log_warn("cannot start the thread that applies queued attribute changes (%s): "
				 "they are applied by the next command", strerror(err));
			pthread_mutex_lock(&q->lock);
			q->started = false;
			pthread_mutex_unlock(&q->lock);
		}
	}
}

void fb_settle_before_write(struct sbx *s, const char *path)
{
	struct fb_settle *q = s->fb->settle;
	pthread_mutex_lock(&q->lock);
	struct fb_settle_entry *e;
	/* bounded: every carrier ends within its deadline */
	while ((e = find_entry(q, path)) && e->inflight)
		pthread_cond_wait(&q->cond, &q->lock);
	if (e && (e->valid & SBX_SET_MTIME)) {
		e->valid &= ~SBX_SET_MTIME;
		e->seq = ++q->seq;
		if (!e->valid)
			unqueue(q, e);
	}
	pthread_mutex_unlock(&q->lock);
}

/* ---- the registry ---- */

static size_t made_bucket(const char *path)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */
	for (const char *p = path; *p; p++)
		h = (h ^ (unsigned char)*p) * 1099511628211ULL;
	return (size_t)(h & (MADE_BUCKETS - 1));
}

static struct made **made_slot(struct fb_settle *q, const char *path)
{
	struct made **p = &q->made[made_bucket(path)];
	while (*p && strcmp((*p)->path, path) != 0)
		p = &(*p)->next;
	return p;
}

void fb_made_add(struct sbx *s, const char *path)
{
	struct fb_settle *q = s->fb->settle;
	pthread_mutex_lock(&q->lock);
	struct made **p = made_slot(q, path);
	if (!*p && q->nmade < MADE_MAX) {
		size_t len = strlen(path) + 1;
		if (!(*p = calloc(1, sizeof **p + len)))
			abort();
		memcpy((*p)->path, path, len);
		q->nmade++;
	}
	pthread_mutex_unlock(&q->lock);
}

bool fb_made_has(struct sbx *s, const char *path)
{
	struct fb_settle *q = s->fb->settle;
	pthread_mutex_lock(&q->lock);
	bool has = *made_slot(q, path) != NULL;
	pthread_mutex_unlock(&q->lock);
	return has;
}

/* Takes the registry's entries at or below top out of it (a list, caller frees). */
static struct made *made_take_below(struct fb_settle *q, const char *top)
{
	struct made *out = NULL;
	for (size_t b = 0; b < MADE_BUCKETS && q->nmade; b++) {
		for (struct made **p = &q->made[b]; *p;) {
			struct made *m = *p;
			if (!at_or_below(m->path, top)) {
				p = &m->next;
				continue;
			}
			*p = m->next;
			m->next = out;
			out = m;
			q->nmade--;
		}
	}
	return out;
}

void fb_made_move(struct sbx *s, const char *from, const char *to)
{
	struct fb_settle *q = s->fb->settle;
	pthread_mutex_lock(&q->lock);
	struct made *moved = made_take_below(q, from);
	/* what the new name replaced is not ours any more */
	for (struct made *m = made_take_below(q, to), *next; m; m = next) {
		next = m->next;
		free(m);
	}
	for (struct made *m = moved, *next; m; m = next) {
		next = m->next;
		char *p;
		if (asprintf(&p, "%s%s", to, m->path + strlen(from)) < 0)
			abort();
		struct made **slot = made_slot(q, p);
		if (!*slot && q->nmade < MADE_MAX) {
			size_t len = strlen(p) + 1;
			if (!(*slot = calloc(1, sizeof **slot + len)))
				abort();
			memcpy((*slot)->path, p, len);
			q->nmade++;
		}
		free(p);
		free(m);
	}
	pthread_mutex_unlock(&q->lock);
}

void fb_settle_forget(struct sbx *s, const char *path)
{
	struct fb_settle *q = s->fb->settle;
	pthread_mutex_lock(&q->lock);
	for (struct fb_settle_entry *e = q->head, *next; e; e = next) {
		next = e->next;
		if (at_or_below(e->path, path))
			unqueue(q, e);
	}
	for (struct made *m = made_take_below(q, path), *next; m; m = next) {
		next = m->next;
		free(m);
	}
	pthread_mutex_unlock(&q->lock);
}

void fb_settle_free(struct sbx *s)
{
	struct fb_settle *q = s->fb->settle;
	pthread_mutex_lock(&q->lock);
	q->stopping = true;
	bool started = q->started;
	pthread_cond_broadcast(&q->cond);
	pthread_mutex_unlock(&q->lock);
	if (started)
		pthread_join(q->thread, NULL);
	if (fb_settle_now(s, NULL))
		log_warn("%s: the sandbox keeps the old values", sbx_last_error());
	while (q->head) /* unqueue unlinks what it frees, which the analyzer does not follow */
		unqueue(q, q->head); /* NOLINT(clang-analyzer-unix.Malloc) */
	for (size_t b = 0; b < MADE_BUCKETS; b++) {
		for (struct made *m = q->made[b], *next; m; m = next) {
			next = m->next;
			free(m);
		}
	}
	free(q->made);
	pthread_cond_destroy(&q->cond);
	pthread_mutex_destroy(&q->lock);
	free(q);
	s->fb->settle = NULL;
}
