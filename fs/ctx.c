/* ctx/: the sandbox's code contexts as a control tree (docs/ctx.md).
 *
 *   ctx/new                  request: [write options "language=js cwd=DIR env.K=V",] read
 *                            "<id>\n" of a new context (python unless told otherwise)
 *   ctx/<id>/in              command: what is written between open and close runs as one
 *                            execution, started at close; close fails if it could not start
 *   ctx/<id>/out             stream: the latest execution's events as JSON lines; EOF after
 *                            its execution_complete or error
 *   ctx/<id>/results/<n>.<ext>  the latest execution's rich results as files, one per result
 *                            and format (1.txt, 1.png, 1.chart.json, 2.html)
 *   ctx/<id>/language, cwd   snapshots
 *   ctx/<id>/interrupt       command: interrupts the running execution (sbxd only)
 *   rmdir ctx/<id>           deletes the context
 *
 * Which contexts exist is asked of the sandbox (contexts made elsewhere appear). What this
 * mount started is kept here: per context, its latest execution, whose event stream belongs
 * to the execution and not to any reader. A reader attaches to the execution's feed and may
 * come and go; the stream stays open until the execution ends (sbxd interrupts an execution
 * whose client hangs up), so an execution replaced by a newer one still runs to its end.
 *
 * Lifetimes. An execution is counted: the table's "latest" slot holds one reference, its
 * stream one until the stream's end, a commit one while it starts the stream. Whoever drops
 * the last one frees it, which closes its client execution: on a worker thread, or on the
 * network thread from the stream's own on_end (allowed there). Executions whose stream runs
 * are also on the `running` list, so unmount can hang them all up.
 *
 * ctx_lock guards the table, the running list and every execution's fields (results, x,
 * running, refs). It is taken before control.c's lock (feed pushes, attach), never after, and
 * never held across a call that waits for the network thread. */
#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "client/contexts.h"
#include "client/sandbox.h"
#include "common/base64.h"
#include "common/jsonutil.h"
#include "common/log.h"
#include "fs/control.h"
#include "fs/internal.h"

/* One format of one result: results/<n>.<ext>, n counting the execution's result events. */
struct result {
	char name[32]; /* "3.png", "3.chart.json" */
	char *data;
	size_t len;
};

struct execution {
	unsigned refs;
	char *ctx_id;
	struct ctl_feed *feed;
	struct sbx_execution *x;
	bool running; /* its stream has not ended: holds a reference, on `running` */
	struct execution *next_running;
	struct timespec started;
	struct result *results;
	size_t nresults, cap;
	size_t nevents; /* result events so far */
};

struct ctx_state {
	char *id;
	struct execution *latest;
	struct ctx_state *next;
};

static pthread_mutex_t ctx_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ctx_state *states;
static struct execution *running;

static const char *ctx_id(const struct ctl_args *a)
{
	return a->v[0];
}

/* Caller holds ctx_lock. */
static struct ctx_state *state_of(const char *id, bool make)
{
	for (struct ctx_state *st = states; st; st = st->next)
		if (strcmp(st->id, id) == 0)
			return st;
	if (!make)
		return NULL;
	struct ctx_state *st = calloc(1, sizeof(*st));
	if (!st || !(st->id = strdup(id)))
		abort();
	st->next = states;
	states = st;
	return st;
}

/* Caller holds ctx_lock. */
static void running_del(struct execution *e)
{
	for (struct execution **pp = &running; *pp; pp = &(*pp)->next_running)
		if (*pp == e) {
			*pp = e->next_running;
			break;
		}
}

static void exe_unref(struct execution *e)
{
	if (!e)
		return;
	pthread_mutex_lock(&ctx_lock);
	bool last = --e->refs == 0;
	pthread_mutex_unlock(&ctx_lock);
	if (!last)
		return;
	/* Its stream has ended (it held a reference): closing only frees. */
	sbx_execution_close(e->x);
	ctl_feed_unref(e->feed);
	for (size_t i = 0; i < e->nresults; i++)
		free(e->results[i].data);
	free(e->results);
	free(e->ctx_id);
	free(e);
}

