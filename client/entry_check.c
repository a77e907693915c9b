/* Checks of what a server says about directory entries (see entry_check.h for why). */
#include "client/entry_check.h"
#include <cjson/cJSON.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "client/sandbox_impl.h"
#include "common/jsonutil.h"
#include "common/log.h"

#define NSEC_PER_SEC 1000000000L
#define NOBODY 65534         /* the owner the kernel shows for an id it cannot map */
#define NOTES_MAX 800        /* bytes of reasons per warning line, each kind */
#define NAME_SHOWN 48        /* bytes of a name quoted in a warning */
#define STAT_WARN_EVERY 10   /* seconds between warnings about single stats */

static const char *const time_names[3] = { "atime", "mtime", "ctime" };

const char *entry_name_problem(const char *name)
{
	if (!*name)
		return "an empty name";
	if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
		return "the directory itself or its parent, not an entry";
	if (strchr(name, '/'))
		return "a '/' in the name";
	if (strlen(name) > NAME_MAX)
		return "longer than 255 bytes (NAME_MAX)";
	return NULL;
}

/* ---- numbers ---- */

struct wire_int wire_int_from_json(const cJSON *v)
{
	struct wire_int w = { .present = v != NULL };
	if (!v || !cJSON_IsNumber(v))
		return w;
	double d = v->valuedouble;
	if (d != d) /* NaN */
		return w;
	w.neg = d < 0;
	double a = w.neg ? -d : d;
	if (a >= 18446744073709551616.0) { /* 2^64, and infinity (1e999) */
		w.integer = w.huge = true;
		w.mag = UINT64_MAX;
		return w;
	}
	/* every double from 2^53 on is an integer; below, the cast is exact for integers */
	if (a < 9007199254740992.0 && (double)(uint64_t)a != a)
		return w;
	w.integer = true;
	w.mag = (uint64_t)a;
	w.neg = w.neg && w.mag;
	return w;
}

struct wire_int wire_int_from_text(const char *s, size_t len, int base)
{
	struct wire_int w = { .present = true };
	size_t i = 0;
	if (base == 10 && len && s[0] == '-')
		w.neg = true, i++;
	if (i == len)
		return w;
	uint64_t m = 0;
	for (; i < len; i++) {
		unsigned d = (unsigned)((unsigned char)s[i] - '0');
		if (d >= (unsigned)base)
			return w;
		if (w.huge || m > (UINT64_MAX - d) / (unsigned)base)
			w.huge = true;
		else
			m = m * (unsigned)base + d;
	}
	w.integer = true;
	w.mag = w.huge ? UINT64_MAX : m;
	w.neg = w.neg && w.mag;
	return w;
}

/* w as an unsigned integer of at most max; false when it is none. */
static bool as_u64(const struct wire_int *w, uint64_t max, uint64_t *out)
{
	if (!w->integer || w->huge || w->neg || w->mag > max)
		return false;
	*out = w->mag;
	return true;
}

/* w as an int64_t; false when it is not an integer or does not fit (then *out is the end of
 * the range it is beyond, for a clamp). */
static bool as_i64(const struct wire_int *w, int64_t *out)
{
	if (!w->integer)
		return false;
	if (!w->neg && !w->huge && w->mag <= (uint64_t)INT64_MAX) {
		*out = (int64_t)w->mag;
		return true;
	}
	if (w->neg && !w->huge && w->mag <= (uint64_t)INT64_MAX + 1) {
		*out = w->mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)w->mag;
		return true;
	}
	*out = w->neg ? INT64_MIN : INT64_MAX;
	return false;
}

/* "-12", "(not an integer)", "(2^64 or more)" for a reason. */
static const char *shown(const struct wire_int *w, char buf[32])
{
	if (!w->integer)
		return "(not an integer)";
	if (w->huge)
		return w->neg ? "(-2^64 or less)" : "(2^64 or more)";
	snprintf(buf, 32, "%s%" PRIu64, w->neg ? "-" : "", w->mag);
	return buf;
}

/* ---- verdicts ---- */

void entry_note(struct entry_why *why, enum entry_fate fate, const char *fmt, ...)
{
	char text[sizeof why->text];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof text, fmt, ap);
	va_end(ap);
	if (fate == ENTRY_DROPPED && why->fate != ENTRY_DROPPED) {
		why->fate = ENTRY_DROPPED;
		snprintf(why->text, sizeof why->text, "%s", text);
	} else if (fate == ENTRY_ADJUSTED && why->fate != ENTRY_DROPPED) {
		size_t len = strlen(why->text);
		snprintf(why->text + len, sizeof why->text - len, "%s%s", len ? ", " : "", text);
		why->fate = ENTRY_ADJUSTED;
	}
}

