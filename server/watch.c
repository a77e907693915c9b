/* The change events behind server/watch.h (POST /api/watch and /api/watch/check, whose routes
 * are watch_routes.c).
 *
 * One inotify instance watches every directory of the workspace, for the life of the server,
 * from one background thread. That thread alone owns the wd -> directory map: it adds watches
 * for the whole tree at start, for each directory created or moved in later (scanning a new
 * directory's contents and reporting what was created there before its watch existed), renames
 * the paths of a moved directory's subtree when a MOVED_FROM/MOVED_TO pair arrives, and drops
 * the watches of a directory moved out of the workspace (a MOVED_FROM whose MOVED_TO does not
 * follow within 20 ms). Watches are added through /proc/self/fd of a descriptor opened beneath
 * the root, so a symlink swapped in mid-path can never make us watch something outside.
 *
 * Each /api/watch request is a subscriber with its own filter (path, recursive, events,
 * include/exclude globs) and a bounded queue of preformatted SSE events, guarded by one mutex
 * together with the subscriber list. The thread formats each event once and appends it to the
 * queue of every subscriber that wants it; an event identical to the one still waiting at the
 * tail of a queue is dropped (a burst of writes sends one "modify" to a slow reader). A full
 * queue drops events and owes its reader an "overflow" event, as does an inotify queue
 * overflow: either way the client must forget what it caches. The SSE source's next() waits on
 * the subscriber's condition variable and hands over the whole queue at once.
 *
 * A retained watch (/api/watch/check) is a subscriber that counts what it wants instead of
 * queueing it, kept RETAIN_MS after its last check and found again by its filter. */
#include "server/watch.h"
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>
#include "common/clock.h"
#include "common/jsonutil.h"
#include "common/log.h"
#include "common/strbuf.h"
#include "server/sbxd.h"
#include "server/echo.h"
#include "server/journal.h"
#include "server/workspace.h"

#define QUEUE_MAX 10000
#define READY_WAIT_S 10
#define MOVE_PAIR_MS 20
#define WATCH_MASK (IN_CREATE | IN_DELETE | IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | \
		    IN_MOVED_TO | IN_ATTRIB | IN_ONLYDIR | IN_EXCL_UNLINK)

enum ev_type {
	EV_CREATE = WATCH_CREATE,
	EV_MODIFY = WATCH_MODIFY,
	EV_DELETE = WATCH_DELETE,
	EV_MOVE_FROM = WATCH_MOVE_FROM,
	EV_MOVE_TO = WATCH_MOVE_TO,
	EV_ATTRIB = WATCH_ATTRIB,
};
static const char *const ev_names[] = { "create", "modify", "delete",
					"move_from", "move_to", "attrib" };

unsigned watch_event_named(const char *name)
{
	for (size_t i = 0; i < sizeof ev_names / sizeof ev_names[0]; i++)
		if (strcmp(name, ev_names[i]) == 0)
			return 1u << i;
	return 0;
}

/* ---- the wd map (watch thread only) ---- */

struct dirwatch {
	int wd;
	char *rel;
	struct dirwatch *next;
};
#define NBUCKETS 1024
static struct dirwatch *buckets[NBUCKETS];

static struct dirwatch **map_slot(int wd)
{
	struct dirwatch **p = &buckets[(unsigned)wd % NBUCKETS];
	while (*p && (*p)->wd != wd)
		p = &(*p)->next;
	return p;
}

static const char *map_get(int wd)
{
	struct dirwatch *d = *map_slot(wd);
	return d ? d->rel : NULL;
}

static void map_set(int wd, const char *rel)
{
	struct dirwatch **p = map_slot(wd);
	char *copy = strdup(rel);
	if (!copy)
		return;
	if (*p) {
		free((*p)->rel);
		(*p)->rel = copy;
		return;
	}
	struct dirwatch *d = malloc(sizeof *d);
	if (!d) {
		free(copy);
		return;
	}
	*d = (struct dirwatch){ wd, copy, NULL };
	*p = d;
}

static void map_del(int wd)
{
	struct dirwatch **p = map_slot(wd), *d = *p;
	if (d) {
		*p = d->next;
		free(d->rel);
		free(d);
	}
}

