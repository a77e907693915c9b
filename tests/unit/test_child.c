/* server/child.c, the pump, on real processes: what a child writes, its exit, the order of the
 * end (the group, the reap, the drain), stops by deadline, by a departed client and by
 * child_finish, the output bounds, stdin, the caller's timers and wake-ups. The processes are
 * started here the way the runner starts them without bubblewrap (each leads its own process
 * group, non-blocking pipes, a pidfd), so no sandbox is needed. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include "common/clock.h"
#include "common/strbuf.h"
#include "server/child.h"
#include "unit.h"

extern char **environ;

/* Starts sh -c script as the runner does with --isolation=none. */
static int spawn_sh(const char *script, bool with_stdin, struct run_proc *p)
{
	int in[2] = { -1, -1 }, out[2], err[2];
	if ((with_stdin && pipe2(in, O_CLOEXEC)) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC))
		return -errno;
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	posix_spawn_file_actions_init(&fa);
	posix_spawnattr_init(&attr);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID);
	if (with_stdin)
		posix_spawn_file_actions_adddup2(&fa, in[0], 0);
	else
		posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, out[1], 1);
	posix_spawn_file_actions_adddup2(&fa, err[1], 2);
	char *argv[] = { "sh", "-c", (char *)script, NULL };
	pid_t pid;
	int rc = posix_spawn(&pid, "/bin/sh", &fa, &attr, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	if (with_stdin)
		close(in[0]);
	close(out[1]);
	close(err[1]);
	if (rc)
		return -rc;
	*p = (struct run_proc){ .pid = pid, .stdin_fd = in[1], .stdout_fd = out[0],
				.stderr_fd = err[0], .inner_pid = -1, .inner_pidfd = -1 };
	p->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	for (int i = 0; i < 3; i++) {
		int fd = i == 0 ? p->stdin_fd : i == 1 ? p->stdout_fd : p->stderr_fd;
		if (fd >= 0)
			fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	}
	return 0;
}

struct sink {
	struct strbuf out, err;
	int ends;             /* streams whose end was reported */
	int refuse_after;     /* refuse stdout once it holds this many bytes (0: never) */
	bool hold;            /* may_read says no */
	int ticks;
	int64_t tick_at;      /* what tick() asks for */
};

static bool on_output(void *ctx, enum child_stream which, const char *buf, size_t n)
{
	struct sink *s = ctx;
	if (!n) {
		s->ends++;
		return true;
	}
	struct strbuf *b = which == CHILD_OUT ? &s->out : &s->err;
	strbuf_append(b, buf, n);
	return !(which == CHILD_OUT && s->refuse_after && b->len >= (size_t)s->refuse_after);
}

static bool on_may_read(void *ctx)
{
	return !((struct sink *)ctx)->hold;
}

static int64_t on_tick(void *ctx, int64_t now)
{
	struct sink *s = ctx;
	(void)now;
	s->ticks++;
	return s->tick_at;
}

static const struct child_ops ops = { .output = on_output };
static const struct child_ops all_ops = { .output = on_output, .may_read = on_may_read,
					  .tick = on_tick };

static void sink_free(struct sink *s)
{
	strbuf_free(&s->out);
	strbuf_free(&s->err);
}

/* Starts script under the pump. */
static bool start(struct child *c, const char *script, const struct child_policy *pol,
		  const struct child_ops *o, struct sink *s, bool with_stdin)
{
	struct run_proc p;
	child_init(c);
	return spawn_sh(script, with_stdin, &p) == 0 && child_adopt(c, &p, pol, o, s) == 0;
}

static void end(struct child *c)
{
	child_finish(c);
	child_free(c);
}

/* Whether pid is still running (a zombie, whoever's, counts as ended). */
static bool running(pid_t pid)
{
	char path[64], buf[256];
	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return false;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = 0;
	const char *close_paren = strrchr(buf, ')');
	return close_paren && close_paren[1] == ' ' && close_paren[2] != 'Z' &&
	       close_paren[2] != 'X';
}

