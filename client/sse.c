/* Incremental SSE parser.
 *
 * State survives between chunks: the partial line, whether the previous chunk ended in '\r'
 * (so a '\n' that starts the next chunk is the second half of a CRLF, not an empty line), how
 * much of a leading BOM has been seen, and the event being assembled. Lines are cut out of the
 * chunk with a scan for CR/LF and only copied when they straddle a chunk boundary. */
#include "client/sse.h"
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include "common/strbuf.h"

#define SSE_DEFAULT_MAX_LINE ((size_t)64 << 20)

static const unsigned char bom[3] = { 0xef, 0xbb, 0xbf };

struct sse_parser {
	sse_event_cb on_event;
	sse_comment_cb on_comment;
	void *arg;
	size_t max_line;
	struct strbuf line;   /* the partial line carried over from the previous chunk */
	struct strbuf data;   /* data lines of the pending event, joined with '\n' */
	struct strbuf event;  /* event type of the pending event, "" = "message" */
	struct strbuf id;     /* last event id; persists across events as the spec says */
	bool have_data;       /* at least one data line: an event without one is not dispatched */
	bool after_cr;        /* the previous byte was a '\r' ending a line */
	bool bom_done;
	size_t bom_seen;
};

struct sse_parser *sse_parser_new(sse_event_cb on_event, sse_comment_cb on_comment, void *arg)
{
	struct sse_parser *p = calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->on_event = on_event;
	p->on_comment = on_comment;
	p->arg = arg;
	p->max_line = SSE_DEFAULT_MAX_LINE;
	strbuf_appends(&p->id, "");
	return p;
}

void sse_parser_set_max_line(struct sse_parser *p, size_t max)
{
	p->max_line = max ? max : SSE_DEFAULT_MAX_LINE;
}

void sse_parser_free(struct sse_parser *p)
{
	if (!p)
		return;
	strbuf_free(&p->line);
	strbuf_free(&p->data);
	strbuf_free(&p->event);
	strbuf_free(&p->id);
	free(p);
}

static int dispatch(struct sse_parser *p)
{
	if (!p->have_data) {
		strbuf_reset(&p->event);
		return 0;
	}
	strbuf_reserve(&p->data, 0);
	struct sse_event ev = {
		.event = p->event.len ? p->event.data : "message",
		.data = p->data.data,
		.data_len = p->data.len,
		.id = p->id.data,
	};
	int r = p->on_event ? p->on_event(p->arg, &ev) : 0;
	strbuf_reset(&p->data);
	strbuf_reset(&p->event);
	p->have_data = false;
	return r;
}

static int process_line(struct sse_parser *p, const char *s, size_t n)
{
	if (n == 0)
		return dispatch(p);
	if (s[0] == ':') {
		if (p->on_comment)
			p->on_comment(p->arg, s + 1, n - 1);
		return 0;
	}
	const char *colon = memchr(s, ':', n);
	size_t flen = colon ? (size_t)(colon - s) : n;
	const char *v = colon ? colon + 1 : s + n;
	size_t vlen = (size_t)(s + n - v);
	if (vlen && *v == ' ')
		v++, vlen--;

	if (flen == 4 && memcmp(s, "data", 4) == 0) {
		if (p->have_data)
			strbuf_append(&p->data, "\n", 1);
		strbuf_append(&p->data, v, vlen);
		p->have_data = true;
		if (p->data.len > p->max_line)
			return -1;
	} else if (flen == 5 && memcmp(s, "event", 5) == 0) {
		strbuf_reset(&p->event);
		strbuf_append(&p->event, v, vlen);
	} else if (flen == 2 && memcmp(s, "id", 2) == 0) {
		/* An id containing NUL is ignored (it could not be handed on as a C string). */
		if (!memchr(v, '\0', vlen)) {
			strbuf_reset(&p->id);
			strbuf_append(&p->id, v, vlen);
		}
	}
	/* "retry:" only matters to a client that reconnects by itself; ours report the end of a
	 * stream to their owner instead, so it is ignored like any unknown field. */
	return 0;
}

/* Consumes as much of a leading BOM as the chunk holds; false while still undecided. */
static bool skip_bom(struct sse_parser *p, const char **buf, size_t *len)
{
	while (*len && p->bom_seen < sizeof(bom)) {
		if ((unsigned char)**buf != bom[p->bom_seen]) {
			/* Not a BOM after all: the bytes taken so far belong to the first line. */
			strbuf_append(&p->line, bom, p->bom_seen);
			p->bom_done = true;
			return true;
		}
		p->bom_seen++;
		(*buf)++;
		(*len)--;
	}
	if (p->bom_seen == sizeof(bom))
		p->bom_done = true;
	return p->bom_done;
}

int sse_parser_feed(struct sse_parser *p, const char *buf, size_t len)
{
	if (!p->bom_done && !skip_bom(p, &buf, &len))
		return 0;
	const char *end = buf + len;
	while (buf < end) {
		if (p->after_cr) {
			p->after_cr = false;
			if (*buf == '\n') {
				buf++;
				continue;
			}
		}
		const char *eol = buf;
		while (eol < end && *eol != '\n' && *eol != '\r')
			eol++;
		size_t seg = (size_t)(eol - buf);
		if (p->line.len + seg > p->max_line)
			return -1;
		if (eol == end) {
			strbuf_append(&p->line, buf, seg);
			break;
		}
		p->after_cr = *eol == '\r';
		int r;
		if (p->line.len) {
			strbuf_append(&p->line, buf, seg);
			r = process_line(p, p->line.data, p->line.len);
			strbuf_reset(&p->line);
		} else {
			r = process_line(p, buf, seg);
		}
		buf = eol + 1;
		if (r)
			return r;
	}
	return 0;
}