static bool known_type(uint64_t mode)
{
	switch (mode & S_IFMT) {
	case S_IFREG: case S_IFDIR: case S_IFLNK: case S_IFCHR: case S_IFBLK: case S_IFIFO:
	case S_IFSOCK:
		return true;
	default:
		return false;
	}
}

/* uid or gid: a 32-bit id other than (uid_t)-1, which means "none" to chown(2). */
static unsigned settle_id(const char *field, const struct wire_int *w, struct entry_why *why)
{
	uint64_t u;
	char buf[32];
	if (!w->present)
		return 0;
	if (as_u64(w, UINT32_MAX - 1, &u))
		return (unsigned)u;
	entry_note(why, ENTRY_ADJUSTED, "%s %s shown as %d", field, shown(w, buf), NOBODY);
	return NOBODY;
}

static void settle_time(const char *field, const struct wire_int *sec,
			const struct wire_int *nsec, struct timespec *ts, struct entry_why *why)
{
	const int64_t tmax = sizeof(time_t) >= 8 ? INT64_MAX : INT32_MAX;
	const int64_t tmin = sizeof(time_t) >= 8 ? INT64_MIN : INT32_MIN;
	char buf[32];
	int64_t s = 0;
	uint64_t ns = 0;
	if (sec->present && !sec->integer) {
		entry_note(why, ENTRY_ADJUSTED, "%s is not a time, shown as 0 (1970)", field);
	} else if (sec->present && (!as_i64(sec, &s) || s > tmax || s < tmin)) {
		s = s > 0 ? tmax : tmin;
		entry_note(why, ENTRY_ADJUSTED, "%s seconds %s clamped to %" PRId64, field,
			   shown(sec, buf), s);
	}
	if (nsec->present && !as_u64(nsec, NSEC_PER_SEC - 1, &ns))
		entry_note(why, ENTRY_ADJUSTED, "%s nanoseconds %s shown as 0", field,
			   shown(nsec, buf));
	ts->tv_sec = (time_t)s;
	ts->tv_nsec = (long)ns;
}

void entry_stat_settle(const struct wire_stat *w, struct stat *st, struct entry_why *why)
{
	char buf[32];
	uint64_t u;
	int64_t i;
	*why = (struct entry_why){ .fate = ENTRY_GOOD };
	*st = (struct stat){ .st_blksize = 4096, .st_nlink = 1 };

	/* The kernel fails a whole listing for one entry of an unknown type, and glibc skips an
	 * entry of inode 0: neither can be shown. */
	if (!w->mode.present)
		entry_note(why, ENTRY_DROPPED, "no mode");
	else if (!as_u64(&w->mode, S_IFMT | 07777, &u))
		entry_note(why, ENTRY_DROPPED, "mode %s out of range", shown(&w->mode, buf));
	else if (!known_type(u))
		entry_note(why, ENTRY_DROPPED, "mode 0%" PRIo64 " has no known file type", u);
	else
		st->st_mode = (mode_t)u;
	if (!w->ino.present)
		entry_note(why, ENTRY_DROPPED, "no inode number");
	else if (!as_u64(&w->ino, UINT64_MAX, &u) || u == 0)
		entry_note(why, ENTRY_DROPPED, "inode %s", shown(&w->ino, buf));
	else
		st->st_ino = (ino_t)u;
	/* A size shown wrong loses data (the kernel reads no further), so none is made up. */
	if (w->size.present && (!as_i64(&w->size, &i) || i < 0))
		entry_note(why, ENTRY_DROPPED, "size %s out of range", shown(&w->size, buf));
	else if (w->size.present)
		st->st_size = (off_t)i;

	/* 0 is a count like any other (an open file whose last name is gone); FUSE carries 32
	 * bits */
	if (w->nlink.present && !as_u64(&w->nlink, UINT32_MAX, &u)) {
		u = w->nlink.integer && !w->nlink.neg ? UINT32_MAX : 1;
		entry_note(why, ENTRY_ADJUSTED, "nlink %s shown as %" PRIu64, shown(&w->nlink, buf),
			   u);
	}
	if (w->nlink.present)
		st->st_nlink = (nlink_t)u;
	st->st_uid = settle_id("uid", &w->uid, why);
	st->st_gid = settle_id("gid", &w->gid, why);
	st->st_blocks = (blkcnt_t)(st->st_size / 512 + (st->st_size % 512 != 0));
	if (w->blocks.present && as_i64(&w->blocks, &i) && i >= 0)
		st->st_blocks = (blkcnt_t)i;
	else if (w->blocks.present)
		entry_note(why, ENTRY_ADJUSTED, "blocks %s computed from the size",
			   shown(&w->blocks, buf));
	settle_time(time_names[0], &w->sec[0], &w->nsec[0], &st->st_atim, why);
	settle_time(time_names[1], &w->sec[1], &w->nsec[1], &st->st_mtim, why);
	settle_time(time_names[2], &w->sec[2], &w->nsec[2], &st->st_ctim, why);
}

