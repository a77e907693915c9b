/* POST /api/x/journal (docs/protocol.md, "The journal"): decodes a batch of a journal's
 * operations, every one of them before any is applied (a batch with one malformed op is
 * refused whole, 400, nothing done), hands it to the engine of server/journal.h and answers
 * with one result per op. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common/base64.h"
#include "common/errnames.h"
#include "common/jsonutil.h"
#include "server/journal.h"
#include "server/request.h"
#include "server/routes.h"
#include "server/sbxd.h"

/* A time: [sec, nsec], as in the stat objects and /api/x/setattr. */
static bool get_time(const cJSON *v, struct timespec *ts)
{
	return json_get_timespec(v, ts);
}

static bool valid_time(const cJSON *v)
{
	struct timespec ts;
	return get_time(v, &ts);
}

/* {"absent": true}, or {"size": N, "mtime": {...}} with either or both. */
static bool get_expect(const cJSON *v, struct journal_op *op)
{
	const cJSON *absent = cJSON_GetObjectItemCaseSensitive(v, "absent");
	const cJSON *size = cJSON_GetObjectItemCaseSensitive(v, "size");
	const cJSON *mtime = cJSON_GetObjectItemCaseSensitive(v, "mtime");
	if (cJSON_IsTrue(absent)) {
		op->expect = JOURNAL_EXPECT_ABSENT;
		return !size && !mtime;
	}
	if (absent && !cJSON_IsFalse(absent))
		return false;
	op->expect = JOURNAL_EXPECT_STAT;
	if (size) {
		if (!cJSON_IsNumber(size) || !(size->valuedouble >= 0 && size->valuedouble <= 4.6e18))
			return false;
		op->expect_size = (off_t)size->valuedouble;
		op->expect_has_size = true;
	}
	if (mtime) {
		if (!get_time(mtime, &op->expect_mtime))
			return false;
		op->expect_has_mtime = true;
	}
	return op->expect_has_size || op->expect_has_mtime;
}

static bool valid_expect(const cJSON *v)
{
	struct journal_op op = { 0 };
	return get_expect(v, &op);
}

/* One op as it comes; absent fields stay as set (0, NULL). */
struct op_body {
	int64_t seq, mode, offset, size, uid, gid;
	const char *op, *path, *from, *to, *target, *data, *flags;
	const cJSON *mtime, *atime, *expect;
};

#define OFF_MAX 4.6e18 /* below 2^62: an off_t, exact enough */
static const struct field op_fields[] = {
	FIELD("seq", FIELD_INT, struct op_body, seq, .flags = FIELD_REQUIRED, .min = 1,
	      .max = (double)JOURNAL_SEQ_MAX),
	FIELD("op", FIELD_STRING, struct op_body, op, .flags = FIELD_REQUIRED | FIELD_NOT_EMPTY),
	FIELD("path", FIELD_STRING, struct op_body, path, .flags = FIELD_NOT_EMPTY),
	FIELD("from", FIELD_STRING, struct op_body, from, .flags = FIELD_NOT_EMPTY),
	FIELD("to", FIELD_STRING, struct op_body, to, .flags = FIELD_NOT_EMPTY),
	FIELD("target", FIELD_STRING, struct op_body, target, .flags = FIELD_NOT_EMPTY),
	FIELD("data", FIELD_STRING, struct op_body, data),
	FIELD("mode", FIELD_INT, struct op_body, mode, .min = 0, .max = 07777),
	FIELD("offset", FIELD_INT, struct op_body, offset, .min = 0, .max = OFF_MAX),
	FIELD("size", FIELD_INT, struct op_body, size, .min = 0, .max = OFF_MAX),
	FIELD("uid", FIELD_INT, struct op_body, uid, .min = 0, .max = 4294967294.0),
	FIELD("gid", FIELD_INT, struct op_body, gid, .min = 0, .max = 4294967294.0),
	FIELD("mtime", FIELD_ARRAY, struct op_body, mtime, .valid = valid_time,
	      .wrong = "mtime must be [sec, nsec]"),
	FIELD("atime", FIELD_ARRAY, struct op_body, atime, .valid = valid_time,
	      .wrong = "atime must be [sec, nsec]"),
	FIELD("expect", FIELD_OBJECT, struct op_body, expect, .valid = valid_expect,
	      .wrong = "expect must be {\"absent\": true} or {\"size\": N, \"mtime\": [sec, nsec]}"),
	FIELD("flags", FIELD_STRING, struct op_body, flags),
};

