/* sbxd: the local sandbox server. Parses options, prepares the workspace, the token and the
 * state directory, and hands over to sbxd_serve(). */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>
#include "common/log.h"
#include "server/runner.h"
#include "server/server.h"

enum {
	OPT_LISTEN = 256, OPT_WORKSPACE, OPT_TOKEN_FILE, OPT_STATE_DIR, OPT_SANDBOX_ID, OPT_NO_EXT,
	OPT_LEASE, OPT_MEMORY, OPT_PIDS, OPT_FSIZE, OPT_CPU, OPT_NOFILE, OPT_ISOLATION,
	OPT_PREVIEW_BASE,
};

/* sbxd's options: getopt_long's table and --help are both made from this one list. */
static const struct option_doc {
	const char *name;    /* the long option */
	int id;              /* what getopt_long returns: OPT_*, or the short option's letter */
	const char *arg;     /* the argument's name in --help; NULL: takes none */
	const char *heading; /* printed before the option, or NULL */
	const char *help;    /* --help's text; a '\n' continues it on the next line */
} option_docs[] = {
	{ "listen", OPT_LISTEN, "HOST:PORT", NULL,
	  "address to listen on (default 127.0.0.1:7070; [::1]:PORT\n"
	  "for IPv6; port 0 picks a free port)" },
	{ "workspace", OPT_WORKSPACE, "DIR", NULL,
	  "host directory shown as /workspace (default ./workspace,\n"
	  "or /workspace with --isolation=none; created if missing)" },
	{ "token-file", OPT_TOKEN_FILE, "FILE", NULL,
	  "bearer token; created (0600) with a fresh random token if\n"
	  "missing. Required unless SBXD_TOKEN is set" },
	{ "state-dir", OPT_STATE_DIR, "DIR", NULL,
	  "private state (default $XDG_RUNTIME_DIR/sbxd-PORT; without\n"
	  "it /run/sbxd-PORT for root, ${TMPDIR:-/tmp}/sbxd-UID/PORT\n"
	  "for other users)" },
	{ "sandbox-id", OPT_SANDBOX_ID, "NAME", NULL,
	  "sandbox id reported to clients (default local)" },
	{ "no-extensions", OPT_NO_EXT, NULL, NULL, "serve only the container's standard routes" },
	{ "isolation", OPT_ISOLATION, "bubblewrap|none", NULL,
	  "how commands are isolated: bubblewrap (the default),\n"
	  "or none: directly on this system, which must itself be\n"
	  "the sandbox (a container); the workspace must then be\n"
	  "/workspace" },
	{ "preview-base", OPT_PREVIEW_BASE, "URL", NULL,
	  "public base of preview URLs, e.g. https://sbx.example.com:\n"
	  "exposed ports get https://PORT-ID-TOKEN.sbx.example.com/" },
	{ "lease-seconds", OPT_LEASE, "N", NULL,
	  "how long a silent client keeps its open files (default\n"
	  "30; sbxfs renews every third of it)" },
	{ "memory-limit", OPT_MEMORY, "SIZE",
	  "\nLimits for what runs in the sandbox (0 = none; SIZE takes K, M, G or T):\n",
	  "memory of all processes together (default 4G)" },
	{ "pids-limit", OPT_PIDS, "N", NULL, "processes and threads together (default 2048)" },
	{ "file-size-limit", OPT_FSIZE, "SIZE", NULL,
	  "largest file a process may write (default 16G)" },
	{ "cpu-limit", OPT_CPU, "SECONDS", NULL, "CPU time of each process (default 3600)" },
	{ "open-files-limit", OPT_NOFILE, "N", NULL,
	  "open files of each process (default 4096)" },
	{ "verbose", 'v', NULL, "\n", "log every request" },
	{ "help", 'h', NULL, NULL, "show this help" },
	{ "version", 'V', NULL, NULL, "show the version" },
};
#define N_OPTIONS (sizeof(option_docs) / sizeof(option_docs[0]))