char *entry_target(const char *target, mode_t mode, struct entry_why *why)
{
	if (!target || !S_ISLNK(mode) || why->fate == ENTRY_DROPPED)
		return NULL;
	size_t len = strlen(target);
	if (!len)
		entry_note(why, ENTRY_DROPPED, "an empty symlink target");
	else if (len > ENTRY_TARGET_MAX)
		entry_note(why, ENTRY_DROPPED, "a symlink target of %zu bytes (more than %d)", len,
			   ENTRY_TARGET_MAX);
	return why->fate == ENTRY_DROPPED ? NULL : sbx_strdup(target);
}

/* [seconds, nanoseconds]; anything else that is there is not a time. */
static void json_time(const cJSON *v, struct wire_int *sec, struct wire_int *nsec)
{
	*sec = *nsec = (struct wire_int){ .present = v != NULL };
	nsec->present = false;
	if (cJSON_IsArray(v) && cJSON_GetArraySize(v) == 2) {
		*sec = wire_int_from_json(cJSON_GetArrayItem(v, 0));
		*nsec = wire_int_from_json(cJSON_GetArrayItem(v, 1));
	}
}

void entry_stat_from_json(const cJSON *o, struct stat *st, char **target, struct entry_why *why)
{
	if (target)
		*target = NULL;
	if (!cJSON_IsObject(o)) {
		*st = (struct stat){ 0 };
		*why = (struct entry_why){ .fate = ENTRY_DROPPED, .text = "no stat object" };
		return;
	}
#define FIELD(k) wire_int_from_json(cJSON_GetObjectItemCaseSensitive(o, k))
	struct wire_stat w = {
		.ino = FIELD("ino"), .mode = FIELD("mode"), .nlink = FIELD("nlink"),
		.uid = FIELD("uid"), .gid = FIELD("gid"), .size = FIELD("size"),
		.blocks = FIELD("blocks"),
	};
#undef FIELD
	for (int k = 0; k < 3; k++)
		json_time(cJSON_GetObjectItemCaseSensitive(o, time_names[k]), &w.sec[k],
			  &w.nsec[k]);
	entry_stat_settle(&w, st, why);
	char *t = entry_target(json_str(o, "target"), st->st_mode, why);
	if (target)
		*target = t;
	else
		free(t);
}

/* ---- warnings ---- */

/* s for a log line: printable ASCII as it is, every other byte (control characters, which a
 * terminal would obey, and the bytes of UTF-8 alike) as \xNN; at most max bytes of s. */
static void append_escaped(struct strbuf *sb, const char *s, size_t max, bool quoted)
{
	size_t n = strlen(s);
	if (quoted)
		strbuf_appends(sb, "\"");
	for (size_t i = 0; i < n && i < max; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c >= 0x7f || c == '\\' || (quoted && c == '"'))
			strbuf_appendf(sb, "\\x%02x", c);
		else
			strbuf_append(sb, &s[i], 1);
	}
	if (n > max)
		strbuf_appendf(sb, "...(%zu bytes)", n);
	if (quoted)
		strbuf_appends(sb, "\"");
}

static pthread_mutex_t stat_warn_lock = PTHREAD_MUTEX_INITIALIZER;
static bool stat_warned;
static struct timespec stat_warn_last;
static unsigned long stat_warn_held;

void entry_warn_stat(const char *path, const struct entry_why *why)
{
	if (why->fate == ENTRY_GOOD)
		return;
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	pthread_mutex_lock(&stat_warn_lock);
	bool say = !stat_warned || now.tv_sec - stat_warn_last.tv_sec >= STAT_WARN_EVERY;
	unsigned long held = stat_warn_held;
	if (say) {
		stat_warned = true;
		stat_warn_last = now;
		stat_warn_held = 0;
	} else {
		stat_warn_held++;
	}
	pthread_mutex_unlock(&stat_warn_lock);
	if (!say)
		return;
	struct strbuf sb = STRBUF_INIT;
	append_escaped(&sb, path, 256, false);
	log_warn("stat %s: the server's answer is %s: %s%s", sb.data,
		 why->fate == ENTRY_DROPPED ? "unusable" : "adjusted", why->text,
		 held ? " (and more such answers in the last seconds)" : "");
	strbuf_free(&sb);
}

/* ---- listings ---- */

void entry_list_init(struct entry_list *l, const char *dir)
{
	*l = (struct entry_list){
		.dir = dir,
		.notes_dropped = STRBUF_INIT,
		.notes_adjusted = STRBUF_INIT,
	};
}

