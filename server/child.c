/* The pump behind server/child.h.
 *
 * One round of child_step() polls, together: stdout and stderr (a child that fills one pipe
 * while we wait on the other would otherwise deadlock), stdin while there is input to feed,
 * the client's socket for its hang-up, the pidfd for the exit, and an eventfd that
 * child_wake() writes to; the poll ends no later than the next timer (the deadline, the KILL
 * after a TERM, the caller's tick, the end of the drain). Each stream is read for at most
 * ROUND_BYTES a round, so that a child that never stops writing cannot hide its exit or a
 * timer.
 *
 * The end, always in this order:
 *   1. the exit is seen (waitid with WNOWAIT: the child stays a zombie, so its pid, which is
 *      its process group's id when there is no bubblewrap, cannot be reused meanwhile);
 *   2. the rest of its process group is killed, unless the policy lets it survive (and even
 *      then when the child timed out: what a timed-out command left behind goes too);
 *   3. the child is reaped, under the lock child_signal() takes, which from then on refuses:
 *      a signal never reaches a recycled pid;
 *   4. what the pipes still hold is read: until both ends are closed, for at most drain_ms,
 *      or, when the group may survive (its members may hold the pipes for as long as they
 *      like), until the pipes are empty: what the child itself wrote is in them already;
 *   5. only then is the child finished, so that "finished" always means "all output is in".
 *
 * Stops (a timeout, a departed client, child_finish() on a running child) send TERM and KILL
 * grace_ms later, and are marked (timed_out, client_gone, killed) for the caller to answer by.
 * What a child may say is bounded here: output_max bytes of each stream, beyond which the rest
 * is dropped (truncated) or the child killed (overflow); the caller's output() can refuse
 * more (the interpreters' message bounds), which kills the child too. */
#include "server/child.h"
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/wait.h>
#include <unistd.h>
#include "common/clock.h"
#include "common/fdio.h"
#include "common/log.h"

#define READ_CHUNK 65536
#define ROUND_BYTES (1024 * 1024)  /* per stream and round */
#define EXIT_POLL_MS 10            /* without a pidfd (old kernels): look for the exit this often */

void child_init(struct child *c)
{
	*c = (struct child){ .client_fd = -1, .wake_fd = -1, .deadline = -1, .kill_at = -1,
			     .drain_until = -1 };
	c->p = (struct run_proc){ .pid = -1, .stdin_fd = -1, .stdout_fd = -1, .stderr_fd = -1,
				  .pidfd = -1, .inner_pid = -1, .inner_pidfd = -1 };
	pthread_mutex_init(&c->lock, NULL);
}

int child_adopt(struct child *c, const struct run_proc *p, const struct child_policy *policy,
		const struct child_ops *ops, void *ctx)
{
	int wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (wake < 0)
		return -errno;
	pthread_mutex_lock(&c->lock); /* child_signal() may look already */
	c->p = *p;
	pthread_mutex_unlock(&c->lock);
	c->policy = *policy;
	c->ops = ops;
	c->ctx = ctx;
	c->wake_fd = wake;
	if (policy->timeout_ms > 0)
		c->deadline = mono_ms() + policy->timeout_ms;
	return 0;
}

int child_start(struct child *c, const struct run_spec *spec, const struct child_policy *policy,
		const struct child_ops *ops, void *ctx)
{
	struct run_proc p;
	int err = runner_spawn(spec, &p);
	if (err)
		return err;
	err = child_adopt(c, &p, policy, ops, ctx);
	if (err) {
		runner_kill(&p, SIGKILL);
		int status;
		runner_wait(&p, &status, -1);
		runner_close(&p);
	}
	return err;
}

void child_feed(struct child *c, const char *input, size_t len)
{
	c->input = input;
	c->input_len = len;
	c->input_off = 0;
	if (!len && c->p.stdin_fd >= 0) {
		close(c->p.stdin_fd);
		c->p.stdin_fd = -1;
	}
}

void child_watch_client(struct child *c, int fd)
{
	c->client_fd = fd;
}

/* ---- signals ---- */

int child_signal(struct child *c, int sig)
{
	pthread_mutex_lock(&c->lock);
	int err = c->reaped || c->p.pid <= 0 ? -ESRCH : runner_kill(&c->p, sig);
	pthread_mutex_unlock(&c->lock);
	return err;
}

bool child_reaped(struct child *c)
{
	pthread_mutex_lock(&c->lock);
	bool reaped = c->reaped;
	pthread_mutex_unlock(&c->lock);
	return reaped;
}

void child_wake(struct child *c)
{
	if (c->wake_fd >= 0 && eventfd_write(c->wake_fd, 1) < 0 && errno != EAGAIN)
		log_debug("child: wake: %s", strerror(errno));
}

static void kill_now(struct child *c)
{
	c->killed = true;
	child_signal(c, SIGKILL);
}

