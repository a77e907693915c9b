/* Interpreter messages (server/imsg.c): what the kernels send, what a hostile interpreter might,
 * and the lines of the reader whatever the pieces they come in. */
#include <stdlib.h>
#include "server/imsg.h"
#include "unit.h"

static bool parse(const char *line, struct imsg *m)
{
	return imsg_parse(line, strlen(line), m);
}

/* The event of a done message, as text (static buffer). */
static const char *done_event(const char *line)
{
	static char out[512];
	struct imsg m;
	struct strbuf ev = STRBUF_INIT;
	if (!parse(line, &m))
		return "(refused)";
	imsg_done_event(&m, &ev);
	snprintf(out, sizeof out, "%s", ev.data);
	strbuf_free(&ev);
	return out;
}

static void test_kernel_messages(void)
{
	struct imsg m;
	struct strbuf ev = STRBUF_INIT;
	CHECK(parse("{\"type\": \"stdout\", \"text\": \"h\\u00e9llo\\n\"}", &m));
	CHECK(m.type == IMSG_STDOUT);
	imsg_output_event(&m, &ev);
	CHECK_STR(ev.data, "{\"type\":\"stdout\",\"text\":\"h\\u00e9llo\\n\"}");
	strbuf_reset(&ev);
	CHECK(parse("{\"type\":\"stderr\",\"text\":7}", &m) && m.type == IMSG_STDERR);
	imsg_output_event(&m, &ev);
	CHECK_STR(ev.data, "{\"type\":\"stderr\",\"text\":\"\"}");
	strbuf_free(&ev);

	CHECK(parse("{\"type\": \"ready\"}", &m) && m.type == IMSG_READY);
	CHECK(parse("{\"type\": \"result\", \"json\": {\"a\": [1, 2.5e-3, null]}}", &m) &&
	      m.type == IMSG_RESULT);
	CHECK(parse("{\"type\":\"what\"}", &m) && m.type == IMSG_OTHER);
	CHECK(parse("{\"text\":\"no type\"}", &m) && m.type == IMSG_OTHER);

	CHECK_STR(done_event("{\"type\": \"done\", \"seq\": 3, \"execution_count\": 2, "
			     "\"error\": null}"),
		  "{\"type\":\"execution_complete\",\"execution_count\":2}");
	CHECK(parse("{\"type\":\"done\",\"seq\":3}", &m) && m.seq == 3 && m.count == 1);
	CHECK(parse("{\"type\":\"done\",\"seq\":3.5}", &m) && m.seq == -1);
	CHECK(parse("{\"type\":\"done\",\"seq\":\"3\"}", &m) && m.seq == -1);
	CHECK_STR(done_event("{\"type\":\"done\",\"seq\":1,\"error\":{\"ename\":\"ValueError\","
			     "\"evalue\":\"bad\",\"traceback\":[\"a\", \"b\"]}}"),
		  "{\"type\":\"error\",\"ename\":\"ValueError\",\"evalue\":\"bad\","
		  "\"traceback\":[\"a\", \"b\"]}");
	/* fields of the wrong kind get the defaults */
	CHECK_STR(done_event("{\"type\":\"done\",\"error\":{\"ename\":1,\"traceback\":{}}}"),
		  "{\"type\":\"error\",\"ename\":\"Error\",\"evalue\":\"\",\"traceback\":[]}");

	char buf[64];
	CHECK(parse("{\"type\":\"init_done\",\"error\":\"cwd: No such file\","
		    "\"errno\":\"ENOENT\"}", &m) && m.type == IMSG_INIT_DONE);
	CHECK(imsg_string(m.error, buf, sizeof buf));
	CHECK_STR(buf, "cwd: No such file");
	CHECK(imsg_string(m.errname, buf, sizeof buf));
	CHECK_STR(buf, "ENOENT");
}

/* Whether {"a":[[...]]} nested depth deep parses. */
static bool nested(int depth)
{
	struct imsg m;
	struct strbuf line = STRBUF_INIT;
	strbuf_appends(&line, "{\"a\":");
	for (int i = 1; i < depth; i++)
		strbuf_appends(&line, "[");
	for (int i = 1; i < depth; i++)
		strbuf_appends(&line, "]");
	strbuf_appends(&line, "}");
	bool ok = imsg_parse(line.data, line.len, &m);
	strbuf_free(&line);
	return ok;
}

