/* common/: base64, the errno vocabulary, strbuf, the stat object, monotonic time and whole
 * transfers on descriptors; and shell quoting. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "common/base64.h"
#include "common/clock.h"
#include "common/errnames.h"
#include "common/fdio.h"
#include "common/jsonutil.h"
#include "common/strbuf.h"
#include "client/shellquote.h"
#include "unit.h"

static void test_base64_vectors(void)
{
	static const struct { const char *plain, *enc; } v[] = {
		{ "", "" }, { "f", "Zg==" }, { "fo", "Zm8=" }, { "foo", "Zm9v" },
		{ "foob", "Zm9vYg==" }, { "fooba", "Zm9vYmE=" }, { "foobar", "Zm9vYmFy" },
		{ "\xff\xfe\xfd", "//79" }, { "\xfb\xff", "+/8=" },
	};
	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		size_t n = strlen(v[i].plain);
		char *e = base64_encode_alloc(v[i].plain, n);
		CHECK_STR(e, v[i].enc);
		CHECK(base64_encoded_len(n) == strlen(v[i].enc));
		char out[16];
		ssize_t d = base64_decode(v[i].enc, strlen(v[i].enc), out);
		CHECK(d == (ssize_t)n && memcmp(out, v[i].plain, n) == 0);
		free(e);
	}
}

static void test_base64_roundtrip(void)
{
	unsigned char in[64], out[64 + 3];
	char enc[128];
	int bad = 0;
	srand(42); /* NOLINT(cert-msc32-c,cert-msc51-cpp): the same inputs every run */
	for (size_t n = 0; n <= 64; n++) {
		for (int round = 0; round < 20; round++) {
			for (size_t i = 0; i < n; i++)
				/* NOLINTNEXTLINE(cert-msc30-c,cert-msc50-cpp): as srand above */
				in[i] = (unsigned char)(rand() & 0xff);
			size_t el = base64_encode(in, n, enc);
			if (el != base64_encoded_len(n) || enc[el] != '\0')
				bad++;
			if (base64_decoded_max(el) < n)
				bad++;
			ssize_t d = base64_decode(enc, el, out);
			if (d != (ssize_t)n || memcmp(in, out, n) != 0)
				bad++;
		}
	}
	CHECK(bad == 0);
}

static void test_base64_invalid(void)
{
	static const char *bad[] = {
		"Zm9v!", "Zm9v\n", "Zm 9v", "Z", "Zg==Zg==", "====", "Zm9vY", "Zm-_", "Zg=a",
		"Zm9v\303\251AA", "Zm9vZ===", "=Zm9",
	};
	char out[64];
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		ssize_t d = base64_decode(bad[i], strlen(bad[i]), out);
		CHECK(d == -1);
	}
}

static void test_errnames(void)
{
	CHECK_STR(errno_name(ENOENT), "ENOENT");
	CHECK_STR(errno_name(ENOTEMPTY), "ENOTEMPTY");
	CHECK(errno_name(0) == NULL);
	CHECK(errno_name(99999) == NULL);
	CHECK(errno_from_name("EISDIR") == EISDIR);
	CHECK(errno_from_name("ENOSUCH") == 0);
	CHECK(errno_from_name(NULL) == 0);
	static const int all[] = { EPERM, ENOENT, EIO, EACCES, EEXIST, ENOTDIR, EISDIR, EINVAL,
				   ENOSPC, EROFS, ENAMETOOLONG, ENOTEMPTY, ELOOP, ETIMEDOUT,
				   ENOTCONN, ECANCELED, EXDEV, EFBIG, ENOSYS };
	int bad = 0;
	for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
		if (errno_from_name(errno_name(all[i])) != all[i])
			bad++;
	CHECK(bad == 0);

	int status = 0;
	CHECK_STR(errno_to_code(ENOENT, &status), "FILE_NOT_FOUND");
	CHECK(status == 404);
	CHECK_STR(errno_to_code(ENOTEMPTY, &status), "DIRECTORY_NOT_EMPTY");
	CHECK(status == 409);
	CHECK_STR(errno_to_code(EPERM, &status), "PERMISSION_DENIED");
	CHECK(status == 403);
	CHECK_STR(errno_to_code(ENOTCONN, &status), "FILESYSTEM_ERROR");
	CHECK(status == 500);
}