/* TERM now, KILL grace_ms later (unless a KILL is due sooner). */
static void stop(struct child *c, int64_t now)
{
	c->deadline = -1;
	c->killed = true;
	child_signal(c, SIGTERM);
	if (c->kill_at < 0)
		c->kill_at = now + c->policy.grace_ms;
}

static void timers(struct child *c, int64_t now)
{
	if (c->exited)
		return;
	if (c->deadline >= 0 && now >= c->deadline) {
		c->timed_out = true;
		stop(c, now);
	}
	if (c->kill_at >= 0 && now >= c->kill_at) {
		c->kill_at = -1;
		kill_now(c);
	}
}

/* ---- the exit (steps 1 to 3 of the top) ---- */

static void check_exit(struct child *c)
{
	siginfo_t si = { 0 };
	if (c->exited)
		return;
	int rc = waitid(P_PID, (id_t)c->p.pid, &si, WEXITED | WNOHANG | WNOWAIT);
	if ((rc == 0 && si.si_pid == 0) || (rc < 0 && errno == EINTR))
		return; /* still running */
	pthread_mutex_lock(&c->lock);
	if (!c->policy.group_survives || c->timed_out)
		runner_kill(&c->p, SIGKILL);
	int err = runner_wait(&c->p, &c->status, -1);
	if (err) {
		log_error("child: waiting for %d: %s", (int)c->p.pid, strerror(-err));
		c->status = 255 << 8;
	}
	c->reaped = true;
	pthread_mutex_unlock(&c->lock);
	c->exited = true;
	c->kill_at = c->deadline = -1;
	c->drain_until = mono_ms() + c->policy.drain_ms;
}

/* Waits at most timeout_ms (< 0: no bound) for the exit, and acts on it. */
static void wait_exit(struct child *c, int timeout_ms)
{
	int64_t end = timeout_ms < 0 ? -1 : mono_ms() + timeout_ms;
	for (check_exit(c); !c->exited; check_exit(c)) {
		int wait = mono_left_ms(end);
		if (wait == 0)
			return;
		struct pollfd pfd = { .fd = c->p.pidfd, .events = POLLIN };
		if (c->p.pidfd < 0 && (wait < 0 || wait > EXIT_POLL_MS))
			wait = EXIT_POLL_MS;
		poll(&pfd, c->p.pidfd >= 0 ? 1 : 0, wait);
	}
}

/* ---- the streams ---- */

static void refuse(struct child *c, enum child_stream which)
{
	c->closed[which] = true;
	kill_now(c);
}

/* Hands bytes to the caller within output_max. */
static void deliver(struct child *c, enum child_stream which, const char *buf, size_t n)
{
	size_t max = c->policy.output_max;
	if (max && c->got[which] + n > max) {
		if (c->policy.kill_over_max) {
			if (!c->overflow[which])
				kill_now(c);
			c->overflow[which] = true;
			return;
		}
		c->truncated[which] = true;
		n = max - c->got[which];
	}
	c->got[which] += n;
	if (n && !c->ops->output(c->ctx, which, buf, n))
		refuse(c, which);
}

/* Reads what the stream has now, at most ROUND_BYTES: 1 when there may be more, 0 when it is
 * empty for now, -1 once it is closed. */