static bool under(const char *rel, const char *prefix)
{
	size_t n = strlen(prefix);
	return strncmp(rel, prefix, n) == 0 && (rel[n] == '\0' || rel[n] == '/');
}

/* A directory moved inside the workspace: its subtree's paths change, its watches stay. */
static void map_rename_prefix(const char *from, const char *to)
{
	size_t fl = strlen(from);
	for (size_t b = 0; b < NBUCKETS; b++)
		for (struct dirwatch *d = buckets[b]; d; d = d->next) {
			if (!under(d->rel, from))
				continue;
			char *n;
			if (asprintf(&n, "%s%s", to, d->rel + fl) < 0)
				continue;
			free(d->rel);
			d->rel = n;
		}
}

static void map_clear(void)
{
	for (size_t b = 0; b < NBUCKETS; b++)
		while (buckets[b])
			map_del(buckets[b]->wd);
}

/* ---- subscribers ---- */

struct qev {
	struct qev *next;
	enum ev_type type;
	char *path; /* for coalescing; NULL for non-path events */
	char *line; /* "data: {...}\n\n" */
	bool echo;  /* tagged with a journal's id: never merged with an untagged one */
};

struct sub {
	struct sub *next, *prev;
	struct watch_filter f;
	struct qev *head, *tail;
	size_t len;
	bool owe_overflow;
	pthread_cond_t cond;
	/* a retained watch of /api/watch/check: counts what it wants instead of queueing it */
	struct retained *retained;
};

/* The change state behind /api/watch/check: a filter that counts events, kept until
 * RETAIN_MS after its last check, found again by its parameters (key). */
