/* The uploader: one thread that sends the journal's operations to the sandbox in the order the
 * mount made them (but for what passes the lane, below), and acknowledges them in the journal
 * once the sandbox did.
 *
 * With sbxd (POST /api/x/journal, docs/protocol.md) a request carries up to BATCH_OPS
 * operations and BATCH_BYTES of file contents; the server applies them in order and keeps,
 * per journal, the highest number it applied, so a request repeated after a lost answer (or
 * by the next mount, after a crash) applies nothing twice. A file larger than BATCH_BYTES
 * goes in parts of BATCH_BYTES (numbered seq << 16 | part, so every part has its own number),
 * on the lane. Without that route (a plain container, or sbxd --no-extensions) each operation
 * is the backend's own call, several at once in the order their dependencies allow
 * (journal_fallback.c).
 *
 * Failures. When the sandbox cannot be reached (or answers with a server error) the same
 * operations are sent again, after 100 ms doubling to 5 s, for as long as it takes: nothing is
 * dropped because the network is down. An operation the sandbox refuses (EACCES, ENOSPC, a
 * parent that is gone) is done, as a failure: it is logged, its file's next flush or fsync
 * and the next `sync` report it, and a file's content is kept in lost+found/ of the journal.
 *
 * Several batches in flight. With the server's "pipeline" capability up to WINDOW batches are
 * on their way at once, each naming the last op of the one before it ("after"): sbxd applies
 * a batch only once the one before it is in, whichever connection brings it first, so the
 * order and the watermark keep their meaning. A batch goes when nothing is on its way and the
 * coalescing wait is over, or at once when something waits for the sandbox (an fsync, a
 * sync): a burst of fsyncs from independent writers costs each about one round trip, not one
 * more for the batch before it. Answers are read oldest first. When one brings no verdict (a
 * lost answer, a 503, a batch the server gave up waiting for), it is sent again at once while
 * the ones after it wait for it at the server; if that fails too, everything from it on is
 * sent again after the backoff, and the answers of the ones after it are not read (what they
 * applied is skipped then, by the watermark). A large put goes alone, once nothing else is
 * on its way, in parts of its own (send_large). The thread never holds j->lock while it
 * waits on the network; the network thread takes it to hand over an answer.
 *
 * Settled nodes. An answer lets the journal drop what it settled, but not at once: the
 * filesystem is told the sandbox's attributes (sbx_local_settled) and the journal keeps
 * answering for those paths until the filesystem has them (sbx_journal_handover). Without
 * that, a writer's rename or re-creation of a file right after its upload found neither the
 * journal's node nor the filesystem's new attributes, and asked the sandbox. */
#include "client/journal_impl.h"
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "common/base64.h"
#include "common/clock.h"
#include "common/errnames.h"
#include "common/jsonutil.h"
#include "common/log.h"

#define BATCH_OPS 1024
#define COALESCE_MS 200 /* how long a change waits for company, unless something waits for it */
#define WRITER_WAIT_MS 2000 /* how long the put of a file being written waits for its close */
#define BATCH_BYTES (4u << 20)
#define PART_SHIFT 16
#define PARTS_IN_FLIGHT 3 /* of a large put; each holds two copies of its part's JSON */
#define WINDOW 4          /* batches on their way at once (with the server's "pipeline") */
#define HANDOVER_SWEEP_MS 500 /* idle: how often announced nodes not taken are looked at */

static __thread bool on_uploader;

bool upload_is_self(void) { return on_uploader; }

bool upload_transient(int err)
{
	switch (-err) {
	case ENOTCONN: case ETIMEDOUT: case ECONNRESET: case ECONNREFUSED: case ECONNABORTED:
	case EHOSTUNREACH: case ENETUNREACH: case EAGAIN: case EBUSY: case EIO: case ESHUTDOWN:
		return true;
	default:
		return false;
	}
}

static off_t blob_size(const struct jop *op)
{
	struct stat st;
	return op->ino && op->ino->fd >= 0 && fstat(op->ino->fd, &st) == 0 ? st.st_size : -1;
}

/* Up to len bytes of op's content at off (caller frees), *got of them; NULL with *err set. */
static char *blob_read(const struct jop *op, off_t off, size_t len, size_t *got, int *err)
{
	char *buf = malloc(len ? len : 1);
	if (!buf)
		abort();
	ssize_t n = op->ino->fd >= 0 ? pread(op->ino->fd, buf, len, off) : -1;
	if (n < 0) {
		*err = -(op->ino->fd >= 0 ? errno : ENOENT);
		free(buf);
		return NULL;
	}
	*got = (size_t)n;
	return buf;
}

/* The same, base64 (caller frees). */
static char *blob_b64(const struct jop *op, off_t off, size_t len, int *err)
{
	size_t got;
	char *buf = blob_read(op, off, len, &got, err);
	char *b64 = buf ? base64_encode_alloc(buf, got) : NULL;
	free(buf);
	return b64;
}

static void add_times(cJSON *o, const struct jop *op)
{
	cJSON_AddItemToObject(o, "atime", json_timespec(&op->atime));
	cJSON_AddItemToObject(o, "mtime", json_timespec(&op->mtime));
}

