/* Sessions without a long-lived shell.
 *
 * The container keeps one bash per session and feeds it commands; a command that runs `exit`
 * kills the session, and a command that never ends blocks it for good. Here every command is
 * a fresh `bash --norc --noprofile -c WRAPPER` (started by the runner like anything else), and
 * what a shell would carry from one command to the next lives in a state file:
 *
 *   - the wrapper reads its parameters from __SBX_* variables and unsets them before the user
 *     command runs (the command text travels in __SBX_CMD, or on stdin when it is longer
 *     than an environment string may be; either way no quoting is involved);
 *   - it sources the session's state file: exported variables (`export -p`), functions
 *     (`declare -f`), aliases (`alias -p`), then `cd` to the saved directory;
 *   - it applies the request's env and cwd on top, runs `eval "$cmd"`, and on the way out
 *     (normally, or through `exit N` via the EXIT trap) takes the request's env and cwd back
 *     and writes the state to state.new, ending with a marker line;
 *   - sbxd renames state.new over the state file only when the command ended normally and
 *     the marker is there, so a killed command or a truncated write leaves the old state.
 *
 * Once a command has saved state, the state file is the whole environment: later commands
 * start from an empty environment, so a variable the user unset stays unset. Before that,
 * a command starts from the default environment plus the session's env. Streamed commands
 * load the state but do not save it (as in the container).
 *
 * The wrapper's own lines after the state is loaded use `builtin` (the user may have defined
 * functions called cd or printf); aliases are enabled only for the user's command, and the
 * trailing call that saves the state sits on the command's line, which bash parses before
 * the command has a chance to define an alias.
 *
 * The state files are the sandbox's: the sessions directory is bound into it (SESSIONS_INSIDE
 * in runner.c), so code there can rename a session's directory, put a symlink to any host
 * directory in its place, or plant links and FIFOs under the names sbxd uses. So sbxd never
 * looks a path up in there: it holds a descriptor of the sessions directory and one of each
 * session's directory (opened with O_NOFOLLOW when it made them), and works only with *at()
 * calls on single names relative to those, which never follow a final symlink (O_NOFOLLOW,
 * O_EXCL, rename and unlink act on the link itself). Whatever the sandbox swaps in, every
 * change sbxd makes lands inside the sessions directory, where the sandbox could have made it
 * itself. The host paths of the files still go to the wrapper, which sees them inside.
 *
 * Locking: a table lock guards the list of sessions (held briefly); each session has a run
 * lock that serialises its foreground commands and is held for the whole command. Sessions
 * are reference-counted so a deleted session stays valid for a request that still holds it;
 * such a request notices the deletion after taking the run lock and starts over. A request
 * waiting for the run lock looks at its client every WAIT_SLICE_MS and gives up when it has
 * hung up (or sbxd is stopping, which shuts every connection down): a queued command whose
 * client is gone never runs. */
#include "server/sessions.h"
#include "server/child.h"
#include "server/envstore.h"
#include "server/runner.h"
#include "server/sbxd.h"
#include "common/fdio.h"
#include "common/log.h"
#include "common/strbuf.h"
#include "common/strv.h"
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_SESSIONS 4096
/* an environment string may not exceed 128 KiB (MAX_ARG_STRLEN); longer commands go to stdin */
#define MAX_COMMAND_IN_ENV (96 * 1024)
#define STATE_END "#sbx-end\n"
#define STATE "state"
#define STATE_NEW "state.new"
#define REMOVE_DEPTH_MAX 64   /* deeper trees the sandbox built in a session's directory stay */
#define CREATE_TRIES 100      /* names the sandbox took in advance are skipped */
#define WAIT_SLICE_MS 100

