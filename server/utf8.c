/* UTF-8 validation for output that travels in JSON strings (which cannot hold invalid
 * sequences or NUL): the maximal-subpart replacement of Unicode, one U+FFFD per bad piece. */
#include "server/utf8.h"

/* The valid sequence at s: its length; 0 for a valid but incomplete prefix (n too short);
 * -k for an invalid sequence whose maximal subpart is k bytes (one U+FFFD each). NUL counts
 * as invalid. */
static int utf8_seq(const unsigned char *s, size_t n)
{
	unsigned c = s[0], lo = 0x80, hi = 0xBF;
	int len;
	if (c < 0x80)
		return c ? 1 : -1;
	if (c >= 0xC2 && c <= 0xDF)
		len = 2;
	else if (c == 0xE0)
		len = 3, lo = 0xA0;
	else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF)
		len = 3;
	else if (c == 0xED)
		len = 3, hi = 0x9F;
	else if (c == 0xF0)
		len = 4, lo = 0x90;
	else if (c >= 0xF1 && c <= 0xF3)
		len = 4;
	else if (c == 0xF4)
		len = 4, hi = 0x8F;
	else
		return -1;
	for (int i = 1; i < len; i++) {
		if ((size_t)i >= n)
			return 0;
		if (s[i] < lo || s[i] > hi)
			return -i;
		lo = 0x80, hi = 0xBF;
	}
	return len;
}

/* Appends in[0..n) to out as valid UTF-8. Unless final, an incomplete sequence at the end
 * is left unconsumed; returns the number of bytes consumed. */
size_t utf8_sanitize(struct strbuf *out, const char *in, size_t n, bool final)
{
	static const char replacement[] = "\xEF\xBF\xBD";
	const unsigned char *s = (const unsigned char *)in;
	size_t i = 0, run = 0;
	strbuf_reserve(out, n);
	while (i < n) {
		if (s[i] && s[i] < 0x80) {
			i++;
			continue;
		}
		int k = utf8_seq(s + i, n - i);
		if (k > 0) {
			i += (size_t)k;
			continue;
		}
		strbuf_append(out, in + run, i - run);
		if (k == 0 && !final)
			return i;
		strbuf_append(out, replacement, 3);
		i += k == 0 ? n - i : (size_t)-k;
		run = i;
	}
	strbuf_append(out, in + run, i - run);
	return i;
}

bool utf8_valid(const char *in, size_t n)
{
	const unsigned char *s = (const unsigned char *)in;
	for (size_t i = 0; i < n;) {
		int k = utf8_seq(s + i, n - i);
		if (k <= 0)
			return false;
		i += (size_t)k;
	}
	return true;
}