static pid_t read_pid(const char *path)
{
	int64_t until = mono_ms() + 5000;
	while (mono_ms() < until) {
		FILE *f = fopen(path, "r");
		long pid = 0;
		if (f) {
			/* NOLINTNEXTLINE(cert-err34-c): a pid or nothing; 0 if not yet written */
			if (fscanf(f, "%ld", &pid) != 1)
				pid = 0;
			fclose(f);
		}
		if (pid > 0)
			return (pid_t)pid;
		usleep(1000);
	}
	return -1;
}

static void test_output_and_exit(void)
{
	struct child c;
	struct sink s = { .out = STRBUF_INIT, .err = STRBUF_INIT };
	struct child_policy pol = { .grace_ms = 1000, .drain_ms = 1000 };
	CHECK(start(&c, "echo out; echo err >&2; exit 3", &pol, &ops, &s, false));
	child_run(&c);
	CHECK(c.finished && c.exited && !c.killed && !c.timed_out);
	CHECK(child_exit_code(&c) == 3);
	CHECK(s.out.len == 4 && memcmp(s.out.data, "out\n", 4) == 0);
	CHECK(s.err.len == 4 && memcmp(s.err.data, "err\n", 4) == 0);
	CHECK(s.ends == 2);
	CHECK(child_signal(&c, SIGTERM) == -ESRCH); /* reaped: nothing to signal any more */
	CHECK(child_reaped(&c));
	end(&c);
	sink_free(&s);
}

/* Finished means all output is in: a child that writes much more than a pipe holds, on both
 * streams, and exits at once. */
static void test_all_output_in(void)
{
	struct child c;
	struct sink s = { .out = STRBUF_INIT, .err = STRBUF_INIT };
	struct child_policy pol = { .grace_ms = 1000, .drain_ms = 1000 };
	CHECK(start(&c, "head -c 3000000 /dev/zero; head -c 2000000 /dev/zero >&2", &pol, &ops,
		    &s, false));
	child_run(&c);
	CHECK(s.out.len == 3000000 && s.err.len == 2000000);
	CHECK(child_exit_code(&c) == 0);
	end(&c);
	sink_free(&s);
}

/* The end's order: the group goes before the reap, unless it may survive; a survivor holding
 * the pipes does not hold the end. */
static void test_group_at_exit(void)
{
	char pidfile[] = "/tmp/sbx-test-child-XXXXXX";
	int fd = mkstemp(pidfile);
	close(fd);
	char script[256];
	snprintf(script, sizeof script, "sleep 60 & echo $! > %s; echo started", pidfile);
	for (int survives = 0; survives < 2; survives++) {
		struct child c;
		struct sink s = { .out = STRBUF_INIT, .err = STRBUF_INIT };
		struct child_policy pol = { .grace_ms = 1000, .drain_ms = 3000,
					    .group_survives = survives };
		unlink(pidfile);
		CHECK(start(&c, script, &pol, &ops, &s, false));
		int64_t t0 = mono_ms();
		child_run(&c);
		int64_t took = mono_ms() - t0;
		pid_t bg = read_pid(pidfile);
		CHECK(bg > 0);
		CHECK(s.out.len == 8 && memcmp(s.out.data, "started\n", 8) == 0);
		CHECK(child_exit_code(&c) == 0 && !c.killed);
		if (survives) {
			/* the sleep holds stdout: it is not waited for, and lives on */
			CHECK(took < 2000);
			CHECK(running(bg));
		} else {
			/* KILLed with the group before the reap (its last steps may take a moment) */
			int64_t until = mono_ms() + 2000;
			while (running(bg) && mono_ms() < until)
				usleep(1000);
			CHECK(!running(bg));
			CHECK(s.ends == 2); /* its end closed the pipes: the drain saw them close */
		}
		if (bg > 0)
			kill(bg, SIGKILL);
		end(&c);
		sink_free(&s);
	}
	unlink(pidfile);
}