static const char wrapper[] =
	"__sbx_cmd=$__SBX_CMD __sbx_in=$__SBX_STATE __sbx_out=$__SBX_SAVE __sbx_cwd=$__SBX_CWD"
	" __sbx_reqenv=$__SBX_REQENV\n"
	"if [[ -n $__SBX_CMD_STDIN ]]; then __sbx_cmd=$(</dev/stdin); exec </dev/null; fi\n"
	"unset -v __SBX_CMD __SBX_STATE __SBX_SAVE __SBX_CWD __SBX_REQENV __SBX_CMD_STDIN\n"
	"declare -A __sbx_new __sbx_old\n"
	"for __sbx_n in $__sbx_reqenv; do __sbx_v=__SBX_E_$__sbx_n;"
	" __sbx_new[$__sbx_n]=${!__sbx_v}; unset -v \"$__sbx_v\"; done\n"
	"[[ -n $__sbx_in && -r $__sbx_in ]] && builtin source \"$__sbx_in\"\n"
	"__sbx_home=$PWD\n"
	"for __sbx_n in $__sbx_reqenv; do"
	" [[ -v $__sbx_n ]] && __sbx_old[$__sbx_n]=${!__sbx_n};"
	" builtin export \"$__sbx_n=${__sbx_new[$__sbx_n]}\"; done\n"
	"if [[ -n $__sbx_cwd ]] && ! builtin cd -- \"$__sbx_cwd\" 2>/dev/null; then"
	" builtin printf \"Failed to change directory to '%s'\\n\" \"$__sbx_cwd\" >&2;"
	" builtin exit 1; fi\n"
	"builtin unset -v __sbx_n __sbx_v __sbx_in __sbx_new\n"
	"__sbx_save() {\n"
	"\tbuiltin local __sbx_rc=$1 __sbx_n __sbx_pwd=$PWD IFS=$' \\t\\n'\n"
	"\tbuiltin trap - EXIT\n"
	"\tbuiltin unset -f __sbx_save\n"
	"\tbuiltin set +euo pipefail\n"
	"\t[[ -n $__sbx_cwd ]] && __sbx_pwd=$__sbx_home\n"
	"\tfor __sbx_n in $__sbx_reqenv; do\n"
	"\t\tif [[ -v __sbx_old[$__sbx_n] ]]; then"
	" builtin export \"$__sbx_n=${__sbx_old[$__sbx_n]}\";"
	" else builtin unset -v \"$__sbx_n\"; fi\n"
	"\tdone\n"
	"\t[[ -n $__sbx_out ]] && { builtin export -p; builtin declare -f; builtin alias -p;"
	" builtin printf 'builtin cd -- %q 2>/dev/null || builtin cd /workspace\\n" STATE_END "'"
	" \"$__sbx_pwd\"; } >| \"$__sbx_out\" 2>/dev/null\n"
	"\tbuiltin exit \"$__sbx_rc\"\n"
	"}\n"
	"builtin trap '\\__sbx_save $?' EXIT\n"
	"builtin shopt -s expand_aliases; builtin eval \"$__sbx_cmd\"; \\__sbx_save $?\n";

struct session {
	char *id;
	char *name;         /* of its directory in the sessions directory */
	int dirfd;          /* that directory, wherever the sandbox moved it */
	char *state;        /* host paths of what the next command loads, */
	char *state_new;    /* and of what a command saves (for the wrapper only) */
	char **env;         /* from session/create, "K=V" */
	int timeout_ms;
	unsigned long serial; /* tells this session from a later one of the same id */
	bool saved;         /* the state file holds a command's saved environment */
	bool deleted;
	int refs;
	pthread_mutex_t run;
	struct session *next;
};

static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct session *sessions, **sessions_tail = &sessions;
static size_t n_sessions;
static unsigned long serial;
static char *root;          /* <state dir>/sessions */
static int root_fd = -1;    /* the same, opened */

/* ---- small helpers ---- */


/* Removes what the directory dfd holds, keeping the directory: each name is unlinked
 * relative to a descriptor of its directory, and a subdirectory is entered only through
 * openat(O_NOFOLLOW), so a link planted (or swapped in) meanwhile goes itself, never what it
 * points to. */
