/* Incremental Server-Sent Events parser (the subset of the WHATWG rules the sandbox API needs):
 * bytes arrive in arbitrary chunks; lines end in \n, \r\n or \r; "data:" lines of one event are
 * joined with \n; an event is dispatched at a blank line; ":" lines are comments (heartbeats);
 * "event:", "id:" and "retry:" are recorded; a leading UTF-8 BOM is skipped. */
#ifndef SBX_SSE_H
#define SBX_SSE_H
#include <stddef.h>

struct sse_event {
	const char *event; /* "message" when no event: line was given */
	const char *data;  /* NUL-terminated, may contain \n */
	size_t data_len;
	const char *id;    /* last id seen, "" if none */
};

/* Return non-zero from the callback to stop parsing (sse_parser_feed then returns it). */
typedef int (*sse_event_cb)(void *arg, const struct sse_event *ev);
/* Called for every comment line (": keepalive"); may be NULL. */
typedef void (*sse_comment_cb)(void *arg, const char *text, size_t len);

struct sse_parser;
struct sse_parser *sse_parser_new(sse_event_cb on_event, sse_comment_cb on_comment, void *arg);
/* Feeds a chunk; returns 0, a callback's non-zero value, or -1 when a single line grows beyond
 * the limit (default 64 MiB) so a broken server cannot exhaust memory. */
int sse_parser_feed(struct sse_parser *p, const char *buf, size_t len);
void sse_parser_set_max_line(struct sse_parser *p, size_t max);
void sse_parser_free(struct sse_parser *p);
#endif