enum need { NEED_PATH = 1, NEED_MODE = 2, NEED_DATA = 4, NEED_OFFSET = 8, NEED_TARGET = 16,
	    NEED_FROM_TO = 32 };

static const struct {
	const char *name;
	enum journal_op_kind kind;
	unsigned needs;
	const char *needs_text;
} kinds[] = {
	{ "put", JOP_PUT, NEED_PATH | NEED_MODE | NEED_DATA, "path, mode and data" },
	{ "write", JOP_WRITE, NEED_PATH | NEED_OFFSET | NEED_DATA, "path, offset and data" },
	{ "mkdir", JOP_MKDIR, NEED_PATH | NEED_MODE, "path and mode" },
	{ "symlink", JOP_SYMLINK, NEED_PATH | NEED_TARGET, "path and target" },
	{ "link", JOP_LINK, NEED_FROM_TO, "from and to" },
	{ "unlink", JOP_UNLINK, NEED_PATH, "path" },
	{ "rmdir", JOP_RMDIR, NEED_PATH, "path" },
	{ "rename", JOP_RENAME, NEED_FROM_TO, "from and to" },
	{ "setattr", JOP_SETATTR, NEED_PATH, "path" },
};

static unsigned has(const struct op_body *b)
{
	return (b->path ? NEED_PATH : 0) | (b->mode >= 0 ? NEED_MODE : 0) |
	       (b->data ? NEED_DATA : 0) | (b->offset >= 0 ? NEED_OFFSET : 0) |
	       (b->target ? NEED_TARGET : 0) | (b->from && b->to ? NEED_FROM_TO : 0);
}

/* Fills op from its JSON (its data decoded into *decoded, the caller's to free); false with
 * the reason in e->message. */
static bool decode_op(const cJSON *v, struct journal_op *op, char **decoded,
		      struct field_error *e)
{
	struct op_body b = { .mode = -1, .offset = -1, .size = -1, .uid = -1, .gid = -1 };
	if (!cJSON_IsObject(v)) {
		snprintf(e->message, sizeof e->message, "an op must be an object");
		return false;
	}
	if (!fields_decode(v, op_fields, FIELDS_N(op_fields), &b, e))
		return false;
	size_t k = 0;
	while (k < FIELDS_N(kinds) && strcmp(kinds[k].name, b.op) != 0)
		k++;
	if (k == FIELDS_N(kinds)) {
		snprintf(e->message, sizeof e->message, "op must be put, write, mkdir, symlink, "
			 "link, unlink, rmdir, rename or setattr, not \"%.64s\"", b.op);
		return false;
	}
	if ((has(&b) & kinds[k].needs) != kinds[k].needs) {
		snprintf(e->message, sizeof e->message, "%s needs %s", b.op, kinds[k].needs_text);
		return false;
	}
	*op = (struct journal_op){
		.seq = (uint64_t)b.seq, .kind = kinds[k].kind, .path = b.path, .from = b.from,
		.to = b.to, .target = b.target, .offset = b.offset < 0 ? 0 : (off_t)b.offset,
		.has_mode = b.mode >= 0, .mode = (mode_t)(b.mode < 0 ? 0 : b.mode),
		.has_size = b.size >= 0, .size = (off_t)b.size, .has_uid = b.uid >= 0,
		.uid = (uid_t)b.uid, .has_gid = b.gid >= 0, .gid = (gid_t)b.gid,
		.has_atime = b.atime != NULL, .has_mtime = b.mtime != NULL,
	};
	if (b.atime)
		get_time(b.atime, &op->atime);
	if (b.mtime)
		get_time(b.mtime, &op->mtime);
	if (b.expect)
		get_expect(b.expect, op);
	if (b.flags && op->kind == JOP_RENAME) {
		if (strcmp(b.flags, "noreplace") == 0) {
			op->rename_flags = RENAME_NOREPLACE;
		} else if (strcmp(b.flags, "exchange") == 0) {
			op->rename_flags = RENAME_EXCHANGE;
		} else {
			snprintf(e->message, sizeof e->message,
				 "flags must be \"noreplace\" or \"exchange\"");
			return false;
		}
	}
	if (b.data) {
		size_t n = strlen(b.data);
		ssize_t len;
		*decoded = malloc(base64_decoded_max(n) + 1);
		if (!*decoded || (len = base64_decode(b.data, n, *decoded)) < 0) {
			snprintf(e->message, sizeof e->message, *decoded ? "data must be base64"
									 : "out of memory");
			return false;
		}
		op->data = *decoded;
		op->len = (size_t)len;
	}
	return true;
}

