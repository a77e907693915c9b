/* POST /api/git/checkout: `git clone` inside the sandbox, as the container runs it.
 *
 * git runs through the runner like any command (bubblewrap, the environment store), with
 * stdin from /dev/null and GIT_TERMINAL_PROMPT=0 so it never waits for a password, as a child
 * of the pump (server/child.h), which keeps OUTPUT_MAX of each stream. The clone has a
 * deadline (timeoutMs, 10 minutes by default): TERM, then KILL KILL_GRACE_MS later, then 502
 * GIT_NETWORK_ERROR. Failures come back as the container's GIT_OPERATION_FAILED with git's stderr, credentials
 * in URLs replaced by "***", and an errno guessed from git's words so that a filesystem
 * client can say EEXIST or ENOENT rather than EIO. */
#include "server/request.h"
#include "server/routes.h"
#include "server/child.h"
#include "server/envstore.h"
#include "server/runner.h"
#include "server/workspace.h"
#include "common/jsonutil.h"
#include "common/log.h"
#include "common/strv.h"
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define URL_MAX 2048
#define DEFAULT_TIMEOUT_MS (10 * 60 * 1000)
#define KILL_GRACE_MS 5000
#define OUTPUT_MAX (1024 * 1024)
#define BRANCH_TIMEOUT_MS 30000

struct git_run {
	struct strbuf out, err;
	int exit_code;
	bool timed_out;
	bool client_gone; /* the client hung up (an interrupted sbxfs): git was stopped */
};

static bool keep_output(void *ctx, enum child_stream which, const char *buf, size_t n)
{
	struct git_run *g = ctx;
	strbuf_append(which == CHILD_OUT ? &g->out : &g->err, buf, n);
	return true;
}

static const struct child_ops git_ops = { .output = keep_output };

/* Runs git with these arguments in cwd; 0 (see g) or a negative errno from the runner. A
 * client that hangs up (client_fd, -1: none) stops git as the deadline does: TERM lets git
 * remove the directory it was cloning into. Helpers it left in its group go with it. */
static int run_git(const char *const *argv, const char *cwd, int timeout_ms, int client_fd,
		   struct git_run *g)
{
	static const char *const extra[] = { "GIT_TERMINAL_PROMPT=0", NULL };
	struct child_policy policy = { .timeout_ms = timeout_ms, .grace_ms = KILL_GRACE_MS,
				       .output_max = OUTPUT_MAX, .drain_ms = KILL_GRACE_MS };
	struct child c;
	char **env = envstore_build(extra);
	struct run_spec spec = { .argv = argv, .cwd = cwd, .env = (const char *const *)env,
				 .stdin_null = true };
	child_init(&c);
	int err = child_start(&c, &spec, &policy, &git_ops, g);
	strv_free(env);
	if (!err) {
		child_watch_client(&c, client_fd);
		child_run(&c);
		child_finish(&c);
		g->exit_code = child_exit_code(&c);
		g->timed_out = c.timed_out;
		g->client_gone = c.client_gone;
	}
	child_free(&c);
	return err;
}

static void git_run_free(struct git_run *g)
{
	strbuf_free(&g->out);
	strbuf_free(&g->err);
}

/* A copy of s with the user information of URLs in it ("https://user:token@host")
 * replaced by "***". */
static char *redact(const char *s)
{
	struct strbuf sb = STRBUF_INIT;
	const char *p = s;
	for (;;) {
		const char *scheme = strstr(p, "://");
		if (!scheme)
			break;
		const char *host = scheme + 3;
		size_t span = strcspn(host, "/ \t\r\n'\"");
		const char *at = memrchr(host, '@', span);
		strbuf_append(&sb, p, (size_t)(host - p));
		if (at) {
			strbuf_appends(&sb, "***");
			p = at;
		} else {
			p = host;
		}
	}
	strbuf_appends(&sb, p);
	return strbuf_detach(&sb, NULL);
}