/* The wire form of an operation, or of part `part` of a large put (size: its content's). */
static cJSON *wire_op(const struct jop *op, unsigned part, off_t size, int *err)
{
	cJSON *o = cJSON_CreateObject();
	json_add_int(o, "seq", (int64_t)(op->seq << PART_SHIFT | part));
	switch (op->kind) {
	case JOP_PUT: {
		off_t off = (off_t)part * BATCH_BYTES;
		bool last_part = size <= BATCH_BYTES || off >= size;
		if (part > 0 && off >= size) { /* the closing part of a large put: its times */
			cJSON_AddStringToObject(o, "op", "setattr");
			cJSON_AddStringToObject(o, "path", op->path);
			json_add_int(o, "mode", op->mode);
			add_times(o, op);
			break;
		}
		size_t len = (size_t)(size - off < BATCH_BYTES ? size - off : BATCH_BYTES);
		char *data = blob_b64(op, off, len, err);
		if (!data) {
			cJSON_Delete(o);
			return NULL;
		}
		cJSON_AddStringToObject(o, "op", part ? "write" : "put");
		cJSON_AddStringToObject(o, "path", op->path);
		if (part) {
			json_add_int(o, "offset", off);
		} else {
			json_add_int(o, "mode", op->mode);
			if (last_part)
				add_times(o, op);
			cJSON *expect = op->expect_absent || op->expect_stat ? cJSON_AddObjectToObject(o, "expect") : NULL;
			if (op->expect_absent)
				cJSON_AddTrueToObject(expect, "absent");
			else if (op->expect_stat) {
				json_add_int(expect, "size", op->expect_size);
				cJSON_AddItemToObject(expect, "mtime", json_timespec(&op->expect_mtime));
			}
		}
		cJSON_AddItemToObject(o, "data", cJSON_CreateString(data));
		free(data);
		break;
	}
	case JOP_MKDIR:
		cJSON_AddStringToObject(o, "op", "mkdir");
		cJSON_AddStringToObject(o, "path", op->path);
		json_add_int(o, "mode", op->mode);
		break;
	case JOP_SYMLINK:
		cJSON_AddStringToObject(o, "op", "symlink");
		cJSON_AddStringToObject(o, "target", op->path2);
		cJSON_AddStringToObject(o, "path", op->path);
		break;
	case JOP_LINK:
	case JOP_RENAME:
		cJSON_AddStringToObject(o, "op", op->kind == JOP_LINK ? "link" : "rename");
		cJSON_AddStringToObject(o, "from", op->path);
		cJSON_AddStringToObject(o, "to", op->path2);
		break;
	case JOP_UNLINK:
	case JOP_RMDIR:
		cJSON_AddStringToObject(o, "op", op->kind == JOP_UNLINK ? "unlink" : "rmdir");
		cJSON_AddStringToObject(o, "path", op->path);
		break;
	case JOP_SETATTR:
		cJSON_AddStringToObject(o, "op", "setattr");
		cJSON_AddStringToObject(o, "path", op->path);
		if (op->valid & SBX_SET_MODE)
			json_add_int(o, "mode", op->mode);
		if (op->valid & SBX_SET_ATIME)
			cJSON_AddItemToObject(o, "atime", json_timespec(&op->atime));
		if (op->valid & SBX_SET_MTIME)
			cJSON_AddItemToObject(o, "mtime", json_timespec(&op->mtime));
		if (op->valid & SBX_SET_UID)
			json_add_int(o, "uid", op->uid);
		if (op->valid & SBX_SET_GID)
			json_add_int(o, "gid", op->gid);
		break;
	}
	return o;
}

static void outcome_fail(struct outcome *oc, int err, const char *fmt, const char *detail)
{
	oc->err = err;
	snprintf(oc->why, sizeof oc->why, fmt, detail);
}

/* Reads the server's results into the outcomes of ops[0..n): 0, or the error of the request
 * as a whole. */
static int read_results(const cJSON *answer, struct jop **ops, size_t n, struct outcome *oc)
{
	const cJSON *results = cJSON_GetObjectItemCaseSensitive(answer, "results");
	if (!cJSON_IsArray(results))
		return sbx_fail(-EPROTO, "journal: the answer has no results");
	for (size_t i = 0; i < n; i++) {
		outcome_fail(&oc[i], -EPROTO, "%s", "the sandbox's answer did not mention it");
		oc[i].has_stat = oc[i].has_parent = oc[i].has_from_parent = false;
	}
	size_t i = 0;
	const cJSON *r;
	cJSON_ArrayForEach(r, results) {
		uint64_t seq = (uint64_t)json_int(r, "seq", 0) >> PART_SHIFT;
		while (i < n && ops[i]->seq < seq)
			i++;
		if (i == n)
			break;
		if (ops[i]->seq != seq)
			continue;
		const cJSON *e = cJSON_GetObjectItemCaseSensitive(r, "error");
		if (e) {
			int err = errno_from_api_error(json_str(e, "errno"), json_str(e, "code"), 0);
			const char *msg = json_str(e, "message");
			outcome_fail(&oc[i], -err, "%s", msg ? msg : strerror(err));
		} else {
			oc[i].err = 0;
			oc[i].why[0] = 0;
			oc[i].conflict = json_bool(r, "conflict", false);
			const cJSON *st = cJSON_GetObjectItemCaseSensitive(r, "stat");
			oc[i].has_stat = st && sbx_parse_stat_at(ops[i]->path, st, &oc[i].st,
								 NULL) == 0;
			st = cJSON_GetObjectItemCaseSensitive(r, "parent");
			oc[i].has_parent = st && sbx_parse_stat_at(ops[i]->path, st, &oc[i].parent,
								   NULL) == 0;
			st = cJSON_GetObjectItemCaseSensitive(r, "fromParent");
			oc[i].has_from_parent = st && sbx_parse_stat_at(ops[i]->path, st,
									&oc[i].from_parent, NULL) == 0;
		}
	}
	return 0;
}

