/* The SSE parser: results must not depend on how the bytes are chunked. */
#include <stdlib.h>
#include "client/sse.h"
#include "common/strbuf.h"
#include "unit.h"

struct rec {
	struct strbuf out;   /* "event|id|data\n" per event */
	int comments;
	struct strbuf comment_text;
	int stop_at;         /* return 7 from the stop_at-th event (1-based), 0 = never */
	int events;
};

static int on_event(void *arg, const struct sse_event *ev)
{
	struct rec *r = arg;
	r->events++;
	strbuf_appendf(&r->out, "%s|%s|", ev->event, ev->id);
	strbuf_append(&r->out, ev->data, ev->data_len);
	strbuf_append(&r->out, "\n", 1);
	if (ev->data[ev->data_len] != '\0')
		strbuf_appends(&r->out, "<not NUL-terminated>");
	return r->stop_at && r->events == r->stop_at ? 7 : 0;
}

static void on_comment(void *arg, const char *text, size_t len)
{
	struct rec *r = arg;
	r->comments++;
	strbuf_append(&r->comment_text, text, len);
	strbuf_append(&r->comment_text, "/", 1);
}

static void rec_free(struct rec *r)
{
	strbuf_free(&r->out);
	strbuf_free(&r->comment_text);
}

/* Feeds s cut at the given positions (sorted, within the string). */
static int feed_cuts(struct rec *r, const char *s, size_t n, const size_t *cuts, int ncuts)
{
	struct sse_parser *p = sse_parser_new(on_event, on_comment, r);
	size_t at = 0;
	int rc = 0;
	for (int i = 0; i <= ncuts && !rc; i++) {
		size_t end = i < ncuts ? cuts[i] : n;
		rc = sse_parser_feed(p, s + at, end - at);
		at = end;
	}
	sse_parser_free(p);
	return rc;
}

static const char stream[] =
	"\xEF\xBB\xBF: hello\r\n"
	"event: add\r\n"
	"data: first\r\n"
	"data:second\r\n"
	"id: 7\r\n"
	"\r\n"
	"data\n"
	"\n"
	"event: x\r"
	"data:  two spaces\r"
	"\r"
	"retry: 10\n"
	"event: nodata\n"
	"\n"
	": keepalive\n"
	"data: after\n"
	"unknown: field\n"
	"id\n"
	"\n"
	"data: a\r\n"
	"data: b\n"
	"data:\n"
	"\r\n"
	"data: never dispatched (no blank line)\n";

static const char expected[] =
	"add|7|first\nsecond\n"
	"message|7|\n"
	"x|7| two spaces\n"
	"message||after\n"
	"message||a\nb\n\n";

static void test_splits(void)
{
	size_t n = sizeof(stream) - 1;
	struct rec whole = { 0 };
	CHECK(feed_cuts(&whole, stream, n, NULL, 0) == 0);
	CHECK_STR(whole.out.data, expected);
	CHECK(whole.comments == 2);
	CHECK_STR(whole.comment_text.data, " hello/ keepalive/");

	int bad2 = 0, bad3 = 0;
	for (size_t i = 0; i <= n; i++) {
		struct rec r = { 0 };
		size_t cuts[1] = { i };
		feed_cuts(&r, stream, n, cuts, 1);
		if (!r.out.data || strcmp(r.out.data, expected) != 0 || r.comments != 2)
			bad2++;
		rec_free(&r);
	}
	CHECK(bad2 == 0);
	for (size_t i = 0; i <= n; i++)
		for (size_t j = i; j <= n; j++) {
			struct rec r = { 0 };
			size_t cuts[2] = { i, j };
			feed_cuts(&r, stream, n, cuts, 2);
			if (!r.out.data || strcmp(r.out.data, expected) != 0)
				bad3++;
			rec_free(&r);
		}
	CHECK(bad3 == 0);

	/* One byte at a time. */
	struct rec r = { 0 };
	struct sse_parser *p = sse_parser_new(on_event, on_comment, &r);
	for (size_t i = 0; i < n; i++)
		sse_parser_feed(p, stream + i, 1);
	sse_parser_free(p);
	CHECK_STR(r.out.data, expected);
	rec_free(&r);
	rec_free(&whole);
}