struct retained {
	struct retained *next;
	char *key;
	char id[64];
	uint64_t cursor;
	int64_t expires;
	struct sub *sub;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ready_cond = PTHREAD_COND_INITIALIZER;
static struct sub *subs;
static struct retained *retained_list;
static size_t n_retained;
static bool ready, stopping, started;
static unsigned watch_seq;

static int ifd = -1, stopfd = -1;
static pthread_t thread;

static char *event_line(cJSON *e)
{
	struct strbuf sb = STRBUF_INIT;
	sse_append(&sb, e);
	cJSON_Delete(e);
	return strbuf_detach(&sb, NULL);
}

static char *overflow_line(void)
{
	char ts[32];
	cJSON *e = cJSON_CreateObject();
	cJSON_AddStringToObject(e, "type", "overflow");
	cJSON_AddStringToObject(e, "timestamp", json_timestamp(ts));
	return event_line(e);
}

/* With the lock held; takes ownership of line and path. */
static void enqueue_locked(struct sub *s, enum ev_type type, char *path, char *line, bool echo)
{
	/* a repeat of the last event: dropped, unless one of the two is an echo (a change by the
	 * sandbox after a journal's must reach the client untagged) */
	if (path && s->tail && !s->owe_overflow && s->tail->type == type && s->tail->path &&
	    strcmp(s->tail->path, path) == 0 && !s->tail->echo && !echo)
		goto drop;
	if (s->len >= QUEUE_MAX || s->owe_overflow) {
		s->owe_overflow = true;
		pthread_cond_signal(&s->cond);
		goto drop;
	}
	struct qev *q = malloc(sizeof *q);
	if (!q) {
		s->owe_overflow = true;
		goto drop;
	}
	*q = (struct qev){ NULL, type, path, line, echo };
	if (s->tail)
		s->tail->next = q;
	else
		s->head = q;
	s->tail = q;
	s->len++;
	pthread_cond_signal(&s->cond);
	return;
drop:
	free(path);
	free(line);
}

/* The glob language of the container: '*' within a component, '**' across components, '?'
 * one character; a glob matches when it matches a run of whole components. */
static bool glob_at(const char *g, const char *s)
{
	if (!*g)
		return *s == '\0' || *s == '/';
	if (g[0] == '*' && g[1] == '*') {
		for (const char *p = s;; p++) {
			if (glob_at(g + 2, p))
				return true;
			if (!*p)
				return false;
		}
	}
	if (*g == '*') {
		for (const char *p = s;; p++) {
			if (glob_at(g + 1, p))
				return true;
			if (!*p || *p == '/')
				return false;
		}
	}
	if (!*s || *s == '/')
		return *g == '/' && *s == '/' && glob_at(g + 1, s + 1);
	return (*g == '?' || *g == *s) && glob_at(g + 1, s + 1);
}

static bool glob_match(const char *g, const char *path)
{
	for (const char *p = path; p; p = strchr(p, '/') ? strchr(p, '/') + 1 : NULL)
		if (glob_at(g, p))
			return true;
	return false;
}

static bool wants(const struct watch_filter *s, enum ev_type type, const char *rel,
		  const char *abs)
{
	if (!(s->events & type))
		return false;
	if (strcmp(s->root, ".") != 0) {
		if (!under(rel, s->root))
			return false;
		rel += strlen(s->root);
		if (*rel == '/')
			rel++;
	} else if (strcmp(rel, ".") == 0) {
		rel = "";
	}
	if (!s->recursive && strchr(rel, '/'))
		return false;
	if (s->nglobs) {
		bool hit = false;
		for (size_t i = 0; i < s->nglobs && !hit; i++)
			hit = glob_match(s->globs[i], abs);
		if (hit != s->include)
			return false;
	}
	return true;
}

/* Queues the event for every subscriber that wants it (lock held). other is the other name
 * of a move whose two halves were paired (the destination of a move_from, the source of a
 * move_to; NULL when unknown): sent as newPath/oldPath, an extension. */
static void publish_locked(enum ev_type type, const char *rel, bool is_dir, const char *other)
{
	char abs[WS_PATH_MAX + 16], other_abs[WS_PATH_MAX + 16], ts[32];
	ws_api_path(rel, abs, sizeof abs);
	bool extensions = !(sbxd_cfg && sbxd_cfg->no_extensions);
	if (other)
		ws_api_path(other, other_abs, sizeof other_abs);
	char *line = NULL, journal[JOURNAL_ID_MAX + 1];
	bool echo = false;
	for (struct sub *s = subs; s; s = s->next) {
		if (!wants(&s->f, type, rel, abs))
			continue;
		if (s->retained) {
			s->retained->cursor++;
			continue;
		}
		if (!line) {
			size_t i = 0;
			while ((1u << i) != (unsigned)type)
				i++;
			cJSON *e = cJSON_CreateObject();
			cJSON_AddStringToObject(e, "type", "event");
			cJSON_AddStringToObject(e, "eventType", ev_names[i]);
			cJSON_AddStringToObject(e, "path", abs);
			cJSON_AddBoolToObject(e, "isDirectory", is_dir);
			if (other && extensions)
				cJSON_AddStringToObject(e, type == EV_MOVE_FROM ? "newPath" : "oldPath",
							other_abs);
			cJSON_AddStringToObject(e, "timestamp", json_timestamp(ts));
			if (extensions && (echo = echo_origin(rel, type, journal)))
				cJSON_AddStringToObject(e, "journal", journal);
			line = event_line(e);
		}
		char *l = strdup(line), *p = strdup(abs);
		if (l && p)
			enqueue_locked(s, type, p, l, echo);
		else {
			free(l);
			free(p);
			s->owe_overflow = true;
		}
	}
	free(line);
}

static void publish(enum ev_type type, const char *rel, bool is_dir)
{
	pthread_mutex_lock(&lock);
	publish_locked(type, rel, is_dir, NULL);
	pthread_mutex_unlock(&lock);
}

/* Both halves of a move, adjacent in every queue: a reader can pair them without waiting. */
static void publish_move(const char *from, const char *to, bool is_dir)
{
	pthread_mutex_lock(&lock);
	publish_locked(EV_MOVE_FROM, from, is_dir, to);
	publish_locked(EV_MOVE_TO, to, is_dir, from);
	pthread_mutex_unlock(&lock);
}

static void publish_overflow(void)
{
	pthread_mutex_lock(&lock);
	for (struct sub *s = subs; s; s = s->next) {
		if (s->retained) {
			s->retained->cursor++; /* something changed, what is unknown */
			continue;
		}
		s->owe_overflow = true;
		pthread_cond_signal(&s->cond);
	}
	pthread_mutex_unlock(&lock);
}

/* ---- the watch thread ---- */

static char *join(const char *dir, const char *name)
{
	char *p;
	if (strcmp(dir, ".") == 0)
		return strdup(name);
	return asprintf(&p, "%s/%s", dir, name) < 0 ? NULL : p;
}

/* Watches rel and every directory below it (breadth first, one descriptor at a time); with
 * report, also publishes "create" for everything found (entries made before the watch). */
static void add_tree(const char *rel, bool report)
{
	size_t n = 1, cap = 16, head = 0;
	char **pending = malloc(cap * sizeof *pending);
	if (!pending || !(pending[0] = strdup(rel))) {
		free(pending);
		return;
	}
	static bool warned;
	while (head < n) {
		char *dir = pending[head++];
		int fd = ws_open_rel(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW, 0);
		if (fd < 0) {
			free(dir);
			continue;
		}
		char proc[64];
		snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
		int wd = inotify_add_watch(ifd, proc, WATCH_MASK);
		if (wd >= 0) {
			map_set(wd, dir);
		} else if (!warned) {
			warned = true;
			log_warn("watch: cannot watch /workspace/%s: %s%s", dir, strerror(errno),
				 errno == ENOSPC ? " (raise fs.inotify.max_user_watches)" : "");
		}
		DIR *d = fdopendir(fd);
		if (!d) {
			close(fd);
			free(dir);
			continue;
		}
		struct dirent *de;
		while ((de = readdir(d))) {
			if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
				continue;
			bool is_dir = de->d_type == DT_DIR;
			if (de->d_type == DT_UNKNOWN) {
				struct stat st;
				is_dir = fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
					 S_ISDIR(st.st_mode);
			}
			char *child = join(dir, de->d_name);
			if (!child)
				continue;
			if (report)
				publish(EV_CREATE, child, is_dir);
			if (!is_dir) {
				free(child);
				continue;
			}
			if (n == cap) {
				char **t = realloc(pending, 2 * cap * sizeof *pending);
				if (!t) {
					free(child);
					continue;
				}
				pending = t;
				cap *= 2;
			}
			pending[n++] = child;
		}
		closedir(d);
		free(dir);
	}
	free(pending);
}

/* A directory moved out of the workspace: forget its subtree's watches. */
static void drop_tree(const char *rel)
{
	for (size_t b = 0; b < NBUCKETS; b++)
		for (struct dirwatch *d = buckets[b], *next; d; d = next) {
			next = d->next;
			if (under(d->rel, rel)) {
				inotify_rm_watch(ifd, d->wd);
				map_del(d->wd);
			}
		}
}

/* A MOVED_FROM waits (MOVE_PAIR_MS at most) for its MOVED_TO: inotify queues the two
 * halves of a rename next to each other, and a move_from published only once the pair is
 * known can carry the new name and sit next to its move_to in every queue. */
struct pending_move {
	uint32_t cookie;
	char *rel; /* NULL when none */
	bool is_dir;
};

/* No MOVED_TO came: the entry left the workspace (a directory's watches are forgotten). */
static void settle_move(struct pending_move *pm)
{
	if (pm->rel) {
		publish(EV_MOVE_FROM, pm->rel, pm->is_dir);
		if (pm->is_dir)
			drop_tree(pm->rel);
		free(pm->rel);
		pm->rel = NULL;
	}
}

static struct {
	int wd;
	char name[NAME_MAX + 1];
} last_modify = { -1, "" };

static void handle_event(const struct inotify_event *ev, struct pending_move *pm)
{
	if (ev->mask & IN_Q_OVERFLOW) {
		last_modify.wd = -1;
		settle_move(pm);
		publish_overflow();
		return;
	}
	if (ev->mask & IN_IGNORED) {
		map_del(ev->wd);
		return;
	}
	/* Anything but the matching MOVED_TO after a MOVED_FROM means the entry left the
	 * workspace (forget a directory before looking up wd). */
	if (pm->rel && !((ev->mask & IN_MOVED_TO) && ev->cookie == pm->cookie))
		settle_move(pm);
	const char *dir = map_get(ev->wd);
	if (!dir)
		return;
	if (ev->len == 0 || !ev->name[0]) {
		/* Events of a directory about itself are reported by its parent's watch, except
		 * for the root, which has none. */
		if (strcmp(dir, ".") == 0 && (ev->mask & IN_ATTRIB))
			publish(EV_ATTRIB, ".", true);
		return;
	}
	bool is_dir = ev->mask & IN_ISDIR;
	char *rel = join(dir, ev->name);
	if (!rel)
		return;
	/* A close after writing adds nothing to the IN_MODIFY just before it (any write in
	 * between would have been an IN_MODIFY of its own). */
	bool after_modify = (ev->mask & IN_CLOSE_WRITE) && last_modify.wd == ev->wd &&
			    strcmp(last_modify.name, ev->name) == 0;
	last_modify.wd = -1;
	if ((ev->mask & IN_MODIFY) && strlen(ev->name) < sizeof last_modify.name) {
		last_modify.wd = ev->wd;
		strcpy(last_modify.name, ev->name);
	}
	if (ev->mask & IN_CREATE) {
		publish(EV_CREATE, rel, is_dir);
		if (is_dir)
			add_tree(rel, true);
	}
	if ((ev->mask & IN_MODIFY) || ((ev->mask & IN_CLOSE_WRITE) && !after_modify))
		publish(EV_MODIFY, rel, is_dir);
	if (ev->mask & IN_ATTRIB)
		publish(EV_ATTRIB, rel, is_dir);
	if (ev->mask & IN_DELETE)
		publish(EV_DELETE, rel, is_dir);
	if (ev->mask & IN_MOVED_FROM) {
		pm->cookie = ev->cookie;
		pm->rel = rel;
		pm->is_dir = is_dir;
		rel = NULL;
	}
	if (rel && (ev->mask & IN_MOVED_TO)) {
		if (pm->rel && ev->cookie == pm->cookie) {
			publish_move(pm->rel, rel, is_dir);
			if (is_dir)
				map_rename_prefix(pm->rel, rel);
			free(pm->rel);
			pm->rel = NULL;
		} else {
			publish(EV_MOVE_TO, rel, is_dir);
			if (is_dir)
				add_tree(rel, false);
		}
	}
	free(rel);
}

static void *watch_thread(void *arg)
{
	(void)arg;
	add_tree(".", false);
	pthread_mutex_lock(&lock);
	ready = true;
	pthread_cond_broadcast(&ready_cond);
	pthread_mutex_unlock(&lock);

	static char buf[64 * 1024] __attribute__((aligned(__alignof__(struct inotify_event))));
	struct pending_move pm = { 0, NULL, false };
	for (;;) {
		struct pollfd p[2] = { { ifd, POLLIN, 0 }, { stopfd, POLLIN, 0 } };
		int k = poll(p, 2, pm.rel ? MOVE_PAIR_MS : -1);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0 || (p[1].revents & POLLIN))
			break;
		if (k == 0) {
			settle_move(&pm);
			continue;
		}
		ssize_t n = read(ifd, buf, sizeof buf);
		if (n <= 0)
			continue;
		for (char *q = buf; q < buf + n;) {
			const struct inotify_event *ev = (const struct inotify_event *)q;
			handle_event(ev, &pm);
			q += sizeof *ev + ev->len;
		}
	}
	free(pm.rel);
	return NULL;
}