struct batch {
	size_t n;
	struct journal_op *ops;
	char **decoded;                 /* each op's data */
	struct journal_result *results;
};

static void batch_free(struct batch *b)
{
	for (size_t i = 0; b->decoded && i < b->n; i++)
		free(b->decoded[i]);
	if (b->results)
		journal_results_free(b->results, b->n);
	free(b->decoded);
	free(b->ops);
	free(b->results);
}

/* Decodes the ops of the body into b; false after answering. */
static bool decode_batch(struct req *r, const cJSON *ops, struct batch *b)
{
	int count = cJSON_GetArraySize(ops);
	if (count < 1 || count > JOURNAL_OPS_MAX) {
		cJSON *ctx = cJSON_CreateObject();
		cJSON_AddStringToObject(ctx, "field", "ops");
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, ctx,
			    "ops must hold 1 to %d operations, not %d", JOURNAL_OPS_MAX, count);
		return false;
	}
	b->n = (size_t)count;
	b->ops = calloc(b->n, sizeof *b->ops);
	b->decoded = calloc(b->n, sizeof *b->decoded);
	b->results = calloc(b->n, sizeof *b->results);
	if (!b->ops || !b->decoded || !b->results) {
		reply_error(r, 500, "INTERNAL_ERROR", ENOMEM, NULL, "out of memory");
		return false;
	}
	size_t i = 0;
	const cJSON *v;
	cJSON_ArrayForEach(v, ops) {
		struct field_error e = { 0 };
		bool ok = decode_op(v, &b->ops[i], &b->decoded[i], &e);
		if (ok && i && b->ops[i].seq <= b->ops[i - 1].seq) {
			snprintf(e.message, sizeof e.message, "seq %llu is not above the seq before "
				 "it (%llu)", (unsigned long long)b->ops[i].seq,
				 (unsigned long long)b->ops[i - 1].seq);
			ok = false;
		}
		if (!ok) {
			cJSON *ctx = cJSON_CreateObject();
			cJSON_AddStringToObject(ctx, "field", "ops");
			json_add_int(ctx, "index", (int64_t)i);
			reply_error(r, 400, "VALIDATION_FAILED", EINVAL, ctx, "ops[%zu]: %s", i,
				    e.message);
			return false;
		}
		i++;
	}
	return true;
}

/* The wire form of a result, taking its stat objects over. */
static cJSON *result_json(struct journal_result *res)
{
	cJSON *o = cJSON_CreateObject();
	json_add_int(o, "seq", (int64_t)res->seq);
	switch (res->outcome) {
	case JOURNAL_SKIPPED:
		cJSON_AddTrueToObject(o, "skipped");
		break;
	case JOURNAL_APPLIED:
		cJSON_AddTrueToObject(o, "ok");
		if (res->stat)
			cJSON_AddItemToObject(o, "stat", res->stat);
		if (res->parent)
			cJSON_AddItemToObject(o, "parent", res->parent);
		if (res->from_parent)
			cJSON_AddItemToObject(o, "fromParent", res->from_parent);
		res->stat = res->parent = res->from_parent = NULL;
		if (res->conflict) {
			cJSON_AddTrueToObject(o, "conflict");
			cJSON_AddItemToObject(o, "before",
					      res->before ? res->before : cJSON_CreateNull());
			res->before = NULL;
		}
		break;
	case JOURNAL_FAILED: {
		int status;
		const char *code = errno_to_code(res->err, &status);
		cJSON *ctx = cJSON_CreateObject();
		if (res->to) {
			cJSON_AddStringToObject(ctx, "from", res->path);
			cJSON_AddStringToObject(ctx, "to", res->to);
		} else if (res->path) {
			cJSON_AddStringToObject(ctx, "path", res->path);
		}
		cJSON_AddItemToObject(o, "error",
				      error_object(status, code, res->err, ctx,
						   res->message ? res->message : strerror(res->err)));
		break;
	}
	}
	return o;
}

struct journal_body {
	const char *journal;
	int64_t after;
	const cJSON *ops;
};

static bool valid_journal_id(const cJSON *v)
{
	return journal_id_valid(v->valuestring);
}