static void usage(FILE *out)
{
	fprintf(out,
		"usage: sbxd --token-file FILE [options]\n"
		"\n"
		"Serves a sandbox's HTTP API (the Cloudflare sandbox container's, plus the sbxfs\n"
		"extensions) for a workspace directory on this host.\n"
		"\n");
	for (size_t i = 0; i < N_OPTIONS; i++) {
		const struct option_doc *d = &option_docs[i];
		char left[64];
		if (d->id < 256)
			snprintf(left, sizeof left, "-%c, --%s", d->id, d->name);
		else
			snprintf(left, sizeof left, "--%s%s%s", d->name, d->arg ? " " : "",
				 d->arg ? d->arg : "");
		if (d->heading)
			fputs(d->heading, out);
		/* the text in a column of its own, below an option too long for it */
		if (strlen(left) > 22)
			fprintf(out, "  %s\n%24s", left, "");
		else
			fprintf(out, "  %-20s  ", left);
		for (const char *h = d->help; *h; h++) {
			fputc(*h, out);
			if (*h == '\n')
				fprintf(out, "%24s", "");
		}
		fputc('\n', out);
	}
}

/* getopt_long's tables from option_docs: longopts (N_OPTIONS + 1 entries) and the short
 * options' letters. */
static void getopt_tables(struct option *longopts, char *shortopts)
{
	for (size_t i = 0; i < N_OPTIONS; i++) {
		const struct option_doc *d = &option_docs[i];
		longopts[i] = (struct option){ d->name, d->arg ? required_argument : no_argument,
					       NULL, d->id };
		if (d->id < 256) {
			*shortopts++ = (char)d->id;
			if (d->arg)
				*shortopts++ = ':';
		}
	}
	longopts[N_OPTIONS] = (struct option){ NULL, 0, NULL, 0 };
	*shortopts = '\0';
}

static int die_usage(const char *fmt, const char *arg)
{
	fprintf(stderr, "sbxd: ");
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\nTry 'sbxd --help'.\n");
	return 2;
}

/* "123", "64K", "4G"... (binary units); false if malformed or out of range. */
static bool parse_size(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	if (!*s || *s == '-')
		return false;
	unsigned long long v = strtoull(s, &end, 10);
	unsigned shift = 0;
	if (*end) {
		static const char units[] = "KMGT";
		const char *u = strchr(units, toupper((unsigned char)*end));
		if (!u || (end[1] && strcmp(end + 1, "B") != 0 && strcmp(end + 1, "iB") != 0))
			return false;
		shift = 10 * (unsigned)(u - units + 1);
	}
	if (errno || end == s || (shift && v > (~0ull >> shift)))
		return false;
	*out = (uint64_t)v << shift;
	return true;
}

static bool parse_count(const char *s, long *out)
{
	uint64_t v;
	if (strspn(s, "0123456789") != strlen(s) || !parse_size(s, &v) || v > LONG_MAX)
		return false;
	*out = (long)v;
	return true;
}

/* The most descriptors a process may have (fs.nr_open). */
static long max_open_files(void)
{
	long n = 1 << 20; /* the kernel's default */
	char line[32];
	FILE *f = fopen("/proc/sys/fs/nr_open", "re");
	if (f) {
		if (fgets(line, sizeof line, f)) {
			char *end;
			long v = strtol(line, &end, 10);
			if (end != line && v > 0)
				n = v;
		}
		fclose(f);
	}
	return n;
}

/* "HOST:PORT" or "[V6]:PORT" with a numeric port; returns the port text or NULL. */
static const char *listen_port(const char *listen)
{
	const char *colon = strrchr(listen, ':');
	/* strtol saturates where atoi would wrap (4294967296 is not port 0) */
	if (!colon || colon == listen || !colon[1] ||
	    strspn(colon + 1, "0123456789") != strlen(colon + 1) ||
	    strtol(colon + 1, NULL, 10) > 65535)
		return NULL;
	if (listen[0] == '[' && colon[-1] != ']')
		return NULL;
	return colon + 1;
}

static int mkdir_p(const char *dir, mode_t mode)
{
	char *p = strdup(dir);
	if (!p)
		return -ENOMEM;
	for (char *s = p + 1; *s; s++) {
		if (*s != '/')
			continue;
		*s = '\0';
		if (mkdir(p, 0755) && errno != EEXIST) {
			int err = -errno;
			free(p);
			return err;
		}
		*s = '/';
	}
	int err = mkdir(p, mode) && errno != EEXIST ? -errno : 0;
	free(p);
	struct stat st;
	if (!err && (stat(dir, &st) || !S_ISDIR(st.st_mode)))
		err = -ENOTDIR;
	return err;
}