static void test_line_ends(void)
{
	struct rec r = { 0 };
	struct sse_parser *p = sse_parser_new(on_event, NULL, &r);
	/* CR then LF in separate chunks is one line end, not an empty line in between. */
	sse_parser_feed(p, "data: a\r", 8);
	sse_parser_feed(p, "\n", 1);
	CHECK(r.events == 0);
	sse_parser_feed(p, "data: b\r", 8);
	sse_parser_feed(p, "\r\n", 2);
	CHECK(r.events == 1);
	CHECK_STR(r.out.data, "message||a\nb\n");
	/* Lone CRs. */
	sse_parser_feed(p, "data: c\r\rdata: d\r\r", 18);
	CHECK(r.events == 3);
	CHECK_STR(r.out.data, "message||a\nb\nmessage||c\nmessage||d\n");
	sse_parser_free(p);
	rec_free(&r);
}

static void test_bom(void)
{
	/* Only a leading BOM is skipped; a near-BOM is part of the first line. */
	struct rec r = { 0 };
	static const char s[] = "\xEF\xBB" "data: x\n\ndata: y\n\n";
	CHECK(feed_cuts(&r, s, sizeof(s) - 1, NULL, 0) == 0);
	CHECK_STR(r.out.data, "message||y\n");
	rec_free(&r);

	struct rec r2 = { 0 };
	static const char s2[] = "\xEF\xBB\xBF" "data: x\n\n\xEF\xBB\xBF" "data: y\n\n";
	size_t cuts[2] = { 1, 2 };
	CHECK(feed_cuts(&r2, s2, sizeof(s2) - 1, cuts, 2) == 0);
	CHECK_STR(r2.out.data, "message||x\n");
	rec_free(&r2);

	struct rec r3 = { 0 };
	struct sse_parser *p = sse_parser_new(on_event, NULL, &r3);
	CHECK(sse_parser_feed(p, "", 0) == 0);
	CHECK(sse_parser_feed(p, "\xEF", 1) == 0);
	CHECK(sse_parser_feed(p, "\xBB\xBF" "data: z\n\n", 11) == 0);
	CHECK_STR(r3.out.data, "message||z\n");
	sse_parser_free(p);
	rec_free(&r3);
}

static void test_empty_and_nodata(void)
{
	struct rec r = { 0 };
	static const char s[] = "event: e\n\ndata:\n\ndata\n\nid: 1\n\n:c\n\n";
	CHECK(feed_cuts(&r, s, sizeof(s) - 1, NULL, 0) == 0);
	/* The event type of an undispatched event does not leak into the next one. */
	CHECK_STR(r.out.data, "message||\nmessage||\n");
	CHECK(r.events == 2);
	rec_free(&r);
}

static void test_max_line(void)
{
	struct rec r = { 0 };
	struct sse_parser *p = sse_parser_new(on_event, NULL, &r);
	sse_parser_set_max_line(p, 16);
	CHECK(sse_parser_feed(p, "data: 0123456789\n\n", 18) == 0); /* exactly 16 */
	CHECK(r.events == 1);
	CHECK(sse_parser_feed(p, "data: 01234", 11) == 0);
	CHECK(sse_parser_feed(p, "56789", 5) == 0);
	CHECK(sse_parser_feed(p, "X", 1) == -1);
	sse_parser_free(p);
	rec_free(&r);

	/* Many short data lines cannot build an unbounded event either. */
	struct rec r2 = { 0 };
	p = sse_parser_new(on_event, NULL, &r2);
	sse_parser_set_max_line(p, 16);
	int rc = 0;
	for (int i = 0; i < 10 && !rc; i++)
		rc = sse_parser_feed(p, "data: abcd\n", 11);
	CHECK(rc == -1);
	CHECK(r2.events == 0);
	sse_parser_free(p);
	rec_free(&r2);
}

static void test_stop(void)
{
	struct rec r = { .stop_at = 2 };
	static const char s[] = "data: 1\n\ndata: 2\n\ndata: 3\n\n";
	CHECK(feed_cuts(&r, s, sizeof(s) - 1, NULL, 0) == 7);
	CHECK(r.events == 2);
	CHECK_STR(r.out.data, "message||1\nmessage||2\n");
	rec_free(&r);
}

int main(void)
{
	test_splits();
	test_line_ends();
	test_bom();
	test_empty_and_nodata();
	test_max_line();
	test_stop();
	return UNIT_DONE();
}
