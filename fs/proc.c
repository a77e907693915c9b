/* proc/: the sandbox's background processes as a control tree (docs/proc.md).
 *
 *   proc/new            request: write [cwd=DIR and env.NAME=VALUE lines, then] a command
 *                       line, read "<id>\n"; `echo cmd > proc/new` starts it without asking
 *   proc/kill-all       command: a signal (empty: TERM) for every running process
 *   proc/<id>/cmd, status, info, stdout, stderr   snapshots at open
 *   proc/<id>/follow    stream: stdout and stderr as produced, EOF when the process ends
 *   proc/<id>/kill      command: a signal name or number (empty: TERM)
 *   rmdir proc/<id>     forgets a finished process
 *
 * Every file asks the sandbox when it is opened; nothing is cached here, so processes started
 * by anyone (another mount, the API) appear, and a status is never stale. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "client/processes.h"
#include "client/sandbox.h"
#include "common/log.h"
#include "fs/control.h"
#include "fs/internal.h"

static const char *proc_id(const struct ctl_args *a)
{
	return a->v[a->n - 1];
}

/* Names proc/ itself uses, and names no directory can have, are not listed as processes. */
static bool listable(const char *id)
{
	return *id && !strchr(id, '/') && strcmp(id, ".") != 0 && strcmp(id, "..") != 0 &&
	       strcmp(id, "new") != 0 && strcmp(id, "kill-all") != 0;
}

/* ---- sessions/<sid>/proc: the processes of one session ----
 *
 * sbxd's records say their session. A plain container's do not, so what this mount started
 * in a session there is remembered here (for the mount's life) to list it under that
 * session. */

struct started {
	char *session, *id;
	struct started *next;
};
static pthread_mutex_t started_lock = PTHREAD_MUTEX_INITIALIZER;
static struct started *started;

static void remember(const char *session, const char *id)
{
	struct started *st = calloc(1, sizeof(*st));
	if (!st || !(st->session = strdup(session)) || !(st->id = strdup(id)))
		abort();
	pthread_mutex_lock(&started_lock);
	st->next = started;
	started = st;
	pthread_mutex_unlock(&started_lock);
}

/* Is the record p in this view: proc/ shows every process, sessions/<sid>/proc those of sid. */
static bool in_view(const struct ctl_args *a, const struct sbx_process *p)
{
	if (!a->session)
		return true;
	if (p->session)
		return strcmp(p->session, a->session) == 0;
	bool found = false;
	pthread_mutex_lock(&started_lock);
	for (struct started *st = started; st && !found; st = st->next)
		found = strcmp(st->id, p->id) == 0 && strcmp(st->session, a->session) == 0;
	pthread_mutex_unlock(&started_lock);
	return found;
}

static void proc_stop(struct sbxfs *fs)
{
	pthread_mutex_lock(&started_lock);
	while (started) {
		struct started *st = started;
		started = st->next;
		free(st->session);
		free(st->id);
		free(st);
	}
	pthread_mutex_unlock(&started_lock);
}

static int proc_list(struct sbxfs *fs, const struct ctl_args *a, struct ctl_names *out)
{
	struct sbx_process *v;
	size_t n;
	int err = sbx_process_list(fs->sbx, &v, &n);
	if (err)
		return err;
	for (size_t i = 0; i < n; i++)
		if (listable(v[i].id) && in_view(a, &v[i]))
			ctl_names_add(out, v[i].id);
	sbx_processes_free(v, n);
	return 0;
}

static int proc_exists(struct sbxfs *fs, const struct ctl_args *a)
{
	struct sbx_process p;
	int err = sbx_process_get(fs->sbx, proc_id(a), &p);
	if (!err) {
		if (!in_view(a, &p))
			err = -ENOENT;
		sbx_process_clear(&p);
	} else if (err != -ENOENT) {
		log_warn("proc/%s: %s", proc_id(a), sbx_last_error());
	}
	return err;
}

static int proc_remove(struct sbxfs *fs, const struct ctl_args *a)
{
	return sbx_process_remove(fs->sbx, proc_id(a));
}

/* ---- proc/new ---- */

static bool is_env_name(const char *s, size_t n)
{
	if (!n || !(s[0] == '_' || ((s[0] | 32) >= 'a' && (s[0] | 32) <= 'z')))
		return false;
	for (size_t i = 1; i < n; i++)
		if (!(s[i] == '_' || (s[i] >= '0' && s[i] <= '9') ||
		      ((s[i] | 32) >= 'a' && (s[i] | 32) <= 'z')))
			return false;
	return true;
}

