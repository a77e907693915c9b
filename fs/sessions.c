/* sessions/: execution sessions as a control tree (docs/sessions.md).
 *
 *   sessions/new             request: [write option lines "id=NAME", "cwd=DIR",
 *                            "env.NAME=VALUE",] read "<id>\n" of a new session
 *   mkdir sessions/NAME      the same with the defaults and that id
 *   sessions/<id>/env        the environment a command of the session gets (NAME=VALUE lines);
 *                            write "NAME=VALUE" / "-NAME" lines to export or unset in it
 *   sessions/<id>/cwd        its working directory; write a directory to cd there
 *   sessions/<id>/proc/      proc/ (fs/proc.c) bound to the session: what proc/new starts
 *                            there begins in the session's directory and environment
 *   sessions/<id>/ctx/       ctx/ (fs/ctx.c) bound to the session, the same way (sbxd only)
 *   rmdir sessions/<id>      deletes the session and stops what was started in it
 *
 * The session's name reaches proc.c's and ctx.c's callbacks as args.session (CTL_SESSION), so
 * their tables serve both places. env and cwd run one command in the session each
 * (/api/execute with its sessionId): a `cd` or an `export` there lasts, on sbxd and on a
 * plain container alike. Nothing is cached: every open asks the sandbox. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "client/sandbox.h"
#include "client/sessions.h"
#include "client/shellquote.h"
#include "common/log.h"
#include "fs/control.h"
#include "fs/env.h"
#include "fs/internal.h"

static const char *session_of(const struct ctl_args *a)
{
	return a->session;
}

/* Names sessions/ itself uses, and names no directory can have, are not listed. */
static bool listable(const char *id)
{
	return *id && !strchr(id, '/') && strcmp(id, ".") != 0 && strcmp(id, "..") != 0 &&
	       strcmp(id, "new") != 0 && strlen(id) <= 255;
}

static int sessions_list(struct sbxfs *fs, const struct ctl_args *a, struct ctl_names *out)
{
	char **ids;
	size_t n;
	int err = sbx_session_list(fs->sbx, &ids, &n);
	if (err)
		return err;
	for (size_t i = 0; i < n; i++)
		if (listable(ids[i]))
			ctl_names_add(out, ids[i]);
	sbx_session_ids_free(ids, n);
	return 0;
}

static int session_exists(struct sbxfs *fs, const struct ctl_args *a)
{
	int err = sbx_session_exists(fs->sbx, session_of(a));
	if (err && err != -ENOENT)
		log_warn("sessions/%s: %s", session_of(a), sbx_last_error());
	return err;
}

static int session_mkdir(struct sbxfs *fs, const struct ctl_args *a, mode_t mode)
{
	char *id = NULL;
	int err = sbx_session_create(fs->sbx, session_of(a), NULL, NULL, &id);
	free(id);
	return err;
}

static int session_rmdir(struct sbxfs *fs, const struct ctl_args *a)
{
	return sbx_session_delete(fs->sbx, session_of(a));
}

/* ---- sessions/new ---- */

/* "cwd=app" is /workspace/app, as in proc/new and ctx/new. */
static char *workspace_dir(const char *dir, size_t len)
{
	char *out;
	if (len && dir[0] == '/')
		out = strndup(dir, len);
	else if (asprintf(&out, "/workspace/%.*s", (int)len, dir) < 0)
		out = NULL;
	if (!out)
		abort();
	return out;
}

static int new_commit(struct ctl_handle *h)
{
	const char *text = h->in.data ? h->in.data : "";
	if (memchr(text, '\0', h->in.len))
		return sbx_fail(-EINVAL, "sessions/new: the options contain a NUL byte");
	char *id = NULL, *cwd = NULL, *made = NULL;
	char **env = calloc(h->in.len / 2 + 2, sizeof(*env));
	size_t nenv = 0;
	int err = 0;
	if (!env)
		abort();
	for (const char *p = text; *p && !err;) {
		const char *nl = strchr(p, '\n');
		size_t n = nl ? (size_t)(nl - p) : strlen(p);
		const char *line = p;
		p += nl ? n + 1 : n;
		if (n && line[n - 1] == '\r')
			n--;
		if (!n || line[0] == '#')
			continue;
		const char *eq = memchr(line, '=', n);
		if (n > 3 && strncmp(line, "id=", 3) == 0) {
			free(id);
			if (!(id = strndup(line + 3, n - 3)))
				abort();
		} else if (n > 4 && strncmp(line, "cwd=", 4) == 0) {
			free(cwd);
			cwd = workspace_dir(line + 4, n - 4);
		} else if (n > 4 && strncmp(line, "env.", 4) == 0 && eq &&
			   env_is_name(line + 4, (size_t)(eq - line - 4))) {
			if (!(env[nenv++] = strndup(line + 4, n - 4)))
				abort();
		} else {
			err = sbx_fail(-EINVAL, "sessions/new: '%.*s' is not an option (id=NAME, "
				       "cwd=DIR, env.NAME=VALUE, one a line)",
				       (int)(n > 80 ? 80 : n), line);
		}
	}
	if (!err && id && !listable(id))
		err = sbx_fail(-EINVAL, "sessions/new: '%s' cannot name a directory of sessions/",
			       id);
	if (!err)
		err = sbx_session_create(h->sbx, id, cwd, (const char *const *)env, &made);
	if (!err) {
		strbuf_appendf(&h->out, "%s\n", made);
		log_debug("sessions/new: created %s", made);
	}
	free(made);
	free(id);
	free(cwd);
	for (size_t i = 0; i < nenv; i++)
		free(env[i]);
	free(env);
	return err;
}

