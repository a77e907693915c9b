/* The typed sandbox API against a real sbxd (the SBXD environment variable names the binary):
 * the same checks with the extensions, with the fallback forced on the same server, and with
 * the fallback the probe picks against `sbxd --no-extensions`. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "client/sandbox.h"
#include "unit.h"

#define TOKEN "test-token-0123456789"

struct server {
	pid_t pid;
	int port;
	char dir[64];
	char ws[128];
	char url[64];
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t len = sizeof a;
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) ||
	    getsockname(fd, (struct sockaddr *)&a, &len)) {
		perror("free_port");
		exit(1);
	}
	close(fd);
	return ntohs(a.sin_port);
}

static bool port_open(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	bool ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
	close(fd);
	return ok;
}

static bool start_sbxd(struct server *sv, bool no_extensions)
{
	const char *bin = getenv("SBXD");
	if (!bin) {
		printf("# SBXD is not set\n");
		return false;
	}
	snprintf(sv->dir, sizeof sv->dir, "/tmp/sbx-api-XXXXXX");
	if (!mkdtemp(sv->dir))
		return false;
	char token_file[128], state[128];
	snprintf(sv->ws, sizeof sv->ws, "%s/ws", sv->dir);
	snprintf(state, sizeof state, "%s/state", sv->dir);
	snprintf(token_file, sizeof token_file, "%s/token", sv->dir);
	mkdir(sv->ws, 0755);
	mkdir(state, 0700);
	int tfd = open(token_file, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (tfd < 0 || write(tfd, TOKEN "\n", sizeof TOKEN) != (ssize_t)sizeof TOKEN)
		return false;
	close(tfd);
	sv->port = free_port();
	snprintf(sv->url, sizeof sv->url, "http://127.0.0.1:%d", sv->port);
	char listen[32];
	snprintf(listen, sizeof listen, "127.0.0.1:%d", sv->port);
	fflush(stdout);
	sv->pid = fork();
	if (sv->pid == 0) {
		const char *argv[] = { bin, "--listen", listen, "--workspace", sv->ws,
				       "--token-file", token_file, "--state-dir", state,
				       no_extensions ? "--no-extensions" : NULL, NULL };
		execv(bin, (char **)argv);
		_exit(127);
	}
	for (double end = now_s() + 10; now_s() < end; usleep(20000)) {
		if (port_open(sv->port))
			return true;
		if (waitpid(sv->pid, NULL, WNOHANG) == sv->pid) {
			printf("# sbxd exited at start\n");
			sv->pid = 0;
			return false;
		}
	}
	printf("# sbxd did not listen within 10 s\n");
	return false;
}

static void stop_sbxd(struct server *sv)
{
	if (sv->pid > 0) {
		kill(sv->pid, SIGTERM);
		waitpid(sv->pid, NULL, 0);
	}
	char cmd[128];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", sv->dir);
	/* the test's own temporary directory, its name made by mkdtemp */
	if (sv->dir[0] && system(cmd) != 0) /* NOLINT(cert-env33-c) */
		printf("# could not remove %s\n", sv->dir);
}

static struct sbx *open_sbx(const struct server *sv, const char *token, int *err)
{
	struct http_client_opts o = { .base_url = sv->url, .token = token,
				      .request_timeout_ms = 20000, .connect_timeout_ms = 2000 };
	struct sbx *s = NULL;
	*err = sbx_open(&o, &s);
	if (*err)
		printf("# sbx_open %s: %d %s\n", sv->url, *err, sbx_last_error());
	return s;
}

/* ---- helpers ---- */

static char *P(const char *base, const char *rel)
{
	static __thread char buf[8][512];
	static __thread int i;
	char *b = buf[i++ % 8];
	snprintf(b, 512, "%s/%s", base, rel);
	return b;
}

static int put_file(struct sbx *s, const char *path, const char *data)
{
	struct sbx_file *f;
	int err = sbx_file_open(s, path, O_WRONLY | O_CREAT | O_TRUNC, 0644, &f, NULL);
	if (err)
		return err;
	ssize_t n = sbx_file_pwrite(f, data, strlen(data), 0);
	err = sbx_file_close(f);
	return n < 0 ? (int)n : err;
}

static bool file_is(struct sbx *s, const char *path, const char *want)
{
	char *d;
	size_t len;
	if (sbx_read_all(s, path, &d, &len))
		return false;
	bool ok = len == strlen(want) && memcmp(d, want, len) == 0;
	free(d);
	return ok;
}