void watch_init(void)
{
	ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
	stopfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (ifd < 0 || stopfd < 0) {
		log_error("watch: cannot create an inotify instance: %s", strerror(errno));
		goto fail;
	}
	int err = pthread_create(&thread, NULL, watch_thread, NULL);
	if (err) {
		log_error("watch: cannot start the watch thread: %s", strerror(err));
		goto fail;
	}
	started = true;
	return;
fail:
	if (ifd >= 0)
		close(ifd);
	if (stopfd >= 0)
		close(stopfd);
	ifd = stopfd = -1;
}

static void retained_drop_locked(struct retained *w);

void watch_shutdown(void)
{
	pthread_mutex_lock(&lock);
	stopping = true;
	while (retained_list)
		retained_drop_locked(retained_list);
	for (struct sub *s = subs; s; s = s->next)
		pthread_cond_signal(&s->cond);
	pthread_mutex_unlock(&lock);
	if (!started)
		return;
	uint64_t one = 1;
	if (write(stopfd, &one, sizeof one) < 0)
		log_warn("watch: cannot wake the watch thread: %s", strerror(errno));
	pthread_join(thread, NULL);
	started = false;
	close(ifd);
	close(stopfd);
	ifd = stopfd = -1;
	map_clear();
}

/* ---- subscribers ---- */