/* "/workspace/<last path segment of the URL without .git>" ("repository" when none). */
static void default_target(const char *url, char *out, size_t outlen)
{
	size_t n = strlen(url);
	while (n && (url[n - 1] == '/' || url[n - 1] == ':'))
		n--;
	size_t start = n;
	while (start && url[start - 1] != '/' && url[start - 1] != ':')
		start--;
	size_t len = n - start;
	if (len >= 4 && strncmp(url + n - 4, ".git", 4) == 0)
		len -= 4;
	if (len == 0 || (len <= 2 && strncmp(url + start, "..", len) == 0))
		snprintf(out, outlen, "/workspace/repository");
	else
		snprintf(out, outlen, "/workspace/%.*s", (int)len, url + start);
}

/* What git's words say in errno terms. */
static int errno_of_git(const char *err)
{
	static const struct { const char *text; int err; } map[] = {
		{ "already exists and is not an empty directory", EEXIST },
		{ "not found in upstream", ENOENT },
		{ "does not appear to be a git repository", ENOENT },
		{ "does not exist", ENOENT },
		{ "not found", ENOENT },
		{ "Authentication failed", EACCES },
		{ "Permission denied", EACCES },
		{ "Could not resolve host", EHOSTUNREACH },
		{ "Connection refused", ECONNREFUSED },
		{ "unable to connect", ECONNREFUSED },
		{ "timed out", ETIMEDOUT },
		{ "No space left", ENOSPC },
	};
	for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
		if (strstr(err, map[i].text))
			return map[i].err;
	return EIO;
}

static void trim(struct strbuf *sb)
{
	while (sb->len && strchr(" \t\r\n", sb->data[sb->len - 1]))
		sb->data[--sb->len] = '\0';
}

#define STR_(x) #x
#define STR(x) STR_(x)

struct clone_req {
	const char *url, *branch, *target;
	int64_t depth, timeout_ms;
};

static bool url_usable(const cJSON *v)
{
	return v->valuestring[0] != '-';
}

static const struct field clone_fields[] = {
	FIELD("repoUrl", FIELD_STRING, struct clone_req, url,
	      .flags = FIELD_REQUIRED | FIELD_NOT_EMPTY, .max = URL_MAX, .valid = url_usable,
	      .code = "INVALID_GIT_URL", .missing = "Invalid Git URL: repoUrl is required",
	      .wrong = "Invalid Git URL: it must be at most " STR(URL_MAX) " characters and not "
		       "start with '-'"),
	FIELD("branch", FIELD_STRING, struct clone_req, branch, .flags = FIELD_EMPTY_ABSENT,
	      .wrong = "branch must be a string"),
	FIELD("targetDir", FIELD_STRING, struct clone_req, target, .flags = FIELD_EMPTY_ABSENT,
	      .wrong = "targetDir must be a string"),
	FIELD("depth", FIELD_INT, struct clone_req, depth, .min = 1, .max = INT_MAX,
	      .wrong = "depth must be a positive integer"),
	FIELD("timeoutMs", FIELD_INT, struct clone_req, timeout_ms, .min = 1, .max = INT_MAX,
	      .wrong = "Invalid clone timeout '%s'. It must be a positive integer of "
		       "milliseconds."),
};

/* The directory to clone into, as the API names it ("/workspace/..."); false after
 * answering. */
static bool clone_target(struct req *r, const struct clone_req *x, char *dir, size_t size)
{
	char rel[WS_PATH_MAX + 1];
	if (x->target)
		snprintf(dir, size, "%s", x->target);
	else
		default_target(x->url, dir, size);
	int err = ws_normalize(dir, rel, sizeof rel);
	if (err) {
		reply_ws_errno(r, err, dir);
		return false;
	}
	ws_api_path(rel, dir, size);
	return true;
}

/* git clone's arguments (into argv, at least 16 long; depth_arg holds --depth=N). */
static void clone_argv(const struct clone_req *x, const char *dir, const char **argv,
		       char depth_arg[32])
{
	size_t n = 0;
	argv[n++] = "git";
	argv[n++] = "-c";
	argv[n++] = "http.lowSpeedLimit=1024";
	argv[n++] = "-c";
	argv[n++] = "http.lowSpeedTime=30";
	argv[n++] = "clone";
	argv[n++] = "--filter=blob:none";
	if (x->branch) {
		argv[n++] = "--branch";
		argv[n++] = x->branch;
	}
	if (x->depth) {
		snprintf(depth_arg, 32, "--depth=%d", (int)x->depth);
		argv[n++] = depth_arg;
	}
	argv[n++] = "--";
	argv[n++] = x->url;
	argv[n++] = dir;
	argv[n] = NULL;
}

