/* Directory listings as the filesystem extensions send them (server/listing.h).
 *
 * A subtree is walked breadth-first, so that what a bounded answer holds is the part nearest
 * its root, which is what a client listing it from the top needs first. The queue holds paths
 * relative to the first directory, not descriptors (a wide tree would run out of them); each
 * is opened beneath the first directory with RESOLVE_NO_SYMLINKS, so a directory swapped for a
 * symlink between its listing and its opening is refused instead of followed elsewhere. */
#include "server/listing.h"
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include "common/base64.h"
#include "common/fdio.h"
#include "common/jsonutil.h"
#include "server/fsops.h"
#include "server/workspace.h"

/* The stat object of an entry (fsops.h), and whether it is a directory; NULL when it is
 * gone. */
static cJSON *entry_stat(int dirfd, const char *name, bool *is_dir)
{
	int err = 0;
	cJSON *o = fsop_stat_json(dirfd, name, &err);
	*is_dir = o && S_ISDIR((mode_t)json_int(o, "mode", 0));
	return o;
}

/* What a listing carries of its files' contents (listing_read_content). */
struct content {
	size_t each, left;
};

static bool same_file(const struct stat *a, const struct stat *b)
{
	return a->st_ino == b->st_ino && a->st_size == b->st_size &&
	       a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
	       a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* Adds "data" to ent: the whole content of the regular file name, if it fits and did not
 * change between the stat of the listing and the end of the read. */
static void add_content(int dirfd, const char *name, cJSON *ent, struct content *c)
{
	struct stat before, open_st, after;
	if (fstatat(dirfd, name, &before, AT_SYMLINK_NOFOLLOW) || !S_ISREG(before.st_mode) ||
	    (size_t)before.st_size > c->each || (size_t)before.st_size > c->left)
		return;
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
	if (fd < 0)
		return;
	char *buf = malloc((size_t)before.st_size + 1);
	if (!buf)
		abort();
	ssize_t got = fstat(fd, &open_st) == 0 && same_file(&before, &open_st)
			      ? fd_pread_full(fd, buf, (size_t)before.st_size + 1, 0) : -1;
	if (got == before.st_size && fstat(fd, &after) == 0 && same_file(&before, &after)) {
		char *b64 = base64_encode_alloc(buf, (size_t)got);
		if (b64 && cJSON_AddStringToObject(ent, "data", b64))
			c->left -= (size_t)got;
		free(b64);
	}
	free(buf);
	close(fd);
}

/* listing_read, also handing each subdirectory's name to on_dir, and with contents. */
static int read_dir(int fd, cJSON **entries, void (*on_dir)(void *arg, const char *name),
		    void *arg, struct content *content)
{
	DIR *d = fdopendir(fd);
	if (!d) {
		int err = -errno;
		close(fd);
		return err;
	}
	cJSON *list = cJSON_CreateArray();
	struct dirent *de;
	errno = 0;
	while ((de = readdir(d))) {
		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		bool is_dir = false;
		cJSON *st = entry_stat(dirfd(d), de->d_name, &is_dir);
		if (st) {
			cJSON *ent = cJSON_CreateObject();
			cJSON_AddStringToObject(ent, "name", de->d_name);
			cJSON_AddItemToObject(ent, "stat", st);
			if (content && !is_dir)
				add_content(dirfd(d), de->d_name, ent, content);
			cJSON_AddItemToArray(list, ent);
			if (is_dir && on_dir)
				on_dir(arg, de->d_name);
		}
		errno = 0;
	}
	int err = errno ? -errno : 0;
	closedir(d);
	if (err) {
		cJSON_Delete(list);
		return err;
	}
	*entries = list;
	return 0;
}

int listing_read(int fd, cJSON **entries)
{
	return read_dir(fd, entries, NULL, NULL, NULL);
}

int listing_read_content(int fd, size_t each, size_t budget, cJSON **entries)
{
	struct content c = { each, budget };
	return read_dir(fd, entries, NULL, NULL, &c);
}

/* Directories still to list, as paths relative to the first one ("" is the first). */
struct queue {
	char **v;
	size_t head, n, cap;
	const char *base; /* the relative path of the directory being read */
};

static void queue_push(struct queue *q, char *rel)
{
	if (q->n == q->cap) {
		q->cap = q->cap ? q->cap * 2 : 64;
		q->v = realloc(q->v, q->cap * sizeof(*q->v));
		if (!q->v)
			abort();
	}
	q->v[q->n++] = rel;
}

static void queue_subdir(void *arg, const char *name)
{
	struct queue *q = arg;
	char *rel;
	if (asprintf(&rel, "%s%s%s", q->base, q->base[0] ? "/" : "", name) < 0)
		abort();
	if (strlen(rel) > WS_PATH_MAX) {
		free(rel); /* too deep to be named by an API path: not listed */
		return;
	}
	queue_push(q, rel);
}

static int open_below(int top, const char *rel)
{
	struct open_how how = {
		.flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC,
		.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
	};
	long fd = syscall(SYS_openat2, top, rel, &how, sizeof how);
	return fd < 0 ? -errno : (int)fd;
}

int listing_tree(int fd, const char *path, size_t max_entries, cJSON **dirs, bool *truncated)
{
	*truncated = false;
	int top = dup(fd);
	if (top < 0) {
		int err = -errno;
		close(fd);
		return err;
	}
	struct queue q = { .base = "" };
	cJSON *out = cJSON_CreateArray();
	size_t total = 0;
	int err = 0;
	char *first = strdup("");
	if (!first)
		abort();
	queue_push(&q, first);
	for (; q.head < q.n; q.head++) {
		const char *rel = q.v[q.head];
		int dfd = q.head == 0 ? fd : open_below(top, rel);
		size_t queued = q.n;
		cJSON *entries = NULL;
		q.base = rel;
		int e = dfd < 0 ? dfd : read_dir(dfd, &entries, queue_subdir, &q, NULL);
		if (e && q.head == 0) {
			err = e;
			break;
		}
		size_t count = entries ? (size_t)cJSON_GetArraySize(entries) : 0;
		if (e || (q.head > 0 && total + count > max_entries)) {
			/* not listed, nor what it would have led to */
			for (size_t i = queued; i < q.n; i++)
				free(q.v[i]);
			q.n = queued;
			cJSON_Delete(entries);
			*truncated = true;
			if (!e)
				break;
			continue;
		}
		total += count;
		cJSON *dir = cJSON_CreateObject();
		char *api;
		if (asprintf(&api, "%s%s%s", path, rel[0] ? "/" : "", rel) < 0)
			abort();
		cJSON_AddStringToObject(dir, "path", api);
		free(api);
		cJSON_AddItemToObject(dir, "entries", entries);
		cJSON_AddItemToArray(out, dir);
	}
	if (q.head < q.n && !err)
		*truncated = true;
	for (size_t i = 0; i < q.n; i++)
		free(q.v[i]);
	free(q.v);
	close(top);
	if (err) {
		cJSON_Delete(out);
		return err;
	}
	*dirs = out;
	return 0;
}
