/* A growable byte buffer. Aborts on out-of-memory: callers stay simple, and a filesystem daemon
 * that cannot allocate a few KiB cannot do anything useful anyway. */
#ifndef SBX_STRBUF_H
#define SBX_STRBUF_H
#include <stddef.h>

struct strbuf {
	char *data; /* always NUL-terminated when non-NULL */
	size_t len;
	size_t cap;
};

#define STRBUF_INIT { NULL, 0, 0 }

void strbuf_reserve(struct strbuf *sb, size_t extra);
void strbuf_append(struct strbuf *sb, const void *data, size_t n);
void strbuf_appends(struct strbuf *sb, const char *s);
void strbuf_appendf(struct strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drops the first n bytes. */
void strbuf_consume(struct strbuf *sb, size_t n);
void strbuf_reset(struct strbuf *sb);
/* Hands the buffer to the caller (who frees it) and leaves sb empty. */
char *strbuf_detach(struct strbuf *sb, size_t *len);
void strbuf_free(struct strbuf *sb);
#endif
