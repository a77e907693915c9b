/* git/: checkouts (docs/ports-git-env.md).
 *
 *   git/clone    command: 'URL [branch=NAME] [dir=PATH] [depth=N] [timeout=SECS]'; the clone
 *                runs when the line is written (or at close, for a line without its newline),
 *                and the write (close) returns when it is done and fails when it failed
 *   git/result   snapshot: the last clone's outcome, "ok <dir> <branch>" or "error: <why>"
 *
 * Running at the write rather than only at close is what lets `echo URL > git/clone` fail: bash
 * drops the error of the close that ends a builtin's redirection (fs/control.h, CTL_LINE).
 * The write may wait for as long as the clone takes: the request carries the clone's own timeout
 * (timeout=, else the container's 10 minutes) and the client waits half a minute longer for the
 * server's answer, so a clone that hangs ends as ETIMEDOUT, never as a hung write. Ctrl-C on
 * the write (or close) ends it at once with EINTR: the client hangs up, and sbxd, seeing that,
 * stops git, which removes what it had cloned. The outcome
 * is this mount's: one sbxfs process serves one mount, so it lives in this file. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "client/git.h"
#include "client/sandbox.h"
#include "common/strbuf.h"
#include "fs/control.h"
#include "fs/internal.h"
#include "fs/workspace.h"

#define WORKSPACE "/workspace"
#define MAX_TIMEOUT_S (24 * 3600L)

static pthread_mutex_t result_lock = PTHREAD_MUTEX_INITIALIZER;
static char *last_result; /* "ok ...\n" or "error: ...\n"; NULL before the first clone */

static void set_result(char *text)
{
	pthread_mutex_lock(&result_lock);
	free(last_result);
	last_result = text;
	pthread_mutex_unlock(&result_lock);
}

/* A positive decimal number no larger than max, else 0. */
static long positive(const char *v, long max)
{
	char *end;
	errno = 0;
	long n = *v >= '0' && *v <= '9' ? strtol(v, &end, 10) : 0;
	return n > 0 && !errno && !*end && n <= max ? n : 0;
}

struct clone_line {
	char *text; /* the line, cut into the words below */
	char *dir;  /* owned: dir= made absolute */
	struct sbx_clone c;
};

/* Parses the one line written to git/clone: the URL first, then NAME=VALUE options. */
static int parse_line(const char *in, size_t len, struct clone_line *l)
{
	memset(l, 0, sizeof(*l));
	if (memchr(in, '\0', len))
		return sbx_fail(-EINVAL, "git/clone: the line contains a NUL byte");
	if (!(l->text = strndup(in, len)))
		abort();
	char *end = l->text + strlen(l->text);
	while (end > l->text && strchr(" \t\r\n", end[-1]))
		*--end = '\0';
	char *start = l->text + strspn(l->text, " \t\r\n");
	if (strchr(start, '\n'))
		return sbx_fail(-EINVAL, "git/clone: one clone per write (one line: 'URL "
				"[branch=NAME] [dir=PATH] [depth=N] [timeout=SECS]')");
	char *save = NULL, *w = strtok_r(start, " \t\r", &save);
	if (!w)
		return sbx_fail(-EINVAL, "git/clone: no repository URL (write 'URL [branch=NAME] "
				"[dir=PATH] [depth=N] [timeout=SECS]')");
	l->c.url = w;
	while ((w = strtok_r(NULL, " \t\r", &save))) {
		char *v = strchr(w, '=');
		if (!v || v == w || !v[1])
			return sbx_fail(-EINVAL, "git/clone: '%s' is not NAME=VALUE (options: "
					"branch, dir, depth, timeout)", w);
		*v++ = '\0';
		if (strcmp(w, "branch") == 0) {
			l->c.branch = v;
		} else if (strcmp(w, "dir") == 0) {
			free(l->dir);
			if (*v == '/')
				l->dir = strdup(v);
			else if (asprintf(&l->dir, WORKSPACE "/%s", v) < 0)
				l->dir = NULL;
			if (!l->dir)
				abort();
			l->c.dir = l->dir;
		} else if (strcmp(w, "depth") == 0) {
			if (!(l->c.depth = (int)positive(v, 1L << 30)))
				return sbx_fail(-EINVAL, "git/clone: depth=%s is not a positive number",
						v);
		} else if (strcmp(w, "timeout") == 0) {
			long s = positive(v, MAX_TIMEOUT_S);
			if (!s)
				return sbx_fail(-EINVAL, "git/clone: timeout=%s is not a number of "
						"seconds from 1 to %ld", v, MAX_TIMEOUT_S);
			l->c.timeout_ms = s * 1000;
		} else {
			return sbx_fail(-EINVAL, "git/clone: unknown option '%s' (options: branch, "
					"dir, depth, timeout)", w);
		}
	}
	return 0;
}

static void line_free(struct clone_line *l)
{
	free(l->text);
	free(l->dir);
}

static int clone_commit(struct ctl_handle *h)
{
	struct clone_line l;
	char *result;
	size_t len;
	const char *in = ctl_input_take(h, &len);
	int err = parse_line(in, len, &l);
	if (err) {
		if (asprintf(&result, "error: %s\n", sbx_last_error()) < 0)
			abort();
		set_result(result);
		line_free(&l);
		return err;
	}
	struct sbx_clone_result r;
	l.c.cancel = ctl_interrupt_flag(h);
	err = sbx_git_clone(h->sbx, &l.c, &r);
	if (err == -ECANCELED)
		err = -EINTR; /* Ctrl-C: what the shell expects of an interrupted close */
	if (!err)
		workspace_made(h->fs, r.dir);
	int n = err ? asprintf(&result, "error: %s\n", r.error)
		    : asprintf(&result, "ok %s %s\n", r.dir, r.branch);
	if (n < 0)
		abort();
	set_result(result);
	sbx_clone_result_free(&r);
	line_free(&l);
	return err;
}

static int result_open(struct ctl_handle *h)
{
	pthread_mutex_lock(&result_lock);
	if (last_result)
		strbuf_appends(&h->out, last_result);
	pthread_mutex_unlock(&result_lock);
	return 0;
}

static void git_stop(struct sbxfs *fs)
{
	set_result(NULL);
}

static const struct ctl_entry git_children[] = {
	{ .name = "clone", .mode = S_IFREG | 0222, .flags = CTL_LINE, .commit = clone_commit },
	{ .name = "result", .mode = S_IFREG | 0444, .open = result_open },
	{ 0 },
};

const struct ctl_entry ctl_git_tree = {
	.name = "git", .mode = S_IFDIR | 0755, .children = git_children, .stop = git_stop,
};