static void empty_dir(int dfd, int depth)
{
	int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd < 0 ? NULL : fdopendir(fd);
	if (!d) {
		if (fd >= 0)
			close(fd);
		return;
	}
	struct dirent *e;
	while ((e = readdir(d))) {
		const char *n = e->d_name;
		if (strcmp(n, ".") == 0 || strcmp(n, "..") == 0)
			continue;
		if (unlinkat(fd, n, 0) == 0 || errno != EISDIR)
			continue;
		if (depth >= REMOVE_DEPTH_MAX) {
			log_warn("sessions: a directory tree deeper than %d levels stays in the state "
				 "directory", REMOVE_DEPTH_MAX);
			continue;
		}
		int sub = openat(fd, n, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (sub < 0)
			continue;
		empty_dir(sub, depth + 1);
		close(sub);
		unlinkat(fd, n, AT_REMOVEDIR);
	}
	closedir(d);
}

static bool setup_root(void)
{
	if (root_fd >= 0)
		return true;
	const char *base = sbxd_cfg ? sbxd_cfg->state_dir : NULL;
	char *dir = NULL;
	if (base) {
		if (mkdir(base, 0700) < 0 && errno != EEXIST) {
			log_error("sessions: state directory %s: %s", base, strerror(errno));
			return false;
		}
		if (asprintf(&dir, "%s/sessions", base) < 0)
			return false;
		if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
			log_error("sessions: %s: %s", dir, strerror(errno));
			free(dir);
			return false;
		}
	} else {
		char tmpl[] = "/tmp/sbxd-sessions-XXXXXX";
		if (!mkdtemp(tmpl)) {
			log_error("sessions: mkdtemp: %s", strerror(errno));
			return false;
		}
		dir = strdup(tmpl);
	}
	if (!dir)
		return false;
	root_fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (root_fd < 0) {
		log_error("sessions: %s: %s", dir, strerror(errno));
		free(dir);
		return false;
	}
	/* sessions live in memory: whatever an earlier sbxd left is stale */
	empty_dir(root_fd, 0);
	root = dir;
	return true;
}

/* 'text' with every ' written as '\'' */
static void put_quoted(FILE *f, const char *s)
{
	fputc('\'', f);
	for (; *s; s++)
		if (*s == '\'')
			fputs("'\\''", f);
		else
			fputc(*s, f);
	fputc('\'', f);
}

/* The state of a new session: only its start directory ($HOME when that is missing, as in
 * the container). Its environment comes from the process environment until a command saves. */
static int write_initial_state(const struct session *s, const char *cwd)
{
	int fd = openat(s->dirfd, STATE, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
			0600);
	FILE *f = fd < 0 ? NULL : fdopen(fd, "w");
	if (!f) {
		int err = -errno;
		if (fd >= 0)
			close(fd);
		return err;
	}
	fputs("builtin cd -- ", f);
	put_quoted(f, cwd ? cwd : "/workspace");
	fputs(" 2>/dev/null || builtin cd\n" STATE_END, f);
	return fclose(f) ? -errno : 0;
}

static void session_free(struct session *s)
{
	pthread_mutex_destroy(&s->run);
	if (s->dirfd >= 0)
		close(s->dirfd);
	free(s->id);
	free(s->name);
	free(s->state);
	free(s->state_new);
	strv_free(s->env);
	free(s);
}

static void session_put(struct session *s)
{
	pthread_mutex_lock(&table_lock);
	bool last = --s->refs == 0;
	pthread_mutex_unlock(&table_lock);
	if (last)
		session_free(s);
}

static struct session *find_locked(const char *id)
{
	for (struct session *s = sessions; s; s = s->next)
		if (strcmp(s->id, id) == 0)
			return s;
	return NULL;
}

/* Removes the session's directory: its content wherever it is now, and its name when that
 * still is this directory (one the sandbox moved stays, empty, until the next start). */
static void remove_files(struct session *s)
{
	struct stat mine, there;
	empty_dir(s->dirfd, 0);
	if (fstat(s->dirfd, &mine) == 0 &&
	    fstatat(root_fd, s->name, &there, AT_SYMLINK_NOFOLLOW) == 0 &&
	    mine.st_dev == there.st_dev && mine.st_ino == there.st_ino)
		unlinkat(root_fd, s->name, AT_REMOVEDIR);
}