static bool has_entry(struct sbx_dirent *e, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(e[i].name, name) == 0)
			return true;
	return false;
}

/* ---- subtree listings ---- */

struct tree_seen {
	char dirs[16][512];
	size_t n[16], count, entries;
	bool ordered; /* every directory after the first came after its parent */
};

static void tree_collect(void *arg, const char *dir, const struct sbx_dirent *ents, size_t n)
{
	struct tree_seen *t = arg;
	if (t->count) {
		bool parent_seen = false;
		for (size_t i = 0; i < t->count; i++) {
			size_t l = strlen(t->dirs[i]);
			parent_seen |= strncmp(dir, t->dirs[i], l) == 0 && dir[l] == '/' &&
				       !strchr(dir + l + 1, '/');
		}
		t->ordered &= parent_seen;
	}
	if (t->count < 16) {
		snprintf(t->dirs[t->count], sizeof t->dirs[0], "%s", dir);
		t->n[t->count] = n;
	}
	t->count++;
	t->entries += n;
}

static size_t tree_listed(const struct tree_seen *t, const char *dir)
{
	for (size_t i = 0; i < t->count && i < 16; i++)
		if (strcmp(t->dirs[i], dir) == 0)
			return t->n[i];
	return (size_t)-1;
}

/* sbx_readtree: every directory of a subtree whole, breadth-first; bounded, each listing
 * still complete; ENOSYS without the extensions. */
static void check_tree(struct sbx *s, const char *D)
{
	char T[512];
	snprintf(T, sizeof T, "%s/tree", D);
	CHECK(sbx_mkdir(s, T, 0755, NULL) == 0);
	CHECK(sbx_mkdir(s, P(T, "a"), 0755, NULL) == 0);
	CHECK(sbx_mkdir(s, P(T, "a/b"), 0755, NULL) == 0);
	CHECK(sbx_mkdir(s, P(T, "c"), 0755, NULL) == 0);
	CHECK(put_file(s, P(T, "f"), "1") == 0);
	CHECK(put_file(s, P(T, "a/g"), "22") == 0);
	CHECK(put_file(s, P(T, "a/b/h"), "333") == 0);
	CHECK(sbx_symlink(s, "../f", P(T, "a/l"), NULL) == 0);
	struct tree_seen t = { .ordered = true };
	bool truncated = true;
	int err = sbx_readtree(s, T, 0, tree_collect, &t, &truncated);
	if (!sbx_info(s)->extensions) {
		CHECK(err == -ENOSYS && t.count == 0);
		return;
	}
	CHECK(err == 0 && !truncated && t.count == 4 && t.ordered);
	CHECK(strcmp(t.dirs[0], T) == 0 && t.n[0] == 3);
	CHECK(tree_listed(&t, P(T, "a")) == 3 && tree_listed(&t, P(T, "a/b")) == 1 &&
	      tree_listed(&t, P(T, "c")) == 0);
	/* at most 4 entries: the first listing (3) whole, then only what fits whole */
	struct tree_seen u = { .ordered = true };
	CHECK(sbx_readtree(s, T, 4, tree_collect, &u, &truncated) == 0 && truncated);
	CHECK(u.count == 2 && u.entries == 3 && tree_listed(&u, T) == 3 &&
	      tree_listed(&u, P(T, "c")) == 0);
	struct tree_seen v = { .ordered = true };
	CHECK(sbx_readtree(s, P(T, "f"), 0, tree_collect, &v, &truncated) == -ENOTDIR);
	CHECK(sbx_readtree(s, P(T, "nope"), 0, tree_collect, &v, &truncated) == -ENOENT);
	CHECK(v.count == 0);
}

/* ---- watch ---- */

struct watch_seen {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool healthy;
	bool created;
	const char *want;
};

