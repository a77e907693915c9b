/* sbxfs URL MOUNTPOINT [-o opts] [-f] [-d] [-s]: mounts a sandbox.
 *
 * Order matters: the sandbox is probed before anything is mounted, so a wrong URL or token is
 * a clear error and exit status 1 with nothing mounted. fuse_daemonize() forks, and threads do
 * not survive a fork, so in the background case the probe's connection is closed before
 * mounting and the sandbox is opened again in the daemon (its errors then go to syslog, and the
 * mount is taken down again). Also works as mount.fuse.sbxfs (mount -t fuse.sbxfs, fstab):
 * mount(8) passes the same arguments. */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <limits.h>
#include <malloc.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <fuse_lowlevel.h>
#include "client/journal.h"
#include "client/sandbox.h"
#include "common/log.h"

#include "fs/fs.h"

#define MAX_THREADS 16
#define MAX_THREADS_STR "16"

struct options {
	char *url;
	char *token_file;
	char *ca_file;
	double timeout;
	int insecure;
	int no_extensions;
	int token_on_cmdline;
	char *writeback; /* "on" (default) or "off" */
	char *cache_dir;
};

enum { KEY_TOKEN };

#define OPT(t, p, v) { t, offsetof(struct options, p), v }
/* The program's own -o options, parsed and shown by --help from this one table (the
 * filesystem's cache options are fs/options.c's). Entries without help are parsed, not shown. */
static const struct sbxfs_option program_options[] = {
	{ OPT("token_file=%s", token_file, 0), "token_file=FILE", "file holding the bearer token" },
	{ OPT("timeout=%lf", timeout, 0), "timeout=SECS",
	  "deadline of one request to the sandbox (30)" },
	{ OPT("no_extensions", no_extensions, 1), "no_extensions",
	  "use only the standard container routes" },
	{ OPT("writeback=%s", writeback, 0), "writeback=on|off",
	  "changes return at local speed, uploaded in the background (on)" },
	{ OPT("cache_dir=%s", cache_dir, 0), "cache_dir=DIR",
	  "where the write-back journal lives (~/.cache/sbxfs)" },
	{ OPT("insecure", insecure, 1), "insecure", "do not verify the server's TLS certificate" },
	{ OPT("ca_file=%s", ca_file, 0), "ca_file=FILE",
	  "CA certificates (PEM) in place of the system's" },
	/* refused: other users can read the command line */
	{ FUSE_OPT_KEY("token=", KEY_TOKEN), NULL, NULL },
	/* fstab words that mean something to mount(8) only */
	{ FUSE_OPT_KEY("auto", FUSE_OPT_KEY_DISCARD), NULL, NULL },
	{ FUSE_OPT_KEY("noauto", FUSE_OPT_KEY_DISCARD), NULL, NULL },
	{ FUSE_OPT_KEY("user", FUSE_OPT_KEY_DISCARD), NULL, NULL },
	{ FUSE_OPT_KEY("users", FUSE_OPT_KEY_DISCARD), NULL, NULL },
	{ FUSE_OPT_KEY("_netdev", FUSE_OPT_KEY_DISCARD), NULL, NULL },
	{ FUSE_OPT_KEY("nofail", FUSE_OPT_KEY_DISCARD), NULL, NULL },
	{ FUSE_OPT_END, NULL, NULL },
};
#define N_PROGRAM_OPTIONS (sizeof(program_options) / sizeof(program_options[0]))

static int options_proc(void *data, const char *arg, int key, struct fuse_args *outargs)
{
	struct options *o = data;
	if (key == KEY_TOKEN) {
		o->token_on_cmdline = 1;
		return 0;
	}
	if (key == FUSE_OPT_KEY_NONOPT && !o->url) {
		o->url = strdup(arg);
		return o->url ? 0 : -1;
	}
	return 1;
}

static int options_parse(struct fuse_args *args, struct options *o)
{
	struct fuse_opt table[N_PROGRAM_OPTIONS];
	for (size_t i = 0; i < N_PROGRAM_OPTIONS; i++)
		table[i] = program_options[i].opt;
	return fuse_opt_parse(args, o, table, options_proc);
}

