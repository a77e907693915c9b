/* Clean copies: the content of files the mount wrote, kept after the sandbox acknowledged it.
 *
 * A file written through the mount is a blob in the spool until its upload is acknowledged;
 * then the sandbox holds the same bytes. Reading it back (git add after an untar, a build
 * reading what it just wrote) would cost a round trip per file, and the kernel's page cache
 * does not help: a write through FUSE leaves a file's last, partial page out of it. So a
 * settled file whose sandbox attributes are known keeps its blob as a clean copy, and the
 * filesystem, which knows whether a change event touched the file since (fs/invalidate.c),
 * opens that copy instead of the sandbox's file (sbx_journal_open_clean).
 *
 * The copies are bounded (CLEAN_BYTES_MAX, CLEAN_FILES_MAX; the oldest go first) and removed
 * at unmount; an earlier mount's are stray blobs the next one removes. A copy is never
 * written: a blob's name is never used again, so a blob found by its number is that content.
 *
 * An open copy follows the sandbox once a change event not the mount's own names its path,
 * or events may have been missed: from then on it reads and stats the sandbox's file by path,
 * so `tail -f` on a file the mount made and a sandbox process appends to sees the appends. */
#include "client/journal_impl.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "common/fdio.h"

#define CLEAN_BYTES_MAX ((uint64_t)256 << 20)
#define CLEAN_FILES_MAX 65536

/* Lock held: blob, of size bytes, is a clean copy now (the oldest go past the bounds). */
static void clean_register(struct sbx_journal *j, uint64_t blob, uint64_t size)
{
	struct clean_copies *c = &j->clean;
	if (c->n == c->cap) {
		size_t cap = c->cap ? c->cap * 2 : 256;
		struct clean_copy *v = malloc(cap * sizeof *v);
		if (!v)
			abort();
		for (size_t i = 0; i < c->n; i++)
			v[i] = c->v[(c->head + i) % c->cap];
		free(c->v);
		c->v = v;
		c->cap = cap;
		c->head = 0;
	}
	c->v[(c->head + c->n++) % c->cap] = (struct clean_copy){ blob, size };
	c->bytes += size;
	while (c->n > CLEAN_FILES_MAX || c->bytes > CLEAN_BYTES_MAX) {
		struct clean_copy *old = &c->v[c->head];
		spool_blob_remove(j, old->blob);
		c->bytes -= old->bytes;
		c->head = (c->head + 1) % c->cap;
		c->n--;
	}
}

/* Lock held: ino (settled, its last name going) keeps its blob as a clean copy. */
bool clean_keep(struct sbx_journal *j, struct jinode *ino)
{
	off_t size = ino->st.st_size;
	if (ino->fd < 0 || ino->error || size < 0 || (uint64_t)size > CLEAN_BYTES_MAX / 4)
		return false;
	clean_register(j, ino->id, (uint64_t)size);
	ino->kept = true;
	return true;
}

/* ---- contents fetched with a listing ---- */

struct prefetch {
	struct sbx_journal *j;
	const char *dir;
	sbx_prefetch_fn fn;
	void *arg;
};

/* A file's content that came with its directory's listing becomes a clean copy, unless the
 * journal answers for the file (the mount changed it meanwhile). */
static void keep_fetched(void *arg, const char *name, const struct stat *st, const void *data,
			 size_t len)
{
	struct prefetch *p = arg;
	struct sbx_journal *j = p->j;
	char *path;
	if (asprintf(&path, "%s/%s", p->dir, name) < 0)
		abort();
	uint64_t id = 0;
	pthread_mutex_lock(&j->lock);
	int fd = jnode_find(j, path) ? -1 : spool_blob_new(j, &id);
	pthread_mutex_unlock(&j->lock);
	bool ok = fd >= 0 && fd_pwrite_full(fd, data, len, 0) == 0;
	pthread_mutex_lock(&j->lock);
	if (ok && !jnode_find(j, path))
		clean_register(j, id, len);
	else if (fd >= 0)
		spool_blob_remove(j, id), ok = false;
	pthread_mutex_unlock(&j->lock);
	if (fd >= 0)
		close(fd);
	if (ok)
		p->fn(p->arg, name, st, id);
	free(path);
}

int sbx_journal_prefetch(struct sbx *s, const char *dir, size_t each, size_t budget,
			 sbx_prefetch_fn fn, void *arg)
{
	struct sbx_journal *j = s->journal;
	if (!j)
		return -ENOSYS;
	pthread_mutex_lock(&j->lock);
	bool pending = jnode_find(j, dir) != NULL; /* its listing is the journal's to merge */
	pthread_mutex_unlock(&j->lock);
	if (pending)
		return -EAGAIN;
	struct prefetch p = { j, dir, fn, arg };
	return sbx_readdir_content(s, dir, each, budget, keep_fetched, &p);
}

/* Lock held: every copy goes (unmount). */
void clean_drop_all(struct sbx_journal *j)
{
	struct clean_copies *c = &j->clean;
	for (size_t i = 0; i < c->n; i++)
		spool_blob_remove(j, c->v[(c->head + i) % c->cap].blob);
	free(c->v);
	*c = (struct clean_copies){ 0 };
}

/* Lock held: open copies of path (NULL: all) follow the sandbox from now on. */
void clean_changed(struct sbx_journal *j, const char *path)
{
	for (struct jinode *ino = j->clean_open; ino; ino = ino->clean_next)
		if (!path || strcmp(ino->clean_path, path) == 0)
			ino->clean_stale = true;
}

int sbx_journal_open_clean(struct sbx *s, const char *path, uint64_t blob, const struct stat *st,
			   struct sbx_file **out)
{
	struct sbx_journal *j = s->journal;
	if (!j || !blob)
		return -ENOENT;
	pthread_mutex_lock(&j->lock);
	int fd = -1;
	if (jnode_find(j, path) || (fd = spool_blob_open(j, blob)) < 0) {
		/* the overlay answers for it, or the copy was let go */
		pthread_mutex_unlock(&j->lock);
		return -ENOENT;
	}
	struct jinode *ino = calloc(1, sizeof *ino);
	if (!ino || !(ino->clean_path = strdup(path)))
		abort();
	ino->id = blob;
	ino->fd = fd;
	ino->st = *st;
	ino->kept = true;
	ino->clean_next = j->clean_open;
	j->clean_open = ino;
	*out = journal_file_new(j, ino, O_RDONLY);
	pthread_mutex_unlock(&j->lock);
	return 0;
}

/* Lock held: the last close of an open copy. */
void clean_closed(struct sbx_journal *j, struct jinode *ino)
{
	for (struct jinode **p = &j->clean_open; *p; p = &(*p)->clean_next)
		if (*p == ino) {
			*p = ino->clean_next;
			break;
		}
	free(ino->clean_path);
	ino->clean_path = NULL;
}
