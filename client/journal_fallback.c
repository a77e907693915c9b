/* Without the journal route (a plain container, or sbxd --no-extensions): each operation is
 * the backend's own call, several at once.
 *
 * Each call is safe to repeat (client/sandbox_fallback.c, "Lost answers"), but not in any
 * order: a put repeated after the rename that followed it would bring the file back. So a
 * batch runs on up to WORKERS threads, each op once every op of the batch before it that it
 * depends on (journal_order.c) has its outcome, and an op whose call could not reach the
 * sandbox stops the batch: nothing new starts, what runs ends, and the ops without an outcome
 * are sent again later, in the queue's order, after the backoff. What a done op depends on is
 * done before it, so a repeat never undoes a later change. The dependencies are worked out
 * under j->lock (they read the files' link counts), the calls made without it. */
#include "client/journal_impl.h"
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "common/log.h"

#define WORKERS 8
#define CHUNK (4u << 20) /* of a put's content, per write call */

static int inner_put(struct sbx_journal *j, const struct jop *op)
{
	const struct sbx_ops *in = j->inner;
	struct sbx_file *f;
	int err = in->file_open(j->s, op->path, O_WRONLY | O_CREAT | O_TRUNC, op->mode, &f, NULL);
	if (err)
		return err;
	char *buf = malloc(CHUNK);
	if (!buf)
		abort();
	for (off_t off = 0; !err;) {
		ssize_t got = op->ino->fd >= 0 ? pread(op->ino->fd, buf, CHUNK, off) : -1;
		if (got <= 0) {
			err = got < 0 ? -(op->ino->fd >= 0 ? errno : ENOENT) : 0;
			break;
		}
		ssize_t w = in->file_pwrite(f, buf, (size_t)got, off);
		if (w < 0)
			err = (int)w;
		off += got;
	}
	free(buf);
	struct stat want = { .st_mode = op->mode, .st_atim = op->atime, .st_mtim = op->mtime };
	unsigned valid = SBX_SET_MODE | SBX_SET_ATIME | SBX_SET_MTIME;
	bool by_path = false;
	if (!err) {
		err = in->file_setattr(f, valid, &want, NULL);
		if (err == -ENOSYS)
			by_path = true, err = 0;
	}
	int cerr = in->file_close(f);
	if (!err)
		err = cerr;
	if (!err && by_path)
		err = in->setattr(j->s, op->path, valid, &want, NULL);
	return err;
}

static int inner_op(struct sbx_journal *j, const struct jop *op)
{
	const struct sbx_ops *in = j->inner;
	struct stat st;
	char *target = NULL;
	int err;
	switch (op->kind) {
	case JOP_PUT:
		return inner_put(j, op);
	case JOP_MKDIR:
		err = in->mkdir(j->s, op->path, op->mode, NULL);
		if (err == -EEXIST && in->lstat(j->s, op->path, &st, NULL) == 0 &&
		    S_ISDIR(st.st_mode))
			err = 0;
		return err;
	case JOP_SYMLINK:
		err = in->symlink(j->s, op->path2, op->path, NULL);
		if (err == -EEXIST && in->readlink(j->s, op->path, &target) == 0 &&
		    strcmp(target, op->path2) == 0)
			err = 0;
		free(target);
		return err;
	case JOP_LINK:
		err = in->link(j->s, op->path, op->path2, NULL);
		return err == -EEXIST ? 0 : err;
	case JOP_UNLINK:
		err = in->unlink(j->s, op->path);
		return err == -ENOENT ? 0 : err;
	case JOP_RMDIR:
		err = in->rmdir(j->s, op->path);
		return err == -ENOENT ? 0 : err;
	case JOP_RENAME:
		return in->rename(j->s, op->path, op->path2, 0);
	case JOP_SETATTR: {
		struct stat want = { .st_mode = op->mode, .st_uid = op->uid, .st_gid = op->gid,
				     .st_atim = op->atime, .st_mtim = op->mtime };
		return in->setattr(j->s, op->path, op->valid, &want, NULL);
	}
	}
	return -EINVAL;
}

enum state { WAITING, RUNNING, ANSWERED, UNANSWERED };

/* One batch on its way: its ops, what each depends on, and how far each got. */
struct batch {
	struct sbx_journal *j;
	struct jop **ops;
	struct outcome *oc;
	size_t n;
	size_t *deps, *first_dep; /* op i depends on deps[first_dep[i] .. first_dep[i + 1]) */
	pthread_mutex_t lock;
	pthread_cond_t changed;
	enum state *state;
	size_t started;  /* ops [0, started) are not waiting; the others may be */
	bool stop;       /* a call could not reach the sandbox: nothing new starts */
	int stop_err;    /* ... with this error */
	char stop_why[256];
};