/* The outcome of a request that got an answer (err 0) or not: how many of ops[0..n) have an
 * outcome now (0: all are to be sent again). */
static size_t answered(int err, const cJSON *answer, struct jop **ops, size_t n,
		       struct outcome *oc)
{
	if (!err)
		err = read_results(answer, ops, n, oc);
	if (err && upload_transient(err)) {
		log_debug("journal: %s", sbx_last_error());
		return 0;
	}
	if (err)
		for (size_t i = 0; i < n; i++)
			outcome_fail(&oc[i], err, "%s", sbx_last_error());
	return n;
}

/* ---- requests on their way ----
 *
 * The network thread answers them (http_request_async); its callback takes j->lock, which is
 * never held across a wait, to store the answer and wake the uploader on j->changed. */

struct pending {
	bool answered;
	struct http_response resp;
};

struct pending_ref {
	struct sbx_journal *j;
	struct pending *p;
};

static void pending_answered(void *arg, struct http_response *resp)
{
	struct pending_ref *ref = arg;
	pthread_mutex_lock(&ref->j->lock);
	ref->p->resp = *resp;
	*resp = (struct http_response){ 0 }; /* taken: the client clears resp afterwards */
	ref->p->answered = true;
	pthread_cond_broadcast(&ref->j->changed);
	pthread_mutex_unlock(&ref->j->lock);
	free(ref);
}

/* Sends a request whose answer comes into p (lock not held; body is copied). */
static void request_async(struct sbx_journal *j, const char *method, const char *path,
			  const char *content_type, const char *body, size_t len, struct pending *p)
{
	char key[HTTP_KEY_MAX];
	struct http_request req = {
		.method = method,
		.path = path,
		.content_type = content_type,
		.body = body,
		.body_len = len,
		.timeout_ms = sbx_deadline(j->s, BATCH_BYTES),
		.idempotency_key = sbx_key(j->s, key),
	};
	struct pending_ref *ref = malloc(sizeof *ref);
	if (!ref)
		abort();
	*ref = (struct pending_ref){ j, p };
	p->answered = false;
	int e = http_request_async(j->s->http, &req, pending_answered, ref);
	if (e) {
		free(ref);
		pthread_mutex_lock(&j->lock);
		p->resp = (struct http_response){ .err = e };
		snprintf(p->resp.errmsg, sizeof p->resp.errmsg, "%s", strerror(-e));
		p->answered = true;
		pthread_mutex_unlock(&j->lock);
	}
}

/* The outcomes of ops[0..n) from p's answer (lock not held; p answered): how many have one. */
static size_t pending_outcome(struct pending *p, struct jop **ops, size_t n, struct outcome *oc)
{
	cJSON *answer;
	int err = sbx_json_answer("journal", p->resp.err, &p->resp, true, &answer);
	size_t done = answered(err, answer, ops, n, oc);
	cJSON_Delete(answer);
	http_response_clear(&p->resp);
	return done;
}

/* Waits (lock not held) until p is answered. Its request has a deadline: the answer comes. */
static void pending_wait(struct sbx_journal *j, struct pending *p)
{
	pthread_mutex_lock(&j->lock);
	while (!p->answered)
		pthread_cond_wait(&j->changed, &j->lock);
	pthread_mutex_unlock(&j->lock);
}

/* ---- batches, several on their way ---- */

/* A batch on its way: ops, consecutive in the queue, and its answer. */
struct flight {
	struct jop *ops[BATCH_OPS];
	size_t n;
	struct pending p;
	int unreadable;   /* its first op's content could not be read: not sent, failed */
	bool retried;     /* sent again at once after a failure, while later ones waited */
};

/* The batches on their way, oldest first (a ring of `width`). */
struct window {
	struct flight *v;
	unsigned width, oldest, count;
};

static struct flight *flight_at(struct window *w, unsigned i)
{
	return &w->v[(w->oldest + i) % w->width];
}

/* Sends f to the server's journal named journal, to be applied after the op numbered after
 * (0: no condition); lock not held. Its ops up to one whose content cannot be read go; if that
 * is the first, nothing does. */
static void flight_send(struct sbx_journal *j, const char *journal, struct flight *f,
			uint64_t after)
{
	cJSON *body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "journal", journal);
	if (after)
		json_add_int(body, "after", (int64_t)(after << PART_SHIFT));
	cJSON *list = cJSON_AddArrayToObject(body, "ops");
	f->unreadable = 0;
	for (size_t i = 0; i < f->n; i++) {
		int err = 0;
		off_t sz = f->ops[i]->kind == JOP_PUT ? blob_size(f->ops[i]) : 0;
		cJSON *o = wire_op(f->ops[i], 0, sz < 0 ? 0 : sz, &err);
		if (o) {
			cJSON_AddItemToArray(list, o);
			continue;
		}
		if (i) { /* send what comes before it; it is first next time */
			f->n = i;
			break;
		}
		f->n = 1; /* the journal lost its copy: nothing of it can be sent */
		f->unreadable = err;
		break;
	}
	char *text = f->unreadable ? NULL : json_print(body);
	cJSON_Delete(body);
	if (f->unreadable) {
		pthread_mutex_lock(&j->lock);
		f->p.answered = true;
		pthread_mutex_unlock(&j->lock);
		return;
	}
	if (!text)
		abort();
	request_async(j, "POST", "/api/x/journal", NULL, text, strlen(text), &f->p);
	free(text);
}

