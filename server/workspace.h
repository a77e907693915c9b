/* Confined access to the workspace: the sandbox's /workspace, backed by a host directory.
 *
 * API paths are the sandbox's own ("/workspace/a/b", or "a/b" relative to /workspace). They are
 * first normalised lexically ("//" and "." collapse, ".." pops a component) and refused when
 * they end up outside /workspace. The result is then resolved beneath the workspace directory
 * with openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS), so neither ".." nor a symlink can lead
 * out of it: an escape is refused (EACCES), never followed.
 *
 * The parent directory is resolved that way and the final component is handled with *at()
 * calls, so it is never followed unless the caller asks for it (ws_open without O_NOFOLLOW,
 * which resolves the whole path beneath the root instead).
 *
 * Every function returns 0 / a file descriptor, or a negative errno. A refusal also leaves a
 * reason for this thread (ws_strerror). Nothing here talks HTTP (server/request.h answers for
 * the routes). */
#ifndef SBXD_WORKSPACE_H
#define SBXD_WORKSPACE_H
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/types.h>

#define WS_PATH_MAX 4096 /* longest API path accepted (the container's limit) */

/* Opens the host directory backing /workspace; 0 or -errno. */
int ws_init(const char *host_dir);
void ws_shutdown(void);
/* The host directory (absolute) and an O_PATH descriptor of it. */
const char *ws_host_dir(void);
int ws_root_fd(void);

/* Normalises an API path into a path relative to the workspace root: "." for /workspace
 * itself, else "a/b" (no leading or trailing slash, no "." or ".." components). 0, or -EINVAL
 * (empty), -ENAMETOOLONG (> WS_PATH_MAX, or out too small), -EACCES (outside /workspace). */
int ws_normalize(const char *api_path, char *out, size_t outlen);
/* "/workspace" or "/workspace/" + rel, into out. */
void ws_api_path(const char *rel, char *out, size_t outlen);

/* A resolved parent: dirfd (O_PATH directory, owned) and the final component's name (a
 * single component, or "." for the workspace root itself). */
struct ws_entry {
	int dirfd;
	char name[NAME_MAX + 1];
	char rel[WS_PATH_MAX + 1]; /* the normalised path */
};
int ws_parent(const char *api_path, struct ws_entry *e);
void ws_entry_close(struct ws_entry *e);

/* Opens the entry. With O_NOFOLLOW in flags the final component is opened with openat() from
 * its parent (a symlink gives ELOOP); without, the whole path is resolved beneath the root and
 * symlinks are followed as long as they stay inside. O_CLOEXEC is always added. */
int ws_open(const char *api_path, int flags, mode_t mode);
/* Same on an already normalised relative path. */
int ws_open_rel(const char *rel, int flags, mode_t mode);
/* lstat (follow = false) or stat (follow = true) of an API path. */
int ws_stat(const char *api_path, struct stat *st, bool follow);
/* mkdir -p: creates rel and its missing parents (following symlinked directories that stay
 * inside); 0 if it ends up a directory, -EEXIST when something else is in the way. */
int ws_mkdir_p(const char *rel, mode_t mode);

/* The reason of this thread's last refusal by a ws_* call ("path outside /workspace"), or
 * strerror(err) when the last ws_* call refused nothing. */
const char *ws_strerror(int err);
/* Whether this thread's last ws_* call refused the path (as opposed to a syscall failing). */
bool ws_refused(void);
#endif