static void test_api_error_precedence(void)
{
	/* errno field beats code beats status; EIO when nothing fits; never 0. */
	CHECK(errno_from_api_error("ENOTEMPTY", "FILE_EXISTS", 409) == ENOTEMPTY);
	CHECK(errno_from_api_error("EBOGUS", "FILE_EXISTS", 409) == EEXIST);
	CHECK(errno_from_api_error(NULL, "FILE_NOT_FOUND", 500) == ENOENT);
	CHECK(errno_from_api_error(NULL, "CONTEXT_NOT_FOUND", 404) == ENOENT);
	CHECK(errno_from_api_error(NULL, "NO_SUCH_CODE", 404) == ENOENT);
	CHECK(errno_from_api_error(NULL, NULL, 403) == EACCES);
	CHECK(errno_from_api_error(NULL, NULL, 503) == EAGAIN);
	CHECK(errno_from_api_error(NULL, NULL, 500) == EIO);
	CHECK(errno_from_api_error(NULL, NULL, 0) == EIO);
	CHECK(errno_from_api_error("", "", 418) == EIO);
}

static void test_strbuf(void)
{
	struct strbuf sb = STRBUF_INIT;
	strbuf_appends(&sb, "hello");
	strbuf_append(&sb, ", ", 2);
	strbuf_appendf(&sb, "%s %d", "world", 42);
	CHECK_STR(sb.data, "hello, world 42");
	CHECK(sb.len == 15);
	strbuf_consume(&sb, 7);
	CHECK_STR(sb.data, "world 42");
	strbuf_append(&sb, "\0x", 2);
	CHECK(sb.len == 10 && sb.data[8] == '\0' && sb.data[9] == 'x' && sb.data[10] == '\0');
	for (int i = 0; i < 10000; i++)
		strbuf_append(&sb, "0123456789", 10);
	CHECK(sb.len == 100010 && sb.cap > sb.len);
	strbuf_consume(&sb, 1000000);
	CHECK(sb.len == 0 && sb.data[0] == '\0');
	strbuf_reset(&sb);
	strbuf_appends(&sb, "abc");
	size_t n;
	char *p = strbuf_detach(&sb, &n);
	CHECK_STR(p, "abc");
	CHECK(n == 3 && sb.data == NULL && sb.len == 0);
	free(p);
	p = strbuf_detach(&sb, &n);
	CHECK_STR(p, "");
	CHECK(n == 0);
	free(p);
	strbuf_free(&sb);
}

/* Numbers a peer sends are cast only when they fit: a cast out of range is undefined. */
static void test_json_numbers(void)
{
	cJSON *j = cJSON_Parse("{\"big\":1e30,\"small\":-1e30,\"inf\":1e999,\"n\":42,"
			       "\"s\":\"7\",\"t\":[1700000000,5],\"tbig\":[1e30,0],"
			       "\"tns\":[1,1000000000],\"tneg\":[1,-1],\"tshort\":[1]}");
	CHECK(json_int(j, "big", 0) == INT64_MAX);
	CHECK(json_int(j, "small", 0) == INT64_MIN);
	CHECK(json_int(j, "inf", 0) == INT64_MAX);
	CHECK(json_int(j, "n", 0) == 42);
	CHECK(json_int(j, "s", -1) == -1);
	CHECK(json_int(j, "missing", 9) == 9);
	struct timespec ts = { 3, 4 };
	CHECK(json_get_timespec(cJSON_GetObjectItem(j, "t"), &ts));
	CHECK(ts.tv_sec == 1700000000 && ts.tv_nsec == 5);
	ts = (struct timespec){ 3, 4 };
	CHECK(!json_get_timespec(cJSON_GetObjectItem(j, "tbig"), &ts));
	CHECK(!json_get_timespec(cJSON_GetObjectItem(j, "tns"), &ts));
	CHECK(!json_get_timespec(cJSON_GetObjectItem(j, "tneg"), &ts));
	CHECK(!json_get_timespec(cJSON_GetObjectItem(j, "tshort"), &ts));
	CHECK(ts.tv_sec == 3 && ts.tv_nsec == 4); /* untouched when refused */
	cJSON_Delete(j);
}

/* What /bin/sh makes of the quoted word must be the original bytes. */
static int shell_roundtrip(const char *s)
{
	struct strbuf cmd = STRBUF_INIT;
	strbuf_appends(&cmd, "printf %s ");
	shell_append_quoted(&cmd, s);
	char *q = shell_quote(s);
	int ok = q && strstr(cmd.data, q) != NULL;
	free(q);
	/* a real shell must read the quoted string back: that is the test */
	FILE *f = popen(cmd.data, "r"); /* NOLINT(cert-env33-c) */
	strbuf_free(&cmd);
	if (!f)
		return 0;
	struct strbuf out = STRBUF_INIT;
	char buf[256];
	size_t n;
	while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
		strbuf_append(&out, buf, n);
	ok = pclose(f) == 0 && ok && out.len == strlen(s) &&
	     (!out.len || memcmp(out.data, s, out.len) == 0);
	strbuf_free(&out);
	return ok;
}