/* "http[s]://NAME[:PORT][/]" for --preview-base, lower-cased without the slash (in a static
 * buffer); NULL after a message. NAME must be a DNS name: a preview URL puts a label in front
 * of it. */
static const char *parse_preview_base(const char *arg)
{
	static char out[256];
	const char *host = NULL;
	if (strncasecmp(arg, "https://", 8) == 0)
		host = arg + 8;
	else if (strncasecmp(arg, "http://", 7) == 0)
		host = arg + 7;
	size_t n = host ? strlen(host) : 0;
	if (n && host[n - 1] == '/')
		n--;
	size_t name = host ? strspn(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
				      "0123456789.-") : 0;
	if (name > n)
		name = n;
	bool ok = host && name > 0 && name <= 200 && host[0] != '.' && host[0] != '-' &&
		  host[name - 1] != '.' && !memmem(host, name, "..", 2) &&
		  strspn(host, "0123456789.") < name; /* not an IPv4 address */
	if (ok && name < n) { /* ":PORT" */
		size_t digits = n - name - 1;
		long port = strtol(host + name + 1, NULL, 10);
		ok = host[name] == ':' && digits >= 1 && digits <= 5 &&
		     strspn(host + name + 1, "0123456789") >= digits && port >= 1 && port <= 65535;
	}
	if (!ok) {
		fprintf(stderr, "sbxd: --preview-base wants http[s]://NAME[:PORT] with a DNS name "
			"and no path (preview URLs are http[s]://PORT-ID-TOKEN.NAME/), not '%s'\n"
			"Try 'sbxd --help'.\n", arg);
		return NULL;
	}
	snprintf(out, sizeof out, "%.*s", (int)(host - arg + n), arg);
	for (char *p = out; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	return out;
}

/* Creates dir (mode 0700) unless it exists, and checks that it is a directory of this user's
 * that nobody else can enter: the parent of the default state directory in a shared /tmp.
 * false after a message. */
static bool private_dir(const char *dir)
{
	struct stat st;
	if (mkdir(dir, 0700) && errno != EEXIST) {
		fprintf(stderr, "sbxd: state directory %s: %s\n", dir, strerror(errno));
		return false;
	}
	if (lstat(dir, &st)) {
		fprintf(stderr, "sbxd: state directory %s: %s\n", dir, strerror(errno));
		return false;
	}
	if (!S_ISDIR(st.st_mode) || st.st_uid != geteuid() || (st.st_mode & 077)) {
		fprintf(stderr, "sbxd: %s is not a private directory of this user's (%s, owner %d, "
			"mode %03o): remove it, or choose a state directory with --state-dir\n", dir,
			S_ISDIR(st.st_mode) ? "a directory" : S_ISLNK(st.st_mode) ? "a symlink"
							 : "not a directory",
			(int)st.st_uid, (unsigned)(st.st_mode & 0777));
		return false;
	}
	return true;
}

/* The default state directory, named after name ("7070", or "pid123" for port 0): in
 * $XDG_RUNTIME_DIR when that is this user's (su keeps the one of the user before), in /run for
 * root, else in a private directory of this user's in $TMPDIR or /tmp (a login without a
 * runtime directory: su, ssh, cron). NULL after a message. */
static char *default_state_dir(const char *name)
{
	const char *run = getenv("XDG_RUNTIME_DIR");
	struct stat st;
	char *dir = NULL;
	int n;
	if (run && *run == '/' && stat(run, &st) == 0 && S_ISDIR(st.st_mode) &&
	    st.st_uid == geteuid()) {
		n = asprintf(&dir, "%s/sbxd-%s", run, name);
	} else if (geteuid() == 0) {
		n = asprintf(&dir, "/run/sbxd-%s", name);
	} else {
		const char *tmp = getenv("TMPDIR");
		char *base;
		if (!tmp || *tmp != '/')
			tmp = "/tmp";
		if (asprintf(&base, "%s/sbxd-%d", tmp, (int)geteuid()) < 0)
			return NULL;
		n = private_dir(base) ? asprintf(&dir, "%s/%s", base, name) : -1;
		free(base);
	}
	return n < 0 ? NULL : dir;
}

/* Whether dir is /workspace itself (or what that resolves to). */
static bool is_root_workspace(const char *dir)
{
	char *a = realpath(dir, NULL), *b = realpath("/workspace", NULL);
	bool same = a && b && strcmp(a, b) == 0;
	free(a);
	free(b);
	return same;
}

static int create_token_file(const char *file)
{
	unsigned char raw[32];
	char hex[sizeof raw * 2 + 2];
	if (getrandom(raw, sizeof raw, 0) != sizeof raw)
		return -errno;
	for (size_t i = 0; i < sizeof raw; i++)
		snprintf(hex + 2 * i, 3, "%02x", raw[i]);
	strcat(hex, "\n");
	int fd = open(file, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	ssize_t n = write(fd, hex, strlen(hex));
	int err = n == (ssize_t)strlen(hex) ? 0 : n < 0 ? -errno : -EIO;
	if (close(fd) && !err)
		err = -errno;
	return err;
}

/* Reads the token (created first when the file does not exist); NULL after a message. */
static char *load_token(const char *file)
{
	int err = create_token_file(file);
	if (err == 0)
		fprintf(stderr, "sbxd: created token file %s\n", file);
	else if (err != -EEXIST) {
		fprintf(stderr, "sbxd: cannot create token file %s: %s\n", file, strerror(-err));
		return NULL;
	}
	FILE *f = fopen(file, "re");
	if (!f) {
		fprintf(stderr, "sbxd: cannot read token file %s: %s\n", file, strerror(errno));
		return NULL;
	}
	struct stat st;
	if (fstat(fileno(f), &st) == 0 && (st.st_mode & 077))
		fprintf(stderr, "sbxd: warning: token file %s is readable by others (mode %03o)\n",
			file, st.st_mode & 0777);
	char buf[4097];
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	buf[strcspn(buf, "\r\n")] = '\0'; /* the first line is the token */
	n = strlen(buf);
	while (n && strchr(" \t", buf[n - 1]))
		buf[--n] = '\0';
	if (n == 0 || strpbrk(buf, " \t")) {
		fprintf(stderr, "sbxd: the first line of token file %s must be a token (no blanks)\n",
			file);
		return NULL;
	}
	return strdup(buf);
}

int main(int argc, char **argv)
{
	struct option opts[N_OPTIONS + 1];
	char shortopts[2 * N_OPTIONS + 1];
	getopt_tables(opts, shortopts);
	struct sbxd_config cfg = {
		.listen = "127.0.0.1:7070",
		.sandbox_id = "local",
		.lease_seconds = 30,
	};
	struct runner_limits limits = {
		.memory = RUNNER_DEFAULT_MEMORY,
		.pids = RUNNER_DEFAULT_PIDS,
		.file_size = RUNNER_DEFAULT_FILE_SIZE,
		.cpu_seconds = RUNNER_DEFAULT_CPU_SECONDS,
		.open_files = RUNNER_DEFAULT_OPEN_FILES,
	};
	const char *token_file = NULL;
	enum runner_isolation isolation = RUNNER_ISOLATION_BWRAP;
	int c;
	while ((c = getopt_long(argc, argv, shortopts, opts, NULL)) != -1) {
		switch (c) {
		case OPT_LISTEN: cfg.listen = optarg; break;
		case OPT_WORKSPACE: cfg.workspace = optarg; break;
		case OPT_TOKEN_FILE: token_file = optarg; break;
		case OPT_STATE_DIR: cfg.state_dir = optarg; break;
		case OPT_SANDBOX_ID: cfg.sandbox_id = optarg; break;
		case OPT_NO_EXT: cfg.no_extensions = true; break;
		case OPT_LEASE:
			if (!parse_count(optarg, &cfg.lease_seconds) || cfg.lease_seconds < 1 ||
			    cfg.lease_seconds > 86400)
				return die_usage("--lease-seconds wants 1 to 86400, not '%s'",
						 optarg);
			break;
		case OPT_MEMORY:
			if (!parse_size(optarg, &limits.memory))
				return die_usage("--memory-limit wants a size such as 512M or 4G, "
						 "not '%s'", optarg);
			break;
		case OPT_PIDS:
			if (!parse_count(optarg, &limits.pids))
				return die_usage("--pids-limit wants a number, not '%s'", optarg);
			break;
		case OPT_FSIZE:
			if (!parse_size(optarg, &limits.file_size))
				return die_usage("--file-size-limit wants a size such as 1G, not '%s'",
						 optarg);
			break;
		case OPT_CPU:
			if (!parse_count(optarg, &limits.cpu_seconds))
				return die_usage("--cpu-limit wants a number of seconds, not '%s'",
						 optarg);
			break;
		case OPT_NOFILE:
			if (!parse_count(optarg, &limits.open_files))
				return die_usage("--open-files-limit wants a number, not '%s'", optarg);
			if (limits.open_files > max_open_files())
				return die_usage("--open-files-limit: '%s' is more than the kernel allows "
						 "(fs.nr_open)", optarg);
			break;
		case OPT_ISOLATION:
			if (strcmp(optarg, "bubblewrap") == 0 || strcmp(optarg, "bwrap") == 0)
				isolation = RUNNER_ISOLATION_BWRAP;
			else if (strcmp(optarg, "none") == 0)
				isolation = RUNNER_ISOLATION_NONE;
			else
				return die_usage("--isolation wants bubblewrap or none, not '%s'",
						 optarg);
			break;
		case OPT_PREVIEW_BASE:
			if (!(cfg.preview_base = parse_preview_base(optarg)))
				return 2;
			break;
		case 'v': cfg.verbose = true; break;
		case 'h': usage(stdout); return 0;
		case 'V': printf("sbxd %s\n", SBXFS_VERSION); return 0;
		default: fprintf(stderr, "Try 'sbxd --help'.\n"); return 2;
		}
	}
	if (optind < argc)
		return die_usage("unexpected argument '%s'", argv[optind]);
	if (!cfg.workspace)
		cfg.workspace = isolation == RUNNER_ISOLATION_NONE ? "/workspace" : "./workspace";
	const char *port = listen_port(cfg.listen);
	if (!port)
		return die_usage("--listen wants HOST:PORT or [IPV6]:PORT, not '%s'", cfg.listen);
	if (!*cfg.workspace)
		return die_usage("--workspace must not be empty%s", "");
	if (!*cfg.sandbox_id)
		return die_usage("--sandbox-id must not be empty%s", "");

	log_init("sbxd", cfg.verbose ? LOG_LVL_DEBUG : LOG_LVL_INFO, false);

	char *token = NULL;
	const char *env_token = getenv("SBXD_TOKEN");
	if (token_file) {
		token = load_token(token_file);
		if (!token)
			return 1;
	} else if (env_token && *env_token) {
		token = strdup(env_token);
		if (!token)
			abort();
	} else {
		return die_usage("a token is required: --token-file FILE (created if missing) or "
				 "SBXD_TOKEN in the environment%s", "");
	}
	unsetenv("SBXD_TOKEN"); /* never handed down */
	cfg.token = token;
	if (strlen(token) < 16)
		log_warn("the token is only %zu characters: it can be guessed, and the preview proxy "
			 "drops every header that contains it (a generated token has 64)",
			 strlen(token));

	int err = mkdir_p(cfg.workspace, 0755);
	if (err) {
		fprintf(stderr, "sbxd: workspace %s: %s\n", cfg.workspace, strerror(-err));
		free(token);
		return 1;
	}
	if (isolation == RUNNER_ISOLATION_NONE && !is_root_workspace(cfg.workspace)) {
		fprintf(stderr, "sbxd: with --isolation=none commands see this system's files as they "
			"are, so the workspace must be /workspace, not %s\n", cfg.workspace);
		free(token);
		return 2;
	}
	char *state_dir = NULL;
	if (!cfg.state_dir) {
		/* Port 0 (any free port) must not share one directory between servers. */
		char name[32];
		if (strcmp(port, "0") == 0)
			snprintf(name, sizeof name, "pid%d", (int)getpid());
		else
			snprintf(name, sizeof name, "%s", port);
		state_dir = default_state_dir(name);
		if (!state_dir) {
			free(token);
			return 1;
		}
		cfg.state_dir = state_dir;
	}
	err = mkdir_p(cfg.state_dir, 0700);
	if (err) {
		fprintf(stderr, "sbxd: state directory %s: %s\n", cfg.state_dir, strerror(-err));
		free(state_dir);
		free(token);
		return 1;
	}

	runner_configure(&limits, token_file, isolation);
	int status = sbxd_serve(&cfg);
	free(state_dir);
	free(token);
	return status;
}
