/* env: the sandbox-wide environment as one file (docs/ports-git-env.md).
 *
 *   cat env                      NAME=VALUE lines, the variables set so far
 *   echo FOO=bar >> env          sets FOO for everything started afterwards
 *   printf 'A=1\n-B\n' > env     sets A, unsets B
 *
 * What is written is applied when a write ends a line (else at close), each write's lines whole
 * or not at all, so that `echo BAD > env` fails where bash sees it (fs/control.h, CTL_LINE).
 * NAME=VALUE sets (the value is taken literally to the end of its line, no quoting), -NAME
 * unsets, empty lines and lines starting with '#' are skipped; a later line about a name wins.
 * '>' and '>>' do the same thing: only the names written change, the others stay. The file
 * reads back as the whole environment but is written as a list of changes: a '>' that wiped
 * everything would also wipe what others set (the API, another mount). A malformed line
 * fails its write (or the close) with EINVAL and that write changes nothing. A plain container
 * keeps no environment: reading and writing fail with EOPNOTSUPP. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include "client/env.h"
#include "client/sandbox.h"
#include "fs/control.h"
#include "fs/env.h"
#include "fs/internal.h"

bool env_is_name(const char *s, size_t n)
{
	if (!n || (s[0] >= '0' && s[0] <= '9'))
		return false;
	for (size_t i = 0; i < n; i++)
		if (!(s[i] == '_' || (s[i] >= '0' && s[i] <= '9') ||
		      ((s[i] | 32) >= 'a' && (s[i] | 32) <= 'z')))
			return false;
	return true;
}

static void drop_name(char **v, size_t *n, const char *name, size_t len)
{
	for (size_t i = 0; i < *n; i++)
		if (strncmp(v[i], name, len) == 0 && (v[i][len] == '=' || !v[i][len])) {
			free(v[i]);
			v[i] = v[--*n];
			return;
		}
}

void env_change_free(struct env_change *c)
{
	for (size_t i = 0; i < c->nset; i++)
		free(c->set[i]);
	for (size_t i = 0; i < c->nunset; i++)
		free(c->unset[i]);
	free(c->set);
	free(c->unset);
}

int env_parse(const char *text, size_t len, struct env_change *c)
{
	memset(c, 0, sizeof(*c));
	/* at most one entry per line */
	size_t lines = 1;
	for (size_t i = 0; i < len; i++)
		lines += text[i] == '\n';
	c->set = calloc(lines, sizeof(char *));
	c->unset = calloc(lines, sizeof(char *));
	if (!c->set || !c->unset)
		abort();
	size_t lineno = 0;
	for (const char *p = text, *end = text + len; p < end;) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
		const char *line = p;
		p += n + 1;
		lineno++;
		if (n && line[n - 1] == '\r')
			n--;
		if (!n || line[0] == '#')
			continue;
		if (memchr(line, '\0', n))
			return sbx_fail(-EINVAL, "env line %zu: contains a NUL byte", lineno);
		bool unset = line[0] == '-';
		const char *eq = unset ? NULL : memchr(line, '=', n);
		const char *name = unset ? line + 1 : line;
		size_t name_len = unset ? n - 1 : eq ? (size_t)(eq - line) : 0;
		if (!unset && !eq)
			return sbx_fail(-EINVAL, "env line %zu: '%.*s' is neither NAME=VALUE nor -NAME",
					lineno, (int)(n > 80 ? 80 : n), line);
		if (!env_is_name(name, name_len))
			return sbx_fail(-EINVAL, "env line %zu: '%.*s' is not a variable name "
					"(letters, digits and _, not starting with a digit)",
					lineno, (int)(name_len > 80 ? 80 : name_len), name);
		drop_name(c->set, &c->nset, name, name_len);
		drop_name(c->unset, &c->nunset, name, name_len);
		char *entry = strndup(unset ? name : line, unset ? name_len : n);
		if (!entry)
			abort();
		if (unset)
			c->unset[c->nunset++] = entry;
		else
			c->set[c->nset++] = entry;
	}
	return 0;
}

static int env_open(struct ctl_handle *h)
{
	if ((h->flags & O_ACCMODE) == O_WRONLY)
		return 0;
	char **vars;
	size_t n;
	int err = sbx_env_get(h->sbx, &vars, &n);
	if (err)
		return err;
	for (size_t i = 0; i < n; i++) {
		strbuf_appends(&h->out, vars[i]);
		strbuf_appends(&h->out, "\n");
	}
	sbx_env_free(vars, n);
	return 0;
}

static int env_commit(struct ctl_handle *h)
{
	struct env_change c;
	size_t len;
	const char *in = ctl_input_take(h, &len);
	int err = env_parse(in, len, &c);
	if (!err && (c.nset || c.nunset))
		err = sbx_env_update(h->sbx, (const char *const *)c.set, c.nset,
				     (const char *const *)c.unset, c.nunset);
	env_change_free(&c);
	return err;
}

const struct ctl_entry ctl_env_file = {
	.name = "env", .mode = S_IFREG | 0644, .flags = CTL_LINE,
	.open = env_open, .commit = env_commit,
};
