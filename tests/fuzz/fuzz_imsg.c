/* libFuzzer target: interpreter messages (server/imsg.c), as a hostile interpreter would write
 * them. The first input byte picks the size of the pieces the rest is fed in (so lines split
 * anywhere) and whether the reader's line limit is small; every complete line is parsed. What
 * imsg_parse accepts must be a JSON object to cJSON too (the line goes to clients as it is),
 * with the same "type", "seq" and "text" as cJSON sees them, and the events built from it must
 * be JSON objects as well: anything else aborts. */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "server/imsg.h"

static cJSON *must_parse(const char *text, size_t len)
{
	cJSON *j = cJSON_ParseWithLength(text, len);
	if (!cJSON_IsObject(j))
		abort();
	return j;
}

/* The decoded string span must be what cJSON made of the same string. */
static void same_string(struct imsg_span span, const cJSON *item)
{
	char buf[256];
	if (!imsg_is_string(span)) {
		if (cJSON_IsString(item))
			abort();
		return;
	}
	if (!cJSON_IsString(item))
		abort();
	if (imsg_string(span, buf, sizeof buf) ? strcmp(buf, item->valuestring) != 0
					       : strncmp(buf, item->valuestring, strlen(buf)) != 0)
		abort();
}

static void check_event(const struct strbuf *ev, const char *type)
{
	cJSON *j = must_parse(ev->data, ev->len);
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "type");
	if (!cJSON_IsString(t) || (type && strcmp(t->valuestring, type) != 0))
		abort();
	cJSON_Delete(j);
}

static void check_line(const char *line, size_t len)
{
	static const char *const names[] = { NULL, "stdout", "stderr", "result", "done", "ready",
					     "init_done" };
	struct imsg m;
	if (!imsg_parse(line, len, &m))
		return;
	cJSON *j = must_parse(line, len);
	const cJSON *type = cJSON_GetObjectItemCaseSensitive(j, "type");
	if (m.type != IMSG_OTHER &&
	    (!cJSON_IsString(type) || strcmp(type->valuestring, names[m.type]) != 0))
		abort();
	if (m.type == IMSG_OTHER && cJSON_IsString(type))
		for (size_t i = 1; i < sizeof names / sizeof names[0]; i++)
			if (strcmp(type->valuestring, names[i]) == 0)
				abort();
	same_string(m.text, cJSON_GetObjectItemCaseSensitive(j, "text"));
	const cJSON *seq = cJSON_GetObjectItemCaseSensitive(j, "seq");
	if (m.seq != -1 && (!cJSON_IsNumber(seq) || seq->valuedouble != (double)m.seq))
		abort();

	struct strbuf ev = STRBUF_INIT;
	imsg_output_event(&m, &ev);
	check_event(&ev, NULL);
	strbuf_reset(&ev);
	imsg_done_event(&m, &ev);
	check_event(&ev, NULL);
	const cJSON *err = cJSON_GetObjectItemCaseSensitive(j, "error");
	if (cJSON_IsObject(err)) {
		same_string(imsg_member(m.error, "ename"),
			    cJSON_GetObjectItemCaseSensitive(err, "ename"));
		same_string(imsg_member(m.error, "evalue"),
			    cJSON_GetObjectItemCaseSensitive(err, "evalue"));
	}
	strbuf_free(&ev);
	cJSON_Delete(j);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	size_t piece = (size_t)(data[0] & 0x3f) + 1;
	struct imsg_reader r;
	imsg_reader_init(&r, data[0] & 0x80 ? 64 : 1 << 20);
	data++;
	size--;
	for (size_t off = 0; off < size; off += piece) {
		size_t n = size - off < piece ? size - off : piece;
		imsg_reader_add(&r, (const char *)data + off, n);
		const char *line;
		size_t len;
		int got;
		while ((got = imsg_reader_next(&r, &line, &len)) > 0)
			check_line(line, len);
		if (got < 0) {
			/* the interpreter would be killed here; start over with the rest */
			size_t max = r.max;
			imsg_reader_free(&r);
			imsg_reader_init(&r, max);
		}
	}
	imsg_reader_free(&r);
	return 0;
}
