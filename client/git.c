#include "client/git.h"
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "client/sandbox_impl.h"
#include "common/errnames.h"
#include "common/jsonutil.h"
#include "common/strbuf.h"

/* The server kills git at timeoutMs (then SIGKILL 5 s later) and answers: the client waits
 * that much longer before giving up on the answer. */
#define CLONE_ANSWER_MARGIN_MS 30000L

/* git reports everything as exit 128 with a text; these texts name the errno. */
static const struct {
	const char *text;
	int err;
} git_texts[] = {
	{ "already exists and is not an empty directory", EEXIST },
	{ "not found", ENOENT },
	{ "does not appear to be a git repository", ENOENT },
	{ "repository not exported", ENOENT },
	{ "does not exist", ENOENT },
	{ "Authentication failed", EACCES },
	{ "could not read Username", EACCES },
	{ "timed out", ETIMEDOUT },
	{ "Timeout", ETIMEDOUT },
};

static int errno_from_git(const char *text)
{
	for (size_t i = 0; text && i < sizeof git_texts / sizeof git_texts[0]; i++)
		if (strstr(text, git_texts[i].text))
			return git_texts[i].err;
	return EIO;
}

/* git's stderr without its progress lines, on one line. */
static char *git_reason(const char *stderr_text)
{
	struct strbuf sb = { 0 };
	const char *p = stderr_text;
	while (p && *p) {
		size_t n = strcspn(p, "\r\n");
		const char *line = p;
		p += n;
		p += strspn(p, "\r\n");
		while (n && (*line == ' ' || *line == '\t'))
			line++, n--;
		if (!n || strncmp(line, "Cloning into", 12) == 0)
			continue;
		if (sb.len)
			strbuf_append(&sb, " ", 1);
		strbuf_append(&sb, line, n);
	}
	if (!sb.len) {
		strbuf_free(&sb);
		return NULL;
	}
	return sb.data;
}

/* The errno and reason of an error answer. */
static int clone_failed(const struct http_response *resp, struct sbx_clone_result *r)
{
	cJSON *j = resp->body ? cJSON_ParseWithLength(resp->body, resp->body_len) : NULL;
	const char *code = json_str(j, "code"), *msg = json_str(j, "message");
	const cJSON *ctx = cJSON_GetObjectItemCaseSensitive(j, "context");
	const char *tool = json_str(ctx, "stderr");
	/* timeout(1)'s status: the server's own limit ended git */
	bool killed = json_int(ctx, "exitCode", 0) == 124;
	int err = errno_from_api_error(json_str(j, "errno"), code, resp->status);
	if (code && (strcmp(code, "INVALID_GIT_URL") == 0 || strcmp(code, "VALIDATION_FAILED") == 0))
		err = EINVAL;
	else if (code && strcmp(code, "GIT_REPOSITORY_NOT_FOUND") == 0)
		err = ENOENT;
	else if (code && strcmp(code, "GIT_AUTH_FAILED") == 0)
		err = EACCES;
	else if (killed || (code && strcmp(code, "GIT_NETWORK_ERROR") == 0 &&
				 errno_from_git(msg) == ETIMEDOUT))
		err = ETIMEDOUT;
	else if (err == EIO)
		err = errno_from_git(tool ? tool : msg);
	r->error = git_reason(tool);
	if (!r->error)
		r->error = msg ? git_reason(msg) : NULL;
	if (!r->error && asprintf(&r->error, "HTTP %ld", resp->status) < 0)
		abort();
	cJSON_Delete(j);
	return -err;
}

int sbx_git_clone(struct sbx *s, const struct sbx_clone *c, struct sbx_clone_result *r)
{
	memset(r, 0, sizeof(*r));
	long timeout = c->timeout_ms > 0 ? c->timeout_ms : SBX_CLONE_TIMEOUT_MS;
	if (!c->url || !*c->url) {
		r->error = sbx_strdup("no repository URL");
		return sbx_fail(-EINVAL, "git clone: no repository URL");
	}
	cJSON *body = cJSON_CreateObject();
	cJSON_AddStringToObject(body, "repoUrl", c->url);
	if (c->branch)
		cJSON_AddStringToObject(body, "branch", c->branch);
	if (c->dir)
		cJSON_AddStringToObject(body, "targetDir", c->dir);
	if (c->depth > 0)
		cJSON_AddNumberToObject(body, "depth", c->depth);
	cJSON_AddNumberToObject(body, "timeoutMs", (double)timeout);
	char *text = json_print(body);
	cJSON_Delete(body);
	if (!text)
		abort();
	char key[HTTP_KEY_MAX];
	struct http_request req = {
		.method = "POST",
		.path = "/api/git/checkout",
		.body = text,
		.body_len = strlen(text),
		.timeout_ms = timeout + CLONE_ANSWER_MARGIN_MS,
		.idempotency_key = sbx_key(s, key),
		.cancel = c->cancel,
	};
	struct http_response resp = { 0 };
	int err = http_request_sync(s->http, &req, &resp);
	free(text);
	if (err == -ECANCELED) {
		r->error = sbx_strdup("interrupted; the sandbox stops the clone and removes what it "
				      "had cloned");
	} else if (err) {
		r->error = sbx_strdup(resp.errmsg[0] ? resp.errmsg : strerror(-err));
	} else if (resp.status < 200 || resp.status > 299) {
		err = clone_failed(&resp, r);
	} else {
		cJSON *j = cJSON_ParseWithLength(resp.body ? resp.body : "", resp.body_len);
		const char *dir = json_str(j, "targetDir");
		if (!dir) {
			err = -EPROTO;
			r->error = sbx_strdup("the server's answer has no targetDir");
		} else {
			r->dir = sbx_strdup(dir);
			r->branch = sbx_strdup(json_str(j, "branch") ? json_str(j, "branch") : "");
			/* what the backend knows of the target is older than the clone */
			const struct sbx_ops *ops = atomic_load(&s->ops);
			if (ops->changed)
				ops->changed(s, dir);
		}
		cJSON_Delete(j);
	}
	http_response_clear(&resp);
	if (err)
		sbx_fail(err, "git clone %s: %s", c->url, r->error);
	return err;
}

void sbx_clone_result_free(struct sbx_clone_result *r)
{
	free(r->dir);
	free(r->branch);
	free(r->error);
	memset(r, 0, sizeof(*r));
}