void watch_filter_free(struct watch_filter *f)
{
	for (size_t i = 0; i < f->nglobs; i++)
		free(f->globs[i]);
	free(f->globs);
	free(f->root);
	*f = (struct watch_filter){ 0 };
}

static void sub_free(struct sub *s)
{
	while (s->head) {
		struct qev *q = s->head;
		s->head = q->next;
		free(q->path);
		free(q->line);
		free(q);
	}
	watch_filter_free(&s->f);
	pthread_cond_destroy(&s->cond);
	free(s);
}

static struct sub *sub_new(struct watch_filter *f)
{
	struct sub *s = calloc(1, sizeof *s);
	if (!s)
		abort();
	s->f = *f;
	*f = (struct watch_filter){ 0 };
	mono_cond_init(&s->cond);
	return s;
}

static void sub_insert_locked(struct sub *s)
{
	s->next = subs;
	if (subs)
		subs->prev = s;
	subs = s;
}

static void sub_remove_locked(struct sub *s)
{
	if (s->prev)
		s->prev->next = s->next;
	else if (subs == s)
		subs = s->next;
	if (s->next)
		s->next->prev = s->prev;
	s->next = s->prev = NULL;
}

/* Waits (lock held) until the watcher is established; -EAGAIN when it is not. */
static int ready_locked(void)
{
	int64_t deadline = mono_ms() + READY_WAIT_S * 1000;
	while (started && !ready && !stopping &&
	       mono_cond_wait_until(&ready_cond, &lock, deadline))
		;
	return started && ready && !stopping ? 0 : -EAGAIN;
}