static void w_change(void *arg, const char *path, const char *type, bool is_dir)
{
	struct watch_seen *w = arg;
	(void)is_dir;
	pthread_mutex_lock(&w->lock);
	if (strcmp(path, w->want) == 0 && strcmp(type, "create") == 0)
		w->created = true;
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

static void w_resync(void *arg) { (void)arg; }

static void w_state(void *arg, bool healthy)
{
	struct watch_seen *w = arg;
	pthread_mutex_lock(&w->lock);
	w->healthy = healthy;
	pthread_cond_broadcast(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

static bool wait_flag(struct watch_seen *w, bool *flag, double secs)
{
	double end = now_s() + secs;
	pthread_mutex_lock(&w->lock);
	while (!*flag && now_s() < end) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 50000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		pthread_cond_timedwait(&w->cond, &w->lock, &ts);
	}
	bool ok = *flag;
	pthread_mutex_unlock(&w->lock);
	return ok;
}

static void check_watch(struct sbx *s, const char *dir)
{
	char want[512];
	snprintf(want, sizeof want, "%s/watched", dir);
	struct watch_seen w = { .want = want };
	pthread_mutex_init(&w.lock, NULL);
	pthread_cond_init(&w.cond, NULL);
	struct sbx_watch_ops ops = { .on_change = w_change, .on_resync = w_resync, .on_state = w_state };
	struct sbx_watch *wt = sbx_watch_start(s, "/workspace", &ops, &w);
	CHECK(wt != NULL);
	CHECK(wait_flag(&w, &w.healthy, 10));
	char cmd[600];
	snprintf(cmd, sizeof cmd, "touch '%s'", want);
	struct sbx_exec_result r;
	CHECK(sbx_exec(s, cmd, NULL, 5000, &r) == 0 && r.exit_code == 0);
	sbx_exec_result_free(&r);
	CHECK(wait_flag(&w, &w.created, 5));
	sbx_watch_stop(wt);
	pthread_cond_destroy(&w.cond);
	pthread_mutex_destroy(&w.lock);
}

/* ---- open files sharing a name, losing it, and a frozen server ---- */

static void check_open_files(struct sbx *s, const char *D, const char *H)
{
	struct sbx_file *f, *g;
	struct stat st, hs;
	char buf[256] = { 0 };

	/* unlinked while open for writing: writes stay private, the name does not come back */
	CHECK(put_file(s, P(D, "gone"), "still here") == 0);
	CHECK(sbx_file_open(s, P(D, "gone"), O_RDWR, 0, &f, NULL) == 0);
	CHECK(sbx_file_pin(f) == 0);
	CHECK(sbx_unlink(s, P(D, "gone")) == 0);
	CHECK(sbx_file_orphan(f) == 0);
	CHECK(sbx_file_pwrite(f, "STILL", 5, 0) == 5);
	CHECK(sbx_file_fsync(f, false) == 0);
	CHECK(sbx_file_pread(f, buf, sizeof buf, 0) == 10 && memcmp(buf, "STILL here", 10) == 0);
	CHECK(sbx_file_fstat(f, &st) == 0 && st.st_size == 10 && S_ISREG(st.st_mode));
	CHECK(sbx_file_close(f) == 0);
	CHECK(lstat(P(H, "gone"), &hs) == -1 && errno == ENOENT);

	/* the same when the name went away behind the API's back and the caller says so */
	CHECK(put_file(s, P(D, "gone2"), "abc") == 0);
	CHECK(sbx_file_open(s, P(D, "gone2"), O_WRONLY, 0, &f, NULL) == 0);
	CHECK(sbx_file_pin(f) == 0);
	CHECK(unlink(P(H, "gone2")) == 0);
	CHECK(sbx_file_orphan(f) == 0 && sbx_file_orphan(f) == 0);
	CHECK(sbx_file_pwrite(f, "x", 1, 0) == 1);
	CHECK(sbx_file_flush(f) == 0 && sbx_file_close(f) == 0);
	CHECK(lstat(P(H, "gone2"), &hs) == -1 && errno == ENOENT);

	/* replaced by a rename while open for writing (and a reader): the new file stays */
	CHECK(put_file(s, P(D, "old"), "BBBB old") == 0 && put_file(s, P(D, "new"), "AAAA new") == 0);
	CHECK(sbx_file_open(s, P(D, "old"), O_RDWR, 0, &f, NULL) == 0);
	CHECK(sbx_file_open(s, P(D, "old"), O_RDONLY, 0, &g, NULL) == 0);
	CHECK(sbx_file_pin(f) == 0 && sbx_file_pin(g) == 0);
	CHECK(sbx_rename(s, P(D, "new"), P(D, "old"), 0) == 0);
	CHECK(sbx_file_orphan(f) == 0);
	CHECK(sbx_file_pwrite(f, "written to the replaced file", 28, 0) == 28);
	CHECK(sbx_file_fsync(f, false) == 0 && sbx_file_close(f) == 0);
	memset(buf, 0, sizeof buf);
	CHECK(sbx_file_pread(g, buf, sizeof buf, 0) == 28 &&
	      memcmp(buf, "written to the replaced file", 28) == 0);
	CHECK(sbx_file_fstat(g, &st) == 0 && S_ISREG(st.st_mode) && st.st_size == 28);
	CHECK(sbx_file_close(g) == 0);
	CHECK(file_is(s, P(D, "old"), "AAAA new"));

	/* two O_APPEND writers: every write lands at the end, nothing is overwritten (the other
	 * handle is flushed first, as the filesystem orders writes across handles) */
	CHECK(sbx_file_open(s, P(D, "log"), O_WRONLY | O_CREAT | O_APPEND, 0644, &f, NULL) == 0);
	CHECK(sbx_file_open(s, P(D, "log"), O_WRONLY | O_APPEND, 0, &g, NULL) == 0);
	char want[200] = { 0 };
	bool ok = true;
	for (int i = 0; i < 40; i++) {
		char line[8];
		snprintf(line, sizeof line, "%02d\n", i);
		strcat(want, line);
		ok &= sbx_file_flush(i % 2 ? g : f) == 0;
		ok &= sbx_file_pwrite(i % 2 ? f : g, line, 3, 0) == 3;
	}
	CHECK(ok);
	CHECK(sbx_file_close(f) == 0 && sbx_file_close(g) == 0);
	CHECK(file_is(s, P(D, "log"), want));

	/* one file through two handles; O_TRUNC by a third empties it for all */
	CHECK(sbx_file_open(s, P(D, "log"), O_RDWR, 0, &f, NULL) == 0);
	CHECK(sbx_file_open(s, P(D, "log"), O_RDONLY, 0, &g, NULL) == 0);
	CHECK(sbx_file_pwrite(f, "ZZ", 2, 0) == 2 && sbx_file_flush(f) == 0);
	CHECK(sbx_file_pread(g, buf, 2, 0) == 2 && memcmp(buf, "ZZ", 2) == 0);
	struct sbx_file *t;
	CHECK(sbx_file_open(s, P(D, "log"), O_WRONLY | O_TRUNC, 0, &t, &st) == 0 &&
	      st.st_size == 0);
	CHECK(sbx_file_fstat(f, &st) == 0 && st.st_size == 0);
	CHECK(sbx_file_pread(g, buf, sizeof buf, 0) == 0);
	CHECK(sbx_file_pwrite(t, "t", 1, 0) == 1);
	CHECK(sbx_file_close(t) == 0 && sbx_file_close(g) == 0 && sbx_file_close(f) == 0);
	CHECK(file_is(s, P(D, "log"), "t"));

	/* a file open under a directory follows the directory's rename */
	CHECK(sbx_mkdir(s, P(D, "dA"), 0755, NULL) == 0);
	CHECK(sbx_file_open(s, P(D, "dA/in"), O_RDWR | O_CREAT, 0644, &f, NULL) == 0);
	CHECK(sbx_rename(s, P(D, "dA"), P(D, "dB"), 0) == 0);
	CHECK(sbx_file_set_path(f, P(D, "dB/in")) == 0);
	CHECK(sbx_file_pwrite(f, "in", 2, 0) == 2 && sbx_file_close(f) == 0);
	CHECK(file_is(s, P(D, "dB/in"), "in"));
	CHECK(lstat(P(H, "dA"), &hs) == -1 && errno == ENOENT);
}

/* kill(SIGSTOP) returns before the process has stopped: waits for state T (bounded). */
static void wait_stopped(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
	for (double end = now_s() + 5; now_s() < end; usleep(5000)) {
		char buf[256] = { 0 };
		FILE *fp = fopen(path, "r");
		size_t n = fp ? fread(buf, 1, sizeof buf - 1, fp) : 0;
		if (fp)
			fclose(fp);
		char *paren = n ? strrchr(buf, ')') : NULL;
		if (paren && paren[1] == ' ' && (paren[2] == 'T' || paren[2] == 't'))
			return;
	}
}

/* A server that accepts connections but never answers: every call fails within about the
 * client's deadline. */
static void check_deadline(const struct server *sv, bool fallback, const char *D)
{
	struct http_client_opts o = { .base_url = sv->url, .token = TOKEN,
				      .request_timeout_ms = 1500, .connect_timeout_ms = 1000 };
	struct sbx *s = NULL;
	CHECK(sbx_open(&o, &s) == 0);
	if (!s)
		return;
	if (fallback)
		sbx_force_fallback(s);
	struct sbx_file *f;
	CHECK(put_file(s, P(D, "frozen"), "x") == 0);
	CHECK(sbx_file_open(s, P(D, "frozen"), O_RDWR, 0, &f, NULL) == 0);
	CHECK(sbx_file_pwrite(f, "y", 1, 0) == 1);
	kill(sv->pid, SIGSTOP);
	wait_stopped(sv->pid);
	struct stat st;
	struct sbx_file *g = NULL;
	double t0 = now_s();
	int e1 = sbx_lstat(s, P(D, "frozen"), &st, NULL);
	double t1 = now_s();
	int e2 = sbx_file_open(s, P(D, "frozen2"), O_RDWR | O_CREAT, 0644, &g, NULL);
	double t2 = now_s();
	int e3 = sbx_file_flush(f);
	double t3 = now_s();
	kill(sv->pid, SIGCONT);
	printf("# frozen server: lstat %d in %.1f s, open %d in %.1f s, flush %d in %.1f s\n", e1,
	       t1 - t0, e2, t2 - t1, e3, t3 - t2);
	CHECK((e1 == -ETIMEDOUT || e1 == -ENOTCONN) && t1 - t0 < 4);
	CHECK((e2 == -ETIMEDOUT || e2 == -ENOTCONN) && t2 - t1 < 4);
	CHECK((e3 == -ETIMEDOUT || e3 == -ENOTCONN) && t3 - t2 < 4);
	if (g)
		sbx_file_close(g);
	/* Calls fail fast until the client has seen the server back (a ping answered). */
	double t4 = now_s();
	while (sbx_lstat(s, P(D, "frozen"), &st, NULL) != 0 && now_s() - t4 < 10)
		usleep(50 * 1000);
	/* the write was not acknowledged by the server: still dirty, uploaded now */
	CHECK(sbx_file_close(f) == 0);
	sbx_close(s);
	/* Checked with the usual deadline: the resumed server first works off the requests that
	 * piled up while it was stopped, which can outlast this client's 1.5 s (under ASan). */
	o.request_timeout_ms = 0;
	s = NULL;
	CHECK(sbx_open(&o, &s) == 0);
	if (!s)
		return;
	CHECK(file_is(s, P(D, "frozen"), "y"));
	sbx_close(s);
}

/* ---- the suite ---- */

static void suite(struct sbx *s, const struct server *sv, const char *mode)
{
	printf("# backend %s (%s)\n", mode, sbx_info(s)->server);
	char D[256], H[256];
	snprintf(D, sizeof D, "/workspace/%s", mode);
	snprintf(H, sizeof H, "%s/%s", sv->ws, mode);
	struct stat st, hs;
	char *target = NULL;

	/* mkdir, lstat, readdir */
	CHECK(sbx_mkdir(s, D, 0700, &st) == 0 && S_ISDIR(st.st_mode) &&
	      (st.st_mode & 07777) == 0700);
	CHECK(sbx_mkdir(s, D, 0700, NULL) == -EEXIST);
	CHECK(sbx_mkdir(s, P(D, "no/such"), 0755, NULL) == -ENOENT);
	struct sbx_dirent *ents;
	size_t n;
	CHECK(sbx_readdir(s, D, &ents, &n) == 0 && n == 0);
	sbx_dirents_free(ents, n);

	/* 3 MiB of random bytes in odd-sized writes, read back byte-exact */
	size_t total = 3u << 20;
	unsigned char *data = malloc(total), *back = malloc(total + 16);
	unsigned seed = 12345;
	for (size_t i = 0; i < total; i++)
		data[i] = (unsigned char)(rand_r(&seed) >> 7);
	struct sbx_file *f;
	CHECK(sbx_file_open(s, P(D, "big"), O_WRONLY | O_CREAT | O_TRUNC, 0644, &f, &st) == 0 &&
	      S_ISREG(st.st_mode) && st.st_size == 0);
	static const size_t sizes[] = { 1, 7, 4093, 65537, 333333, 1000003 };
	bool wrote = true;
	for (size_t off = 0, k = 0; off < total; k++) {
		size_t len = sizes[k % 6];
		if (len > total - off)
			len = total - off;
		wrote &= sbx_file_pwrite(f, data + off, len, (off_t)off) == (ssize_t)len;
		off += len;
	}
	CHECK(wrote);
	CHECK(sbx_file_fstat(f, &st) == 0 && st.st_size == (off_t)total);
	CHECK(sbx_file_close(f) == 0);
	CHECK(stat(P(H, "big"), &hs) == 0 && hs.st_size == (off_t)total &&
	      (hs.st_mode & 0777) == 0644);
	CHECK(sbx_file_open(s, P(D, "big"), O_RDONLY, 0, &f, NULL) == 0);
	ssize_t got = 0;
	for (size_t off = 0; f && off < total + 16;) {
		ssize_t r = sbx_file_pread(f, back + off, 999999, (off_t)off);
		if (r <= 0)
			break;
		off += (size_t)r;
		got = (ssize_t)off;
	}
	CHECK(got == (ssize_t)total && memcmp(back, data, total) == 0);
	CHECK(sbx_file_close(f) == 0);
	char *all;
	size_t all_len;
	CHECK(sbx_read_all(s, P(D, "big"), &all, &all_len) == 0 && all_len == total &&
	      memcmp(all, data, total) == 0);
	free(all);
	CHECK(sbx_pread_path(s, P(D, "big"), back, 100, 1000) == 100 &&
	      memcmp(back, data + 1000, 100) == 0);
	CHECK(sbx_pread_path(s, P(D, "big"), back, 100, (off_t)total - 10) == 10);

	/* append, truncate */
	CHECK(sbx_file_open(s, P(D, "big"), O_WRONLY | O_APPEND, 0, &f, &st) == 0 &&
	      st.st_size == (off_t)total);
	CHECK(sbx_file_pwrite(f, "tail", 4, (off_t)total) == 4);
	CHECK(sbx_file_close(f) == 0);
	CHECK(sbx_lstat(s, P(D, "big"), &st, NULL) == 0 && st.st_size == (off_t)total + 4);
	CHECK(sbx_pread_path(s, P(D, "big"), back, 10, (off_t)total) == 4 &&
	      memcmp(back, "tail", 4) == 0);
	struct stat want = { .st_size = 1000 };
	CHECK(sbx_setattr(s, P(D, "big"), SBX_SET_SIZE, &want, &st) == 0 && st.st_size == 1000);
	CHECK(sbx_file_open(s, P(D, "big"), O_RDWR, 0, &f, NULL) == 0);
	CHECK(sbx_file_ftruncate(f, 500) == 0);
	CHECK(sbx_file_fstat(f, &st) == 0 && st.st_size == 500);
	CHECK(sbx_file_fsync(f, false) == 0);
	CHECK(sbx_file_close(f) == 0);
	CHECK(stat(P(H, "big"), &hs) == 0 && hs.st_size == 500);
	free(data);
	free(back);

	/* setattr: mode and ns times, matching the host's view */
	want = (struct stat){ .st_mode = 0600 };
	want.st_mtim = (struct timespec){ 1700000000, 123456789 };
	want.st_atim = (struct timespec){ 1600000000, 987654321 };
	CHECK(sbx_setattr(s, P(D, "big"), SBX_SET_MODE | SBX_SET_MTIME | SBX_SET_ATIME, &want,
			  &st) == 0 && (st.st_mode & 07777) == 0600 &&
	      st.st_mtim.tv_sec == 1700000000 && st.st_mtim.tv_nsec == 123456789 &&
	      st.st_atim.tv_sec == 1600000000 && st.st_atim.tv_nsec == 987654321);
	CHECK(sbx_lstat(s, P(D, "big"), &st, NULL) == 0 && stat(P(H, "big"), &hs) == 0 &&
	      st.st_ino == hs.st_ino && st.st_mode == hs.st_mode &&
	      st.st_mtim.tv_nsec == hs.st_mtim.tv_nsec && st.st_ctim.tv_sec == hs.st_ctim.tv_sec &&
	      st.st_ctim.tv_nsec == hs.st_ctim.tv_nsec && st.st_nlink == 1);
	want.st_mtim.tv_nsec = UTIME_NOW;
	want.st_atim.tv_nsec = UTIME_OMIT;
	CHECK(sbx_setattr(s, P(D, "big"), SBX_SET_MTIME | SBX_SET_ATIME, &want, &st) == 0 &&
	      st.st_mtim.tv_sec > 1700000000 && st.st_atim.tv_sec == 1600000000);

	/* hard link, symlink, readlink, readdir with attributes */
	CHECK(sbx_link(s, P(D, "big"), P(D, "hard"), &st) == 0 && st.st_nlink == 2);
	CHECK(sbx_symlink(s, "big", P(D, "sym"), &st) == 0 && S_ISLNK(st.st_mode));
	CHECK(sbx_lstat(s, P(D, "sym"), &st, &target) == 0 && S_ISLNK(st.st_mode) &&
	      target && strcmp(target, "big") == 0 && st.st_size == 3);
	free(target);
	target = NULL;
	CHECK(sbx_readlink(s, P(D, "sym"), &target) == 0 && target && strcmp(target, "big") == 0);
	free(target);
	target = NULL;
	CHECK(sbx_readlink(s, P(D, "big"), &target) == -EINVAL);
	CHECK(sbx_symlink(s, "x", P(D, "sym"), NULL) == -EEXIST);
	CHECK(sbx_mkdir(s, P(D, "sub"), 0755, NULL) == 0);
	CHECK(sbx_readdir(s, D, &ents, &n) == 0 && n == 4 && has_entry(ents, n, "big") &&
	      has_entry(ents, n, "hard") && has_entry(ents, n, "sym") && has_entry(ents, n, "sub"));
	bool attrs = true;
	for (size_t i = 0; i < n; i++) {
		if (strcmp(ents[i].name, "sym") == 0)
			attrs &= S_ISLNK(ents[i].st.st_mode) && ents[i].target &&
				 strcmp(ents[i].target, "big") == 0;
		else if (strcmp(ents[i].name, "sub") == 0)
			attrs &= S_ISDIR(ents[i].st.st_mode) && !ents[i].target;
		else
			attrs &= S_ISREG(ents[i].st.st_mode) && ents[i].st.st_nlink == 2 &&
				 ents[i].st.st_size == 500;
	}
	CHECK(attrs);
	sbx_dirents_free(ents, n);

	/* rename(2): over a file, a directory onto an empty one, and the errors */
	CHECK(put_file(s, P(D, "a"), "AAA") == 0 && put_file(s, P(D, "b"), "B") == 0);
	CHECK(sbx_rename(s, P(D, "a"), P(D, "b"), 0) == 0);
	CHECK(file_is(s, P(D, "b"), "AAA"));
	CHECK(sbx_lstat(s, P(D, "a"), &st, NULL) == -ENOENT);
	CHECK(sbx_mkdir(s, P(D, "d1"), 0755, NULL) == 0 && sbx_mkdir(s, P(D, "d2"), 0755, NULL) == 0);
	CHECK(put_file(s, P(D, "d1/inner"), "i") == 0);
	CHECK(sbx_rename(s, P(D, "d1"), P(D, "d2"), 0) == 0);
	CHECK(sbx_lstat(s, P(D, "d1"), &st, NULL) == -ENOENT);
	CHECK(file_is(s, P(D, "d2/inner"), "i"));
	CHECK(sbx_lstat(s, P(D, "d2/d1"), &st, NULL) == -ENOENT);
	CHECK(sbx_mkdir(s, P(D, "d3"), 0755, NULL) == 0);
	CHECK(sbx_rename(s, P(D, "d3"), P(D, "d2"), 0) == -ENOTEMPTY);
	CHECK(sbx_rmdir(s, P(D, "d2")) == -ENOTEMPTY);
	CHECK(sbx_rename(s, P(D, "b"), P(D, "d3"), 0) == -EISDIR);
	CHECK(sbx_rename(s, P(D, "d3"), P(D, "b"), 0) == -ENOTDIR);
	CHECK(sbx_rename(s, P(D, "nope"), P(D, "x"), 0) == -ENOENT);
	CHECK(sbx_rename(s, P(D, "b"), P(D, "d2/inner"), RENAME_NOREPLACE) ==
	      (sbx_info(s)->extensions ? -EEXIST : -EINVAL));
	struct sbx_file *g;
	CHECK(sbx_file_open(s, P(D, "b"), O_WRONLY | O_CREAT | O_EXCL, 0644, &g, NULL) == -EEXIST);
	CHECK(sbx_lstat(s, P(D, "b/x"), &st, NULL) == -ENOTDIR);
	CHECK(sbx_rmdir(s, P(D, "b")) == -ENOTDIR);
	CHECK(sbx_readdir(s, P(D, "b"), &ents, &n) == -ENOTDIR);
	CHECK(sbx_readdir(s, P(D, "nope"), &ents, &n) == -ENOENT);
	CHECK(sbx_unlink(s, P(D, "d3")) == -EISDIR);
	CHECK(sbx_unlink(s, P(D, "nope")) == -ENOENT);
	CHECK(sbx_lstat(s, P(D, "nope"), &st, NULL) == -ENOENT && sbx_last_error()[0]);
	CHECK(sbx_rmdir(s, P(D, "d3")) == 0);

	/* an open (pinned) file survives unlink; an open file follows a rename */
	CHECK(put_file(s, P(D, "u"), "still here") == 0);
	CHECK(sbx_file_open(s, P(D, "u"), O_RDONLY, 0, &f, NULL) == 0);
	CHECK(sbx_file_pin(f) == 0);
	CHECK(sbx_unlink(s, P(D, "u")) == 0);
	char buf[64] = { 0 };
	CHECK(sbx_file_pread(f, buf, sizeof buf, 0) == 10 && memcmp(buf, "still here", 10) == 0);
	CHECK(sbx_file_close(f) == 0);
	CHECK(sbx_file_open(s, P(D, "r1"), O_RDWR | O_CREAT, 0640, &f, &st) == 0 &&
	      (st.st_mode & 0777) == 0640);
	CHECK(sbx_file_pwrite(f, "moved", 5, 0) == 5);
	CHECK(sbx_rename(s, P(D, "r1"), P(D, "r2"), 0) == 0);
	CHECK(sbx_file_set_path(f, P(D, "r2")) == 0);
	CHECK(sbx_file_close(f) == 0);
	CHECK(file_is(s, P(D, "r2"), "moved"));
	CHECK(sbx_lstat(s, P(D, "r1"), &st, NULL) == -ENOENT);

	/* statfs, exec */
	struct statvfs sv_;
	CHECK(sbx_statfs(s, D, &sv_) == 0 && sv_.f_blocks > 0 && sv_.f_namemax == 255);
	struct sbx_exec_result r;
	/* byte-exact output is sbxd's extension; a plain container drops NULs */
	bool exact = strcmp(sbx_info(s)->server, "sbxd") == 0;
	CHECK(sbx_exec(s, exact ? "printf 'a\\0b'; echo oops >&2; exit 3" :
			"printf 'a-b'; echo oops >&2; exit 3", NULL, 5000, &r) == 0 &&
	      r.exit_code == 3 && r.err_len == 5 && memcmp(r.err, "oops\n", 5) == 0 &&
	      r.out_len == 3 && memcmp(r.out, exact ? "a\0b" : "a-b", 3) == 0);
	sbx_exec_result_free(&r);
	CHECK(sbx_exec(s, "pwd", D, 5000, &r) == 0 && r.exit_code == 0 && r.out &&
	      strncmp(r.out, D, strlen(D)) == 0);
	sbx_exec_result_free(&r);

	check_open_files(s, D, H);
	check_tree(s, D);
	check_watch(s, D);
	check_deadline(sv, !sbx_info(s)->extensions, D);
}

int main(void)
{
	signal(SIGPIPE, SIG_IGN);
	struct server a = { 0 }, b = { 0 };
	if (!start_sbxd(&a, false)) {
		CHECK(!"sbxd starts");
		stop_sbxd(&a);
		return UNIT_DONE();
	}
	int err;
	struct sbx *s = open_sbx(&a, TOKEN, &err);
	CHECK(s != NULL && sbx_info(s)->extensions && strcmp(sbx_info(s)->server, "sbxd") == 0);
	if (s) {
		suite(s, &a, "ext");
		sbx_close(s);
	}
	s = open_sbx(&a, TOKEN, &err);
	if (s) {
		sbx_force_fallback(s);
		CHECK(!sbx_info(s)->extensions);
		suite(s, &a, "forced");
		sbx_close(s);
	}

	/* refused token, unreachable server */
	s = open_sbx(&a, "wrong", &err);
	CHECK(s == NULL && err == -EACCES);
	struct server dead = { .port = free_port() };
	snprintf(dead.url, sizeof dead.url, "http://127.0.0.1:%d", dead.port);
	double t0 = now_s();
	s = open_sbx(&dead, TOKEN, &err);
	CHECK(s == NULL && err == -ENOTCONN && now_s() - t0 < 5);
	stop_sbxd(&a);

	if (start_sbxd(&b, true)) {
		s = open_sbx(&b, TOKEN, &err);
		CHECK(s != NULL && !sbx_info(s)->extensions &&
		      strcmp(sbx_info(s)->server, "cloudflare-container") == 0);
		if (s) {
			suite(s, &b, "probed");
			sbx_close(s);
		}
	} else {
		CHECK(!"sbxd --no-extensions starts");
	}
	stop_sbxd(&b);
	return UNIT_DONE();
}