/* The outcomes of f's ops (lock not held; f answered): how many have one. */
static size_t flight_outcome(struct flight *f, struct outcome *oc)
{
	if (f->unreadable) {
		outcome_fail(&oc[0], f->unreadable, "the journal's copy is unreadable: %s",
			     strerror(-f->unreadable));
		return 1;
	}
	return pending_outcome(&f->p, f->ops, f->n, oc);
}

/* ---- a large put: its parts, several on their way ---- */

/* The request of a data part after the first, with the server's "pipeline": its bytes raw,
 * `PUT /api/x/journal` (no base64, no JSON around them). body: the bytes (caller frees); NULL
 * with *err when the journal's copy cannot be read. */
static char *raw_part(const char *journal, struct jop *op, unsigned part, off_t size,
		      char **body, size_t *len, int *err)
{
	off_t off = (off_t)part * BATCH_BYTES;
	size_t want = (size_t)(size - off < BATCH_BYTES ? size - off : BATCH_BYTES);
	char *buf = blob_read(op, off, want, len, err);
	if (!buf)
		return NULL;
	char *path = http_urlencode(op->path), *url;
	if (!path || asprintf(&url, "/api/x/journal?journal=%s&seq=%ju&after=%ju&path=%s&"
			      "offset=%jd", journal, (uintmax_t)(op->seq << PART_SHIFT | part),
			      (uintmax_t)(op->seq << PART_SHIFT | (part - 1)), path,
			      (intmax_t)off) < 0)
		abort();
	free(path);
	*body = buf;
	return url;
}

/* Sends part `part` of op to the server's journal named journal (its answer into p); false
 * with *err when its content cannot be read. */
static bool part_send(struct sbx_journal *j, const char *journal, struct jop *op, unsigned part,
		      off_t size, struct pending *p, int *err)
{
	char *text = NULL, *url = NULL;
	size_t len = 0;
	bool raw = part && (off_t)part * BATCH_BYTES < size && j->s->pipeline;
	if (raw) {
		if (!(url = raw_part(journal, op, part, size, &text, &len, err)))
			return false;
	} else {
		cJSON *body = cJSON_CreateObject();
		cJSON_AddStringToObject(body, "journal", journal);
		if (part && j->s->pipeline) /* applied once the part before it is in */
			json_add_int(body, "after", (int64_t)(op->seq << PART_SHIFT | (part - 1)));
		cJSON *o = wire_op(op, part, size, err);
		if (!o) {
			cJSON_Delete(body);
			return false;
		}
		cJSON_AddItemToArray(cJSON_AddArrayToObject(body, "ops"), o);
		text = json_print(body);
		cJSON_Delete(body);
		if (!text)
			abort();
		len = strlen(text);
	}
	request_async(j, raw ? "PUT" : "POST", raw ? url : "/api/x/journal",
		      raw ? "application/octet-stream" : NULL, text, len, p);
	free(text);
	free(url);
	return true;
}

/* A put larger than BATCH_BYTES (or any put, on the lane), in parts of that size: the put of
 * the first (which truncates), writes, and a closing setattr with its times, to the server's
 * journal named journal (the mount's, or its lane's). With the server's "pipeline",
 * up to PARTS_IN_FLIGHT parts are on their way at once, each sent "after" the one before it
 * (the server applies them in order, so the watermark keeps its meaning: a repeat after a
 * lost answer applies nothing twice); without it, one at a time. Returns 1, or 0 when the put
 * is to be sent again (its applied parts are skipped then). */
static size_t send_large(struct sbx_journal *j, const char *journal, struct jop *op, off_t size,
			 struct outcome *oc)
{
	unsigned parts = (unsigned)((size + BATCH_BYTES - 1) / BATCH_BYTES) + 1;
	unsigned window = j->s->pipeline ? PARTS_IN_FLIGHT : 1;
	struct pending v[PARTS_IN_FLIGHT];
	unsigned next = 0, oldest = 0;
	size_t done = 1;
	bool stop = false;
	while (oldest < parts) {
		while (!stop && next < parts && next - oldest < window) {
			int err = 0;
			if (!part_send(j, journal, op, next, size, &v[next % window], &err)) {
				/* the journal lost its copy: nothing more of it can be sent */
				outcome_fail(oc, err, "the journal's copy is unreadable: %s",
					     strerror(-err));
				stop = true;
				break;
			}
			next++;
		}
		if (oldest == next)
			break;
		struct outcome part_oc = { 0 };
		struct pending *p = &v[oldest % window];
		pending_wait(j, p);
		size_t got = pending_outcome(p, &op, 1, &part_oc);
		oldest++;
		if (stop)
			continue; /* draining: what is on its way is not waited for in vain */
		if (!got || part_oc.err) { /* sent again later, or failed for good */
			done = got;
			*oc = part_oc;
			stop = true;
			continue;
		}
		*oc = part_oc; /* the last part's answer stands for the put */
	}
	return done;
}

/* ---- the thread ---- */

static const char *op_name(enum jop_kind k)
{
	static const char *const names[] = {
		[JOP_PUT] = "upload", [JOP_MKDIR] = "mkdir", [JOP_SYMLINK] = "symlink",
		[JOP_LINK] = "link", [JOP_UNLINK] = "unlink", [JOP_RMDIR] = "rmdir",
		[JOP_RENAME] = "rename", [JOP_SETATTR] = "setattr",
	};
	return names[k];
}