static const struct field journal_fields[] = {
	FIELD("journal", FIELD_STRING, struct journal_body, journal, .flags = FIELD_REQUIRED,
	      .valid = valid_journal_id,
	      .wrong = "journal must be 1 to 64 of A-Z a-z 0-9 _ -, not \"%.80s\""),
	FIELD("after", FIELD_INT, struct journal_body, after, .min = 0,
	      .max = (double)JOURNAL_SEQ_MAX),
	FIELD("ops", FIELD_ARRAY, struct journal_body, ops, .flags = FIELD_REQUIRED),
};

static void apply_and_reply(struct req *r, const char *journal, uint64_t after, struct batch *b);

void route_x_journal(struct req *r)
{
	struct journal_body body = { 0 };
	if (!req_decode(r, journal_fields, FIELDS_N(journal_fields), &body))
		return;
	struct batch b = { 0 };
	if (!decode_batch(r, body.ops, &b)) {
		batch_free(&b);
		return;
	}
	if (body.after >= (int64_t)b.ops[0].seq) {
		cJSON *ctx = cJSON_CreateObject();
		cJSON_AddStringToObject(ctx, "field", "after");
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, ctx, "after (%lld) must be below "
			    "the first op's seq (%llu)", (long long)body.after,
			    (unsigned long long)b.ops[0].seq);
		batch_free(&b);
		return;
	}
	apply_and_reply(r, body.journal, (uint64_t)body.after, &b);
	batch_free(&b);
}

/* Applies b and answers with its results (or why nothing was applied). */
static void apply_and_reply(struct req *r, const char *journal, uint64_t after, struct batch *b)
{
	uint64_t applied = 0;
	int err = journal_apply(req_sbxd(r)->journals, journal, after, b->ops, b->n, b->results,
				&applied);
	if (err == -EAGAIN) {
		/* 409, not 503: a gateway or the client's own retry must not repeat it blindly;
		 * the client sends the batch before it first */
		reply_error(r, 409, "JOURNAL_OUT_OF_ORDER", EAGAIN, NULL, "journal %s: the batch "
			    "before this one (up to seq %llu) has not come; applied up to %llu",
			    journal, (unsigned long long)after, (unsigned long long)applied);
	} else if (err == -EBUSY) {
		reply_error(r, 503, "JOURNALS_BUSY", EBUSY, NULL, "all %d journals are in use: "
			    "try again", JOURNALS_MAX);
	} else if (err) {
		reply_errno(r, err, NULL, "journal %s: its watermark cannot be kept: %s",
			    journal, strerror(-err));
	} else {
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "journal", journal);
		json_add_int(o, "applied", (int64_t)applied);
		cJSON *list = cJSON_AddArrayToObject(o, "results");
		for (size_t i = 0; i < b->n; i++)
			cJSON_AddItemToArray(list, result_json(&b->results[i]));
		reply_ok(r, o);
	}
}

/* A whole number in the query string, 0 to max; false when absent or not one. */
static bool query_uint(struct req *r, const char *name, uint64_t max, uint64_t *out)
{
	const char *s = req_query(r, name);
	char *end;
	if (!s || *s < '0' || *s > '9')
		return false;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (*end || errno || v > max)
		return false;
	*out = v;
	return true;
}

/* PUT /api/x/journal?journal=ID&seq=N&path=P&offset=O[&after=S], the bytes as the body: one
 * `write`, without base64 and JSON around its data (a large file's later parts: a third less
 * to send, and nothing to encode or decode). */
void route_x_journal_write(struct req *r)
{
	const char *journal = req_query(r, "journal"), *path = req_query(r, "path");
	uint64_t seq = 0, offset = 0, after = 0;
	if (!journal || !journal_id_valid(journal) || !path || !*path ||
	    !query_uint(r, "seq", JOURNAL_SEQ_MAX, &seq) || seq < 1 ||
	    !query_uint(r, "offset", (uint64_t)OFF_MAX, &offset) ||
	    (req_query(r, "after") && (!query_uint(r, "after", JOURNAL_SEQ_MAX, &after) ||
				       after >= seq))) {
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, NULL,
			    "query parameters journal, seq (1 to 2^53), path and offset (>= 0) are "
			    "required; after (below seq) is optional");
		return;
	}
	size_t len;
	const char *data = req_body(r, &len);
	struct journal_op op = { .seq = seq, .kind = JOP_WRITE, .path = path,
				 .data = data ? data : "", .len = len, .offset = (off_t)offset };
	struct journal_result res;
	struct batch b = { .n = 1, .ops = &op, .results = &res };
	apply_and_reply(r, journal, after, &b);
	journal_results_free(&res, 1);
}
