/* A stream buffer and its readers: the bytes of a stream file (proc/ID/follow, ctx/ID/out,
 * watch) between the network that pushes them and the readers that take them, bounded.
 *
 * The bytes are kept from absolute offset `base` on; a reader's cursor is absolute too. A
 * replay feed keeps its newest bytes for every reader, including ones that attach later (the
 * readers of ctx/ID/out); otherwise the feed drops what its readers have all taken. Either way
 * a push beyond the limit drops the oldest bytes, whole lines where the bytes are lines (a
 * line longer than the limit: a replay feed keeps it whole and grows, another cuts it), and a
 * reader that had not read them skips ahead to the oldest line kept.
 *
 * A reader that stopped in the middle of a line when that line was dropped keeps the rest of
 * the line in its own `rest` and reads it before skipping ahead: it sees whole lines, never
 * the first half of one joined to a later one. Only that one line is copied, and only once per
 * skip, so a stalled reader costs at most a line besides the feed; the feed itself is never
 * held back for a reader.
 *
 * Pure logic: no locks (the caller's), no I/O. */
#ifndef SBX_FS_FEED_H
#define SBX_FS_FEED_H
#include <stdbool.h>
#include <stddef.h>
#include "common/strbuf.h"

struct feed_reader {
	size_t pos;          /* absolute offset of the next byte it reads from the feed */
	bool mid_line;       /* the last byte it read from the feed was not a line end */
	struct strbuf rest;  /* the rest of its line, saved when the feed dropped it */
	struct feed_reader *next;
};

struct feed {
	struct strbuf data;  /* the bytes from absolute offset base on */
	size_t base;
	bool replay;
	struct feed_reader *readers;
};

void feed_init(struct feed *f, bool replay);
/* Frees the bytes; the readers must have been detached. */
void feed_free(struct feed *f);
/* r reads from the oldest byte kept. */
void feed_attach(struct feed *f, struct feed_reader *r);
void feed_detach(struct feed *f, struct feed_reader *r);
/* Appends len bytes and keeps the feed within limit bytes; true when that dropped bytes. */
bool feed_push(struct feed *f, const void *data, size_t len, size_t limit);
/* What r reads next, at most size bytes: their count, and *bytes pointing at them until the
 * next call on f. 0 when it has read everything there is. */
size_t feed_peek(const struct feed *f, const struct feed_reader *r, size_t size,
		 const char **bytes);
/* r has taken the n bytes that feed_peek showed it. */
void feed_advance(struct feed *f, struct feed_reader *r, size_t n);
#endif
