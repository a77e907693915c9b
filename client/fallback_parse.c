#include "client/fallback_parse.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "client/sandbox_impl.h"

#define NSEC_PER_SEC 1000000000u

struct field {
	const char *s; /* NUL-terminated at s[len] */
	size_t len;
};

/* The FIND_FIELDS fields of the record at *pos; false when the output ends first. */
static bool split_record(const char *out, size_t len, size_t *pos, struct field f[FIND_FIELDS])
{
	size_t p = *pos;
	for (int i = 0; i < FIND_FIELDS; i++) {
		const char *nul = p < len ? memchr(out + p, 0, len - p) : NULL;
		if (!nul)
			return false;
		f[i] = (struct field){ out + p, (size_t)(nul - (out + p)) };
		p = (size_t)(nul - out) + 1;
	}
	*pos = p;
	return true;
}

static struct wire_int number(const struct field *f, int base)
{
	return wire_int_from_text(f->s, f->len, base);
}

/* find's %A@ ("1795319907.2832694200", "-0.5000000000": seconds since the epoch with a
 * fraction) as seconds and nanoseconds; anything else is not a time. */
static void parse_time(const struct field *f, struct wire_int *sec, struct wire_int *nsec)
{
	const char *dot = memchr(f->s, '.', f->len);
	size_t whole = dot ? (size_t)(dot - f->s) : f->len;
	*sec = wire_int_from_text(f->s, whole, 10);
	*nsec = (struct wire_int){ .present = true, .integer = true };
	if (!dot || !sec->integer)
		return;
	const char *frac = dot + 1;
	size_t flen = f->len - whole - 1;
	uint64_t ns = 0, scale = NSEC_PER_SEC / 10;
	for (size_t i = 0; i < flen; i++, scale /= 10) {
		unsigned d = (unsigned)((unsigned char)frac[i] - '0');
		if (d > 9)
			flen = 0;
		else
			ns += d * scale;
	}
	if (!flen) {
		sec->integer = false;
		return;
	}
	/* "-1.5" is 2 s before the epoch plus 0.5 s */
	if (f->s[0] == '-' && ns) {
		ns = NSEC_PER_SEC - ns;
		sec->neg = true;
		if (sec->mag == UINT64_MAX)
			sec->huge = true;
		else
			sec->mag++;
	}
	nsec->mag = ns;
}

static mode_t type_bits(const struct field *f)
{
	if (f->len != 1)
		return 0;
	switch (f->s[0]) {
	case 'f': return S_IFREG;
	case 'd': return S_IFDIR;
	case 'l': return S_IFLNK;
	case 'b': return S_IFBLK;
	case 'c': return S_IFCHR;
	case 'p': return S_IFIFO;
	case 's': return S_IFSOCK;
	default: return 0; /* entry_check.c drops a mode without a type */
	}
}

static void record_stat(const struct field f[FIND_FIELDS], struct stat *st,
			struct entry_why *why)
{
	struct wire_stat w = {
		.ino = number(&f[0], 10),
		.mode = number(&f[1], 8),
		.nlink = number(&f[3], 10),
		.uid = number(&f[4], 10),
		.gid = number(&f[5], 10),
		.size = number(&f[6], 10),
		.blocks = number(&f[7], 10),
	};
	/* %m is the permission bits alone */
	if (w.mode.integer && !w.mode.huge && w.mode.mag <= 07777)
		w.mode.mag |= type_bits(&f[2]);
	else
		w.mode.integer = false;
	for (int k = 0; k < 3; k++)
		parse_time(&f[8 + k], &w.sec[k], &w.nsec[k]);
	entry_stat_settle(&w, st, why);
}

int find_parse_stat(const char *out, size_t len, struct stat *st, char **target,
		    struct entry_why *why)
{
	struct field f[FIND_FIELDS];
	size_t pos = 0;
	if (target)
		*target = NULL;
	if (!split_record(out, len, &pos, f)) {
		*st = (struct stat){ 0 };
		*why = (struct entry_why){ .fate = ENTRY_DROPPED,
					   .text = "not a whole record of find's output" };
		return sbx_fail(-EPROTO, "%s", why->text);
	}
	record_stat(f, st, why);
	char *t = entry_target(f[12].s, st->st_mode, why);
	if (target)
		*target = t;
	else
		free(t);
	if (why->fate == ENTRY_DROPPED)
		return sbx_fail(-EPROTO, "the server's stat is unusable: %s", why->text);
	return 0;
}