/* "watch-<n>-<epoch ms>", the container's ids (lock held). */
static void new_watch_id(char id[WATCH_ID_MAX])
{
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	snprintf(id, WATCH_ID_MAX, "watch-%u-%lld", ++watch_seq,
		 (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000);
}

struct watch_sub *watch_subscribe(struct watch_filter *f, const char *abs, int *err)
{
	struct sub *s = sub_new(f);
	/* The watcher must be established before "watching" is promised. */
	pthread_mutex_lock(&lock);
	*err = ready_locked();
	if (*err) {
		pthread_mutex_unlock(&lock);
		sub_free(s);
		return NULL;
	}
	char id[WATCH_ID_MAX];
	new_watch_id(id);
	cJSON *w = cJSON_CreateObject();
	cJSON_AddStringToObject(w, "type", "watching");
	cJSON_AddStringToObject(w, "path", abs);
	cJSON_AddStringToObject(w, "watchId", id);
	enqueue_locked(s, (enum ev_type)0, NULL, event_line(w), false);
	sub_insert_locked(s);
	pthread_mutex_unlock(&lock);
	log_debug("watch %s on %s (recursive %d)", id, abs, s->f.recursive);
	return (struct watch_sub *)s;
}

int watch_next(struct watch_sub *ws, struct strbuf *out, int timeout_ms)
{
	struct sub *s = (struct sub *)ws;
	pthread_mutex_lock(&lock);
	if (!s->head && !s->owe_overflow && !stopping)
		mono_cond_wait_until(&s->cond, &lock, mono_ms() + timeout_ms);
	struct qev *q = s->head;
	s->head = s->tail = NULL;
	s->len = 0;
	bool overflow = s->owe_overflow;
	s->owe_overflow = false;
	bool stop = stopping;
	pthread_mutex_unlock(&lock);
	while (q) {
		struct qev *next = q->next;
		strbuf_appends(out, q->line);
		free(q->path);
		free(q->line);
		free(q);
		q = next;
	}
	if (overflow) {
		char *l = overflow_line();
		if (l)
			strbuf_appends(out, l);
		free(l);
	}
	if (stop) {
		cJSON *e = cJSON_CreateObject();
		cJSON_AddStringToObject(e, "type", "stopped");
		cJSON_AddStringToObject(e, "reason", "server shutting down");
		sse_append(out, e);
		cJSON_Delete(e);
		return 0;
	}
	return 1;
}

void watch_unsubscribe(struct watch_sub *ws)
{
	struct sub *s = (struct sub *)ws;
	pthread_mutex_lock(&lock);
	sub_remove_locked(s);
	pthread_mutex_unlock(&lock);
	sub_free(s);
}

/* ---- retained watches, for /api/watch/check ---- */

#define RETAIN_MS (10 * 60 * 1000)
#define RETAINED_MAX 1024

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The parameters that make two checks the same watch (the container's key: path,
 * recursive, events, the globs sorted and without repeats). */
static char *retain_key(struct watch_filter *f)
{
	qsort(f->globs, f->nglobs, sizeof *f->globs, cmp_str);
	struct strbuf k = STRBUF_INIT;
	strbuf_appendf(&k, "%s%c%d%c%u%c%c", f->root, 0, f->recursive, 0, f->events, 0,
		       f->include ? 'i' : 'e');
	for (size_t i = 0; i < f->nglobs; i++)
		if (i == 0 || strcmp(f->globs[i], f->globs[i - 1]) != 0)
			strbuf_appendf(&k, "%c%s", 0, f->globs[i]);
	/* the NULs above keep fields apart; the key is compared with its length */
	char *key = malloc(k.len + sizeof(size_t));
	if (!key)
		abort();
	memcpy(key, &k.len, sizeof(size_t));
	memcpy(key + sizeof(size_t), k.data, k.len);
	strbuf_free(&k);
	return key;
}

static bool same_key(const char *a, const char *b)
{
	size_t la, lb;
	memcpy(&la, a, sizeof la);
	memcpy(&lb, b, sizeof lb);
	return la == lb && memcmp(a + sizeof la, b + sizeof lb, la) == 0;
}

static void retained_drop_locked(struct retained *w)
{
	for (struct retained **pp = &retained_list; *pp; pp = &(*pp)->next)
		if (*pp == w) {
			*pp = w->next;
			break;
		}
	n_retained--;
	sub_remove_locked(w->sub);
	sub_free(w->sub);
	free(w->key);
	free(w);
}

/* Expired watches go; past RETAINED_MAX the one checked least recently goes too (its client
 * gets "resync" "expired", the answer the protocol has for that). */
static void retained_prune_locked(int64_t now)
{
	for (struct retained *w = retained_list, *next; w; w = next) {
		next = w->next;
		if (w->expires <= now)
			retained_drop_locked(w);
	}
	while (n_retained >= RETAINED_MAX && retained_list) {
		struct retained *oldest = retained_list;
		for (struct retained *w = retained_list; w; w = w->next)
			if (w->expires < oldest->expires)
				oldest = w;
		retained_drop_locked(oldest);
	}
}

/* The retained watch of key, made from f (taken) when there is none (lock held). */
static struct retained *retained_of_locked(char *key, struct watch_filter *f, const char *abs,
					   bool *created)
{
	struct retained *w = retained_list;
	while (w && !same_key(w->key, key))
		w = w->next;
	*created = !w;
	if (!w) {
		w = calloc(1, sizeof *w);
		if (!w)
			abort();
		w->key = key;
		w->sub = sub_new(f);
		w->sub->retained = w;
		new_watch_id(w->id);
		sub_insert_locked(w->sub);
		w->next = retained_list;
		retained_list = w;
		n_retained++;
		log_debug("watch/check: %s on %s", w->id, abs);
	} else {
		free(key);
	}
	return w;
}

int watch_check(struct watch_filter *f, const char *abs, struct watch_state *out)
{
	char *key = retain_key(f);
	pthread_mutex_lock(&lock);
	int err = ready_locked();
	if (err) {
		pthread_mutex_unlock(&lock);
		free(key);
		watch_filter_free(f);
		return err;
	}
	int64_t now = mono_ms();
	retained_prune_locked(now);
	struct retained *w = retained_of_locked(key, f, abs, &out->created);
	w->expires = now + RETAIN_MS;
	memcpy(out->id, w->id, sizeof out->id);
	out->cursor = w->cursor;
	pthread_mutex_unlock(&lock);
	watch_filter_free(f); /* what a watch found again did not take */
	return 0;
}