/* The file whose attributes op's answer gives: what it sent, or the name it set or made. */
static struct jinode *answered_file(struct sbx_journal *j, const struct jop *op)
{
	if (op->ino)
		return op->ino;
	if (op->kind == JOP_UNLINK)
		return op->unlinked;
	const char *path = op->kind == JOP_LINK || op->kind == JOP_RENAME ? op->path2
	                   : op->kind == JOP_SETATTR ? op->path : NULL;
	struct jnode *n = path ? jnode_find(j, path) : NULL;
	return n && n->kind == JN_FILE ? n->ino : NULL;
}

/* The directory node of path's parent (or of path itself, with self), learning how the
 * sandbox has it: st, or unknown (NULL). */
static void dir_answered(struct sbx_journal *j, const char *path, bool self, const struct stat *st)
{
	const char *slash = self ? NULL : strrchr(path, '/');
	char *dir = self ? strdup(path) : slash ? strndup(path, (size_t)(slash - path)) : NULL;
	if (!dir)
		return;
	struct jnode *d = jnode_find(j, dir);
	if (d && d->kind == JN_DIR) {
		d->sandbox_known = st && S_ISDIR(st->st_mode);
		if (d->sandbox_known)
			d->sandbox_st = *st;
	}
	if (st)
		journal_saw_dir(j, dir, st);
	free(dir);
}

/* What the answer to op says of how the sandbox has the paths it changed. */
static void learn_answer(struct sbx_journal *j, const struct jop *op, const struct outcome *oc)
{
	struct jinode *answered = answered_file(j, op);
	if (answered && answered->adopted && answered->sandbox_known && !oc->err && oc->has_stat &&
	    (op->kind == JOP_RENAME || op->kind == JOP_LINK)) {
		/* a clean copy adopted: the sandbox's file was that copy's, or a change there was
		 * not seen yet (then the sandbox is asked afresh once all is acknowledged) */
		const struct stat *was = &answered->sandbox_st;
		if ((was->st_ino && was->st_ino != oc->st.st_ino) || was->st_size != oc->st.st_size ||
		    was->st_mtim.tv_sec != oc->st.st_mtim.tv_sec ||
		    was->st_mtim.tv_nsec != oc->st.st_mtim.tv_nsec)
			answered->changed_there = true;
	}
	if (answered) {
		answered->sandbox_known = !oc->err && oc->has_stat && S_ISREG(oc->st.st_mode);
		if (answered->sandbox_known)
			answered->sandbox_st = oc->st;
	}
	bool ok = !oc->err;
	if (op->kind == JOP_MKDIR || op->kind == JOP_SETATTR)
		dir_answered(j, op->path, true, ok && oc->has_stat ? &oc->st : NULL);
	if (op->kind == JOP_SETATTR)
		return;
	bool two = op->kind == JOP_LINK || op->kind == JOP_RENAME;
	dir_answered(j, two ? op->path2 : op->path, false, ok && oc->has_parent ? &oc->parent : NULL);
	if (op->kind == JOP_RENAME)
		dir_answered(j, op->path, false,
			     ok && oc->has_from_parent ? &oc->from_parent : NULL);
}

/* A path a refused op named: what the mount shows of it may not be so in the sandbox. */
static void refused_add(struct sbx_journal *j, const char *path)
{
	if (j->n_refused == j->cap_refused) {
		j->cap_refused = j->cap_refused ? 2 * j->cap_refused : 8;
		j->refused = realloc(j->refused, j->cap_refused * sizeof *j->refused);
		if (!j->refused)
			abort();
	}
	if (!(j->refused[j->n_refused++] = strdup(path)))
		abort();
}

/* Records op's outcome (lock held): it leaves the queue with retire(). */
static void finish(struct sbx_journal *j, struct jop *op, const struct outcome *oc)
{
	learn_answer(j, op, oc);
	if (oc->conflict)
		log_warn("journal: %s was changed in the sandbox while the mount's version was on its "
			 "way; the mount's version replaced it", op->path);
	if (oc->err) {
		char *kept = op->kind == JOP_PUT ? spool_blob_rescue(j, op->blob, op->path) : NULL;
		snprintf(j->fail_reason, sizeof j->fail_reason, "%s %s%s%s failed: %s%s%s",
			 op_name(op->kind), op->path, op->path2 ? " -> " : "",
			 op->path2 ? op->path2 : "", oc->why, kept ? "; its content is kept in " : "",
			 kept ? kept : "");
		free(kept);
		refused_add(j, op->path);
		if (op->path2 && op->kind != JOP_SYMLINK)
			refused_add(j, op->path2);
		j->fail_seq = op->seq;
		j->fail_err = -oc->err;
		j->failures++;
		log_error("journal: %s", j->fail_reason);
		if (op->ino)
			op->ino->error = oc->err;
	}
	op->done = true;
}

/* Takes the answered ops at the queue's head off it (lock held): true if any. */
static bool retire(struct sbx_journal *j)
{
	bool any = false;
	for (struct jop *op; (op = j->head) && op->done; any = true) {
		j->head = op->next;
		if (!j->head)
			j->tail = NULL;
		j->queued--;
		j->acked = op->seq;
		if (op->kind == JOP_PUT)
			j->bytes_pending -= (uint64_t)op->ino->st.st_size <= j->bytes_pending
						    ? (uint64_t)op->ino->st.st_size
						    : j->bytes_pending;
		jop_release(j, op);
	}
	return any;
}

/* Tells the filesystem what the acknowledgements settled, and what the sandbox refused (lock
 * held: a change event for these paths that comes later is queued after this). */
