/* The stream buffer (fs/feed.c): readers that keep up, readers left behind by a trim (at a line
 * start, in the middle of a line, with a line longer than the limit), replay and single-reader
 * feeds, and what a drained single-reader feed keeps. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/strbuf.h"
#include "fs/feed.h"
#include "unit.h"

/* Reads r dry in reads of at most size bytes, as a FUSE reader does, appending to out. */
static void drain(struct feed *f, struct feed_reader *r, size_t size, struct strbuf *out)
{
	const char *bytes;
	size_t n;
	while ((n = feed_peek(f, r, size, &bytes))) {
		strbuf_append(out, bytes, n);
		feed_advance(f, r, n);
	}
}

static void take(struct feed *f, struct feed_reader *r, size_t size, struct strbuf *out)
{
	const char *bytes;
	size_t n = feed_peek(f, r, size, &bytes);
	strbuf_append(out, bytes, n);
	feed_advance(f, r, n);
}

/* Lines "%09d\n" (10 bytes each) from first to last. */
static void push_lines(struct feed *f, int first, int last, size_t limit, int *trims)
{
	for (int i = first; i <= last; i++) {
		char line[16];
		snprintf(line, sizeof line, "%09d\n", i);
		*trims += feed_push(f, line, 10, limit);
	}
}

/* Whether text is whole lines "%09d\n", ascending, from first to last; prints why not. */
static bool whole_lines(const struct strbuf *text, int first, int last)
{
	if (text->len % 10) {
		printf("# %zu bytes: not whole lines\n", text->len);
		return false;
	}
	int prev = first - 1;
	for (size_t at = 0; at < text->len; at += 10) {
		char *end;
		long v = strtol(text->data + at, &end, 10);
		if (end != text->data + at + 9 || *end != '\n' || v <= prev) {
			printf("# line at %zu is %.10s after %d\n", at, text->data + at, prev);
			return false;
		}
		if ((at == 0 && v != first) || (at + 10 == text->len && v != last)) {
			printf("# line at %zu is %ld\n", at, v);
			return false;
		}
		prev = (int)v;
	}
	return true;
}

static void test_keeps_up(void)
{
	struct feed f;
	struct feed_reader r;
	struct strbuf out = STRBUF_INIT;
	int trims = 0;
	feed_init(&f, false);
	feed_attach(&f, &r);
	for (int i = 1; i <= 1000; i++) {
		push_lines(&f, i, i, 100, &trims);
		drain(&f, &r, 7, &out);
	}
	CHECK(trims == 0);
	CHECK(whole_lines(&out, 1, 1000));
	CHECK(f.data.len <= 10); /* a single-reader feed drops what was read */
	feed_detach(&f, &r);
	feed_free(&f);
	strbuf_free(&out);
}

/* The bug: a reader whose last read ended mid-line, behind a trim, got the first half of that
 * line joined to the first line kept. */
static void test_stopped_mid_line(bool replay)
{
	struct feed f;
	struct feed_reader r;
	struct strbuf out = STRBUF_INIT;
	int trims = 0;
	feed_init(&f, replay);
	feed_attach(&f, &r);
	push_lines(&f, 1, 10, 100, &trims);
	take(&f, &r, 15, &out); /* line 1 and half of line 2 */
	push_lines(&f, 11, 100, 100, &trims);
	CHECK(trims > 0);
	CHECK(f.base > 15);
	drain(&f, &r, 4, &out);
	CHECK(whole_lines(&out, 1, 100));
	CHECK(out.len > 20 && memcmp(out.data, "000000001\n000000002\n", 20) == 0);
	CHECK(out.len < 1000); /* it skipped */
	CHECK(r.rest.data == NULL); /* the saved rest is given back once read */
	feed_detach(&f, &r);
	feed_free(&f);
	strbuf_free(&out);
}