/* A timeout: TERM, and KILL grace_ms later for a child that ignores it. */
static void test_timeout(void)
{
	struct child c;
	struct sink s = { .out = STRBUF_INIT, .err = STRBUF_INIT };
	struct child_policy pol = { .timeout_ms = 100, .grace_ms = 300, .drain_ms = 1000 };
	CHECK(start(&c, "trap '' TERM; echo ready; while :; do sleep 0.05; done", &pol, &ops, &s,
		    false));
	int64_t t0 = mono_ms();
	child_run(&c);
	int64_t took = mono_ms() - t0;
	CHECK(c.timed_out && c.killed && !c.client_gone);
	CHECK(WIFSIGNALED(c.status) && WTERMSIG(c.status) == SIGKILL);
	CHECK(took >= 400 && took < 5000);
	end(&c);
	sink_free(&s);

	/* one that heeds the TERM ends with it */
	struct sink s2 = { .out = STRBUF_INIT, .err = STRBUF_INIT };
	CHECK(start(&c, "exec sleep 60", &pol, &ops, &s2, false));
	child_run(&c);
	CHECK(c.timed_out && WIFSIGNALED(c.status) && WTERMSIG(c.status) == SIGTERM);
	CHECK(child_exit_code(&c) == 128 + SIGTERM);
	end(&c);
	sink_free(&s2);
}

/* The client hangs up: the child is stopped the same way, and it is no timeout. */
static void test_client_gone(void)
{
	int sv[2];
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
	struct child c;
	struct sink s = { .out = STRBUF_INIT, .err = STRBUF_INIT };
	struct child_policy pol = { .timeout_ms = 60000, .grace_ms = 2000, .drain_ms = 1000 };
	CHECK(start(&c, "exec sleep 60", &pol, &ops, &s, false));
	child_watch_client(&c, sv[0]);
	CHECK(!child_step(&c, 50));
	close(sv[1]);
	int64_t t0 = mono_ms();
	child_run(&c);
	CHECK(mono_ms() - t0 < 2000);
	CHECK(c.client_gone && !c.timed_out && c.killed);
	CHECK(WIFSIGNALED(c.status) && WTERMSIG(c.status) == SIGTERM);
	end(&c);
	close(sv[0]);
	sink_free(&s);
}

/* child_finish on a running child: TERM, then KILL after the grace period. */
static void test_finish_running(void)
{
	struct child c;
	struct sink s = { .out = STRBUF_INIT, .err = STRBUF_INIT };
	struct child_policy pol = { .grace_ms = 200, .drain_ms = 1000 };
	CHECK(start(&c, "trap '' TERM; echo ready; while :; do sleep 0.05; done", &pol, &ops, &s,
		    false));
	while (!s.out.len)
		child_step(&c, 1000);
	int64_t t0 = mono_ms();
	child_finish(&c);
	int64_t took = mono_ms() - t0;
	CHECK(took >= 200 && took < 3000);
	CHECK(c.killed && c.exited && WIFSIGNALED(c.status) && WTERMSIG(c.status) == SIGKILL);
	CHECK(child_signal(&c, SIGKILL) == -ESRCH);
	child_free(&c);
	sink_free(&s);
}