/* ---- results ---- */

static const struct {
	const char *field, *ext;
	bool base64;
} result_kinds[] = {
	{ "png", "png", true },   { "jpeg", "jpg", true },  { "svg", "svg", false },
	{ "html", "html", false }, { "json", "json", false }, { "latex", "tex", false },
	{ "markdown", "md", false }, { "text", "txt", false }, { "javascript", "js", false },
	{ "chart", "chart.json", false },
};

/* The bytes a result field stands for (caller frees), NULL when it holds nothing usable. */
static char *result_bytes(const cJSON *v, bool is_base64, size_t *len)
{
	if (!cJSON_IsString(v)) {
		char *text = cJSON_Print(v);
		if (!text)
			abort();
		size_t n = strlen(text);
		char *out = realloc(text, n + 2);
		if (!out)
			abort();
		out[n] = '\n';
		out[n + 1] = '\0';
		*len = n + 1;
		return out;
	}
	const char *s = v->valuestring;
	size_t n = strlen(s);
	if (!is_base64) {
		char *out = strdup(s);
		if (!out)
			abort();
		*len = n;
		return out;
	}
	/* The container wraps its base64 in newlines; the decoder takes none. */
	char *clean = malloc(n + 1), *out = malloc(base64_decoded_max(n) + 1);
	if (!clean || !out)
		abort();
	size_t m = 0;
	for (size_t i = 0; i < n; i++)
		if (!isspace((unsigned char)s[i]))
			clean[m++] = s[i];
	ssize_t got = base64_decode(clean, m, out);
	free(clean);
	if (got < 0) {
		free(out);
		return NULL;
	}
	*len = (size_t)got;
	return out;
}

/* Network thread: a result event's formats become files named by its number, so one display
 * (a figure: 2.txt, 2.png, 2.chart.json) shares one. */
static void add_results(struct execution *e, const cJSON *ev)
{
	pthread_mutex_lock(&ctx_lock);
	size_t n = ++e->nevents;
	pthread_mutex_unlock(&ctx_lock);
	const cJSON *field;
	cJSON_ArrayForEach(field, ev) {
		for (size_t k = 0; k < sizeof(result_kinds) / sizeof(result_kinds[0]); k++) {
			if (strcmp(field->string, result_kinds[k].field) != 0)
				continue;
			size_t len;
			char *data = result_bytes(field, result_kinds[k].base64, &len);
			if (!data) {
				log_warn("ctx/%s: a %s result is not valid base64; it has no file",
					 e->ctx_id, result_kinds[k].field);
				break;
			}
			pthread_mutex_lock(&ctx_lock);
			if (e->nresults == e->cap) {
				e->cap = e->cap ? e->cap * 2 : 8;
				e->results = realloc(e->results, e->cap * sizeof(*e->results));
				if (!e->results)
					abort();
			}
			struct result *r = &e->results[e->nresults++];
			snprintf(r->name, sizeof r->name, "%zu.%s", n, result_kinds[k].ext);
			r->data = data;
			r->len = len;
			pthread_mutex_unlock(&ctx_lock);
			break;
		}
	}
}

/* ---- an execution's stream ---- */

static void push_line(struct ctl_feed *f, const char *json, size_t len)
{
	char *line = malloc(len + 1);
	if (!line)
		abort();
	memcpy(line, json, len);
	line[len] = '\n';
	ctl_feed_push(f, line, len + 1);
	free(line);
}

/* The error line that ends out when the execution did not end by itself. */
static void push_error(struct ctl_feed *f, const char *ename, const char *reason)
{
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "type", "error");
	cJSON_AddStringToObject(j, "ename", ename);
	cJSON_AddStringToObject(j, "evalue", reason);
	cJSON_AddArrayToObject(j, "traceback");
	char *text = json_print(j);
	cJSON_Delete(j);
	if (!text)
		abort();
	push_line(f, text, strlen(text));
	free(text);
}