/* A new session in the table (table lock held); takes ownership of env. */
static int create_locked(const char *id, const char *cwd, char **env, int timeout_ms,
			 struct session **out)
{
	if (n_sessions >= MAX_SESSIONS)
		return -ENOSPC;
	if (!setup_root())
		return -EIO;
	struct session *s = calloc(1, sizeof *s);
	if (!s)
		return -ENOMEM;
	/* the directory name never depends on the id beyond a sanitised hint */
	char hint[33];
	size_t h = 0;
	for (const char *p = id; *p && h < sizeof hint - 1; p++)
		hint[h++] = isalnum((unsigned char)*p) || *p == '-' || *p == '_' ? *p : '_';
	hint[h] = 0;
	s->id = strdup(id);
	if (!s->id)
		abort();
	s->dirfd = -1;
	s->timeout_ms = timeout_ms;
	s->refs = 1; /* the table's */
	pthread_mutex_init(&s->run, NULL);
	/* a name the sandbox made first is not ours: the next serial */
	int err = -EEXIST;
	for (int i = 0; i < CREATE_TRIES && err == -EEXIST; i++) {
		free(s->name);
		if (asprintf(&s->name, "%lu-%s", ++serial, hint) < 0)
			abort();
		err = mkdirat(root_fd, s->name, 0700) < 0 ? -errno : 0;
	}
	s->serial = serial;
	if (!err) {
		s->dirfd = openat(root_fd, s->name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		err = s->dirfd < 0 ? -errno : write_initial_state(s, cwd);
	}
	if (err) {
		log_error("sessions: cannot create state for session '%s' in %s/%s: %s", id, root,
			  s->name, strerror(-err));
		if (s->dirfd >= 0)
			remove_files(s);
		session_free(s);
		return err;
	}
	if (asprintf(&s->state, "%s/%s/" STATE, root, s->name) < 0 ||
	    asprintf(&s->state_new, "%s/%s/" STATE_NEW, root, s->name) < 0)
		abort();
	s->env = env;
	*sessions_tail = s;
	sessions_tail = &s->next;
	n_sessions++;
	*out = s;
	return 0;
}

static void unlink_locked(struct session *s)
{
	struct session **pp = &sessions;
	while (*pp != s)
		pp = &(*pp)->next;
	*pp = s->next;
	if (sessions_tail == &s->next)
		sessions_tail = pp;
	s->next = NULL;
	n_sessions--;
	s->deleted = true;
}


static int64_t now_ns(void)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
}

/* Takes the run lock by the deadline (< 0: none) unless the client hangs up first. */
static int lock_run(struct session *s, int64_t deadline_ns, int client_fd)
{
	for (;;) {
		int64_t until = now_ns() + (int64_t)WAIT_SLICE_MS * 1000000;
		bool last = deadline_ns >= 0 && deadline_ns <= until;
		if (last)
			until = deadline_ns;
		struct timespec ts = { until / 1000000000, until % 1000000000 };
		int err = pthread_mutex_clocklock(&s->run, CLOCK_MONOTONIC, &ts);
		if (!err && fd_peer_gone(client_fd)) {
			/* the lock came free before the next look at the client */
			pthread_mutex_unlock(&s->run);
			return -ECONNABORTED;
		}
		if (err != ETIMEDOUT || last)
			return -err;
		if (fd_peer_gone(client_fd))
			return -ECONNABORTED;
	}
}

int session_acquire(const char *id, const char *start_cwd, int timeout_ms, int client_fd,
		    struct session **out)
{
	int64_t deadline = timeout_ms >= 0 ? now_ns() + (int64_t)timeout_ms * 1000000 : -1;
	for (;;) {
		struct session *s;
		pthread_mutex_lock(&table_lock);
		s = find_locked(id);
		if (!s) {
			int err = create_locked(id, start_cwd, NULL, 0, &s);
			if (err) {
				pthread_mutex_unlock(&table_lock);
				return err;
			}
			log_debug("sessions: created '%s' implicitly", id);
		}
		s->refs++;
		pthread_mutex_unlock(&table_lock);
		int err = lock_run(s, deadline, client_fd);
		if (err) {
			session_put(s);
			return err;
		}
		if (!s->deleted) {
			*out = s;
			return 0;
		}
		pthread_mutex_unlock(&s->run);
		session_put(s);
	}
}

void session_release(struct session *s)
{
	pthread_mutex_unlock(&s->run);
	session_put(s);
}

unsigned long session_serial(const struct session *s)
{
	return s->serial;
}

int session_command_timeout(const struct session *s)
{
	return s->timeout_ms;
}

int session_command_timeout_of(const char *id)
{
	pthread_mutex_lock(&table_lock);
	const struct session *s = find_locked(id);
	int t = s ? s->timeout_ms : 0;
	pthread_mutex_unlock(&table_lock);
	return t;
}