/* An option line ("cwd=DIR", "env.NAME=VALUE") of length n at s. */
static bool is_option_line(const char *s, size_t n)
{
	if (n >= 4 && strncmp(s, "cwd=", 4) == 0)
		return true;
	const char *eq = memchr(s, '=', n);
	return n > 4 && strncmp(s, "env.", 4) == 0 && eq && is_env_name(s + 4, (size_t)(eq - s - 4));
}

/* The option lines of text, one at a time: their length without the line end in *len, the
 * next line in *next. NULL at the first line that is not an option, and at the end. */
static const char *next_option(const char *p, size_t *len, const char **next)
{
	const char *nl = strchr(p, '\n');
	size_t n = nl ? (size_t)(nl - p) : strlen(p);
	*len = n && p[n - 1] == '\r' ? n - 1 : n;
	if (!*p || !is_option_line(p, *len))
		return NULL;
	*next = nl ? nl + 1 : p + n;
	return p;
}

/* A line written to proc/new starts the process unless only option lines came so far
 * (printf writes 'cwd=...\n' and the command line separately). */
static bool new_ready(const struct ctl_handle *h)
{
	const char *p = h->in.data ? h->in.data : "";
	size_t len;
	while (next_option(p, &len, &p))
		;
	return *p;
}

static int new_commit(struct ctl_handle *h)
{
	const char *text = h->in.data ? h->in.data : "";
	if (memchr(text, '\0', h->in.len))
		return sbx_fail(-EINVAL, "proc/new: the command contains a NUL byte");
	if (!*text)
		return sbx_fail(-EINVAL, "proc/new: no command was written");
	char *cwd = NULL;
	char **env = calloc(h->in.len / 2 + 2, sizeof(*env));
	size_t nenv = 0;
	if (!env)
		abort();
	const char *p = text, *next;
	size_t line;
	for (; next_option(p, &line, &next); p = next) {
		if (p[0] == 'c') {
			free(cwd);
			if (line > 4 && p[4] == '/')
				cwd = strndup(p + 4, line - 4);
			else if (asprintf(&cwd, "/workspace/%.*s", (int)(line - 4), p + 4) < 0)
				cwd = NULL;
			if (!cwd)
				abort();
		} else if (!(env[nenv++] = strndup(p + 4, line - 4))) {
			abort();
		}
	}
	/* The command is the rest, without the newline(s) echo and editors end it with. */
	size_t len = strlen(p);
	while (len && (p[len - 1] == '\n' || p[len - 1] == '\r'))
		len--;
	char *command = strndup(p, len);
	if (!command)
		abort();
	char *id = NULL;
	const char *session = h->args.session;
	int err = sbx_process_start_in(h->sbx, session, command, cwd, (const char *const *)env,
				       &id);
	if (!err) {
		strbuf_appendf(&h->out, "%s\n", id);
		if (session && !sbx_info(h->sbx)->extensions)
			remember(session, id);
		log_debug("proc/new: started %s%s%s: %s", id, session ? " in session " : "",
			  session ? session : "", command);
	}
	free(id);
	free(command);
	free(cwd);
	for (size_t i = 0; i < nenv; i++)
		free(env[i]);
	free(env);
	return err;
}

/* ---- signals ---- */

static int kill_commit(struct ctl_handle *h)
{
	size_t len;
	int sig = sbx_signal_parse(ctl_input_take(h, &len));
	if (sig < 0)
		return sig;
	return sbx_process_kill(h->sbx, proc_id(&h->args), sig);
}

static int kill_all_commit(struct ctl_handle *h)
{
	size_t len;
	int sig = sbx_signal_parse(ctl_input_take(h, &len));
	if (sig < 0)
		return sig;
	int count = 0, err = 0;
	if (h->args.session) {
		/* a session's kill-all: each of its running processes (the route has no filter) */
		struct sbx_process *v;
		size_t n;
		err = sbx_process_list(h->sbx, &v, &n);
		if (!err) {
			for (size_t i = 0; !err && i < n; i++) {
				if (strcmp(v[i].status, "running") != 0 ||
				    !in_view(&h->args, &v[i]))
					continue;
				int e = sbx_process_kill(h->sbx, v[i].id, sig);
				if (!e)
					count++;
				else if (e != -ESRCH && e != -ENOENT) /* ended meanwhile: fine */
					err = e;
			}
			sbx_processes_free(v, n);
		}
	} else {
		err = sbx_process_kill_all(h->sbx, sig, &count);
	}
	if (!err)
		log_info("proc/kill-all: signalled %d process%s", count, count == 1 ? "" : "es");
	return err;
}

/* ---- snapshots of one process ---- */

static int record_open(struct ctl_handle *h, struct sbx_process *p)
{
	return sbx_process_get(h->sbx, proc_id(&h->args), p);
}