/* Readers of a broken stream get EIO, ENOTCONN or ETIMEDOUT: what a read(2) may say. */
static int read_errno(int err)
{
	return err == -ENOTCONN || err == -ETIMEDOUT ? err : -EIO;
}

static void exe_event(void *arg, const char *json, size_t len, const cJSON *ev)
{
	struct execution *e = arg;
	const char *type = json_str(ev, "type");
	if (type && strcmp(type, "result") == 0)
		add_results(e, ev);
	push_line(e->feed, json, len);
}

static void exe_end(void *arg, int err, const char *reason)
{
	struct execution *e = arg;
	if (err) {
		log_warn("ctx/%s: %s", e->ctx_id, reason);
		push_error(e->feed, "StreamError", reason);
	}
	ctl_feed_end(e->feed, err ? read_errno(err) : 0);
	pthread_mutex_lock(&ctx_lock);
	bool drop = e->running;
	e->running = false;
	running_del(e);
	pthread_mutex_unlock(&ctx_lock);
	if (drop)
		exe_unref(e);
}

static const struct sbx_execution_ops exe_ops = {
	.on_event = exe_event,
	.on_end = exe_end,
};

/* Makes e the latest execution of its context (takes the caller's reference). */
static void install(struct execution *e)
{
	pthread_mutex_lock(&ctx_lock);
	struct ctx_state *st = state_of(e->ctx_id, true);
	struct execution *old = st->latest;
	st->latest = e;
	pthread_mutex_unlock(&ctx_lock);
	exe_unref(old);
}

static int in_commit(struct ctl_handle *h)
{
	size_t len;
	const char *code = ctl_input_take(h, &len);
	if (!len)
		return 0; /* nothing written: nothing to run */
	struct execution *e = calloc(1, sizeof(*e));
	if (!e || !(e->ctx_id = strdup(ctx_id(&h->args))))
		abort();
	e->refs = 2; /* ours (then the table's) and the stream's */
	char label[300];
	snprintf(label, sizeof label, "ctx/%s/out", e->ctx_id);
	e->feed = ctl_feed_new(true, label);
	e->running = true;
	clock_gettime(CLOCK_REALTIME, &e->started);
	pthread_mutex_lock(&ctx_lock);
	e->next_running = running;
	running = e;
	pthread_mutex_unlock(&ctx_lock);

	struct sbx_execution *x = sbx_execution_start(h->sbx, e->ctx_id, code, len, &exe_ops, e);
	if (!x) {
		int err = -errno;
		/* out tells of the failed attempt too: bash's builtin echo never sees close()
		 * fail (it closes through dup2), a `cat out` after it does. */
		push_error(e->feed, "StartError", sbx_last_error());
		ctl_feed_end(e->feed, read_errno(err));
		pthread_mutex_lock(&ctx_lock);
		e->running = false;
		running_del(e);
		e->refs--;
		pthread_mutex_unlock(&ctx_lock);
		if (err == -ENOENT)
			exe_unref(e); /* no such context: nothing to show it in */
		else
			install(e);
		return err;
	}
	pthread_mutex_lock(&ctx_lock);
	e->x = x;
	pthread_mutex_unlock(&ctx_lock);
	log_debug("ctx/%s: running %zu bytes of code", e->ctx_id, len);
	install(e);
	return 0;
}

static int out_open(struct ctl_handle *h)
{
	pthread_mutex_lock(&ctx_lock);
	struct ctx_state *st = state_of(ctx_id(&h->args), false);
	if (st && st->latest)
		ctl_handle_attach(h, st->latest->feed);
	pthread_mutex_unlock(&ctx_lock);
	if (!h->feed) {
		/* No execution from this mount yet: an empty file. */
		struct ctl_feed *f = ctl_feed_new(true, "ctx/out");
		ctl_feed_end(f, 0);
		ctl_handle_attach(h, f);
		ctl_feed_unref(f);
	}
	return 0;
}