static int read_stream(struct child *c, enum child_stream which)
{
	int fd = which == CHILD_OUT ? c->p.stdout_fd : c->p.stderr_fd;
	char buf[READ_CHUNK];
	for (size_t done = 0; done < ROUND_BYTES;) {
		if (c->closed[which])
			return -1;
		ssize_t n = read(fd, buf, sizeof buf);
		if (n > 0) {
			deliver(c, which, buf, (size_t)n);
			done += (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return 0;
		c->closed[which] = true; /* the end, or an error that is as good as one */
		if (!c->ops->output(c->ctx, which, NULL, 0))
			kill_now(c);
		return -1;
	}
	return 1;
}

static void feed(struct child *c)
{
	ssize_t w = fd_write_nosigpipe(c->p.stdin_fd, c->input + c->input_off,
				       c->input_len - c->input_off);
	if (w > 0)
		c->input_off += (size_t)w;
	if ((w < 0 && w != -EAGAIN && w != -EINTR) || c->input_off == c->input_len) {
		close(c->p.stdin_fd);
		c->p.stdin_fd = -1;
	}
}

/* After the exit (step 4 of the top): whether the child is finished. */
static bool drained(struct child *c)
{
	bool more = false;
	for (int w = CHILD_OUT; w <= CHILD_ERR; w++)
		if (!c->closed[w] && read_stream(c, w) > 0)
			more = true;
	if (c->closed[CHILD_OUT] && c->closed[CHILD_ERR])
		return true;
	if (c->policy.group_survives && !more)
		return true;
	return mono_ms() >= c->drain_until;
}

/* ---- the round ---- */

struct round {
	struct pollfd pfd[6];
	int n, out, err, in, client, wake;
};

static void watch(struct round *r, int *slot, int fd, short events)
{
	*slot = -1;
	if (fd < 0)
		return;
	*slot = r->n;
	r->pfd[r->n++] = (struct pollfd){ .fd = fd, .events = events };
}

static bool ready(const struct round *r, int slot, short mask)
{
	return slot >= 0 && (r->pfd[slot].revents & mask);
}

static int round_wait(struct child *c, int wait_ms, int64_t wish)
{
	int64_t next = mono_earlier(mono_earlier(c->deadline, c->kill_at), wish);
	if (c->exited)
		next = mono_earlier(next, c->drain_until);
	int until_next = mono_left_ms(next);
	if (until_next >= 0 && (wait_ms < 0 || until_next < wait_ms))
		wait_ms = until_next;
	if (!c->exited && c->p.pidfd < 0 && (wait_ms < 0 || wait_ms > EXIT_POLL_MS))
		wait_ms = EXIT_POLL_MS;
	return wait_ms;
}

static void poll_round(struct child *c, int wait_ms, int64_t wish)
{
	struct round r = { .n = 0 };
	bool live = !c->exited;
	bool out_ok = !c->closed[CHILD_OUT] &&
		      (!live || !c->ops->may_read || c->ops->may_read(c->ctx));
	int pid_slot;
	watch(&r, &r.out, out_ok ? c->p.stdout_fd : -1, POLLIN);
	watch(&r, &r.err, !c->closed[CHILD_ERR] ? c->p.stderr_fd : -1, POLLIN);
	watch(&r, &r.in, live && c->input ? c->p.stdin_fd : -1, POLLOUT);
	watch(&r, &r.client, live && !c->client_gone ? c->client_fd : -1, POLLRDHUP);
	watch(&r, &pid_slot, live ? c->p.pidfd : -1, POLLIN);
	watch(&r, &r.wake, c->wake_fd, POLLIN);
	int n = poll(r.pfd, (nfds_t)r.n, round_wait(c, wait_ms, wish));
	if (n < 0 && errno != EINTR && !c->killed) {
		log_error("child: poll: %s: ending %d", strerror(errno), (int)c->p.pid);
		kill_now(c);
	}
	if (n <= 0)
		return;
	if (ready(&r, r.wake, POLLIN)) {
		eventfd_t v;
		eventfd_read(c->wake_fd, &v);
	}
	if (ready(&r, r.in, POLLOUT | POLLERR | POLLHUP))
		feed(c);
	if (ready(&r, r.out, POLLIN | POLLHUP | POLLERR))
		read_stream(c, CHILD_OUT);
	if (ready(&r, r.err, POLLIN | POLLHUP | POLLERR))
		read_stream(c, CHILD_ERR);
	if (ready(&r, r.client, POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) {
		log_debug("child: the client went away: stopping %d", (int)c->p.pid);
		c->client_gone = true;
		if (c->kill_at < 0)
			stop(c, mono_ms());
	}
}

bool child_step(struct child *c, int wait_ms)
{
	if (c->finished || c->p.pid <= 0)
		return true;
	int64_t now = mono_ms();
	timers(c, now);
	int64_t wish = c->ops->tick && !c->exited ? c->ops->tick(c->ctx, now) : -1;
	check_exit(c);
	if (!c->exited) {
		poll_round(c, wait_ms, wish);
		timers(c, mono_ms());
		check_exit(c);
	}
	if (c->exited && drained(c))
		c->finished = true;
	else if (c->exited && wait_ms != 0)
		poll_round(c, wait_ms, -1); /* the drain: wait for the pipes */
	return c->finished;
}

void child_run(struct child *c)
{
	while (!child_step(c, -1))
		;
}

/* ---- the end ---- */

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

void child_finish(struct child *c)
{
	if (c->p.pid > 0 && !c->exited) {
		stop(c, mono_ms());
		wait_exit(c, c->policy.grace_ms);
		if (!c->exited) {
			kill_now(c);
			wait_exit(c, -1);
		}
	}
	c->finished = c->p.pid > 0;
	pthread_mutex_lock(&c->lock);
	if (c->input)
		close_fd(&c->p.stdin_fd);
	close_fd(&c->p.stdout_fd);
	close_fd(&c->p.stderr_fd);
	close_fd(&c->p.pidfd);
	close_fd(&c->p.inner_pidfd);
	pthread_mutex_unlock(&c->lock);
}

void child_free(struct child *c)
{
	pthread_mutex_lock(&c->lock);
	runner_close(&c->p);
	pthread_mutex_unlock(&c->lock);
	if (c->wake_fd >= 0)
		close(c->wake_fd);
	c->wake_fd = -1;
	pthread_mutex_destroy(&c->lock);
}

int child_exit_code(const struct child *c)
{
	return runner_exit_code(c->status);
}