bool find_parse_listing(const char *dir, const char *out, size_t len, struct sbx_dirent **ents,
			size_t *n)
{
	struct entry_list l;
	entry_list_init(&l, dir);
	size_t pos = 0;
	while (pos < len) {
		struct field f[FIND_FIELDS];
		if (!split_record(out, len, &pos, f)) {
			char what[64];
			snprintf(what, sizeof what, "the last %zu bytes of find's output", len - pos);
			entry_list_drop(&l, what, "not a whole record");
			break;
		}
		struct stat st;
		struct entry_why why;
		record_stat(f, &st, &why);
		char *target = entry_target(f[12].s, st.st_mode, &why);
		entry_list_add(&l, f[11].s, &st, target, &why);
	}
	entry_list_finish(&l, ents, n);
	return !l.dropped;
}

/* ---- subtrees ---- */

/* The records of one directory while the output is read: indexes into recs. */
struct tree_acc {
	char *rel;
	size_t *idx, n, cap;
	bool listed;    /* a directory whose content find read (or the top) */
};

struct tree_rec {
	size_t dir;     /* index into the accumulators */
	const char *name;
	struct stat st;
	char *target;
	struct entry_why why;
};

/* Whether every component of rel is a name an entry may have. */
static bool rel_ok(const char *rel, size_t len)
{
	if (!len)
		return false;
	for (size_t i = 0, start = 0; i <= len; i++) {
		if (i < len && rel[i] != '/')
			continue;
		size_t n = i - start;
		if (!n || (n == 1 && rel[start] == '.') ||
		    (n == 2 && rel[start] == '.' && rel[start + 1] == '.'))
			return false;
		start = i + 1;
	}
	return true;
}

static int depth_of(const char *rel)
{
	int d = *rel ? 1 : 0;
	for (; *rel; rel++)
		d += *rel == '/';
	return d;
}

static size_t acc_lookup(const struct tree_acc *acc, size_t nacc, const char *rel, size_t len)
{
	for (size_t i = nacc; i-- > 0;)
		if (strlen(acc[i].rel) == len && memcmp(acc[i].rel, rel, len) == 0)
			return i;
	return SIZE_MAX;
}

static size_t acc_find(struct tree_acc **acc, size_t *nacc, size_t *cap, const char *rel,
		       size_t len)
{
	for (size_t i = *nacc; i-- > 0;)
		if (strlen((*acc)[i].rel) == len && memcmp((*acc)[i].rel, rel, len) == 0)
			return i;
	if (*nacc == *cap) {
		*cap = *cap ? *cap * 2 : 64;
		*acc = realloc(*acc, *cap * sizeof **acc);
		if (!*acc)
			abort();
	}
	struct tree_acc *a = &(*acc)[*nacc];
	*a = (struct tree_acc){ .rel = strndup(rel, len) };
	if (!a->rel)
		abort();
	return (*nacc)++;
}