int session_launch(struct session *s, const char *command, const char *cwd,
		   char *const *req_env, bool save, struct session_launch *out)
{
	struct strv argv = { 0 }, env = { 0 };
	*out = (struct session_launch){ 0 };
	strv_push(&argv, strdup("bash"));
	strv_push(&argv, strdup("--norc"));
	strv_push(&argv, strdup("--noprofile"));
	strv_push(&argv, strdup("-c"));
	strv_push(&argv, strdup(wrapper));
	strv_push(&argv, strdup("bash"));

	if (!s || !s->saved) {
		for (const char *const *e = envstore_defaults(); *e; e++)
			strv_setenv(&env, *e);
		for (char **e = s ? s->env : NULL; e && *e; e++)
			strv_setenv(&env, *e);
	}
	if (s) {
		strv_pushf(&env, "__SBX_STATE=%s", s->state);
		if (save) {
			unlinkat(s->dirfd, STATE_NEW, 0);
			strv_pushf(&env, "__SBX_SAVE=%s", s->state_new);
		}
	}
	if (cwd)
		strv_pushf(&env, "__SBX_CWD=%s", cwd);
	if (req_env && req_env[0]) {
		/* names travel in __SBX_REQENV, values in __SBX_E_<name>: the wrapper applies
		 * them after loading the state and takes them back before saving it */
		size_t len = 0;
		for (char *const *e = req_env; *e; e++)
			len += strcspn(*e, "=") + 1;
		char *names = malloc(len + sizeof "__SBX_REQENV=");
		if (!names)
			abort();
		char *p = stpcpy(names, "__SBX_REQENV=");
		for (char *const *e = req_env; *e; e++) {
			if (e != req_env)
				*p++ = ' ';
			p = stpncpy(p, *e, strcspn(*e, "="));
		}
		*p = 0;
		strv_push(&env, names);
		for (char *const *e = req_env; *e; e++)
			strv_pushf(&env, "__SBX_E_%s", *e);
	}
	if (strlen(command) > MAX_COMMAND_IN_ENV) {
		strv_push(&env, strdup("__SBX_CMD_STDIN=1"));
		out->command_on_stdin = true;
	} else {
		strv_pushf(&env, "__SBX_CMD=%s", command);
	}
	out->argv = argv.v;
	out->env = env.v;
	return 0;
}

void session_launch_free(struct session_launch *l)
{
	strv_free(l->argv);
	strv_free(l->env);
	*l = (struct session_launch){ 0 };
}

/* Is what the command saved a regular file that ends with the marker the wrapper writes
 * last? (O_NONBLOCK: a FIFO planted there must not hold us.) */
static bool state_complete(const struct session *s)
{
	char tail[sizeof STATE_END - 1];
	int fd = openat(s->dirfd, STATE_NEW, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0)
		return false;
	struct stat st;
	bool ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
		  st.st_size >= (off_t)sizeof tail &&
		  pread(fd, tail, sizeof tail, st.st_size - (off_t)sizeof tail) ==
			  (ssize_t)sizeof tail &&
		  memcmp(tail, STATE_END, sizeof tail) == 0;
	close(fd);
	return ok;
}

void session_commit(struct session *s)
{
	if (!state_complete(s)) {
		/* the command replaced our EXIT trap, exec'd, or was killed: keep the old state */
		unlinkat(s->dirfd, STATE_NEW, 0);
		return;
	}
	/* (a state.new swapped in after the check is the sandbox's own state to load) */
	if (renameat(s->dirfd, STATE_NEW, s->dirfd, STATE) < 0) {
		log_error("sessions: saving the state of '%s': %s", s->id, strerror(errno));
		unlinkat(s->dirfd, STATE_NEW, 0);
		return;
	}
	s->saved = true;
}


/* ---- the table, for the routes ---- */

int sessions_create(const char *id, const char *cwd, char **env, int timeout_ms)
{
	struct session *s;
	pthread_mutex_lock(&table_lock);
	int err = find_locked(id) ? -EEXIST : create_locked(id, cwd, env, timeout_ms, &s);
	pthread_mutex_unlock(&table_lock);
	return err;
}