/* ---- sessions/<id>/env and cwd ---- */

/* Runs command in the session; its stdout (a line end added when the container dropped it)
 * goes to h->out when want_output. A failing command is err_status with its stderr. */
static int run(struct ctl_handle *h, const char *command, bool repeatable, bool want_output,
	       int err_status)
{
	struct sbx_exec_result r;
	const char *sid = session_of(&h->args);
	int err = sbx_session_exec(h->sbx, sid, command, repeatable, &r);
	if (err)
		return err;
	if (r.exit_code != 0) {
		size_t n = r.err_len;
		while (n && r.err[n - 1] == '\n')
			n--;
		err = sbx_fail(err_status, "sessions/%s: %.*s", sid, (int)(n > 300 ? 300 : n),
			       n ? r.err : "the command failed");
	} else if (want_output && r.out_len) {
		strbuf_append(&h->out, r.out, r.out_len);
		if (r.out[r.out_len - 1] != '\n')
			strbuf_appends(&h->out, "\n");
	}
	sbx_exec_result_free(&r);
	return err;
}

static int env_open(struct ctl_handle *h)
{
	if ((h->flags & O_ACCMODE) == O_WRONLY)
		return 0;
	/* `command`: not a function or alias of the session that is called env */
	return run(h, "command env", true, true, -EIO);
}

static int env_commit(struct ctl_handle *h)
{
	struct env_change c;
	size_t len;
	const char *in = ctl_input_take(h, &len);
	int err = env_parse(in, len, &c);
	if (!err && (c.nset || c.nunset)) {
		struct strbuf cmd = STRBUF_INIT;
		for (size_t i = 0; i < c.nset; i++) {
			const char *eq = strchr(c.set[i], '=');
			strbuf_appendf(&cmd, "export %.*s=", (int)(eq - c.set[i]), c.set[i]);
			shell_append_quoted(&cmd, eq + 1);
			strbuf_appends(&cmd, "\n");
		}
		for (size_t i = 0; i < c.nunset; i++)
			strbuf_appendf(&cmd, "unset -v %s\n", c.unset[i]);
		/* setting a value twice sets the same value */
		err = run(h, cmd.data, true, false, -EIO);
		strbuf_free(&cmd);
	}
	env_change_free(&c);
	return err;
}

static int cwd_open(struct ctl_handle *h)
{
	if ((h->flags & O_ACCMODE) == O_WRONLY)
		return 0;
	return run(h, "builtin pwd", true, true, -EIO);
}

static int cwd_commit(struct ctl_handle *h)
{
	size_t len;
	const char *in = ctl_input_take(h, &len);
	while (len && (in[len - 1] == '\n' || in[len - 1] == '\r'))
		len--;
	if (!len)
		return 0; /* nothing written: stay */
	if (memchr(in, '\n', len) || memchr(in, '\0', len))
		return sbx_fail(-EINVAL, "sessions/%s/cwd: one directory, on one line",
				session_of(&h->args));
	char *dir = workspace_dir(in, len);
	struct strbuf cmd = STRBUF_INIT;
	strbuf_appends(&cmd, "builtin cd -- ");
	shell_append_quoted(&cmd, dir);
	/* cd to an absolute path does the same twice; a missing directory is ENOENT */
	int err = run(h, cmd.data, true, false, -ENOENT);
	if (err == -ENOENT && strstr(sbx_last_error(), "Not a directory"))
		err = -ENOTDIR;
	strbuf_free(&cmd);
	free(dir);
	return err;
}

/* ---- the tree ---- */

static const struct ctl_entry session_files[] = {
	{ .name = "env", .mode = S_IFREG | 0644, .flags = CTL_LINE, .open = env_open,
	  .commit = env_commit },
	{ .name = "cwd", .mode = S_IFREG | 0644, .flags = CTL_LINE, .open = cwd_open,
	  .commit = cwd_commit },
	{ .name = "proc", .mode = S_IFDIR | 0755, .same_as = &ctl_proc_tree },
	{ .name = "ctx", .mode = S_IFDIR | 0755, .same_as = &ctl_ctx_tree },
	{ 0 }
};

static const struct ctl_entry sessions_children[] = {
	{ .name = "new", .mode = S_IFREG | 0666, .flags = CTL_REQUEST, .commit = new_commit },
	{ .name = NULL, .mode = S_IFDIR | 0755, .flags = CTL_SESSION, .children = session_files,
	  .list = sessions_list, .exists = session_exists, .create = session_mkdir,
	  .remove = session_rmdir },
	{ 0 }
};

const struct ctl_entry ctl_sessions_tree = {
	.name = "sessions",
	.mode = S_IFDIR | 0755,
	.children = sessions_children,
};