static int interrupt_commit(struct ctl_handle *h)
{
	return sbx_context_interrupt(h->sbx, ctx_id(&h->args));
}

/* ---- snapshots ---- */

static int language_open(struct ctl_handle *h)
{
	struct sbx_context c;
	int err = sbx_context_get(h->sbx, ctx_id(&h->args), &c);
	if (!err) {
		strbuf_appendf(&h->out, "%s\n", c.language);
		sbx_context_clear(&c);
	}
	return err;
}

static int cwd_open(struct ctl_handle *h)
{
	struct sbx_context c;
	int err = sbx_context_get(h->sbx, ctx_id(&h->args), &c);
	if (!err) {
		strbuf_appendf(&h->out, "%s\n", *c.cwd ? c.cwd : "/workspace");
		sbx_context_clear(&c);
	}
	return err;
}

/* ---- results/ ---- */

/* The result called name of the context's latest execution; caller holds ctx_lock. */
static const struct result *result_find(const struct ctl_args *a, struct execution **owner)
{
	struct ctx_state *st = state_of(ctx_id(a), false);
	struct execution *e = st ? st->latest : NULL;
	for (size_t i = 0; e && i < e->nresults; i++)
		if (strcmp(e->results[i].name, a->v[a->n - 1]) == 0) {
			*owner = e;
			return &e->results[i];
		}
	return NULL;
}

static int results_list(struct sbxfs *fs, const struct ctl_args *a, struct ctl_names *out)
{
	pthread_mutex_lock(&ctx_lock);
	struct ctx_state *st = state_of(ctx_id(a), false);
	struct execution *e = st ? st->latest : NULL;
	for (size_t i = 0; e && i < e->nresults; i++)
		ctl_names_add(out, e->results[i].name);
	pthread_mutex_unlock(&ctx_lock);
	return 0;
}

static int results_exists(struct sbxfs *fs, const struct ctl_args *a)
{
	struct execution *e;
	pthread_mutex_lock(&ctx_lock);
	bool found = result_find(a, &e) != NULL;
	pthread_mutex_unlock(&ctx_lock);
	return found ? 0 : -ENOENT;
}

static int results_stat(struct sbxfs *fs, const struct ctl_args *a, struct stat *st)
{
	struct execution *e;
	pthread_mutex_lock(&ctx_lock);
	const struct result *r = result_find(a, &e);
	if (r) {
		st->st_size = (off_t)r->len;
		st->st_atim = st->st_mtim = st->st_ctim = e->started;
	}
	pthread_mutex_unlock(&ctx_lock);
	return r ? 0 : -ENOENT;
}

static int results_open(struct ctl_handle *h)
{
	struct execution *e;
	pthread_mutex_lock(&ctx_lock);
	const struct result *r = result_find(&h->args, &e);
	if (r)
		strbuf_append(&h->out, r->data, r->len);
	pthread_mutex_unlock(&ctx_lock);
	return r ? 0 : sbx_fail(-ENOENT, "ctx/%s/results/%s: the latest execution has no such "
				"result", ctx_id(&h->args), h->args.v[1]);
}

/* ---- ctx/new ---- */

/* The next whitespace-separated word of *pp into w; '...' and "..." quote, a backslash
 * escapes the next character outside single quotes. 1 with a word, 0 at the end. */
static int next_word(const char **pp, struct strbuf *w)
{
	const char *p = *pp;
	while (isspace((unsigned char)*p))
		p++;
	if (!*p)
		return 0;
	strbuf_reset(w);
	strbuf_appends(w, "");
	char quote = 0;
	for (; *p && (quote || !isspace((unsigned char)*p)); p++) {
		if (quote != '\'' && *p == '\\' && p[1])
			strbuf_append(w, ++p, 1);
		else if (quote && *p == quote)
			quote = 0;
		else if (!quote && (*p == '\'' || *p == '"'))
			quote = *p;
		else
			strbuf_append(w, p, 1);
	}
	if (quote)
		return sbx_fail(-EINVAL, "ctx/new: a %c quote is not closed", quote);
	*pp = p;
	return 1;
}