/* The dependencies of every op on those before it in the batch (j->lock held). */
static void batch_depends(struct batch *b)
{
	size_t cap = b->n, used = 0;
	b->deps = malloc(cap * sizeof *b->deps);
	b->first_dep = malloc((b->n + 1) * sizeof *b->first_dep);
	if (!b->deps || !b->first_dep)
		abort();
	for (size_t i = 0; i < b->n; i++) {
		b->first_dep[i] = used;
		for (size_t k = 0; k < i; k++) {
			if (!jop_depends_on(b->ops[i], b->ops[k]))
				continue;
			if (used == cap && !(b->deps = realloc(b->deps, (cap *= 2) * sizeof *b->deps)))
				abort();
			b->deps[used++] = k;
		}
	}
	b->first_dep[b->n] = used;
}

/* The first op that can start now, or n (batch lock held). */
static size_t runnable(struct batch *b)
{
	while (b->started < b->n && b->state[b->started] != WAITING)
		b->started++;
	for (size_t i = b->started; i < b->n; i++) {
		if (b->state[i] != WAITING)
			continue;
		size_t d = b->first_dep[i];
		while (d < b->first_dep[i + 1] && b->state[b->deps[d]] == ANSWERED)
			d++;
		if (d == b->first_dep[i + 1])
			return i;
	}
	return b->n;
}

static void *worker(void *arg)
{
	struct batch *b = arg;
	pthread_mutex_lock(&b->lock);
	for (;;) {
		size_t i = b->stop ? b->n : runnable(b);
		if (i == b->n) {
			bool waiting = false;
			for (size_t k = b->started; k < b->n && !waiting; k++)
				waiting = b->state[k] == WAITING;
			if (b->stop || !waiting)
				break;
			pthread_cond_wait(&b->changed, &b->lock); /* for what it depends on */
			continue;
		}
		b->state[i] = RUNNING;
		pthread_mutex_unlock(&b->lock);
		int err = inner_op(b->j, b->ops[i]);
		struct outcome *oc = &b->oc[i];
		bool again = err && upload_transient(err);
		if (again) {
			log_debug("journal: %s", sbx_last_error());
		} else {
			oc->err = err;
			oc->conflict = false;
			oc->has_stat = oc->has_parent = oc->has_from_parent = false;
			snprintf(oc->why, sizeof oc->why, "%s", err ? sbx_last_error() : "");
		}
		pthread_mutex_lock(&b->lock);
		b->state[i] = again ? UNANSWERED : ANSWERED;
		if (again && !b->stop) {
			b->stop = true;
			b->stop_err = err;
			snprintf(b->stop_why, sizeof b->stop_why, "%s", sbx_last_error());
		}
		pthread_cond_broadcast(&b->changed);
	}
	pthread_cond_broadcast(&b->changed); /* the others look again: nothing may be left */
	pthread_mutex_unlock(&b->lock);
	return NULL;
}

size_t fallback_send(struct sbx_journal *j, struct jop **ops, size_t n, struct outcome *oc)
{
	struct batch b = { .j = j, .ops = ops, .oc = oc, .n = n };
	pthread_mutex_lock(&j->lock);
	batch_depends(&b);
	pthread_mutex_unlock(&j->lock);
	b.state = calloc(n, sizeof *b.state); /* WAITING */
	if (!b.state)
		abort();
	pthread_mutex_init(&b.lock, NULL);
	pthread_cond_init(&b.changed, NULL);
	pthread_t threads[WORKERS];
	size_t started = 0;
	while (started < WORKERS && started < n &&
	       pthread_create(&threads[started], NULL, worker, &b) == 0)
		started++;
	if (!started) /* no thread to spare: this one does it all */
		worker(&b);
	for (size_t t = 0; t < started; t++)
		pthread_join(threads[t], NULL);
	/* the answered ones to the front, in their order (the others stay in the queue) */
	size_t done = 0;
	for (size_t i = 0; i < n; i++)
		if (b.state[i] == ANSWERED) {
			ops[done] = ops[i];
			oc[done++] = oc[i];
		}
	/* what the backend holds back (the fallback's batched modes and times) goes now: an
	 * acknowledgement means it is in the sandbox */
	if (done && j->inner->settle)
		j->inner->settle(j->s);
	if (b.stop) /* this thread's error, for the uploader's warning */
		sbx_fail(b.stop_err, "%s", b.stop_why);
	pthread_cond_destroy(&b.changed);
	pthread_mutex_destroy(&b.lock);
	free(b.state);
	free(b.deps);
	free(b.first_dep);
	return done;
}
