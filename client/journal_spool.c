/* The journal on disk: <cache_dir>/<key>/ for one sandbox (key: a hash of its URL, its
 * sandbox id and the backend), 0700, held with flock by one mount at a time:
 *   id           the journal's name at the server (random, made once)
 *   log          one JSON line per operation, {"ack": N} once the sandbox acknowledged
 *                everything up to N, {"lane": N} when op N is put on the lane and {"main": N}
 *                before a batch up to op N goes on the main journal (the next mount sends
 *                the ops up to the highest of these on the same journals); started afresh
 *                whenever nothing is pending
 *   blobs/N      contents of files made or rewritten through the mount, until acknowledged
 *   lost+found/  contents that could not be uploaded (EACCES, ENOSPC in the sandbox...)
 * Lines are written with write(2) as the mount makes the change, so a killed sbxfs loses
 * nothing; syncfs() every second while changes are pending (and at fsync, sync and unmount)
 * bounds what a crash of the host can lose. */
#include "client/journal_impl.h"
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
#include "common/clock.h"
#include "common/jsonutil.h"
#include "common/log.h"

char *sbx_journal_default_dir(void)
{
	const char *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
	char *d;
	if (geteuid() == 0 && !xdg)
		d = strdup("/var/cache/sbxfs");
	else if (xdg && *xdg == '/')
		return asprintf(&d, "%s/sbxfs", xdg) < 0 ? NULL : d;
	else
		return asprintf(&d, "%s/.cache/sbxfs", home && *home ? home : "/tmp") < 0 ? NULL : d;
	return d;
}

/* mkdir -p with mode 0700 for what it makes. */
static int make_dirs(const char *dir)
{
	char *p = strdup(dir);
	if (!p)
		abort();
	int err = 0;
	for (char *slash = p + 1;; slash++) {
		bool end = !*slash;
		if (*slash == '/' || end) {
			char c = *slash;
			*slash = 0;
			if (mkdir(p, 0700) < 0 && errno != EEXIST)
				err = -errno;
			*slash = c;
		}
		if (end || err)
			break;
	}
	free(p);
	return err;
}

int sbx_journal_check_dir(const char *dir)
{
	int err = make_dirs(dir);
	if (!err && access(dir, W_OK | X_OK) < 0)
		err = -errno;
	return err ? sbx_fail(err, "cache_dir %s: %s", dir, strerror(-err)) : 0;
}