static void reply_git_unstarted(struct req *r, int err)
{
	if (err == -ENOTSUP && runner_unavailable())
		reply_error(r, 500, "GIT_OPERATION_FAILED", ENOTSUP, NULL, "cannot run git: %s",
			    runner_unavailable());
	else
		reply_error(r, 500, "GIT_OPERATION_FAILED", -err, NULL, "cannot run git: %s",
			    strerror(-err));
}

/* The clone did not complete: the client left, the deadline passed or git failed. */
static void reply_clone_failed(struct req *r, const struct clone_req *x, struct git_run *g,
			       const char *safe_url, const char *dir)
{
	if (g->client_gone) {
		log_info("git checkout %s: the client hung up; git was stopped", safe_url);
		return reply_error(r, 499, "GIT_OPERATION_FAILED", ECANCELED, NULL,
				   "the client hung up; the clone of '%s' was stopped", safe_url);
	}
	trim(&g->err);
	char *safe_err = redact(g->err.len ? g->err.data : "");
	cJSON *ctx = cJSON_CreateObject();
	cJSON_AddStringToObject(ctx, "repository", safe_url);
	cJSON_AddStringToObject(ctx, "targetDir", dir);
	cJSON_AddNumberToObject(ctx, "exitCode", g->timed_out ? 124 : g->exit_code);
	cJSON_AddStringToObject(ctx, "stderr", safe_err);
	if (g->timed_out)
		reply_error(r, 502, "GIT_NETWORK_ERROR", ETIMEDOUT, ctx,
			    "Failed to clone repository '%s': timed out after %dms", safe_url,
			    (int)x->timeout_ms);
	else
		reply_error(r, 500, "GIT_OPERATION_FAILED", errno_of_git(safe_err), ctx,
			    "Failed to clone repository '%s': %s", safe_url,
			    *safe_err ? safe_err : "git failed");
	free(safe_err);
}

/* The clone is in dir: answers with the branch actually checked out (the remote's HEAD when
 * none was asked for). */
static void reply_cloned(struct req *r, const struct clone_req *x, const char *safe_url,
			 const char *dir)
{
	const char *show[] = { "git", "branch", "--show-current", NULL };
	struct git_run b = { STRBUF_INIT, STRBUF_INIT, 0, false, false };
	int err = run_git(show, dir, BRANCH_TIMEOUT_MS, -1, &b);
	trim(&b.out);
	cJSON *out = cJSON_CreateObject();
	cJSON_AddStringToObject(out, "repoUrl", safe_url);
	cJSON_AddStringToObject(out, "branch", !err && b.exit_code == 0 && b.out.len ? b.out.data
					       : x->branch ? x->branch : "");
	cJSON_AddStringToObject(out, "targetDir", dir);
	git_run_free(&b);
	reply_ok(r, out);
}

void route_git_checkout(struct req *r)
{
	struct clone_req x = { .timeout_ms = DEFAULT_TIMEOUT_MS };
	char dir[WS_PATH_MAX + 64], depth_arg[32];
	const char *argv[16];
	if (!req_decode(r, clone_fields, FIELDS_N(clone_fields), &x) ||
	    !clone_target(r, &x, dir, sizeof dir))
		return;
	clone_argv(&x, dir, argv, depth_arg);
	struct git_run g = { STRBUF_INIT, STRBUF_INIT, 0, false, false };
	int err = run_git(argv, NULL, (int)x.timeout_ms, req_client_fd(r), &g);
	char *safe_url = redact(x.url);
	if (err)
		reply_git_unstarted(r, err);
	else if (g.client_gone || g.timed_out || g.exit_code != 0)
		reply_clone_failed(r, &x, &g, safe_url, dir);
	else
		reply_cloned(r, &x, safe_url, dir);
	free(safe_url);
	git_run_free(&g);
}
