/* ports/: exposed ports as files (docs/ports-git-env.md).
 *
 *   ports/<port>   creating it (touch, echo >) exposes the port; writing a line names it
 *                  ("web"); reading gives the preview URL; rm unexposes
 *
 * Nothing is kept here: every lookup, listing and open asks the sandbox, so ports exposed by
 * others (another mount, the API) appear and an unexposed one is gone within the dynamic
 * entries' one-second cache. A plain container cannot expose ports: the listing is empty and
 * creating fails with EOPNOTSUPP and its reason in the log. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "client/ports.h"
#include "client/sandbox.h"
#include "common/log.h"
#include "fs/control.h"
#include "fs/internal.h"

/* The port a name stands for: decimal digits without a leading zero, in range. */
static int port_of(const char *name, int *port)
{
	long v = 0;
	const char *c = name;
	if (*c == '0')
		c = "";
	for (; *c >= '0' && *c <= '9' && v <= SBX_PORT_MAX; c++)
		v = v * 10 + (*c - '0');
	if (c == name || *c || v < SBX_PORT_MIN || v > SBX_PORT_MAX)
		return sbx_fail(-EINVAL, "ports/%s: a port is a number from %d to %d", name,
				SBX_PORT_MIN, SBX_PORT_MAX);
	*port = (int)v;
	return 0;
}

static const char *port_name(const struct ctl_args *a)
{
	return a->v[a->n - 1];
}

/* The URL of an exposed port (caller frees), -ENOENT when it is not exposed. */
static int port_url(struct sbx *s, int port, char **url)
{
	struct sbx_port *v;
	size_t n;
	*url = NULL;
	int err = sbx_ports_list(s, &v, &n);
	if (err)
		return err;
	for (size_t i = 0; i < n && !*url; i++)
		if (v[i].port == port && !(*url = strdup(v[i].url)))
			abort();
	sbx_ports_free(v, n);
	return *url ? 0 : -ENOENT;
}

static int ports_list(struct sbxfs *fs, const struct ctl_args *a, struct ctl_names *out)
{
	struct sbx_port *v;
	size_t n;
	int err = sbx_ports_list(fs->sbx, &v, &n);
	if (err)
		return err;
	for (size_t i = 0; i < n; i++) {
		char name[16];
		snprintf(name, sizeof name, "%d", v[i].port);
		ctl_names_add(out, name);
	}
	sbx_ports_free(v, n);
	return 0;
}

static int ports_exists(struct sbxfs *fs, const struct ctl_args *a)
{
	int port;
	char *url;
	if (port_of(port_name(a), &port) < 0)
		return -ENOENT;
	int err = port_url(fs->sbx, port, &url);
	if (err && err != -ENOENT)
		log_warn("ports/%s: %s", port_name(a), sbx_last_error());
	free(url);
	return err;
}

static int ports_create(struct sbxfs *fs, const struct ctl_args *a, mode_t mode)
{
	int port;
	int err = port_of(port_name(a), &port);
	return err ? err : sbx_port_expose(fs->sbx, port, NULL, NULL);
}

static int ports_remove(struct sbxfs *fs, const struct ctl_args *a)
{
	int port;
	int err = port_of(port_name(a), &port);
	return err ? err : sbx_port_unexpose(fs->sbx, port);
}

/* A reader gets the URL as it is now; a writer's open costs nothing (commit asks). */
static int port_open(struct ctl_handle *h)
{
	int port;
	char *url;
	int err = port_of(port_name(&h->args), &port);
	if (err || (h->flags & O_ACCMODE) == O_WRONLY)
		return err;
	err = port_url(h->sbx, port, &url);
	if (err == -ENOENT)
		return sbx_fail(-ENOENT, "ports/%s: the port is not exposed", port_name(&h->args));
	if (err)
		return err;
	strbuf_appends(&h->out, url);
	strbuf_appends(&h->out, "\n");
	free(url);
	return 0;
}

/* What was written is the port's name (its last line; none when empty): exposing again is
 * harmless, so a plain `touch` or `echo >` on an exposed port just makes sure of it. */
static int port_commit(struct ctl_handle *h)
{
	int port;
	int err = port_of(port_name(&h->args), &port);
	if (err)
		return err;
	size_t len;
	const char *text = ctl_input_take(h, &len);
	while (len && (text[len - 1] == '\n' || text[len - 1] == '\r'))
		len--;
	const char *nl = memrchr(text, '\n', len);
	if (nl) {
		len -= (size_t)(nl + 1 - text);
		text = nl + 1;
	}
	if (memchr(text, '\0', len))
		return sbx_fail(-EINVAL, "ports/%s: the name contains a NUL byte",
				port_name(&h->args));
	char *name = strndup(text, len);
	if (!name)
		abort();
	err = sbx_port_expose(h->sbx, port, *name ? name : NULL, NULL);
	free(name);
	return err;
}

static const struct ctl_entry ports_children[] = {
	{ .name = NULL, .mode = S_IFREG | 0644, .flags = CTL_LINE, .list = ports_list,
	  .exists = ports_exists, .create = ports_create, .remove = ports_remove,
	  .open = port_open, .commit = port_commit },
	{ 0 },
};

const struct ctl_entry ctl_ports_tree = {
	.name = "ports", .mode = S_IFDIR | 0755, .children = ports_children,
};