static void test_output_bounds(void)
{
	struct child c;
	struct sink s = { .out = STRBUF_INIT, .err = STRBUF_INIT };
	struct child_policy pol = { .grace_ms = 1000, .drain_ms = 1000, .output_max = 1000 };
	CHECK(start(&c, "head -c 100000 /dev/zero; echo fine >&2", &pol, &ops, &s, false));
	child_run(&c);
	CHECK(s.out.len == 1000 && c.truncated[CHILD_OUT] && !c.truncated[CHILD_ERR]);
	CHECK(s.err.len == 5 && child_exit_code(&c) == 0 && !c.killed);
	end(&c);
	sink_free(&s);

	struct sink s2 = { .out = STRBUF_INIT, .err = STRBUF_INIT };
	pol.kill_over_max = true;
	CHECK(start(&c, "while :; do head -c 65536 /dev/zero; done", &pol, &ops, &s2, false));
	child_run(&c);
	CHECK(c.overflow[CHILD_OUT] && c.killed && s2.out.len <= 1000);
	CHECK(WIFSIGNALED(c.status) && WTERMSIG(c.status) == SIGKILL);
	end(&c);
	sink_free(&s2);

	/* output() refusing: the child goes at once, and that stream is read no more */
	struct sink s3 = { .out = STRBUF_INIT, .err = STRBUF_INIT, .refuse_after = 1 };
	pol = (struct child_policy){ .grace_ms = 1000, .drain_ms = 1000 };
	CHECK(start(&c, "while :; do echo x; done", &pol, &ops, &s3, false));
	child_run(&c);
	CHECK(c.killed && c.closed[CHILD_OUT] && WIFSIGNALED(c.status));
	end(&c);
	sink_free(&s3);
}

static void test_stdin(void)
{
	static char input[300000];
	for (size_t i = 0; i < sizeof input; i++)
		input[i] = (char)('a' + i % 26);
	struct child c;
	struct sink s = { .out = STRBUF_INIT, .err = STRBUF_INIT };
	struct child_policy pol = { .grace_ms = 1000, .drain_ms = 1000 };
	CHECK(start(&c, "cat", &pol, &ops, &s, true));
	child_feed(&c, input, sizeof input);
	child_run(&c);
	CHECK(s.out.len == sizeof input && memcmp(s.out.data, input, sizeof input) == 0);
	CHECK(child_exit_code(&c) == 0);
	end(&c);
	sink_free(&s);
}

static void *release_later(void *arg)
{
	struct child *c = arg;
	usleep(100 * 1000);
	__atomic_store_n(&((struct sink *)c->ctx)->hold, false, __ATOMIC_SEQ_CST);
	child_wake(c);
	return NULL;
}

/* The caller's timers and a held-back stdout: tick() is asked and ends the wait when it says;
 * child_wake() from another thread ends a round that waits for nothing else. */
static void test_tick_and_wake(void)
{
	struct child c;
	struct sink s = { .out = STRBUF_INIT, .err = STRBUF_INIT, .hold = true };
	struct child_policy pol = { .grace_ms = 1000, .drain_ms = 1000 };
	CHECK(start(&c, "echo held; exec sleep 60", &pol, &all_ops, &s, false));
	s.tick_at = mono_ms() + 100;
	int64_t t0 = mono_ms();
	CHECK(!child_step(&c, 5000)); /* ends at the tick's time */
	CHECK(mono_ms() - t0 < 1000 && s.ticks >= 1);
	s.tick_at = -1;
	CHECK(!child_step(&c, 200));
	CHECK(s.out.len == 0); /* held back */
	pthread_t t;
	CHECK(pthread_create(&t, NULL, release_later, &c) == 0);
	t0 = mono_ms();
	CHECK(!child_step(&c, 5000)); /* woken */
	CHECK(mono_ms() - t0 < 1000);
	pthread_join(t, NULL);
	while (!s.out.len && mono_ms() - t0 < 5000)
		child_step(&c, 5000);
	CHECK(s.out.len == 5 && mono_ms() - t0 < 1000);
	end(&c);
	sink_free(&s);
}

int main(void)
{
	test_output_and_exit();
	test_all_output_in();
	test_group_at_exit();
	test_timeout();
	test_client_gone();
	test_finish_running();
	test_output_bounds();
	test_stdin();
	test_tick_and_wake();
	return UNIT_DONE();
}