static void announce_settled(struct sbx_journal *j)
{
	size_t n_settled = 0;
	struct settled *settled = journal_settled(j, &n_settled);
	/* what the filesystem was shown of these was the journal's: the sandbox's attributes
	 * replace it (times, ctime); without a filesystem to take them, they go now */
	for (size_t i = 0; i < n_settled; i++) {
		struct settled *o = &settled[i];
		if (!sbx_local_settled(j->s, o->path, o->is_dir, o->has_st ? &o->st : NULL,
				       o->handover))
			journal_handover(j, o->path, o->handover, true);
		free(o->path);
	}
	free(settled);
	/* what the sandbox refused: the filesystem asks it again (after the settled paths went,
	 * so that the journal does not answer for them any more) */
	for (size_t i = 0; i < j->n_refused; i++) {
		sbx_local_unknown(j->s, j->refused[i]);
		free(j->refused[i]);
	}
	j->n_refused = 0;
}

static bool is_large(const struct jop *op)
{
	return op->kind == JOP_PUT && blob_size(op) > BATCH_BYTES;
}

/* A put of a file still being written (open for writing, written since the put was queued: a
 * shell's `>` and dd flush before they write) would go now and again at its close: it waits
 * for that close, until the time returned (0: it goes now). Lock held. */
static int64_t still_written(const struct jop *op)
{
	return op->kind == JOP_PUT && !op->sent && op->ino->writers && op->ino->dirty
		       ? op->queued_ms + WRITER_WAIT_MS : 0;
}

/* ---- the lane ----
 *
 * The main journal's watermark makes its order total: an op applied before one numbered below
 * it would be skipped as a repeat. So a large put goes on a journal of its own at the server,
 * the lane (j->lane_id), with its own watermark, and so does every op that depends on an op
 * on the lane (names the same file, a directory above or below one of its names, or shares
 * its inode), transitively. The lane's thread sends its ops one at a time, in order, each once
 * every op before it is answered for; the main journal never waits for the lane: the ops that
 * do not depend on it pass it. An op answered out of turn is done (jop.done) but stays in the
 * queue, and the log's acknowledgement stays below it, until everything before it is answered
 * too: a restarted mount sends it again, and the main journal's watermark skips it. Which
 * journal an op goes on is decided once, in the queue's order, when the main journal first
 * passes it or sends it, and logged then (a lane op as one, a main batch by its last op),
 * before anything after it is sent: sent on the other journal, it would be applied twice,
 * or skipped (a put whose file grew past BATCH_BYTES after it went in a batch must not go on
 * the lane, where nothing skips it, after the rename that followed it in that batch; a put
 * passed on the lane must not go on the main journal, whose watermark is past it once an op
 * after it was applied). */

/* Whether op depends on an op on the lane not answered for yet (lock held). */
static bool needs_lane(const struct sbx_journal *j, const struct jop *op)
{
	for (const struct jop *p = j->lane_head; p && p->seq < op->seq; p = p->lane_next)
		if (jop_depends_on(op, p))
			return true;
	return false;
}

/* Whether op goes on the lane: as decided when it was first passed or sent (or, replayed,
 * as the log says); else whether it is a large put, or depends on the lane. */
static bool for_lane(const struct sbx_journal *j, const struct jop *op)
{
	if (!j->lane_running)
		return false;
	if (op->lane || op->sent || op->decided)
		return op->lane;
	return is_large(op) || needs_lane(j, op);
}

/* Puts op, which goes on the lane, on it if it is not there yet (lock held): logged as a lane
 * op first, unless the log says so already. Not sent yet, a put there still takes a later
 * put's mode and times (journal_put): a file written and closed, or fsynced, goes up once. */
static void lane_take(struct sbx_journal *j, struct jop *op)
{
	if (op->on_lane)
		return;
	if (!op->lane)
		spool_log_lane(j, op->seq);
	op->lane = op->on_lane = true;
	*(j->lane_tail ? &j->lane_tail->lane_next : &j->lane_head) = op;
	j->lane_tail = op;
	pthread_cond_signal(&j->lane_wake);
}

/* The first op from op on that is neither answered for nor on the lane (lock held); the
 * large puts on the way are put on the lane. */
static struct jop *next_pending(struct sbx_journal *j, struct jop *op)
{
	for (; op; op = op->next) {
		if (op->done) /* passed a put on the lane: answered before it */
			continue;
		if (!for_lane(j, op))
			return op;
		lane_take(j, op);
	}
	return NULL;
}

static struct jop *first_pending(struct sbx_journal *j)
{
	return next_pending(j, j->head);
}

/* The batch that starts at first, an op pending on the main journal (lock held): up to
 * BATCH_OPS ops and BATCH_BYTES of content, a large put alone, passing what goes on the lane.
 * Its ops count as sent from now on. */
static size_t batch_take(struct sbx_journal *j, struct jop *first, struct jop **ops)
{
	size_t n = 0;
	uint64_t bytes = 0;
	for (struct jop *op = first; op && n < BATCH_OPS; op = next_pending(j, op->next)) {
		off_t size = op->kind == JOP_PUT ? blob_size(op) : 0;
		if (n && (size > BATCH_BYTES || bytes + (uint64_t)size > BATCH_BYTES))
			break;
		op->sent = true;
		ops[n++] = op;
		bytes += (uint64_t)(size > 0 ? size : 0);
		if (size > BATCH_BYTES)
			break;
	}
	if (n && j->lane_running)
		spool_log_main(j, ops[n - 1]->seq);
	return n;
}

/* Records the outcomes of ops[0..done) (lock held), takes what it can off the queue and
 * announces what that settled. */
