/* libFuzzer target: the preview proxy's parsing of what a service in the sandbox answers
 * (server/http_response.c): the head, the body's framing, a chunked body, on arbitrary bytes.
 * The first input byte picks the piece size the bytes arrive in, whether the request asked for
 * an upgrade and the room the body reader gives. Each input is parsed twice, in those pieces
 * and in one piece: the outcomes (status, fields, framing, body bytes, error) must agree, so
 * that no state is lost at a piece boundary. It aborts when a bound is passed, when a parser
 * consumes more than it was given or makes no progress, or when a field that is handed out
 * holds what the proxy must never pass on (a control character, a name that is not a token). */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "common/strbuf.h"
#include "server/http_response.h"

struct outcome {
	int head_rc; /* RESP_FINAL or -errno (RESP_MORE: the input ended first) */
	int status;
	struct strbuf fields;
	int framing;
	uint64_t length;
	struct strbuf body;
	int body_rc; /* 1 done, 0 the input ended first, -errno */
};

static void check_field(const char *name, const char *value)
{
	if (!*name)
		abort();
	for (const unsigned char *c = (const unsigned char *)name; *c; c++)
		if (*c <= ' ' || *c == ':' || *c == 0x7f || strchr("\"(),/;<=>?@[\\]{}", *c) ||
		    *c >= 0x80)
			abort();
	for (const unsigned char *c = (const unsigned char *)value; *c; c++)
		if ((*c < ' ' && *c != '\t') || *c == 0x7f)
			abort();
	size_t vl = strlen(value);
	if (vl && (value[0] == ' ' || value[0] == '\t' || value[vl - 1] == ' ' ||
		   value[vl - 1] == '\t'))
		abort();
}

static void run(const uint8_t *data, size_t size, size_t piece, bool upgrade, size_t room,
		struct outcome *o)
{
	struct resp_head h;
	size_t off = 0;
	unsigned interims = 0;
	resp_head_init(&h, upgrade);
	o->head_rc = RESP_MORE;
	while (off < size && o->head_rc >= 0 && o->head_rc != RESP_FINAL) {
		size_t n = size - off < piece ? size - off : piece, used;
		int rc = resp_head_feed(&h, (const char *)data + off, n, &used);
		if (used > n || (rc == RESP_MORE && used != n) || h.bytes > RESP_HEAD_MAX_BYTES ||
		    h.line.len > RESP_HEAD_MAX_BYTES || h.fields.len > RESP_HEAD_MAX_BYTES ||
		    h.lines > RESP_HEAD_MAX_LINES)
			abort();
		if (rc == RESP_INTERIM && ++interims > RESP_MAX_INTERIM)
			abort();
		off += used;
		o->head_rc = rc == RESP_INTERIM ? RESP_MORE : rc;
	}
	if (o->head_rc == RESP_FINAL) {
		const char *name, *value;
		o->status = h.status;
		if (h.status < 200 && !(h.status == 101 && upgrade))
			abort();
		for (size_t pos = 0; resp_head_next(&h, &pos, &name, &value);) {
			check_field(name, value);
			strbuf_append(&o->fields, name, strlen(name) + 1);
			strbuf_append(&o->fields, value, strlen(value) + 1);
		}
		o->framing = resp_framing(&h, &o->length);
		if (o->framing == RESP_BY_LENGTH && o->length > RESP_LENGTH_MAX)
			abort();
	}
	resp_head_free(&h);
	if (o->head_rc != RESP_FINAL || o->framing != RESP_BY_CHUNKS)
		return;

	struct chunked c;
	chunked_init(&c);
	o->body_rc = 0;
	while (off < size && !chunked_done(&c)) {
		size_t n = size - off < piece ? size - off : piece, at, got;
		ssize_t used = chunked_decode(&c, (const char *)data + off, n, room, &at, &got);
		if (used < 0) {
			o->body_rc = (int)used;
			return;
		}
		if ((size_t)used > n || used == 0 || got > room || at + got > (size_t)used ||
		    c.line > RESP_CHUNK_LINE_MAX || c.trailer_bytes > RESP_HEAD_MAX_BYTES ||
		    c.trailer_lines > RESP_HEAD_MAX_LINES)
			abort();
		strbuf_append(&o->body, data + off + at, got);
		off += (size_t)used;
	}
	o->body_rc = chunked_done(&c);
}

static bool same(const struct strbuf *a, const struct strbuf *b)
{
	return a->len == b->len && (a->len == 0 || memcmp(a->data, b->data, a->len) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	size_t piece = (size_t)(data[0] % 13) + 1, room = data[0] & 0x20 ? 3 : 64 * 1024;
	bool upgrade = data[0] & 0x80;
	struct outcome a = { 0 }, b = { 0 };
	run(data + 1, size - 1, piece, upgrade, room, &a);
	run(data + 1, size - 1, size, upgrade, 64 * 1024, &b);
	/* The body's end may differ only in where the input ran out. */
	if (a.head_rc != b.head_rc || a.status != b.status || !same(&a.fields, &b.fields) ||
	    a.framing != b.framing || a.length != b.length || a.body_rc != b.body_rc ||
	    !same(&a.body, &b.body))
		abort();
	strbuf_free(&a.fields);
	strbuf_free(&b.fields);
	strbuf_free(&a.body);
	strbuf_free(&b.body);
	return 0;
}
