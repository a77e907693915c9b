/* Interpreter messages: splitting lines with a bound, and a strict JSON scan.
 *
 * Why no JSON library here: a parser that builds a tree turns a few bytes into a node each
 * ("[0,0,0,..." costs cJSON 64 bytes of memory per two bytes of input), so a hostile
 * interpreter would make sbxd's memory, which no cgroup limits, grow thirty times faster than
 * what it writes. The scan below allocates nothing and walks the line once; what it accepts is
 * JSON that cJSON and every other parser take (strictly less than cJSON accepts), so a line or
 * a piece of it can go to the client as it is.
 *
 * The reader keeps an unfinished line, and remembers how far it has searched it for the newline,
 * so that a long message read in small pieces costs one pass, not one per piece. */
#include "server/imsg.h"
#include "server/utf8.h"
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SHRINK_ABOVE (1u << 20) /* a buffer this large is given back once it is empty */

/* ---- lines ---- */

void imsg_reader_init(struct imsg_reader *r, size_t max)
{
	*r = (struct imsg_reader){ .max = max };
}

void imsg_reader_add(struct imsg_reader *r, const char *data, size_t n)
{
	/* drop the lines taken */
	if (r->start) {
		r->len -= r->start;
		memmove(r->buf, r->buf + r->start, r->len);
		r->start = 0;
	}
	if (!r->len && r->cap > SHRINK_ABOVE) {
		free(r->buf);
		r->buf = NULL;
		r->cap = 0;
	}
	if (r->len + n > r->cap) {
		size_t cap = r->cap ? r->cap : 4096;
		while (cap < r->len + n)
			cap *= 2;
		/* past max, next() refuses the line: no need to double beyond */
		if (cap > r->max + n && r->len <= r->max)
			cap = r->max + n;
		char *p = realloc(r->buf, cap);
		if (!p)
			abort();
		r->buf = p;
		r->cap = cap;
	}
	if (n)  /* buf may be NULL then, which memcpy must not be given */
		memcpy(r->buf + r->len, data, n);
	r->len += n;
}

int imsg_reader_next(struct imsg_reader *r, const char **line, size_t *len)
{
	size_t from = r->start + r->scanned;
	const char *nl = from < r->len ? memchr(r->buf + from, '\n', r->len - from) : NULL;
	if (!nl) {
		r->scanned = r->len - r->start;
		return r->scanned > r->max ? -1 : 0;
	}
	size_t n = (size_t)(nl - (r->buf + r->start));
	if (n > r->max)
		return -1;
	*line = r->buf + r->start;
	*len = n;
	r->start += n + 1;
	r->scanned = 0;
	return 1;
}

size_t imsg_reader_pending(const struct imsg_reader *r)
{
	return r->len - r->start;
}

void imsg_reader_free(struct imsg_reader *r)
{
	free(r->buf);
	*r = (struct imsg_reader){ .max = r->max };
}

/* ---- the scan ---- */

struct scan {
	const char *p, *end;
	int depth;
};

static void blanks(struct scan *s)
{
	while (s->p < s->end && (*s->p == ' ' || *s->p == '\t'))
		s->p++;
}

static int hex4(const char *p)
{
	int v = 0;
	for (int i = 0; i < 4; i++) {
		char c = p[i];
		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= c - '0';
		else if (c >= 'a' && c <= 'f')
			v |= c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			v |= c - 'A' + 10;
		else
			return -1;
	}
	return v;
}

/* A \u escape at p (p[0] == '\\', p[1] == 'u') up to end: the code point, with a surrogate
 * pair joined, and the length taken in *used; -1 for bad hex or a lone surrogate. */
static long unicode_escape(const char *p, const char *end, size_t *used)
{
	if (end - p < 6)
		return -1;
	long hi = hex4(p + 2);
	if (hi < 0 || (hi >= 0xDC00 && hi <= 0xDFFF))
		return -1;
	*used = 6;
	if (hi < 0xD800 || hi > 0xDBFF)
		return hi;
	if (end - p < 12 || p[6] != '\\' || p[7] != 'u')
		return -1;
	long lo = hex4(p + 8);
	if (lo < 0xDC00 || lo > 0xDFFF)
		return -1;
	*used = 12;
	return 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
}

static bool string(struct scan *s)
{
	s->p++; /* the opening quote */
	while (s->p < s->end) {
		unsigned char c = (unsigned char)*s->p;
		if (c == '"') {
			s->p++;
			return true;
		}
		if (c < 0x20)
			return false;
		if (c != '\\') {
			s->p++;
			continue;
		}
		if (s->end - s->p < 2)
			return false;
		size_t used = 2;
		switch (s->p[1]) {
		case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
			break;
		case 'u':
			if (unicode_escape(s->p, s->end, &used) < 0)
				return false;
			break;
		default:
			return false;
		}
		s->p += used;
	}
	return false;
}