char **sessions_ids(void)
{
	struct strv ids = { 0 };
	pthread_mutex_lock(&table_lock);
	for (struct session *s = sessions; s; s = s->next)
		strv_push(&ids, strdup(s->id));
	pthread_mutex_unlock(&table_lock);
	return strv_finish(&ids);
}

int sessions_delete(const char *id, unsigned long *serial_of)
{
	pthread_mutex_lock(&table_lock);
	struct session *s = find_locked(id);
	if (s)
		unlink_locked(s); /* the table's reference is now ours */
	pthread_mutex_unlock(&table_lock);
	if (!s)
		return -ENOENT;
	/* as the container: wait for the running foreground command first */
	pthread_mutex_lock(&s->run);
	remove_files(s);
	pthread_mutex_unlock(&s->run);
	*serial_of = s->serial;
	session_put(s);
	return 0;
}

/* ---- what a command of the session would have ---- */

#define SNAPSHOT_TIMEOUT_MS 10000
#define SNAPSHOT_MAX ((size_t)4 << 20)

static bool snapshot_collect(void *ctx, enum child_stream which, const char *buf, size_t n)
{
	if (which == CHILD_OUT)
		strbuf_append(ctx, buf, n);
	return true;
}

static const struct child_ops snapshot_ops = { .output = snapshot_collect };

static const struct child_policy snapshot_policy = {
	.timeout_ms = SNAPSHOT_TIMEOUT_MS,
	.grace_ms = 2000,
	.output_max = SNAPSHOT_MAX,
	.drain_ms = 200,
	.group_survives = true,
};

/* Runs the probe in s; what it printed goes to out. */
static int run_probe(struct session *s, const char *probe, int client_fd, struct strbuf *out)
{
	struct session_launch l = { 0 };
	struct child c;
	char **overlay = envstore_overlay(NULL);
	session_launch(s, probe, NULL, overlay, false, &l);
	strv_free(overlay);
	struct run_spec spec = { .argv = (const char *const *)l.argv,
				 .env = (const char *const *)l.env,
				 .stdin_null = !l.command_on_stdin };
	child_init(&c);
	int err = child_start(&c, &spec, &snapshot_policy, &snapshot_ops, out);
	if (!err) {
		child_watch_client(&c, client_fd);
		child_run(&c);
		child_finish(&c);
		if (c.client_gone)
			err = -ECONNABORTED;
		else if (c.timed_out || !WIFEXITED(c.status) || WEXITSTATUS(c.status) != 0)
			err = -EIO;
		else if (c.truncated[CHILD_OUT])
			err = -E2BIG;
	}
	child_free(&c);
	session_launch_free(&l);
	return err;
}

/* Names a shell sets for itself, which are no part of what the session holds. */
static bool shell_own(const char *kv)
{
	return strncmp(kv, "_=", 2) == 0 || strncmp(kv, "SHLVL=", 6) == 0 ||
	       strncmp(kv, "OLDPWD=", 7) == 0;
}

/* "<cwd>\0K=V\0K=V\0..." into *cwd and *env. */
static int parse_snapshot(const struct strbuf *out, char ***env, char **cwd)
{
	if (!out->len || out->data[out->len - 1] != '\0')
		return -EPROTO;
	struct strv v = { 0 };
	if (!(*cwd = strdup(out->data)))
		abort();
	for (const char *p = out->data + strlen(out->data) + 1; p < out->data + out->len;
	     p += strlen(p) + 1)
		if (strchr(p, '=') && !shell_own(p))
			strv_push(&v, strdup(p));
	*env = strv_finish(&v);
	return 0;
}

int session_snapshot(const char *id, int client_fd, char ***env, char **cwd,
		     unsigned long *serial_of)
{
	/* `command env`: not a function or alias of the session called env */
	static const char probe[] = "builtin printf '%s\\0' \"$PWD\"; command env -0";
	struct session *s;
	struct strbuf out = STRBUF_INIT;
	*env = NULL;
	*cwd = NULL;
	int err = session_acquire(id, NULL, -1, client_fd, &s);
	if (err)
		return err;
	*serial_of = session_serial(s);
	err = run_probe(s, probe, client_fd, &out);
	session_release(s);
	if (!err)
		err = parse_snapshot(&out, env, cwd);
	strbuf_free(&out);
	return err;
}