static bool is_env_name(const char *s, size_t n)
{
	if (!n || isdigit((unsigned char)s[0]))
		return false;
	for (size_t i = 0; i < n; i++)
		if (!(s[i] == '_' || isalnum((unsigned char)s[i])))
			return false;
	return true;
}

static int new_commit(struct ctl_handle *h)
{
	const char *p = h->in.data ? h->in.data : "";
	if (strlen(p) != h->in.len)
		return sbx_fail(-EINVAL, "ctx/new: the options contain a NUL byte");
	char *language = NULL, *cwd = NULL;
	char **env = calloc(h->in.len / 2 + 2, sizeof(*env));
	size_t nenv = 0;
	struct strbuf w = STRBUF_INIT;
	int err;
	if (!env)
		abort();
	while ((err = next_word(&p, &w)) > 0) {
		const char *eq = strchr(w.data, '=');
		if (strncmp(w.data, "language=", 9) == 0) {
			free(language);
			if (!(language = strdup(w.data + 9)))
				abort();
		} else if (strncmp(w.data, "cwd=", 4) == 0 && w.data[4]) {
			free(cwd);
			if (w.data[4] == '/')
				cwd = strdup(w.data + 4);
			else if (asprintf(&cwd, "/workspace/%s", w.data + 4) < 0)
				cwd = NULL;
			if (!cwd)
				abort();
		} else if (strncmp(w.data, "env.", 4) == 0 && eq &&
			   is_env_name(w.data + 4, (size_t)(eq - w.data - 4))) {
			if (!(env[nenv++] = strdup(w.data + 4)))
				abort();
		} else {
			err = sbx_fail(-EINVAL, "ctx/new: '%s' is not an option (language=NAME, "
				       "cwd=DIR, env.NAME=VALUE)", w.data);
			break;
		}
	}
	char *id = NULL;
	if (!err && language && !sbx_language_canonical(language))
		err = sbx_fail(-EINVAL, "ctx/new: unknown language '%s' (python, javascript or "
			       "typescript; also python3, js, node, ts)", language);
	if (!err)
		err = sbx_context_create_in(h->sbx, h->args.session, language, cwd,
					    (const char *const *)env, &id);
	if (!err) {
		strbuf_appendf(&h->out, "%s\n", id);
		log_debug("ctx/new: created %s (%s)", id, language ? language : "python");
	}
	free(id);
	strbuf_free(&w);
	free(language);
	free(cwd);
	for (size_t i = 0; i < nenv; i++)
		free(env[i]);
	free(env);
	return err;
}

/* ---- ctx/ and ctx/<id> ---- */

/* sessions/<sid>/ctx shows the contexts created in that session (fs/sessions.c). */
static bool in_session(const struct ctl_args *a, const struct sbx_context *c)
{
	return !a->session || (c->session && strcmp(c->session, a->session) == 0);
}

static int ctx_list(struct sbxfs *fs, const struct ctl_args *a, struct ctl_names *out)
{
	struct sbx_context *v;
	size_t n;
	int err = sbx_context_list(fs->sbx, &v, &n);
	if (err)
		return err;
	for (size_t i = 0; i < n; i++)
		if (!strchr(v[i].id, '/') && strcmp(v[i].id, "new") != 0 &&
		    strcmp(v[i].id, ".") != 0 && strcmp(v[i].id, "..") != 0 && in_session(a, &v[i]))
			ctl_names_add(out, v[i].id);
	sbx_contexts_free(v, n);
	return 0;
}