static int cmd_open(struct ctl_handle *h)
{
	struct sbx_process p;
	int err = record_open(h, &p);
	if (!err) {
		strbuf_appendf(&h->out, "%s\n", p.command);
		sbx_process_clear(&p);
	}
	return err;
}

static int status_open(struct ctl_handle *h)
{
	struct sbx_process p;
	int err = record_open(h, &p);
	if (err)
		return err;
	bool ended = strcmp(p.status, "completed") == 0 || strcmp(p.status, "failed") == 0 ||
		     strcmp(p.status, "killed") == 0;
	if (ended && p.has_exit_code)
		strbuf_appendf(&h->out, "%s %d\n", p.status, p.exit_code);
	else
		strbuf_appendf(&h->out, "%s\n", p.status);
	sbx_process_clear(&p);
	return 0;
}

static int info_open(struct ctl_handle *h)
{
	struct sbx_process p;
	int err = record_open(h, &p);
	if (!err) {
		strbuf_appendf(&h->out, "%s\n", p.json);
		sbx_process_clear(&p);
	}
	return err;
}

static int logs_open(struct ctl_handle *h, bool want_stderr)
{
	char *out, *err_text;
	size_t out_len, err_len;
	int err = sbx_process_logs(h->sbx, proc_id(&h->args), &out, &out_len, &err_text,
				   &err_len);
	if (err)
		return err;
	if (want_stderr)
		strbuf_append(&h->out, err_text, err_len);
	else
		strbuf_append(&h->out, out, out_len);
	free(out);
	free(err_text);
	return 0;
}

static int stdout_open(struct ctl_handle *h)
{
	return logs_open(h, false);
}

static int stderr_open(struct ctl_handle *h)
{
	return logs_open(h, true);
}

/* ---- follow: each open has its own stream into its own feed ---- */

struct follow {
	struct ctl_feed *feed;
	struct sbx_process_stream *ps;
};

static void follow_output(void *arg, bool is_stderr, const char *data, size_t len)
{
	struct follow *f = arg;
	ctl_feed_push(f->feed, data, len);
}

static void follow_end(void *arg, int err, int exit_code)
{
	struct follow *f = arg;
	ctl_feed_end(f->feed, err);
}

static const struct sbx_process_stream_ops follow_ops = {
	.on_output = follow_output,
	.on_end = follow_end,
};

static void follow_free(void *priv)
{
	struct follow *f = priv;
	sbx_process_stream_close(f->ps);
	ctl_feed_unref(f->feed);
	free(f);
}

static int follow_open(struct ctl_handle *h)
{
	struct follow *f = calloc(1, sizeof(*f));
	if (!f)
		abort();
	char label[300];
	snprintf(label, sizeof label, "proc/%s/follow", proc_id(&h->args));
	f->feed = ctl_feed_new(false, label);
	f->ps = sbx_process_stream_open(h->sbx, proc_id(&h->args), &follow_ops, f);
	if (!f->ps) {
		int err = -errno;
		ctl_feed_unref(f->feed);
		free(f);
		return err;
	}
	ctl_handle_attach(h, f->feed);
	h->priv = f;
	h->priv_free = follow_free;
	return 0;
}

/* ---- the tree ---- */

static const struct ctl_entry process_files[] = {
	{ .name = "cmd", .mode = S_IFREG | 0444, .open = cmd_open },
	{ .name = "status", .mode = S_IFREG | 0444, .open = status_open },
	{ .name = "info", .mode = S_IFREG | 0444, .open = info_open },
	{ .name = "stdout", .mode = S_IFREG | 0444, .open = stdout_open },
	{ .name = "stderr", .mode = S_IFREG | 0444, .open = stderr_open },
	{ .name = "follow", .mode = S_IFREG | 0444, .flags = CTL_STREAM, .open = follow_open },
	{ .name = "kill", .mode = S_IFREG | 0222, .flags = CTL_LINE, .commit = kill_commit },
	{ 0 }
};

static const struct ctl_entry proc_children[] = {
	{ .name = "new", .mode = S_IFREG | 0666, .flags = CTL_REQUEST | CTL_LINE,
	  .commit = new_commit, .ready = new_ready },
	{ .name = "kill-all", .mode = S_IFREG | 0222, .flags = CTL_LINE, .commit = kill_all_commit },
	{ .name = NULL, .mode = S_IFDIR | 0755, .children = process_files, .list = proc_list,
	  .exists = proc_exists, .remove = proc_remove },
	{ 0 }
};

const struct ctl_entry ctl_proc_tree = {
	.name = "proc",
	.mode = S_IFDIR | 0755,
	.children = proc_children,
	.stop = proc_stop,
};