/* A single-reader feed that its reader drained mid-line starts at the rest of that line. */
static void test_drained_mid_line(void)
{
	struct feed f;
	struct feed_reader r;
	struct strbuf out = STRBUF_INIT;
	int trims = 0;
	feed_init(&f, false);
	feed_attach(&f, &r);
	trims += feed_push(&f, "000000001\n00000", 15, 100);
	drain(&f, &r, 100, &out);
	CHECK(f.data.len == 0 && f.base == 15);
	trims += feed_push(&f, "0002\n", 5, 100);
	push_lines(&f, 3, 100, 100, &trims);
	CHECK(trims > 0);
	drain(&f, &r, 100, &out);
	CHECK(whole_lines(&out, 1, 100));
	CHECK(out.len >= 20 && memcmp(out.data + 10, "000000002\n", 10) == 0);
	feed_detach(&f, &r);
	feed_free(&f);
	strbuf_free(&out);
}

/* Readers of a replay feed each keep their own place; one that comes late starts at the oldest
 * line kept; a stalled reader is skipped more than once without losing its saved rest. */
static void test_replay_readers(void)
{
	struct feed f;
	struct feed_reader a, b, late;
	struct strbuf oa = STRBUF_INIT, ob = STRBUF_INIT, ol = STRBUF_INIT;
	int trims = 0;
	feed_init(&f, true);
	feed_attach(&f, &a);
	feed_attach(&f, &b);
	push_lines(&f, 1, 5, 100, &trims);
	take(&f, &a, 23, &oa); /* in line 3 */
	drain(&f, &b, 100, &ob);
	CHECK(f.data.len == 50); /* a replay feed keeps what was read */
	push_lines(&f, 6, 200, 100, &trims);
	CHECK(trims >= 2);
	feed_attach(&f, &late);
	drain(&f, &a, 6, &oa);
	drain(&f, &b, 6, &ob);
	drain(&f, &late, 6, &ol);
	CHECK(whole_lines(&oa, 1, 200));
	CHECK(oa.len >= 30 && memcmp(oa.data + 20, "000000003\n", 10) == 0);
	CHECK(whole_lines(&ob, 1, 200));
	CHECK(ol.len > 0 && ol.len <= 100 && whole_lines(&ol, (int)(f.base / 10) + 1, 200));
	feed_detach(&f, &b);
	feed_detach(&f, &a);
	feed_detach(&f, &late);
	CHECK(f.readers == NULL);
	feed_free(&f);
	strbuf_free(&oa);
	strbuf_free(&ob);
	strbuf_free(&ol);
}

/* A line longer than the limit: a replay feed keeps it whole; another cuts it, and a reader
 * in it sees a hole in that line, not a line of another joined to it. */
static void test_long_line(void)
{
	char big[300];
	memset(big, 'x', sizeof big);
	struct feed f;
	struct feed_reader r;
	struct strbuf out = STRBUF_INIT;
	const char *bytes;

	feed_init(&f, true);
	feed_attach(&f, &r);
	CHECK(!feed_push(&f, big, sizeof big, 100));
	CHECK(feed_push(&f, "\nend\n", 5, 100)); /* now it ends: the line goes at once */
	drain(&f, &r, 1000, &out);
	CHECK(out.len == 4 && memcmp(out.data, "end\n", 4) == 0);
	feed_detach(&f, &r);
	feed_free(&f);

	strbuf_reset(&out);
	feed_init(&f, false);
	feed_attach(&f, &r);
	feed_push(&f, "ab", 2, 100);
	take(&f, &r, 1, &out);
	CHECK(feed_push(&f, big, sizeof big, 100));
	CHECK(f.data.len == 50);
	CHECK(feed_push(&f, "\n", 1, 100) == false);
	drain(&f, &r, 1000, &out);
	CHECK(out.len == 52 && memchr(out.data, '\n', out.len) == out.data + 51);
	CHECK(feed_peek(&f, &r, 10, &bytes) == 0);
	feed_detach(&f, &r);
	feed_free(&f);
	strbuf_free(&out);
}

int main(void)
{
	test_keeps_up();
	test_stopped_mid_line(false);
	test_stopped_mid_line(true);
	test_drained_mid_line();
	test_replay_readers();
	test_long_line();
	return UNIT_DONE();
}