static uint64_t fnv(uint64_t h, const char *s)
{
	for (; s && *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211u;
	return (h ^ 0xff) * 1099511628211u;
}

static int read_or_make_id(struct sbx_journal *j)
{
	int fd = openat(j->dir_fd, "id", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		ssize_t n = read(fd, j->wire_id, sizeof j->wire_id - 1);
		close(fd);
		if (n > 0) {
			j->wire_id[n] = 0;
			j->wire_id[strcspn(j->wire_id, "\n")] = 0;
			if (*j->wire_id)
				return 0;
		}
	}
	unsigned char r[16];
	if (getrandom(r, sizeof r, 0) != sizeof r)
		return -errno;
	for (size_t i = 0; i < sizeof r; i++)
		snprintf(j->wire_id + 2 * i, 3, "%02x", r[i]);
	fd = openat(j->dir_fd, "id.new", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	bool ok = dprintf(fd, "%s\n", j->wire_id) > 0 && fsync(fd) == 0;
	close(fd);
	if (!ok || renameat(j->dir_fd, "id.new", j->dir_fd, "id") < 0)
		return -errno;
	return 0;
}

int spool_open(struct sbx_journal *j, const char *cache_dir)
{
	int err = sbx_journal_check_dir(cache_dir);
	if (err)
		return err;
	uint64_t h = fnv(14695981039346656037u, http_client_base_url(j->s->http));
	h = fnv(h, j->s->sandbox_id);
	h = fnv(h, j->inner->name);
	if (asprintf(&j->dir, "%s/%016" PRIx64, cache_dir, h) < 0)
		abort();
	if (mkdir(j->dir, 0700) < 0 && errno != EEXIST)
		return sbx_fail(-errno, "journal %s: %s", j->dir, strerror(errno));
	j->dir_fd = open(j->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (j->dir_fd < 0)
		return sbx_fail(-errno, "journal %s: %s", j->dir, strerror(errno));
	j->lock_fd = openat(j->dir_fd, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (j->lock_fd < 0)
		return sbx_fail(-errno, "journal %s: %s", j->dir, strerror(errno));
	if (flock(j->lock_fd, LOCK_EX | LOCK_NB) < 0)
		return sbx_fail(errno == EWOULDBLOCK ? -EBUSY : -errno,
				"journal %s: %s", j->dir,
				errno == EWOULDBLOCK ? "another mount of this sandbox uses it "
						       "(-o cache_dir= for another, or writeback=off)"
						     : strerror(errno));
	(void)mkdirat(j->dir_fd, "blobs", 0700);
	(void)mkdirat(j->dir_fd, "lost+found", 0700);
	j->blobs_fd = openat(j->dir_fd, "blobs", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	j->log_fd = openat(j->dir_fd, "log", O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (j->blobs_fd < 0 || j->log_fd < 0)
		return sbx_fail(-errno, "journal %s: %s", j->dir, strerror(errno));
	err = read_or_make_id(j);
	if (err)
		return sbx_fail(err, "journal %s: its id: %s", j->dir, strerror(-err));
	return 0;
}

void spool_close(struct sbx_journal *j)
{
	int *fds[] = { &j->log_fd, &j->blobs_fd, &j->lock_fd, &j->dir_fd };
	for (size_t i = 0; i < sizeof fds / sizeof fds[0]; i++)
		if (*fds[i] >= 0) {
			close(*fds[i]);
			*fds[i] = -1;
		}
	free(j->dir);
	j->dir = NULL;
}

int spool_blob_new(struct sbx_journal *j, uint64_t *id)
{
	char name[32];
	*id = ++j->next_blob;
	snprintf(name, sizeof name, "%" PRIu64, *id);
	int fd = openat(j->blobs_fd, name, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	return fd < 0 ? -errno : fd;
}

int spool_blob_open(struct sbx_journal *j, uint64_t id)
{
	char name[32];
	snprintf(name, sizeof name, "%" PRIu64, id);
	return openat(j->blobs_fd, name, O_RDWR | O_CLOEXEC);
}

void spool_blob_remove(struct sbx_journal *j, uint64_t id)
{
	char name[32];
	snprintf(name, sizeof name, "%" PRIu64, id);
	(void)unlinkat(j->blobs_fd, name, 0);
}

char *spool_blob_rescue(struct sbx_journal *j, uint64_t id, const char *path)
{
	char from[32], *to, *abs;
	snprintf(from, sizeof from, "%" PRIu64, id);
	const char *base = strrchr(path, '/');
	base = base ? base + 1 : path;
	if (asprintf(&to, "lost+found/%jd-%" PRIu64 "-%s", (intmax_t)time(NULL), id, base) < 0)
		abort();
	int fd = openat(j->dir_fd, "lost+found", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	bool ok = fd >= 0 && linkat(j->blobs_fd, from, j->dir_fd, to, 0) == 0;
	if (fd >= 0)
		close(fd);
	if (!ok || asprintf(&abs, "%s/%s", j->dir, to) < 0)
		abs = NULL;
	free(to);
	return abs;
}

static void log_line(struct sbx_journal *j, cJSON *o)
{
	char *text = json_print(o);
	cJSON_Delete(o);
	if (!text)
		abort();
	size_t len = strlen(text);
	text[len] = '\n'; /* json_print leaves room: it is NUL-terminated */
	ssize_t w = write(j->log_fd, text, len + 1);
	if (w != (ssize_t)len + 1)
		log_error("journal %s: writing its log: %s", j->dir,
			  w < 0 ? strerror(errno) : "short write");
	free(text);
}

static void log_number(struct sbx_journal *j, const char *name, uint64_t seq)
{
	cJSON *o = cJSON_CreateObject();
	json_add_int(o, name, (int64_t)seq);
	log_line(j, o);
}

static const char *const kind_names[] = {
	[JOP_PUT] = "put", [JOP_MKDIR] = "mkdir", [JOP_SYMLINK] = "symlink",
	[JOP_LINK] = "link", [JOP_UNLINK] = "unlink", [JOP_RMDIR] = "rmdir",
	[JOP_RENAME] = "rename", [JOP_SETATTR] = "setattr",
};

void spool_log_op(struct sbx_journal *j, const struct jop *op)
{
	cJSON *o = cJSON_CreateObject();
	json_add_int(o, "seq", (int64_t)op->seq);
	cJSON_AddStringToObject(o, "op", kind_names[op->kind]);
	cJSON_AddStringToObject(o, "path", op->path);
	if (op->path2)
		cJSON_AddStringToObject(o, "path2", op->path2);
	json_add_int(o, "mode", op->mode);
	if (op->kind == JOP_PUT) {
		json_add_int(o, "blob", (int64_t)op->blob);
		if (op->expect_absent)
			cJSON_AddTrueToObject(o, "expect_absent");
		if (op->expect_stat) {
			json_add_int(o, "expect_size", op->expect_size);
			cJSON_AddItemToObject(o, "expect_mtime", json_timespec(&op->expect_mtime));
		}
	}
	if (op->kind == JOP_SETATTR) {
		json_add_int(o, "valid", op->valid);
		json_add_int(o, "uid", op->uid);
		json_add_int(o, "gid", op->gid);
	}
	cJSON_AddItemToObject(o, "atime", json_timespec(&op->atime));
	cJSON_AddItemToObject(o, "mtime", json_timespec(&op->mtime));
	log_line(j, o);
}

void spool_log_ack(struct sbx_journal *j, uint64_t seq) { log_number(j, "ack", seq); }

void spool_log_lane(struct sbx_journal *j, uint64_t seq) { log_number(j, "lane", seq); }
void spool_log_main(struct sbx_journal *j, uint64_t seq) { log_number(j, "main", seq); }

void spool_compact(struct sbx_journal *j)
{
	if (ftruncate(j->log_fd, 0) < 0)
		log_warn("journal %s: starting its log afresh: %s", j->dir, strerror(errno));
	/* the numbering goes on: the server skips numbers it has seen */
	spool_log_ack(j, j->acked);
}

void spool_sync(struct sbx_journal *j, bool force)
{
	int64_t now = mono_ms();
	/* the uploader and the lane call it without the lock */
	if (!force && now - atomic_load(&j->synced_ms) < 1000)
		return;
	atomic_store(&j->synced_ms, now);
	if (syncfs(j->dir_fd) < 0)
		log_warn("journal %s: syncfs: %s", j->dir, strerror(errno));
}

void jop_free(struct jop *op)
{
	free(op->path);
	free(op->path2);
	free(op);
}

static struct jop *jop_from_json(const cJSON *o)
{
	static const size_t n_kinds = sizeof kind_names / sizeof kind_names[0];
	const char *kind = json_str(o, "op"), *path = json_str(o, "path");
	int64_t seq = json_int(o, "seq", 0);
	if (!kind || !path || seq <= 0)
		return NULL;
	size_t k = 0;
	while (k < n_kinds && strcmp(kind_names[k], kind) != 0)
		k++;
	if (k == n_kinds)
		return NULL;
	const char *path2 = json_str(o, "path2");
	if ((k == JOP_SYMLINK || k == JOP_LINK || k == JOP_RENAME) && !path2)
		return NULL;
	struct jop *op = calloc(1, sizeof *op);
	if (!op || !(op->path = strdup(path)) || (path2 && !(op->path2 = strdup(path2))))
		abort();
	op->kind = (enum jop_kind)k;
	op->seq = (uint64_t)seq;
	op->mode = (mode_t)json_int(o, "mode", 0644) & 07777;
	op->blob = (uint64_t)json_int(o, "blob", 0);
	op->expect_absent = json_bool(o, "expect_absent", false);
	op->expect_stat = json_get_timespec(cJSON_GetObjectItemCaseSensitive(o, "expect_mtime"),
					    &op->expect_mtime);
	op->expect_size = json_int(o, "expect_size", 0);
	op->valid = (unsigned)json_int(o, "valid", 0);
	op->uid = (uid_t)json_int(o, "uid", 0);
	op->gid = (gid_t)json_int(o, "gid", 0);
	json_get_timespec(cJSON_GetObjectItemCaseSensitive(o, "atime"), &op->atime);
	json_get_timespec(cJSON_GetObjectItemCaseSensitive(o, "mtime"), &op->mtime);
	if (op->kind == JOP_PUT && !op->blob) {
		jop_free(op);
		return NULL;
	}
	return op;
}

/* blobs/ for reading its names, from its start; NULL when it cannot be read. */
static DIR *blobs_dir(struct sbx_journal *j)
{
	int fd = dup(j->blobs_fd);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d && fd >= 0)
		close(fd);
	if (d)
		rewinddir(d);
	return d;
}

/* The highest blob number in blobs/, so new ones never reuse a name. */
static void scan_blobs(struct sbx_journal *j)
{
	DIR *d = blobs_dir(j);
	if (!d)
		return;
	for (struct dirent *e; (e = readdir(d));) {
		uint64_t id = strtoull(e->d_name, NULL, 10);
		if (id > j->next_blob)
			j->next_blob = id;
	}
	closedir(d);
}

/* Blobs no pending operation refers to: left by a mount that ended between a file's last
 * acknowledgement and its removal. */
static void remove_stray_blobs(struct sbx_journal *j)
{
	DIR *d = blobs_dir(j);
	if (!d)
		return;
	for (struct dirent *e; (e = readdir(d));) {
		if (e->d_name[0] == '.')
			continue;
		uint64_t id = strtoull(e->d_name, NULL, 10);
		bool used = false;
		for (struct jop *op = j->head; op && !used; op = op->next)
			used = op->kind == JOP_PUT && op->blob == id;
		if (!used)
			(void)unlinkat(j->blobs_fd, e->d_name, 0);
	}
	closedir(d);
}

int spool_replay(struct sbx_journal *j, void (*replay)(struct sbx_journal *j, struct jop *op))
{
	scan_blobs(j);
	FILE *f = fdopen(dup(j->log_fd), "r");
	if (!f)
		return sbx_fail(-errno, "journal %s: reading its log: %s", j->dir, strerror(errno));
	rewind(f);
	struct jop *first = NULL, **tail = &first, **last = NULL;
	uint64_t acked = 0, decided = 0, *lanes = NULL;
	size_t n_lanes = 0;
	size_t bad = 0;
	char *line = NULL;
	size_t cap = 0;
	while (getline(&line, &cap, f) > 0) {
		cJSON *o = cJSON_Parse(line);
		if (o && cJSON_GetObjectItemCaseSensitive(o, "ack")) {
			uint64_t a = (uint64_t)json_int(o, "ack", 0);
			if (a > acked)
				acked = a;
		} else if (o && cJSON_GetObjectItemCaseSensitive(o, "lane")) {
			if (!(lanes = realloc(lanes, (n_lanes + 1) * sizeof *lanes)))
				abort();
			lanes[n_lanes] = (uint64_t)json_int(o, "lane", 0);
			if (lanes[n_lanes] > decided)
				decided = lanes[n_lanes];
			n_lanes++;
		} else if (o && cJSON_GetObjectItemCaseSensitive(o, "main")) {
			uint64_t m = (uint64_t)json_int(o, "main", 0);
			if (m > decided)
				decided = m;
		} else if (o) {
			struct jop *op = jop_from_json(o);
			if (op && last && (*last)->seq == op->seq) {
				/* logged again (a put given newer times): the newer copy counts */
				jop_free(*last);
				*last = op;
				tail = &op->next;
			} else if (op) {
				last = tail;
				*tail = op;
				tail = &op->next;
			} else {
				bad++;
			}
		} else {
			bad++; /* a line cut short by a crash: the last one */
		}
		cJSON_Delete(o);
	}
	free(line);
	fclose(f);
	if (bad)
		log_warn("journal %s: %zu unreadable line%s in its log skipped", j->dir, bad,
			 bad == 1 ? "" : "s");
	j->acked = acked;
	for (struct jop *op = first, *next; op; op = next) {
		next = op->next;
		op->next = NULL;
		if (op->seq <= acked) {
			jop_free(op);
			continue;
		}
		op->decided = op->seq <= decided;
		for (size_t i = 0; i < n_lanes && !op->lane; i++)
			op->lane = lanes[i] == op->seq;
		replay(j, op);
	}
	free(lanes);
	if (j->next_seq <= acked)
		j->next_seq = acked + 1;
	remove_stray_blobs(j);
	if (!j->head)
		spool_compact(j);
	return 0;
}