static bool digits(struct scan *s)
{
	const char *from = s->p;
	while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
		s->p++;
	return s->p > from;
}

static bool number(struct scan *s)
{
	if (*s->p == '-')
		s->p++;
	if (s->p < s->end && *s->p == '0')
		s->p++;
	else if (!digits(s))
		return false;
	if (s->p < s->end && *s->p == '.') {
		s->p++;
		if (!digits(s))
			return false;
	}
	if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
		s->p++;
		if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
			s->p++;
		if (!digits(s))
			return false;
	}
	return true;
}

static bool word(struct scan *s, const char *w)
{
	size_t n = strlen(w);
	if ((size_t)(s->end - s->p) < n || memcmp(s->p, w, n) != 0)
		return false;
	s->p += n;
	return true;
}

/* Called for each member of an object at depth 1 (the message itself). */
typedef void (*member_fn)(void *ctx, struct imsg_span key, struct imsg_span value);

static bool value(struct scan *s, member_fn fn, void *ctx);

/* An array or an object; members of the outermost object go to fn. */
static bool container(struct scan *s, member_fn fn, void *ctx)
{
	char close = *s->p == '{' ? '}' : ']';
	bool object = close == '}';
	if (++s->depth > IMSG_DEPTH_MAX)
		return false;
	s->p++;
	blanks(s);
	if (s->p < s->end && *s->p == close) {
		s->p++;
		s->depth--;
		return true;
	}
	for (;;) {
		struct imsg_span key = { 0 }, val;
		if (object) {
			if (s->p >= s->end || *s->p != '"')
				return false;
			key.p = s->p;
			if (!string(s))
				return false;
			key.n = (size_t)(s->p - key.p);
			blanks(s);
			if (s->p >= s->end || *s->p != ':')
				return false;
			s->p++;
			blanks(s);
		}
		val.p = s->p;
		if (!value(s, NULL, NULL))
			return false;
		val.n = (size_t)(s->p - val.p);
		if (object && fn && s->depth == 1)
			fn(ctx, key, val);
		blanks(s);
		if (s->p >= s->end)
			return false;
		if (*s->p == close) {
			s->p++;
			s->depth--;
			return true;
		}
		if (*s->p != ',')
			return false;
		s->p++;
		blanks(s);
	}
}

static bool value(struct scan *s, member_fn fn, void *ctx)
{
	if (s->p >= s->end)
		return false;
	switch (*s->p) {
	case '{': case '[': return container(s, fn, ctx);
	case '"': return string(s);
	case 't': return word(s, "true");
	case 'f': return word(s, "false");
	case 'n': return word(s, "null");
	default: return number(s);
	}
}

/* Scans text as one JSON object, handing its members to fn. */
static bool object(const char *text, size_t len, member_fn fn, void *ctx)
{
	struct scan s = { text, text + len, 0 };
	blanks(&s);
	if (s.p >= s.end || *s.p != '{' || !container(&s, fn, ctx))
		return false;
	blanks(&s);
	return s.p == s.end;
}

/* ---- taking the pieces ---- */

bool imsg_is_string(struct imsg_span s)
{
	return s.n >= 2 && s.p[0] == '"';
}

