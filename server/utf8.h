/* Turning command output into valid UTF-8 text. */
#ifndef SBXD_UTF8_H
#define SBXD_UTF8_H
#include <stdbool.h>
#include <stddef.h>
#include "common/strbuf.h"

/* Appends in[0..n) to out as valid UTF-8: invalid sequences and NUL bytes become U+FFFD.
 * Unless final, an incomplete sequence at the end is left unconsumed (the caller carries it
 * over to the next chunk); returns the number of bytes consumed. */
size_t utf8_sanitize(struct strbuf *out, const char *in, size_t n, bool final);
/* Whether in[0..n) is valid UTF-8 without NUL, as utf8_sanitize would leave it. */
bool utf8_valid(const char *in, size_t n);
#endif
