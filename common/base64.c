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
	['A'] = 1, ['B'] = 2, ['C'] = 3, ['D'] = 4, ['E'] = 5, ['F'] = 6, ['G'] = 7, ['H'] = 8,
	['I'] = 9, ['J'] = 10, ['K'] = 11, ['L'] = 12, ['M'] = 13, ['N'] = 14, ['O'] = 15,
	['P'] = 16, ['Q'] = 17, ['R'] = 18, ['S'] = 19, ['T'] = 20, ['U'] = 21, ['V'] = 22,
	['W'] = 23, ['X'] = 24, ['Y'] = 25, ['Z'] = 26, ['a'] = 27, ['b'] = 28, ['c'] = 29,
	['d'] = 30, ['e'] = 31, ['f'] = 32, ['g'] = 33, ['h'] = 34, ['i'] = 35, ['j'] = 36,
	['k'] = 37, ['l'] = 38, ['m'] = 39, ['n'] = 40, ['o'] = 41, ['p'] = 42, ['q'] = 43,
	['r'] = 44, ['s'] = 45, ['t'] = 46, ['u'] = 47, ['v'] = 48, ['w'] = 49, ['x'] = 50,
	['y'] = 51, ['z'] = 52, ['0'] = 53, ['1'] = 54, ['2'] = 55, ['3'] = 56, ['4'] = 57,
	['5'] = 58, ['6'] = 59, ['7'] = 60, ['8'] = 61, ['9'] = 62, ['+'] = 63, ['/'] = 64,
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