void find_parse_tree(const char *top, const char *out, size_t len, int max_depth,
		     struct find_tree_dir **dirs, size_t *ndirs)
{
	struct tree_acc *acc = NULL;
	size_t nacc = 0, acap = 0;
	struct tree_rec *recs = NULL;
	size_t nrec = 0, rcap = 0;
	acc_find(&acc, &nacc, &acap, "", 0);
	acc[0].listed = true;
	bool end = false;
	size_t pos = 0;
	/* paths dropped for their shape, for the top's warning */
	struct bad { const char *rel, *why; } *bad = NULL;
	size_t nbad = 0, bcap = 0;
	while (pos < len && !end) {
		struct field f[FIND_FIELDS];
		if (!split_record(out, len, &pos, f))
			break;
		if (f[2].len == 1 && f[2].s[0] == 'E') {
			end = true;
			break;
		}
		const char *rel = f[11].s;
		size_t rlen = f[11].len;
		const char *slash = memrchr(rel, '/', rlen);
		size_t dlen = slash ? (size_t)(slash - rel) : 0;
		const char *why = NULL;
		size_t d = 0;
		if (!rel_ok(rel, rlen))
			why = "a path with an empty, '.' or '..' part";
		/* find prints a directory before what is in it: a path below one it did not print
		 * as listed (a name with '/' among the top's own entries) is no entry of anything */
		else if (slash && ((d = acc_lookup(acc, nacc, rel, dlen)) == SIZE_MAX || !acc[d].listed))
			why = "a path below no directory listed before it";
		if (why) {
			if (nbad == bcap) {
				bcap = bcap ? bcap * 2 : 8;
				bad = realloc(bad, bcap * sizeof *bad);
				if (!bad)
					abort();
			}
			bad[nbad++] = (struct bad){ rel, why };
			continue;
		}
		bool unlisted = f[2].len == 1 && f[2].s[0] == 'U';
		bool dir = f[2].len == 1 && f[2].s[0] == 'd';
		if (nrec == rcap) {
			rcap = rcap ? rcap * 2 : 256;
			recs = realloc(recs, rcap * sizeof *recs);
			if (!recs)
				abort();
		}
		struct tree_rec *r = &recs[nrec];
		r->dir = d;
		r->name = slash ? slash + 1 : rel;
		struct field t = f[2];
		if (unlisted)
			f[2] = (struct field){ "d", 1 };
		record_stat(f, &r->st, &r->why);
		f[2] = t;
		r->target = entry_target(f[12].s, r->st.st_mode, &r->why);
		if (acc[d].n == acc[d].cap) {
			acc[d].cap = acc[d].cap ? acc[d].cap * 2 : 8;
			acc[d].idx = realloc(acc[d].idx, acc[d].cap * sizeof *acc[d].idx);
			if (!acc[d].idx)
				abort();
		}
		acc[d].idx[acc[d].n++] = nrec++;
		/* a directory above the depth limit: its content came too */
		if (dir && depth_of(rel) < max_depth &&
		    r->why.fate != ENTRY_DROPPED) {
			size_t k = acc_find(&acc, &nacc, &acap, rel, rlen);
			acc[k].listed = true;
		}
	}
	struct find_tree_dir *v = calloc(nacc, sizeof *v);
	if (!v)
		abort();
	size_t nv = 0;
	for (size_t i = 0; i < nacc; i++) {
		char *abs;
		if (asprintf(&abs, "%s%s%s", top, *acc[i].rel ? "/" : "", acc[i].rel) < 0)
			abort();
		struct entry_list l;
		entry_list_init(&l, abs);
		for (size_t j = 0; i == 0 && j < nbad; j++)
			entry_list_drop_name(&l, bad[j].rel, bad[j].why);
		for (size_t j = 0; j < acc[i].n; j++) {
			struct tree_rec *r = &recs[acc[i].idx[j]];
			entry_list_add(&l, r->name, &r->st, r->target, &r->why);
			r->target = NULL;
		}
		struct find_tree_dir *o = &v[nv++];
		entry_list_finish(&l, &o->ents, &o->n);
		free(abs);
		o->rel = acc[i].rel;
		/* find walks depth first: without the end, a directory it had not finished and
		 * one it had not begun look the same */
		o->complete = acc[i].listed && (end || i == 0);
		/* one that dropped entries cannot say a name is absent: the server may have it */
		o->exact = !l.dropped;
		free(acc[i].idx);
	}
	free(acc);
	free(recs);
	free(bad);
	*dirs = v;
	*ndirs = nv;
}

void find_tree_free(struct find_tree_dir *dirs, size_t ndirs)
{
	for (size_t i = 0; i < ndirs; i++) {
		free(dirs[i].rel);
		sbx_dirents_free(dirs[i].ents, dirs[i].n);
	}
	free(dirs);
}
