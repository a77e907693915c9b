/* server/processes.c, the table of background processes, without HTTP: real commands in a
 * real sandbox (the runner, on a scratch workspace), started, followed, signalled, timed out
 * and removed. Skipped where the runner cannot start commands (no usable bubblewrap). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>
#include "common/clock.h"
#include "common/log.h"
#include "server/processes.h"
#include "server/runner.h"
#include "server/workspace.h"
#include "unit.h"

struct transcript {
	struct strbuf text;   /* "1:" or "2:" before each piece */
};

static void emit(void *ctx, enum child_stream which, const char *buf, size_t n)
{
	struct transcript *t = ctx;
	strbuf_appendf(&t->text, "%d:%.*s", which == CHILD_OUT ? 1 : 2, (int)n, buf);
}

/* Follows p to its end (at most 20 s); the transcript of its output. */
static int follow_all(struct procs *t, struct proc *p, struct transcript *tr,
		      struct proc_info *info)
{
	struct proc_cursor at = { 0 };
	int64_t end = mono_ms() + 20000;
	int rc;
	while ((rc = proc_follow(t, p, &at, 65536, 1 << 20, mono_ms() + 1000, emit, tr, info)) &&
	       mono_ms() < end)
		;
	return rc;
}

static struct proc *start(struct procs *t, const char *id, const char *command, int timeout_ms,
			  const char *cwd, int *err)
{
	struct proc_spec spec = { .id = id, .command = command, .timeout_ms = timeout_ms,
				  .cwd = cwd };
	struct proc *p = NULL;
	*err = procs_start(t, &spec, &p);
	return p;
}

static void test_output_and_status(struct procs *t)
{
	int err;
	struct transcript tr = { STRBUF_INIT };
	struct proc_info i;
	struct proc *p = start(t, "one", "echo out; sleep 0.2; echo err >&2; sleep 0.2; echo again; "
			       "exit 3", 0, NULL, &err);
	CHECK(err == 0 && p);
	CHECK(follow_all(t, p, &tr, &i) == 0);
	CHECK_STR(tr.text.data, "1:out\n2:err\n1:again\n"); /* in the order written */
	CHECK(i.status == PROC_FAILED && i.exit_code == 3 && i.pid > 0);
	CHECK_STR(i.id, "one");
	CHECK(i.out_size == 10 && i.err_size == 4 && !i.truncated);
	struct strbuf out = STRBUF_INIT, errs = STRBUF_INIT;
	proc_logs(t, p, 4, &out, &errs, &i);
	CHECK(out.len == 6 && memcmp(out.data, "again\n", 6) == 0 && errs.len == 0);
	strbuf_free(&out);
	strbuf_free(&errs);
	CHECK(proc_kill(t, p, SIGTERM) == -ESRCH); /* it has ended */
	proc_put(t, p);
	strbuf_free(&tr.text);
}

static void test_ids(struct procs *t)
{
	int err;
	struct proc *p = start(t, "dup", "sleep 60", 0, NULL, &err);
	CHECK(err == 0);
	CHECK(!start(t, "dup", "true", 0, NULL, &err) && err == -EEXIST);
	CHECK(procs_remove(t, "dup") == -EBUSY);
	int64_t t0 = mono_ms();
	CHECK(proc_kill(t, p, SIGTERM) == 0); /* returns once it has ended */
	CHECK(mono_ms() - t0 < 5000);
	struct proc_info i;
	proc_info(t, p, &i);
	CHECK(i.status == PROC_KILLED);
	proc_put(t, p);
	/* a finished record's id may be taken again: the new record replaces it */
	struct transcript tr = { STRBUF_INIT };
	p = start(t, "dup", "echo second", 0, NULL, &err);
	CHECK(err == 0 && follow_all(t, p, &tr, &i) == 0 && i.status == PROC_COMPLETED);
	CHECK_STR(tr.text.data, "1:second\n");
	proc_put(t, p);
	CHECK(procs_remove(t, "dup") == 0);
	CHECK(procs_get(t, "dup") == NULL);
	CHECK(procs_remove(t, "dup") == -ENOENT);
	bool running;
	int code;
	CHECK(procs_state(t, "dup", &running, &code) == -ENOENT);
	strbuf_free(&tr.text);
}

static void test_timeout_and_errors(struct procs *t)
{
	int err;
	struct transcript tr = { STRBUF_INIT };
	struct proc_info i = { 0 };
	struct proc *p = start(t, NULL, "sleep 60", 200, NULL, &err);
	CHECK(err == 0 && follow_all(t, p, &tr, &i) == 0);
	CHECK(i.status == PROC_FAILED && i.exit_code == 124);
	CHECK_HAS(tr.text.data, "2:Command timed out after 200ms");
	CHECK(i.id && strncmp(i.id, "proc_", 5) == 0);
	proc_put(t, p);
	strbuf_free(&tr.text);

	/* a directory that is not there makes a record that says so */
	struct transcript tr2 = { STRBUF_INIT };
	p = start(t, NULL, "true", 0, "/workspace/missing", &err);
	CHECK(err == 0 && follow_all(t, p, &tr2, &i) == 0);
	CHECK(i.status == PROC_ERROR && i.exit_code == 1 && i.pid == -1);
	CHECK_HAS(tr2.text.data, "Failed to change directory to '/workspace/missing'");
	proc_put(t, p);
	strbuf_free(&tr2.text);
}

static void test_list_and_kill_all(struct procs *t)
{
	int err;
	struct proc *a = start(t, "a", "sleep 60", 0, NULL, &err);
	struct proc *b = start(t, "b", "sleep 60", 0, NULL, &err);
	size_t n;
	struct proc **v = procs_list(t, &n);
	struct proc_info first, second;
	CHECK(n >= 2);
	proc_info(t, v[0], &first);
	proc_info(t, v[1], &second);
	CHECK_STR(first.id, "a"); /* running ones first, oldest first */
	CHECK_STR(second.id, "b");
	procs_list_put(t, v, n);
	CHECK(procs_kill_all(t, SIGKILL) == 2);
	proc_put(t, a);
	proc_put(t, b);
}

int main(void)
{
	char ws[] = "/tmp/sbx-test-procs-XXXXXX";
	if (!mkdtemp(ws) || ws_init(ws)) {
		printf("1..0 # SKIP no scratch workspace\n");
		return 0;
	}
	log_set_level(LOG_LVL_ERROR);
	/* An sbxd that starts meanwhile (the api suite runs beside this) removes the sandbox
	 * cgroups of processes not called sbxd as left behind, killing what runs there. */
	prctl(PR_SET_NAME, "sbxd");
	runner_init(ws, NULL);
	if (runner_unavailable()) {
		printf("1..0 # SKIP %s\n", runner_unavailable());
		return 0;
	}
	struct procs *t = procs_new();
	test_output_and_status(t);
	test_ids(t);
	test_timeout_and_errors(t);
	test_list_and_kill_all(t);
	procs_free(t);
	ws_shutdown();
	rmdir(ws);
	return UNIT_DONE();
}