static void options_help(const struct sbxfs_option *table)
{
	for (const struct sbxfs_option *o = table; o->opt.templ; o++)
		if (o->shown)
			printf("    -o %-22s  %s\n", o->shown, o->help);
}

static void usage(const char *prog)
{
	printf("usage: %s URL MOUNTPOINT [options]\n\n"
	       "Mounts the sandbox whose HTTP API is at URL (sbxd, a Cloudflare sandbox container,\n"
	       "or a Worker in front of one). MOUNTPOINT/workspace is the sandbox's /workspace.\n"
	       "The token comes from -o token_file=FILE or the environment variable SBXFS_TOKEN.\n\n"
	       "sbxfs options:\n", prog);
	options_help(program_options);
	printf("\nCache options:\n");
	options_help(sbxfs_cache_options);
	printf("\nFUSE options:\n");
	fuse_cmdline_help();
	fuse_lowlevel_help();
}

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The token file's first line, without trailing white space. */
static char *read_token(const char *file)
{
	FILE *f = fopen(file, "re");
	if (!f) {
		fail("token file %s: %s", file, strerror(errno));
		return NULL;
	}
	char *line = NULL;
	size_t cap = 0;
	ssize_t n = getline(&line, &cap, f);
	fclose(f);
	if (n < 0) {
		free(line);
		line = strdup("");
		if (!line)
			abort();
		n = 0;
	}
	while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' ' ||
			 line[n - 1] == '\t'))
		line[--n] = '\0';
	return line;
}

/* Before the mount the user is at a terminal: plain "sbxfs: ..." lines; afterwards the log. */
static bool mounted;

static void fail(const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	if (mounted)
		log_error("%s", line);
	else
		fprintf(stderr, "sbxfs: %s\n", line);
}

static int open_sandbox(const struct options *o, const char *token, struct sbx **out)
{
	struct http_client_opts hopts = {
		.base_url = o->url,
		.token = token,
		.request_timeout_ms = (long)(o->timeout * 1000),
		.insecure = o->insecure,
		.ca_file = o->ca_file,
		.max_connections = MAX_THREADS,
	};
	int err = sbx_open(&hopts, out);
	const char *why = sbx_last_error();
	/* The client's reason may repeat the URL ("URL unreachable: connect ... failed: ..."). */
	const char *tail = strstr(why, " unreachable: ");
	if (tail && strncmp(why, o->url, strlen(o->url)) == 0)
		why = tail + strlen(" unreachable: ");
	if (err == -EACCES)
		fail("%s: token refused%s", o->url,
		     token && *token ? "" : " (none given: -o token_file= or SBXFS_TOKEN)");
	else if (err == -ENOTCONN)
		fail("cannot reach %s: %s", o->url, *why ? why : strerror(-err));
	else if (err < 0)
		fail("%s: %s", o->url, *why ? why : strerror(-err));
	if (err < 0)
		return err;
	if (o->no_extensions)
		sbx_force_fallback(*out);
	/* A plain container's probe (/api/ping) needs no token: prove the token on /workspace,
	 * which every later request needs anyway. */
	struct stat st;
	err = sbx_lstat(*out, "/workspace", &st, NULL);
	if (err == -EACCES)
		fail("%s: token refused%s (%s)", o->url,
		     token && *token ? "" : ", none given: -o token_file= or SBXFS_TOKEN",
		     sbx_last_error());
	else if (err < 0)
		fail("%s: /workspace: %s", o->url, sbx_last_error());
	if (err < 0) {
		sbx_close(*out);
		*out = NULL;
		return err;
	}
	const struct sbx_info *info = sbx_info(*out);
	log_debug("%s: %s %s, %s", o->url, info->server ? info->server : "sandbox",
		  info->version ? info->version : "",
		  info->extensions && !o->no_extensions ? "filesystem extensions"
							: "standard routes only");
	return 0;
}

