#include "common/base64.h"
#include <stdint.h>
#include <stdlib.h>

static const char alphabet[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t base64_encoded_len(size_t n) { return (n + 2) / 3 * 4; }
size_t base64_decoded_max(size_t n) { return n / 4 * 3 + 3; }

size_t base64_encode(const void *in, size_t n, char *out)
{
	const uint8_t *p = in;
	char *o = out;
	size_t i = 0;
	for (; i + 3 <= n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
		*o++ = alphabet[v >> 18];
		*o++ = alphabet[(v >> 12) & 63];
		*o++ = alphabet[(v >> 6) & 63];
		*o++ = alphabet[v & 63];
	}
	if (n - i == 1) {
		uint32_t v = (uint32_t)p[i] << 16;
		*o++ = alphabet[v >> 18];
		*o++ = alphabet[(v >> 12) & 63];
		*o++ = '=';
		*o++ = '=';
	} else if (n - i == 2) {
		uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
		*o++ = alphabet[v >> 18];
		*o++ = alphabet[(v >> 12) & 63];
		*o++ = alphabet[(v >> 6) & 63];
		*o++ = '=';
	}
	*o = '\0';
	return (size_t)(o - out);
}

char *base64_encode_alloc(const void *in, size_t n)
{
	char *out = malloc(base64_encoded_len(n) + 1);
	if (out)
		base64_encode(in, n, out);
	return out;
}

/* value + 1 of each character of the alphabet, 0 for the others */
static const uint8_t value_plus_1[256] = {
#define V(c, v) [c] = (v) + 1
	V('A', 0), V('B', 1), V('C', 2), V('D', 3), V('E', 4), V('F', 5), V('G', 6), V('H', 7),
	V('I', 8), V('J', 9), V('K', 10), V('L', 11), V('M', 12), V('N', 13), V('O', 14),
	V('P', 15), V('Q', 16), V('R', 17), V('S', 18), V('T', 19), V('U', 20), V('V', 21),
	V('W', 22), V('X', 23), V('Y', 24), V('Z', 25), V('a', 26), V('b', 27), V('c', 28),
	V('d', 29), V('e', 30), V('f', 31), V('g', 32), V('h', 33), V('i', 34), V('j', 35),
	V('k', 36), V('l', 37), V('m', 38), V('n', 39), V('o', 40), V('p', 41), V('q', 42),
	V('r', 43), V('s', 44), V('t', 45), V('u', 46), V('v', 47), V('w', 48), V('x', 49),
	V('y', 50), V('z', 51), V('0', 52), V('1', 53), V('2', 54), V('3', 55), V('4', 56),
	V('5', 57), V('6', 58), V('7', 59), V('8', 60), V('9', 61), V('+', 62), V('/', 63),
#undef V
};

/* Whole quads by table (the bulk of a large upload's time on sbxd went here, a character at
 * a time), then the padded tail. */
ssize_t base64_decode(const char *in, size_t n, void *out)
{
	const unsigned char *p = (const unsigned char *)in;
	uint8_t *o = out;
	if (n % 4 == 1)
		return -1;
	size_t pad = n && p[n - 1] == '=' ? (n >= 2 && p[n - 2] == '=' ? 2 : 1) : 0;
	if (pad && n % 4)
		return -1;
	size_t body = n - pad, whole = body / 4 * 4;
	for (size_t i = 0; i < whole; i += 4) {
		unsigned a = value_plus_1[p[i]], b = value_plus_1[p[i + 1]],
			 c = value_plus_1[p[i + 2]], d = value_plus_1[p[i + 3]];
		if (!a || !b || !c || !d)
			return -1;
		uint32_t v = (a - 1) << 18 | (b - 1) << 12 | (c - 1) << 6 | (d - 1);
		*o++ = (uint8_t)(v >> 16);
		*o++ = (uint8_t)(v >> 8);
		*o++ = (uint8_t)v;
	}
	uint32_t acc = 0;
	int bits = 0;
	for (size_t i = whole; i < body; i++) {
		unsigned v = value_plus_1[p[i]];
		if (!v)
			return -1; /* outside the alphabet, or '=' before the end */
		acc = acc << 6 | (v - 1);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			*o++ = (uint8_t)(acc >> bits);
		}
	}
	return (ssize_t)(o - (uint8_t *)out);
}