static int ctx_exists(struct sbxfs *fs, const struct ctl_args *a)
{
	struct sbx_context c;
	int err = sbx_context_get(fs->sbx, ctx_id(a), &c);
	if (!err) {
		if (!in_session(a, &c))
			err = -ENOENT;
		sbx_context_clear(&c);
	} else if (err != -ENOENT) {
		log_warn("ctx/%s: %s", ctx_id(a), sbx_last_error());
	}
	return err;
}

static int ctx_remove(struct sbxfs *fs, const struct ctl_args *a)
{
	int err = sbx_context_delete(fs->sbx, ctx_id(a));
	if (err && err != -ENOENT)
		return err;
	/* Gone either way: forget its execution (a running one ends by itself: sbxd sends
	 * its InterpreterDied event). */
	pthread_mutex_lock(&ctx_lock);
	struct execution *e = NULL;
	for (struct ctx_state **pp = &states; *pp; pp = &(*pp)->next) {
		struct ctx_state *st = *pp;
		if (strcmp(st->id, ctx_id(a)) == 0) {
			*pp = st->next;
			e = st->latest;
			free(st->id);
			free(st);
			break;
		}
	}
	pthread_mutex_unlock(&ctx_lock);
	exe_unref(e);
	return err;
}

/* Unmount: hang up every running execution, then forget everything. */
static void ctx_stop(struct sbxfs *fs)
{
	for (;;) {
		pthread_mutex_lock(&ctx_lock);
		struct execution *e = running;
		struct sbx_execution *x = NULL;
		if (e) {
			running = e->next_running;
			e->refs++;
			x = e->x;
			e->x = NULL;
		}
		pthread_mutex_unlock(&ctx_lock);
		if (!e)
			break;
		/* Waits for the stream's end; exe_end does not run after this. */
		sbx_execution_close(x);
		ctl_feed_end(e->feed, -ENOTCONN);
		pthread_mutex_lock(&ctx_lock);
		if (e->running) {
			e->running = false;
			e->refs--; /* the running list's: ours, taken above, keeps e */
		}
		pthread_mutex_unlock(&ctx_lock);
		exe_unref(e);
	}
	pthread_mutex_lock(&ctx_lock);
	struct ctx_state *list = states;
	states = NULL;
	pthread_mutex_unlock(&ctx_lock);
	while (list) {
		struct ctx_state *st = list;
		list = st->next;
		exe_unref(st->latest);
		free(st->id);
		free(st);
	}
}

/* ---- the tree ---- */

static const struct ctl_entry result_files[] = {
	{ .name = NULL, .mode = S_IFREG | 0444, .list = results_list, .exists = results_exists,
	  .stat = results_stat, .open = results_open },
	{ 0 }
};

static const struct ctl_entry context_files[] = {
	{ .name = "in", .mode = S_IFREG | 0222, .commit = in_commit },
	{ .name = "out", .mode = S_IFREG | 0444, .flags = CTL_STREAM, .open = out_open },
	{ .name = "results", .mode = S_IFDIR | 0555, .children = result_files },
	{ .name = "language", .mode = S_IFREG | 0444, .open = language_open },
	{ .name = "cwd", .mode = S_IFREG | 0444, .open = cwd_open },
	{ .name = "interrupt", .mode = S_IFREG | 0222, .flags = CTL_LINE,
	  .commit = interrupt_commit },
	{ 0 }
};

static const struct ctl_entry ctx_children[] = {
	{ .name = "new", .mode = S_IFREG | 0666, .flags = CTL_REQUEST, .commit = new_commit },
	{ .name = NULL, .mode = S_IFDIR | 0755, .children = context_files, .list = ctx_list,
	  .exists = ctx_exists, .remove = ctx_remove },
	{ 0 }
};

const struct ctl_entry ctl_ctx_tree = {
	.name = "ctx",
	.mode = S_IFDIR | 0755,
	.children = ctx_children,
	.stop = ctx_stop,
};