static bool writeback_on(const struct options *o)
{
	return !o->writeback || strcmp(o->writeback, "off") != 0;
}

/* The journal's directory, made absolute (the daemon runs in /) and checked now, while the
 * user still sees what is said. */
static int check_cache_dir(struct options *o)
{
	if (!o->cache_dir)
		o->cache_dir = sbx_journal_default_dir();
	if (!o->cache_dir) {
		fail("cache_dir: out of memory");
		return -1;
	}
	if (o->cache_dir[0] != '/') {
		char *cwd = getcwd(NULL, 0), *abs = NULL;
		if (!cwd || asprintf(&abs, "%s/%s", cwd, o->cache_dir) < 0) {
			free(cwd);
			fail("cache_dir %s: %s", o->cache_dir, strerror(errno));
			return -1;
		}
		free(cwd);
		free(o->cache_dir);
		o->cache_dir = abs;
	}
	if (sbx_journal_check_dir(o->cache_dir) < 0) {
		fail("%s", sbx_last_error());
		return -1;
	}
	return 0;
}

static int start_journal(const struct options *o, struct sbx *sandbox)
{
	if (!o->writeback && !sbx_journal_batches(sandbox)) {
		/* a plain container: one round trip per uploaded change, and caveats of its own
		 * (docs/writeback.md); on when asked for */
		log_info("writeback off by default with a plain container (-o writeback=on for "
			 "the journal)");
		return 0;
	}
	struct sbx_journal_opts jo = { .cache_dir = o->cache_dir };
	int err = sbx_journal_start(sandbox, &jo);
	if (err < 0)
		fail("write-back journal: %s", sbx_last_error());
	return err;
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct options o = { .timeout = 30.0 };
	struct sbxfs_config cfg;
	struct fuse_cmdline_opts cmd = { 0 };
	struct fuse_session *se = NULL;
	struct fuse_loop_config *loop = NULL;
	struct sbxfs *fs = NULL;
	struct sbx *sandbox = NULL;
	char *token = NULL;
	const char *env_token;
	int ret = 1;

	log_init("sbxfs", LOG_LVL_INFO, false);
	/* Buffers of a megabyte and more (upload parts and their JSON, read-ahead ranges) are
	 * mapped and unmapped: glibc's adaptive threshold would move them into the heap after
	 * the first few, where they keep the resident set up long after a large transfer. */
	mallopt(M_MMAP_THRESHOLD, 1 << 20);
	if (options_parse(&args, &o) == -1)
		goto out;
	if (sbxfs_config_parse(&args, &cfg) == -1)
		goto out;
	/* Our default, first, so that a -o max_threads= of the user wins. */
	fuse_opt_insert_arg(&args, 1, "-omax_threads=" MAX_THREADS_STR);
	/* The kernel checks every access against the modes we report (files are the mounting
	 * user's), so that even with -o allow_other others get only what the modes grant. */
	fuse_opt_insert_arg(&args, 1, "-odefault_permissions");
	if (fuse_parse_cmdline(&args, &cmd) != 0)
		goto out;
	if (cmd.show_help) {
		usage(argv[0]);
		ret = 0;
		goto out;
	}
	if (cmd.show_version) {
		printf("sbxfs %s\n", SBXFS_VERSION);
		fuse_lowlevel_version();
		ret = 0;
		goto out;
	}
	if (o.token_on_cmdline) {
		fprintf(stderr, "sbxfs: no token on the command line (other users can read it): "
				"use -o token_file=FILE or SBXFS_TOKEN\n");
		goto out;
	}
	if (!o.url || !cmd.mountpoint) {
		fprintf(stderr, "usage: %s URL MOUNTPOINT [options]  (--help for more)\n",
			argv[0]);
		goto out;
	}
	if (o.writeback && strcmp(o.writeback, "on") != 0 && strcmp(o.writeback, "off") != 0) {
		fprintf(stderr, "sbxfs: writeback is on or off, not %s\n", o.writeback);
		goto out;
	}
	if (writeback_on(&o) && check_cache_dir(&o) < 0)
		goto out;
	/* The daemon runs in /: a relative CA file must be resolved now. */
	if (o.ca_file && o.ca_file[0] != '/') {
		char *abs = realpath(o.ca_file, NULL);
		if (!abs) {
			fprintf(stderr, "sbxfs: ca_file %s: %s\n", o.ca_file, strerror(errno));
			goto out;
		}
		free(o.ca_file);
		o.ca_file = abs;
	}
	if (o.timeout <= 0) {
		fprintf(stderr, "sbxfs: timeout must be positive\n");
		goto out;
	}
	if (o.insecure && strncmp(o.url, "https://", 8) == 0)
		log_warn("-o insecure: the server's certificate is not verified; anyone on the "
			 "path can read the token and the files");
	if (cmd.debug)
		log_set_level(LOG_LVL_DEBUG);

	if (o.token_file) {
		token = read_token(o.token_file);
		if (!token)
			goto out;
	} else if ((env_token = getenv("SBXFS_TOKEN"))) {
		token = strdup(env_token);
		if (!token)
			abort();
	}

	/* df and mount show the URL; mount -t fuse.sbxfs needs the subtype whatever argv[0]. */
	char *fsname = malloc(strlen(o.url) * 2 + 16);
	if (!fsname)
		abort();
	char *p = stpcpy(fsname, "fsname=");
	for (const char *s = o.url; *s; s++) {
		if (*s == ',' || *s == '\\')
			*p++ = '\\';
		*p++ = *s;
	}
	*p = '\0';
	fuse_opt_add_arg(&args, "-o");
	fuse_opt_add_arg(&args, fsname);
	fuse_opt_add_arg(&args, "-osubtype=sbxfs");
	free(fsname);

	fs = sbxfs_new(&cfg);
	se = fuse_session_new(&args, sbxfs_lowlevel_ops(), sizeof(struct fuse_lowlevel_ops), fs);
	if (!se)
		goto out; /* it said why (an unknown option, ...) */
	if (open_sandbox(&o, token, &sandbox) < 0)
		goto out_session;
	if (!cmd.foreground) {
		sbx_close(sandbox);
		sandbox = NULL;
	}
	if (fuse_set_signal_handlers(se) != 0)
		goto out_session;
	if (fuse_session_mount(se, cmd.mountpoint) != 0)
		goto out_signals;
	mounted = true;
	if (fuse_daemonize(cmd.foreground) != 0)
		goto out_unmount;
	if (!cmd.foreground) {
		log_init("sbxfs", cmd.debug ? LOG_LVL_DEBUG : LOG_LVL_INFO, true);
		if (open_sandbox(&o, token, &sandbox) < 0)
			goto out_unmount;
	}
	if (writeback_on(&o) && start_journal(&o, sandbox) < 0)
		goto out_unmount;
	if (sbxfs_start(fs, sandbox, se) < 0)
		goto out_unmount;

	if (cmd.singlethread) {
		ret = fuse_session_loop(se);
	} else {
		loop = fuse_loop_cfg_create();
		fuse_loop_cfg_set_clone_fd(loop, cmd.clone_fd);
		fuse_loop_cfg_set_max_threads(loop, cmd.max_threads);
		if (cmd.max_idle_threads != UINT_MAX)
			fuse_loop_cfg_set_idle_threads(loop, cmd.max_idle_threads);
		ret = fuse_session_loop_mt(se, loop);
		fuse_loop_cfg_destroy(loop);
	}
	ret = ret != 0;
	sbxfs_stop(fs);
out_unmount:
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_session:
	fuse_session_destroy(se);
out:
	sbxfs_free(fs);
	if (sandbox)
		sbx_close(sandbox);
	if (token) {
		memset(token, 0, strlen(token));
		free(token);
	}
	free(o.url);
	free(o.token_file);
	free(o.ca_file);
	free(o.writeback);
	free(o.cache_dir);
	free(cmd.mountpoint);
	fuse_opt_free_args(&args);
	return ret;
}
