/* libFuzzer target: the SSE parser (client/sse.c) on arbitrary bytes cut into arbitrary chunks.
 * The first input byte picks the chunk size, so line ends split across chunks ("\r" | "\n")
 * are exercised; a small line limit exercises the overflow path. Every event handed out must
 * be NUL-terminated at data_len. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "client/sse.h"

static int on_event(void *arg, const struct sse_event *ev)
{
	size_t *count = arg;
	if (!ev->event || !ev->data || !ev->id || ev->data[ev->data_len] != '\0')
		abort();
	/* touch every byte: ASan sees reads past the end */
	volatile size_t sum = strlen(ev->event) + strlen(ev->id);
	for (size_t i = 0; i < ev->data_len; i++)
		sum += (unsigned char)ev->data[i];
	(void)sum;
	return ++*count > 100000; /* a callback may stop the parser */
}

static void on_comment(void *arg, const char *text, size_t len)
{
	volatile size_t sum = 0;
	(void)arg;
	for (size_t i = 0; i < len; i++)
		sum += (unsigned char)text[i];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	size_t chunk = (size_t)(data[0] % 17) + 1, count = 0;
	struct sse_parser *p = sse_parser_new(on_event, data[0] & 0x80 ? on_comment : NULL,
					      &count);
	if (!p)
		return 0;
	if (data[0] & 0x40)
		sse_parser_set_max_line(p, 64);
	data++;
	size--;
	for (size_t off = 0; off < size; off += chunk) {
		size_t n = size - off < chunk ? size - off : chunk;
		if (sse_parser_feed(p, (const char *)data + off, n) != 0)
			break;
	}
	sse_parser_free(p);
	return 0;
}
