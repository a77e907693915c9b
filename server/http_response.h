/* HTTP/1.1 responses read from an untrusted peer (the preview proxy's upstream, a service in the
 * sandbox): the head, the body's framing, chunked bodies. Push parsers over byte ranges, with
 * no I/O and every allocation bounded, so that the preview proxy and the fuzzer drive the same
 * code. */
#ifndef SBXD_HTTP_RESPONSE_H
#define SBXD_HTTP_RESPONSE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "common/strbuf.h"

/* Bounds of one answer's head, its 1xx interim answers included, and of a chunked body's
 * trailer section. */
#define RESP_HEAD_MAX_BYTES (64 * 1024)
#define RESP_HEAD_MAX_LINES 256
#define RESP_MAX_INTERIM 10
/* A chunk's size line, extensions included. */
#define RESP_CHUNK_LINE_MAX 4096
/* Content-Length at most this (an off_t; MHD reserves UINT64_MAX for "unknown"). */
#define RESP_LENGTH_MAX ((uint64_t)INT64_MAX)

enum resp_feed {
	RESP_MORE = 0,    /* every byte taken, the head is not complete yet */
	RESP_INTERIM = 1, /* a 1xx interim head ended (and was dropped) */
	RESP_FINAL = 2,   /* the final head ended: status and fields are set */
};

struct resp_head {
	bool want_upgrade; /* the request asked for an upgrade: a 101 is final, not an error */
	bool in_head;      /* past the first byte of a head and not past its end */
	int status;        /* of the head being read, then of the final one */
	struct strbuf fields; /* the current head's fields: name\0value\0... */
	/* private */
	struct strbuf line;
	size_t bytes;
	unsigned lines, interim;
	bool status_seen; /* the current head's status line is in */
};

void resp_head_init(struct resp_head *h, bool want_upgrade);
void resp_head_free(struct resp_head *h);
/* Takes bytes of upstream's answer: *used of len are consumed (bytes after a final head are
 * the body's, and are left). Returns an enum resp_feed, -EPROTO for what is not HTTP/1.x, or
 * -EMSGSIZE past a bound. */
int resp_head_feed(struct resp_head *h, const char *in, size_t len, size_t *used);
/* Iterates over the fields of the head: *name and *value, false at the end. */
bool resp_head_next(const struct resp_head *h, size_t *pos, const char **name,
		    const char **value);

enum resp_framing { RESP_BY_LENGTH, RESP_BY_CHUNKS, RESP_BY_CLOSE };

/* How the body of a final head is framed, checked: Transfer-Encoding must be "chunked" alone
 * and never comes with Content-Length; Content-Length is digits within RESP_LENGTH_MAX, and
 * repeated values must agree. *length is set for RESP_BY_LENGTH; -EPROTO when invalid. */
int resp_framing(const struct resp_head *h, uint64_t *length);

/* A chunked body, decoded as it streams through. */
struct chunked {
	int state;
	uint64_t left; /* bytes left in the current chunk */
	size_t line;   /* bytes in the current size or trailer line */
	size_t trailer_bytes;
	unsigned trailer_lines;
};

void chunked_init(struct chunked *c);
/* Consumes chunk framing from in until it reaches data (at most max bytes of it are then
 * handed out: *data is their offset in in, *data_len their count, both within the returned
 * count) or the end of in or of the body. Returns the bytes consumed (at least one when len
 * and max are not 0 and the body is not done), -EPROTO or -EMSGSIZE. */
ssize_t chunked_decode(struct chunked *c, const char *in, size_t len, size_t max, size_t *data,
		       size_t *data_len);
bool chunked_done(const struct chunked *c);
#endif