static void note_listing(struct strbuf *notes, size_t *unnoted, const char *name,
			 const char *why)
{
	if (notes->len >= NOTES_MAX) {
		(*unnoted)++;
		return;
	}
	if (notes->len)
		strbuf_appends(notes, "; ");
	if (name) {
		append_escaped(notes, name, NAME_SHOWN, true);
		strbuf_appends(notes, ": ");
	}
	strbuf_appends(notes, why);
}

void entry_list_add(struct entry_list *l, const char *name, const struct stat *st,
		    char *target, const struct entry_why *why)
{
	l->sent++;
	const char *bad = name ? entry_name_problem(name) : "an entry without a name";
	if (bad || why->fate == ENTRY_DROPPED) {
		free(target);
		l->dropped++;
		note_listing(&l->notes_dropped, &l->unnoted_dropped, name, bad ? bad : why->text);
		return;
	}
	if (why->fate == ENTRY_ADJUSTED) {
		l->adjusted++;
		note_listing(&l->notes_adjusted, &l->unnoted_adjusted, name, why->text);
	}
	if (l->n == l->cap) {
		l->cap = l->cap ? l->cap * 2 : 16;
		l->v = realloc(l->v, l->cap * sizeof *l->v);
		if (!l->v)
			abort();
	}
	l->v[l->n++] = (struct sbx_dirent){ .name = sbx_strdup(name), .st = *st, .target = target };
}

void entry_list_drop(struct entry_list *l, const char *what, const char *why)
{
	char text[256];
	snprintf(text, sizeof text, "%s: %s", what, why);
	l->sent++;
	l->dropped++;
	note_listing(&l->notes_dropped, &l->unnoted_dropped, NULL, text);
}

void entry_list_drop_name(struct entry_list *l, const char *name, const char *why)
{
	l->sent++;
	l->dropped++;
	note_listing(&l->notes_dropped, &l->unnoted_dropped, name, why);
}

static int by_name_then_place(const void *a, const void *b)
{
	const struct sbx_dirent *x = *(const struct sbx_dirent *const *)a;
	const struct sbx_dirent *y = *(const struct sbx_dirent *const *)b;
	int c = strcmp(x->name, y->name);
	return c ? c : (x > y) - (x < y);
}

/* Keeps the first entry of each name, in the order the server sent them: the kernel would
 * list a name twice, and a lookup would find only one of them. Sorting keeps it O(n log n)
 * for directories of any size. */
static void drop_duplicates(struct entry_list *l)
{
	if (l->n < 2)
		return;
	struct sbx_dirent **by_name = malloc(l->n * sizeof *by_name);
	if (!by_name)
		abort();
	for (size_t i = 0; i < l->n; i++)
		by_name[i] = &l->v[i];
	qsort(by_name, l->n, sizeof *by_name, by_name_then_place);
	const char *first = by_name[0]->name;
	for (size_t i = 1; i < l->n; i++) {
		struct sbx_dirent *e = by_name[i];
		if (strcmp(e->name, first) != 0) {
			first = e->name;
			continue;
		}
		l->dropped++;
		note_listing(&l->notes_dropped, &l->unnoted_dropped, e->name,
			     "a duplicate (the first one is kept)");
		free(e->name);
		free(e->target);
		e->name = e->target = NULL;
	}
	free(by_name);
	size_t kept = 0;
	for (size_t i = 0; i < l->n; i++)
		if (l->v[i].name)
			l->v[kept++] = l->v[i];
	l->n = kept;
}

void entry_list_finish(struct entry_list *l, struct sbx_dirent **ents, size_t *n)
{
	drop_duplicates(l);
	if (l->dropped || l->adjusted) {
		struct strbuf sb = STRBUF_INIT;
		strbuf_appends(&sb, "readdir ");
		append_escaped(&sb, l->dir, 256, false);
		strbuf_appendf(&sb, ": of %zu entries the server sent", l->sent);
		if (l->dropped) {
			strbuf_appendf(&sb, ", dropped %zu: %s", l->dropped, l->notes_dropped.data);
			if (l->unnoted_dropped)
				strbuf_appendf(&sb, "; and %zu more", l->unnoted_dropped);
		}
		if (l->adjusted) {
			strbuf_appendf(&sb, "%s adjusted %zu: %s", l->dropped ? ";" : ",",
				       l->adjusted, l->notes_adjusted.data);
			if (l->unnoted_adjusted)
				strbuf_appendf(&sb, "; and %zu more", l->unnoted_adjusted);
		}
		log_warn("%s", sb.data);
		strbuf_free(&sb);
	}
	strbuf_free(&l->notes_dropped);
	strbuf_free(&l->notes_adjusted);
	*ents = l->v;
	*n = l->n;
	l->v = NULL;
	l->n = l->cap = 0;
}
