/* Messages from an interpreter of a code context: JSON objects, one per line, on its stdout
 * (server/interp/mux.py writes them). The interpreter runs the user's code, which can write
 * anything there, so a line is taken apart without trusting it and without building a tree: a
 * strict scan checks it and notes where the members sbxd needs lie, and the events for the
 * client are put together from those pieces of the line as they are. */
#ifndef SBXD_IMSG_H
#define SBXD_IMSG_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "common/strbuf.h"

/* Nesting deeper than this is refused (cJSON, which clients may use, stops at 1000). */
#define IMSG_DEPTH_MAX 512

/* ---- lines ---- */

struct imsg_reader {
	char *buf;
	size_t len, cap;
	size_t start;      /* where the next line begins */
	size_t scanned;    /* bytes from start on known to hold no newline */
	size_t max;        /* longest message */
};

void imsg_reader_init(struct imsg_reader *r, size_t max);
/* Keeps n more bytes (after dropping the lines already taken). */
void imsg_reader_add(struct imsg_reader *r, const char *data, size_t n);
/* The next complete line, without its newline, valid until the next add: 1; 0 when there is
 * none yet; -1 when the line (complete or not) is longer than the maximum. */
int imsg_reader_next(struct imsg_reader *r, const char **line, size_t *len);
/* The bytes kept of the line not yet complete. */
size_t imsg_reader_pending(const struct imsg_reader *r);
void imsg_reader_free(struct imsg_reader *r);

/* ---- messages ---- */

/* A JSON value as it appears in the line; n == 0 when absent. */
struct imsg_span {
	const char *p;
	size_t n;
};

enum imsg_type {
	IMSG_OTHER, IMSG_STDOUT, IMSG_STDERR, IMSG_RESULT, IMSG_DONE, IMSG_READY, IMSG_INIT_DONE,
};

struct imsg {
	enum imsg_type type;
	struct imsg_span text;    /* "text" */
	struct imsg_span error;   /* "error": an object (done) or a string (init_done), or null */
	struct imsg_span errname; /* "errno" */
	int64_t seq;              /* "seq" if an integer, else -1 */
	int64_t count;            /* "execution_count" if an integer, else 1 */
};

/* Checks that line[0..len) is one JSON object (RFC 8259, valid UTF-8, no NUL, no control
 * characters, blanks only spaces and tabs, at most IMSG_DEPTH_MAX deep, no lone UTF-16
 * surrogate escapes) and takes out its members; a member named twice counts the first time.
 * false when it is not such an object. */
bool imsg_parse(const char *line, size_t len, struct imsg *m);

/* The event of a stdout or stderr message: {"type":"stdout","text":...} ("" without text). */
void imsg_output_event(const struct imsg *m, struct strbuf *out);
/* The terminal event of a done message: {"type":"error","ename","evalue","traceback"} when
 * its error is an object, else {"type":"execution_complete","execution_count":N}. */
void imsg_done_event(const struct imsg *m, struct strbuf *out);

/* The value of the member name in the object span obj (from imsg_parse); absent if obj is
 * not an object or has no such member. */
struct imsg_span imsg_member(struct imsg_span obj, const char *name);
/* Whether span s is a JSON string. */
bool imsg_is_string(struct imsg_span s);
/* The text of the string span s (else ""), decoded into buf, NUL-terminated; a \u0000 ends it
 * (as it would end a C string). false when it had to be cut, between characters, to fit. */
bool imsg_string(struct imsg_span s, char *buf, size_t size);
#endif