/* Code point cp (> 0) in UTF-8; its length. */
static size_t utf8_put(long cp, char *enc)
{
	if (cp < 0x80) {
		enc[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		enc[0] = (char)(0xC0 | cp >> 6);
		enc[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		enc[0] = (char)(0xE0 | cp >> 12);
		enc[1] = (char)(0x80 | (cp >> 6 & 0x3F));
		enc[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	enc[0] = (char)(0xF0 | cp >> 18);
	enc[1] = (char)(0x80 | (cp >> 12 & 0x3F));
	enc[2] = (char)(0x80 | (cp >> 6 & 0x3F));
	enc[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

bool imsg_string(struct imsg_span s, char *buf, size_t size)
{
	size_t out = 0;
	bool whole = true;
	if (!size)
		return false;
	const char *p = NULL, *end = NULL;
	if (imsg_is_string(s)) {
		p = s.p + 1;
		end = s.p + s.n - 1;
	}
	while (p < end) {
		char enc[4];
		size_t n, used;
		unsigned char c = (unsigned char)*p;
		if (c != '\\') {
			/* a character of the (valid UTF-8) line, whole */
			n = used = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
			if (n > (size_t)(end - p))
				break;
			memcpy(enc, p, n);
		} else if (p[1] == 'u') {
			long cp = unicode_escape(p, end, &used);
			if (cp <= 0)
				break; /* \u0000 ends a C string */
			n = utf8_put(cp, enc);
		} else {
			switch (p[1]) {
			case 'b': enc[0] = '\b'; break;
			case 'f': enc[0] = '\f'; break;
			case 'n': enc[0] = '\n'; break;
			case 'r': enc[0] = '\r'; break;
			case 't': enc[0] = '\t'; break;
			default: enc[0] = p[1]; break; /* " \ / */
			}
			n = 1;
			used = 2;
		}
		if (out + n >= size) {
			whole = false;
			break;
		}
		memcpy(buf + out, enc, n);
		out += n;
		p += used;
	}
	buf[out] = 0;
	return whole;
}

/* Whether key (a string span) is name. */
static bool key_is(struct imsg_span key, const char *name)
{
	char buf[32];
	return imsg_string(key, buf, sizeof buf) && strcmp(buf, name) == 0;
}

struct find {
	const char *name;
	struct imsg_span found;
};

static void find_member(void *ctx, struct imsg_span key, struct imsg_span val)
{
	struct find *f = ctx;
	if (!f->found.n && key_is(key, f->name))
		f->found = val;
}

struct imsg_span imsg_member(struct imsg_span obj, const char *name)
{
	struct find f = { .name = name };
	if (obj.n && obj.p[0] == '{')
		object(obj.p, obj.n, find_member, &f);
	return f.found;
}

/* An integral number span as an int64, or dflt. */
static int64_t integer(struct imsg_span v, int64_t dflt)
{
	char num[32];
	if (!v.n || v.n >= sizeof num || (v.p[0] != '-' && (v.p[0] < '0' || v.p[0] > '9')))
		return dflt;
	memcpy(num, v.p, v.n);
	num[v.n] = 0;
	double d = strtod(num, NULL);
	if (!(d > -9007199254740992.0 && d < 9007199254740992.0) || (double)(int64_t)d != d)
		return dflt;
	return (int64_t)d;
}

struct taken {
	struct imsg *m;
	struct imsg_span type, seq, count;
};

static void take_member(void *ctx, struct imsg_span key, struct imsg_span val)
{
	struct taken *t = ctx;
	char name[32];
	if (!imsg_string(key, name, sizeof name))
		return;
	struct imsg_span *slot = !strcmp(name, "type")		  ? &t->type
				 : !strcmp(name, "seq")		  ? &t->seq
				 : !strcmp(name, "execution_count") ? &t->count
				 : !strcmp(name, "text")		  ? &t->m->text
				 : !strcmp(name, "error")	  ? &t->m->error
				 : !strcmp(name, "errno")	  ? &t->m->errname
								  : NULL;
	if (slot && !slot->n)
		*slot = val;
}

bool imsg_parse(const char *line, size_t len, struct imsg *m)
{
	static const struct { const char *name; enum imsg_type type; } types[] = {
		{ "stdout", IMSG_STDOUT }, { "stderr", IMSG_STDERR }, { "result", IMSG_RESULT },
		{ "done", IMSG_DONE }, { "ready", IMSG_READY }, { "init_done", IMSG_INIT_DONE },
	};
	struct taken t = { .m = m };
	*m = (struct imsg){ .type = IMSG_OTHER };
	if (!utf8_valid(line, len) || !object(line, len, take_member, &t))
		return false;
	char type[16];
	if (imsg_string(t.type, type, sizeof type))
		for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
			if (strcmp(type, types[i].name) == 0)
				m->type = types[i].type;
	m->seq = integer(t.seq, -1);
	m->count = integer(t.count, 1);
	return true;
}

/* ---- events ---- */

static void append_span(struct strbuf *out, struct imsg_span v, const char *dflt)
{
	if (v.n)
		strbuf_append(out, v.p, v.n);
	else
		strbuf_appends(out, dflt);
}

void imsg_output_event(const struct imsg *m, struct strbuf *out)
{
	strbuf_appends(out, m->type == IMSG_STDERR ? "{\"type\":\"stderr\",\"text\":"
						     : "{\"type\":\"stdout\",\"text\":");
	append_span(out, imsg_is_string(m->text) ? m->text : (struct imsg_span){ 0 }, "\"\"");
	strbuf_appends(out, "}");
}

void imsg_done_event(const struct imsg *m, struct strbuf *out)
{
	if (!m->error.n || m->error.p[0] != '{') {
		strbuf_appendf(out, "{\"type\":\"execution_complete\",\"execution_count\":%" PRId64
			       "}", m->count);
		return;
	}
	struct imsg_span ename = imsg_member(m->error, "ename");
	struct imsg_span evalue = imsg_member(m->error, "evalue");
	struct imsg_span tb = imsg_member(m->error, "traceback");
	strbuf_appends(out, "{\"type\":\"error\",\"ename\":");
	append_span(out, imsg_is_string(ename) ? ename : (struct imsg_span){ 0 }, "\"Error\"");
	strbuf_appends(out, ",\"evalue\":");
	append_span(out, imsg_is_string(evalue) ? evalue : (struct imsg_span){ 0 }, "\"\"");
	strbuf_appends(out, ",\"traceback\":");
	append_span(out, tb.n && tb.p[0] == '[' ? tb : (struct imsg_span){ 0 }, "[]");
	strbuf_appends(out, "}");
}
