/* sbxd's idempotency store and handle leases, as engines, without HTTP: a key runs once and
 * its repeats get the first answer (also when they arrive while it runs), a reused key and a
 * streamed answer are told apart, "not carried out" answers are forgotten; handles of a lease
 * that ends are closed, a late write is refused. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "server/handles.h"
#include "server/idempotency.h"
#include "server/leases.h"
#include "unit.h"

static int never_gone(void *arg)
{
	(void)arg;
	return 0;
}

static int gone(void *arg)
{
	(void)arg;
	return 1;
}

static enum idem_verdict begin(const char *key, uint64_t fp, struct idem_entry **e,
			       struct idem_answer *a)
{
	return idem_begin(key, fp, never_gone, NULL, e, a);
}

static void test_once(void)
{
	struct idem_entry *e;
	struct idem_answer a;
	CHECK(begin("c-1", 11, &e, &a) == IDEM_RUN && e);
	idem_complete(e, 201, "application/json", "{\"n\":1}", 7);
	CHECK(begin("c-1", 11, &e, &a) == IDEM_REPLAY && !e);
	CHECK(a.status == 201 && a.len == 7 && memcmp(a.body, "{\"n\":1}", 7) == 0);
	CHECK_STR(a.content_type, "application/json");
	free(a.body);
	free(a.content_type);
	CHECK(begin("c-1", 12, &e, &a) == IDEM_REUSED);

	/* an answer that says "not carried out" is not kept */
	CHECK(begin("c-2", 1, &e, &a) == IDEM_RUN);
	idem_complete(e, 503, NULL, "", 0);
	CHECK(begin("c-2", 1, &e, &a) == IDEM_RUN);
	idem_complete(e, 200, NULL, "ok", 2);

	CHECK(begin("c-3", 1, &e, &a) == IDEM_RUN);
	idem_streamed(e);
	CHECK(begin("c-3", 1, &e, &a) == IDEM_STREAMED);

	CHECK(idem_key_valid("abc-1") && !idem_key_valid("") && !idem_key_valid("a b") &&
	      !idem_key_valid("a\x7f"));
	char long_key[IDEM_KEY_MAX + 1];
	memset(long_key, 'k', IDEM_KEY_MAX);
	long_key[IDEM_KEY_MAX] = '\0';
	CHECK(!idem_key_valid(long_key));
	long_key[IDEM_KEY_MAX - 1] = '\0';
	CHECK(idem_key_valid(long_key));
}

struct repeat {
	enum idem_verdict v;
	struct idem_answer a;
	atomic_bool done;
};

static void *run_repeat(void *arg)
{
	struct repeat *r = arg;
	struct idem_entry *e;
	r->v = begin("c-wait", 5, &e, &r->a);
	atomic_store(&r->done, true);
	return NULL;
}

/* A repeat that arrives while the first copy runs waits for its answer. */
static void test_repeat_waits(void)
{
	struct idem_entry *e;
	struct idem_answer a;
	CHECK(begin("c-wait", 5, &e, &a) == IDEM_RUN);
	struct repeat r = { 0 };
	pthread_t t;
	pthread_create(&t, NULL, run_repeat, &r);
	usleep(100 * 1000); /* time to reach the wait: it must still be waiting */
	CHECK(!atomic_load(&r.done));
	idem_complete(e, 200, NULL, "first", 5);
	pthread_join(t, NULL);
	CHECK(r.v == IDEM_REPLAY && r.a.len == 5 && memcmp(r.a.body, "first", 5) == 0);
	free(r.a.body);
	free(r.a.content_type);

	/* its client hangs up meanwhile: it stops waiting */
	CHECK(begin("c-gone", 5, &e, &a) == IDEM_RUN);
	struct idem_entry *e2;
	CHECK(idem_begin("c-gone", 5, gone, NULL, &e2, &a) == IDEM_GONE);
	idem_complete(e, 200, NULL, "", 0);
}

static int open_null(void)
{
	return open("/dev/null", O_RDONLY);
}

static void test_leases(void)
{
	char id[HANDLE_ID_MAX], other[HANDLE_ID_MAX], anon[HANDLE_ID_MAX];
	leases_start(60000);
	CHECK(leases_renew("client-a") && !leases_renew("bad id") && !leases_renew(""));
	CHECK(handles_add(open_null(), "client-a", id) == 0);
	CHECK(handles_add(open_null(), "client-a", other) == 0);
	CHECK(handles_add(open_null(), NULL, anon) == 0);
	CHECK(handles_count_owned("client-a") == 2);

	/* closing by id only closes the owner's own handles */
	const char *ids[] = { other, anon };
	CHECK(handles_close_owned("client-a", ids, 2) == 1);
	struct handle *h;
	CHECK(handles_get(other, &h) == -ESTALE);
	CHECK(handles_get(anon, &h) == 0);
	handles_put(h);

	/* write sequence numbers: a late one is refused */
	CHECK(handles_get(id, &h) == 0);
	CHECK(handle_write_begin(h, 3) == 0);
	handle_write_end(h);
	CHECK(handle_write_begin(h, 2) == -ESTALE);
	CHECK(handle_write_begin(h, 3) == -ESTALE);
	CHECK(handle_write_begin(h, 0) == 0); /* unnumbered: not checked */
	handle_write_end(h);
	CHECK(handle_write_begin(h, 4) == 0);
	handle_write_end(h);
	handles_put(h);

	/* the lease ends: its handles close, others stay */
	CHECK(leases_end("client-a") == 1);
	CHECK(handles_get(id, &h) == -ESTALE);
	CHECK(handles_count_owned("client-a") == 0);
	CHECK(handles_close(anon) == 0);
	leases_stop();
	handles_shutdown();
}

int main(void)
{
	test_once();
	test_repeat_waits();
	test_leases();
	idem_shutdown();
	return UNIT_DONE();
}