static void test_refused(void)
{
	static const char *const bad[] = {
		"", "[]", "\"s\"", "{", "{\"type\":\"stdout\"", "{\"type\":\"stdout\"} x",
		"{\"a\":01}", "{\"a\":1.}", "{\"a\":-}", "{\"a\":+1}", "{\"a\":.5}", "{\"a\":tru}",
		"{\"a\":NaN}", "{'a':1}", "{\"a\":1,}", "{\"a\" 1}", "{\"a\":\"\\x\"}",
		"{\"a\":\"\\ud800\"}", "{\"a\":\"\\udc00\"}", "{\"a\":\"\\ud800\\u0041\"}",
		"{\"a\":\"\\u12\"}", "{\"a\":\"tab\there\"}", "{\"a\":1}\r", "{\"a\":\"\xff\"}",
		"{\"a\":\"\xc0\xaf\"}",
	};
	struct imsg m;
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		bool ok = parse(bad[i], &m);
		CHECK(!ok);
		if (ok)
			printf("# accepted: %s\n", bad[i]);
	}
	CHECK(!imsg_parse("{\"a\":1}\0", 8, &m)); /* NUL */
	CHECK(parse(" {\"a\":\"\\ud83d\\ude00 \\/\"}\t", &m));

	/* nesting: up to IMSG_DEPTH_MAX */
	CHECK(nested(IMSG_DEPTH_MAX));
	CHECK(!nested(IMSG_DEPTH_MAX + 1));
}

static void test_first_member_counts(void)
{
	struct imsg m;
	CHECK(parse("{\"type\":\"stdout\",\"type\":\"done\",\"t\\u0065xt\":\"x\"}", &m));
	CHECK(m.type == IMSG_STDOUT);
	char buf[8];
	CHECK(imsg_string(m.text, buf, sizeof buf) && strcmp(buf, "x") == 0);
	/* a member inside another object is not the message's */
	CHECK(parse("{\"inner\":{\"type\":\"done\"}}", &m) && m.type == IMSG_OTHER);
}

static void test_strings(void)
{
	struct imsg m;
	char buf[8];
	CHECK(parse("{\"text\":\"abcd\\u00e9\\u00e9\"}", &m));
	CHECK(!imsg_string(m.text, buf, sizeof buf)); /* cut, between characters */
	CHECK_STR(buf, "abcd\xc3\xa9");
	CHECK(parse("{\"text\":\"ab\\u0000cd\"}", &m));
	CHECK(imsg_string(m.text, buf, sizeof buf));
	CHECK_STR(buf, "ab");
	CHECK(!imsg_is_string((struct imsg_span){ 0 }));
	CHECK(imsg_string((struct imsg_span){ 0 }, buf, sizeof buf) && buf[0] == 0);
}

static void test_reader(void)
{
	static const char input[] = "{\"a\":1}\n\n{\"b\":2}\n{\"unfinished";
	for (size_t piece = 1; piece <= sizeof input; piece++) {
		struct imsg_reader r;
		struct strbuf got = STRBUF_INIT;
		imsg_reader_init(&r, 64);
		for (size_t off = 0; off < sizeof input - 1; off += piece) {
			size_t n = sizeof input - 1 - off < piece ? sizeof input - 1 - off : piece;
			imsg_reader_add(&r, input + off, n);
			const char *line;
			size_t len;
			while (imsg_reader_next(&r, &line, &len) > 0) {
				strbuf_append(&got, line, len);
				strbuf_appends(&got, "|");
			}
		}
		CHECK_STR(got.data, "{\"a\":1}||{\"b\":2}|");
		CHECK(imsg_reader_pending(&r) == strlen("{\"unfinished"));
		imsg_reader_free(&r);
		strbuf_free(&got);
	}

	/* a line over the maximum, finished or not */
	struct imsg_reader r;
	const char *line;
	size_t len;
	char big[100];
	memset(big, 'x', sizeof big);
	imsg_reader_init(&r, 64);
	imsg_reader_add(&r, big, 60);
	CHECK(imsg_reader_next(&r, &line, &len) == 0);
	imsg_reader_add(&r, big, 10);
	CHECK(imsg_reader_next(&r, &line, &len) == -1);
	imsg_reader_free(&r);
	imsg_reader_init(&r, 64);
	big[80] = '\n';
	imsg_reader_add(&r, big, sizeof big);
	CHECK(imsg_reader_next(&r, &line, &len) == -1);
	imsg_reader_free(&r);
}

int main(void)
{
	test_kernel_messages();
	test_refused();
	test_first_member_counts();
	test_strings();
	test_reader();
	return UNIT_DONE();
}
