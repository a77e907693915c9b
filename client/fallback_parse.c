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

void find_parse_listing(const char *dir, const char *out, size_t len, struct sbx_dirent **ents,
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
}