static void test_shell_quote(void)
{
	char *q = shell_quote("it's");
	CHECK_STR(q, "'it'\\''s'");
	free(q);
	q = shell_quote("");
	CHECK_STR(q, "''");
	free(q);

	static const char *tricky[] = {
		"", "plain", "with space", "it's", "''", "'", "a'b'c", "$HOME", "`id`", "$(id)",
		"\\n\\", "\"double\"", "semi;colon && ls | cat > /dev/null", "*?[a-z]", "~root",
		"-n", "--", "new\nline", "tab\there", "!bang", "#hash", "{a,b}", "\x01\x7f\xff\xfe",
		"caf\xc3\xa9", "%s%n", "a\\'b",
	};
	for (size_t i = 0; i < sizeof(tricky) / sizeof(tricky[0]); i++) {
		int ok = shell_roundtrip(tricky[i]);
		if (!ok)
			printf("# shell quoting failed for \"%s\"\n", tricky[i]);
		CHECK(ok);
	}
	char all[256];
	for (int i = 1; i < 256; i++)
		all[i - 1] = (char)i;
	all[255] = '\0';
	CHECK(shell_roundtrip(all));
}

static void test_clock(void)
{
	CHECK(mono_left_ms(-1) == -1);
	CHECK(mono_left_ms(0) == 0);
	CHECK(mono_left_ms(mono_ms() - 5) == 0);
	int left = mono_left_ms(mono_ms() + 60000);
	CHECK(left > 59000 && left <= 60000);
	CHECK(mono_left_ms(INT64_MAX / 2) == INT32_MAX);
	CHECK(mono_earlier(-1, 5) == 5 && mono_earlier(5, -1) == 5 && mono_earlier(3, 5) == 3);
	CHECK(mono_earlier(-1, -1) < 0);

	pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	pthread_cond_t cond;
	mono_cond_init(&cond);
	pthread_mutex_lock(&lock);
	int64_t t0 = mono_ms();
	CHECK(!mono_cond_wait_until(&cond, &lock, t0 - 1)); /* passed: no wait at all */
	int64_t deadline = t0 + 50;
	while (mono_cond_wait_until(&cond, &lock, deadline))
		;
	CHECK(mono_ms() >= deadline);
	pthread_mutex_unlock(&lock);
	pthread_cond_destroy(&cond);
}

static void test_fdio(void)
{
	int p[2];
	char buf[70000], back[70000];
	for (size_t i = 0; i < sizeof buf; i++)
		buf[i] = (char)(i * 7);
	/* more than a pipe holds, so that the writer must wait for room */
	CHECK(pipe2(p, O_NONBLOCK) == 0);
	CHECK(fd_write_until(p[1], buf, sizeof buf, mono_ms() + 50) == -ETIMEDOUT);
	close(p[0]);
	close(p[1]);

	CHECK(pipe(p) == 0);
	pid_t child = fork();
	if (child == 0) {
		_exit(fd_write_full(p[1], buf, sizeof buf) == 0 ? 0 : 1);
	}
	close(p[1]);
	size_t got = 0;
	CHECK(fd_read_full(p[0], back, sizeof back, &got) == 0 && got == sizeof buf);
	CHECK(memcmp(buf, back, sizeof buf) == 0);
	CHECK(fd_read_full(p[0], back, 10, &got) == 0 && got == 0); /* the end */
	close(p[0]);
	int status;
	waitpid(child, &status, 0);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);

	/* a reader that went away: EPIPE, and the process lives on whatever SIGPIPE does */
	CHECK(pipe(p) == 0);
	close(p[0]);
	signal(SIGPIPE, SIG_DFL);
	CHECK(fd_write_nosigpipe(p[1], "x", 1) == -EPIPE);
	close(p[1]);

	char path[] = "/tmp/sbx-test-fdio-XXXXXX";
	int fd = mkstemp(path);
	CHECK(fd >= 0 && fd_write_full(fd, "hello world", 11) == 0);
	CHECK(fd_pread_full(fd, back, 5, 6) == 5 && memcmp(back, "world", 5) == 0);
	CHECK(fd_pread_full(fd, back, 100, 6) == 5);
	close(fd);
	unlink(path);

	int sv[2];
	CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv) == 0);
	CHECK(!fd_peer_gone(sv[0]));
	CHECK(write(sv[1], "pipelined", 9) == 9);
	CHECK(!fd_peer_gone(sv[0])); /* bytes waiting are not a hang-up */
	close(sv[1]);
	CHECK(fd_peer_gone(sv[0]));
	close(sv[0]);
	CHECK(!fd_peer_gone(-1));
}

int main(void)
{
	test_base64_vectors();
	test_base64_roundtrip();
	test_base64_invalid();
	test_errnames();
	test_api_error_precedence();
	test_strbuf();
	test_json_numbers();
	test_shell_quote();
	test_clock();
	test_fdio();
	return UNIT_DONE();
}
