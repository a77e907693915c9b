/* A stream buffer and its readers (fs/feed.h). */
#include "fs/feed.h"
#include <string.h>

/* Above this, a drained buffer's memory goes back rather than being kept for the next burst. */
#define KEEP_CAPACITY ((size_t)1 << 20)

void feed_init(struct feed *f, bool replay)
{
	*f = (struct feed){ .replay = replay };
}

void feed_free(struct feed *f)
{
	strbuf_free(&f->data);
}

void feed_attach(struct feed *f, struct feed_reader *r)
{
	*r = (struct feed_reader){ .pos = f->base, .next = f->readers };
	f->readers = r;
}

void feed_detach(struct feed *f, struct feed_reader *r)
{
	for (struct feed_reader **rp = &f->readers; *rp; rp = &(*rp)->next)
		if (*rp == r) {
			*rp = r->next;
			break;
		}
	strbuf_free(&r->rest);
}

/* r has not read the first cut bytes of the data, which are being dropped. If it had begun
 * the line it is in, that line's rest goes with it; then it goes on at the first line kept. A
 * line that runs past the cut (one longer than the limit, cut by a feed that is not replay)
 * has no rest to save: the reader sees a hole in it. */
static void skip_ahead(struct feed *f, struct feed_reader *r, size_t cut)
{
	size_t at = r->pos - f->base;
	if (r->mid_line) {
		const char *from = f->data.data + at;
		const char *nl = memchr(from, '\n', cut - at);
		if (nl) {
			strbuf_append(&r->rest, from, (size_t)(nl + 1 - from));
			r->mid_line = false;
		}
	}
	r->pos = f->base + cut;
}

/* Down to half the limit at once, so that a steady writer moves memory once per half limit,
 * not at every push. */
static bool trim(struct feed *f, size_t limit)
{
	if (f->data.len <= limit)
		return false;
	size_t cut = f->data.len - limit / 2;
	const char *d = f->data.data;
	const char *nl = memchr(d + cut, '\n', f->data.len - cut);
	if (nl) {
		cut = (size_t)(nl + 1 - d);
	} else {
		nl = memrchr(d, '\n', cut);
		if (nl)
			cut = (size_t)(nl + 1 - d);
		else if (f->replay)
			return false; /* one line longer than the limit: cutting it would garble it */
	}
	for (struct feed_reader *r = f->readers; r; r = r->next)
		if (r->pos < f->base + cut)
			skip_ahead(f, r, cut);
	strbuf_consume(&f->data, cut);
	f->base += cut;
	return true;
}

bool feed_push(struct feed *f, const void *data, size_t len, size_t limit)
{
	strbuf_append(&f->data, data, len);
	return trim(f, limit);
}

size_t feed_peek(const struct feed *f, const struct feed_reader *r, size_t size,
		 const char **bytes)
{
	const char *from = r->rest.data;
	size_t n = r->rest.len;
	if (!n) {
		size_t at = r->pos - f->base;
		n = f->data.len - at;
		from = n ? f->data.data + at : NULL;
	}
	*bytes = from;
	return n < size ? n : size;
}

static bool taken_by_all(const struct feed *f)
{
	for (const struct feed_reader *r = f->readers; r; r = r->next)
		if (r->pos < f->base + f->data.len)
			return false;
	return true;
}

void feed_advance(struct feed *f, struct feed_reader *r, size_t n)
{
	if (!n)
		return;
	if (r->rest.len) {
		strbuf_consume(&r->rest, n);
		if (!r->rest.len)
			strbuf_free(&r->rest);
		return;
	}
	r->pos += n;
	r->mid_line = f->data.data[r->pos - 1 - f->base] != '\n';
	if (!f->replay && taken_by_all(f)) {
		f->base += f->data.len;
		if (f->data.cap > KEEP_CAPACITY)
			strbuf_free(&f->data); /* give a burst's memory back */
		else
			strbuf_reset(&f->data);
	}
}