static void acknowledge(struct sbx_journal *j, struct jop **ops, size_t done, struct outcome *oc)
{
	for (size_t i = 0; i < done; i++)
		finish(j, ops[i], &oc[i]);
	if (done) {
		if (retire(j))
			spool_log_ack(j, j->acked);
		if (j->offline)
			log_info("journal: the sandbox answers again");
		j->offline = false;
		j->main_retry.backoff_ms = j->lane_retry.backoff_ms = 0;
		announce_settled(j);
		if (!j->head)
			spool_compact(j);
	}
	pthread_cond_broadcast(&j->changed);
}

/* An attempt was made by r's sender (lock held): the waiters that asked for one so far have it. */
static void attempted(struct sbx_journal *j, struct retry *r)
{
	r->seen = j->retries_asked;
}

/* The sandbox did not take what was sent (lock held): waits, 100 ms doubling to 5 s (r: the
 * main journal's sender or the lane's), or until a waiter asks for an attempt now. */
static void back_off(struct sbx_journal *j, struct retry *r)
{
	if (!j->offline)
		log_warn("journal: the sandbox cannot take changes now (%s); %zu wait in the "
			 "journal and are sent again", sbx_last_error(), j->queued);
	j->offline = true;
	pthread_cond_broadcast(&j->changed); /* waiters that asked for it give up */
	r->backoff_ms = r->backoff_ms ? r->backoff_ms * 2 : 100;
	if (r->backoff_ms > 5000)
		r->backoff_ms = 5000;
	int64_t until = mono_ms() + r->backoff_ms;
	while (!j->stopping && r->seen == j->retries_asked &&
	       mono_cond_wait_until(&j->changed, &j->lock, until))
		;
}

/* Sends the batch that starts at first and waits for its answer (lock held, released
 * meanwhile): without the route, or a large put on the main journal. */
static void send_now(struct sbx_journal *j, struct jop *first, struct jop **ops,
		     struct outcome *oc)
{
	size_t n = batch_take(j, first, ops);
	pthread_mutex_unlock(&j->lock);
	spool_sync(j, false);
	size_t done = j->route ? send_large(j, j->wire_id, ops[0], blob_size(ops[0]), oc)
			       : fallback_send(j, ops, n, oc);
	pthread_mutex_lock(&j->lock);
	attempted(j, &j->main_retry);
	acknowledge(j, ops, done, oc);
	if (done < n)
		back_off(j, &j->main_retry);
}

/* The lane's first op, once every op before it is answered for and it is not being written
 * (still_written); NULL, with *until when to look again, if it is
 * not due (lock held). */
static struct jop *lane_due(struct sbx_journal *j, int64_t *until)
{
	struct jop *op = j->lane_head, *first = j->head;
	if (!op)
		return NULL;
	while (first && first->done)
		first = first->next;
	if (op != first)
		return NULL;
	int64_t written = still_written(op);
	if (written > mono_ms()) {
		*until = written;
		return NULL;
	}
	return op;
}

/* Sends op on the lane and waits for its answer (lock not held): 1, or 0 when it is to be
 * sent again. A put goes in parts (any size), anything else as a batch of one. */
static size_t lane_send(struct sbx_journal *j, struct flight *f, struct jop *op,
			struct outcome *oc)
{
	if (op->kind == JOP_PUT)
		return send_large(j, j->lane_id, op, blob_size(op), oc);
	f->ops[0] = op;
	f->n = 1;
	flight_send(j, j->lane_id, f, 0);
	pending_wait(j, &f->p);
	return flight_outcome(f, oc);
}

static void *lane(void *arg)
{
	struct sbx_journal *j = arg;
	on_uploader = true;
	struct flight *f = calloc(1, sizeof *f);
	if (!f)
		abort();
	pthread_mutex_lock(&j->lock);
	for (;;) {
		struct jop *op = NULL;
		int64_t until = 0;
		while (!j->stopping && !(op = lane_due(j, &until))) {
			/* an empty lane sleeps apart: the journal's every change is not its */
			if (until)
				mono_cond_wait_until(&j->changed, &j->lock, until);
			else
				pthread_cond_wait(j->lane_head ? &j->changed : &j->lane_wake,
						  &j->lock);
			until = 0;
		}
		if (j->stopping)
			break;
		struct outcome oc = { 0 };
		op->sent = true;
		pthread_mutex_unlock(&j->lock);
		spool_sync(j, false);
		size_t done = lane_send(j, f, op, &oc);
		pthread_mutex_lock(&j->lock);
		attempted(j, &j->lane_retry);
		if (done) {
			if (!(j->lane_head = op->lane_next))
				j->lane_tail = NULL;
			acknowledge(j, &op, 1, &oc);
		} else {
			back_off(j, &j->lane_retry);
		}
	}
	pthread_mutex_unlock(&j->lock);
	free(f);
	return NULL;
}

/* ---- the main journal ---- */

/* Sends the batch that starts at first after the ones on their way (lock held, released
 * meanwhile): the server applies it once it applied them ("after"). */
static void launch(struct sbx_journal *j, struct window *w, struct jop *first)
{
	struct flight *prev = w->count ? flight_at(w, w->count - 1) : NULL;
	uint64_t after = prev ? prev->ops[prev->n - 1]->seq : 0;
	struct flight *f = flight_at(w, w->count++);
	f->n = batch_take(j, first, f->ops);
	f->retried = false;
	f->p.answered = false;
	pthread_mutex_unlock(&j->lock);
	spool_sync(j, false);
	flight_send(j, j->wire_id, f, after);
	pthread_mutex_lock(&j->lock);
}

/* The oldest batch on its way leaves the window (lock held). */
static void window_pop(struct window *w)
{
	w->oldest = (w->oldest + 1) % w->width;
	w->count--;
}

/* Nothing to send (lock held): waits for a change, looking at the announced nodes meanwhile
 * (declined ones are announced again, the ones the filesystem never took, because it dropped
 * its events, go). */
static void idle(struct sbx_journal *j, int64_t *next_sweep)
{
	if (!j->lingering) {
		pthread_cond_wait(&j->changed, &j->lock);
	} else if (mono_ms() >= *next_sweep) {
		announce_settled(j);
		*next_sweep = mono_ms() + HANDOVER_SWEEP_MS;
	} else {
		mono_cond_wait_until(&j->changed, &j->lock, *next_sweep);
	}
}

static void *uploader(void *arg)
{
	struct sbx_journal *j = arg;
	on_uploader = true;
	struct window w = { .width = j->route && j->s->pipeline ? WINDOW : 1 };
	struct jop **ops = calloc(BATCH_OPS, sizeof *ops);
	struct outcome *oc = calloc(BATCH_OPS, sizeof *oc);
	w.v = calloc(w.width, sizeof *w.v);
	int64_t next_sweep = 0;
	if (!ops || !oc || !w.v)
		abort();
	pthread_mutex_lock(&j->lock);
	for (;;) {
		if (!w.count) {
			if (j->stopping)
				break;
			struct jop *first = first_pending(j);
			if (!first) {
				idle(j, &next_sweep);
				continue;
			}
			/* A moment for what comes right after (the rename after a close, the next
			 * save's put): one request for both instead of one after the other,
			 * unless something waits for the sandbox (fsync, sync, a drain). */
			int64_t company = mono_ms() + COALESCE_MS;
			while (!j->stopping && !j->urgent && j->queued < BATCH_OPS &&
			       mono_cond_wait_until(&j->changed, &j->lock, company))
				;
			/* a file still being written: its put waits for the close, unless
			 * something waits for the sandbox */
			for (struct jop *h; !j->stopping && !j->urgent && (h = first_pending(j));) {
				int64_t written = still_written(h);
				if (!written ||
				    !mono_cond_wait_until(&j->changed, &j->lock, written))
					break;
			}
			j->urgent = false;
			if (!(first = first_pending(j))) /* the lane took them meanwhile */
				continue;
			if (!j->route || is_large(first))
				send_now(j, first, ops, oc);
			else
				launch(j, &w, first);
			continue;
		}
		struct flight *f = flight_at(&w, 0);
		if (!f->p.answered) {
			/* something waits for the sandbox (an fsync): what is not on its way yet
			 * goes now, not after the answers */
			struct flight *last = flight_at(&w, w.count - 1);
			struct jop *next = !j->stopping && j->urgent && w.count < w.width
					   ? next_pending(j, last->ops[last->n - 1]->next) : NULL;
			if (next && !is_large(next)) {
				j->urgent = false;
				launch(j, &w, next);
			} else {
				pthread_cond_wait(&j->changed, &j->lock);
			}
			continue;
		}
		pthread_mutex_unlock(&j->lock);
		size_t done = flight_outcome(f, oc);
		pthread_mutex_lock(&j->lock);
		attempted(j, &j->main_retry);
		if (!done && w.count > 1 && !f->retried && !j->stopping) {
			/* the ones after it wait for it at the server (up to seconds): it goes
			 * again at once, once */
			f->retried = true;
			f->p.answered = false;
			pthread_mutex_unlock(&j->lock);
			flight_send(j, j->wire_id, f, 0);
			pthread_mutex_lock(&j->lock);
			continue;
		}
		acknowledge(j, f->ops, done, oc);
		window_pop(&w);
		if (done < f->n) {
			/* everything from it on goes again, after the backoff: the answers of the
			 * ones after it are not read (what they applied is skipped then) */
			for (; w.count; window_pop(&w)) {
				struct flight *g = flight_at(&w, 0);
				while (!g->p.answered)
					pthread_cond_wait(&j->changed, &j->lock);
				http_response_clear(&g->p.resp);
			}
			back_off(j, &j->main_retry);
		}
	}
	pthread_mutex_unlock(&j->lock);
	free(w.v);
	free(ops);
	free(oc);
	return NULL;
}

int upload_start(struct sbx_journal *j)
{
	j->route = j->s->journal_route;
	snprintf(j->lane_id, sizeof j->lane_id, "%s" SBX_LANE_SUFFIX, j->wire_id);
	int err = j->route ? pthread_create(&j->lane_thread, NULL, lane, j) : 0;
	if (err)
		return sbx_fail(-err, "journal: cannot start its lane: %s", strerror(err));
	j->lane_running = j->route;
	j->running = true;
	if ((err = pthread_create(&j->thread, NULL, uploader, j))) {
		j->running = false;
		upload_stop(j);
		return sbx_fail(-err, "journal: cannot start its uploader: %s", strerror(err));
	}
	return 0;
}

void upload_stop(struct sbx_journal *j)
{
	if (!j->running && !j->lane_running)
		return;
	pthread_mutex_lock(&j->lock);
	j->stopping = true;
	pthread_cond_broadcast(&j->changed);
	pthread_cond_broadcast(&j->lane_wake);
	pthread_mutex_unlock(&j->lock);
	if (j->running)
		pthread_join(j->thread, NULL);
	if (j->lane_running)
		pthread_join(j->lane_thread, NULL);
	j->running = j->lane_running = false;
	for (size_t i = 0; i < j->n_refused; i++)
		free(j->refused[i]);
	free(j->refused);
	j->refused = NULL;
	j->n_refused = j->cap_refused = 0;
}
