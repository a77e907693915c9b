/* Git checkouts: the standard POST /api/git/checkout (container-api.md §10), on every backend. */
#ifndef SBX_GIT_H
#define SBX_GIT_H
#include <stdatomic.h>

struct sbx;

/* Bounds a clone when the caller gives none: the container's own default. */
#define SBX_CLONE_TIMEOUT_MS (10 * 60 * 1000L)

struct sbx_clone {
	const char *url;    /* required */
	const char *branch; /* NULL: the remote's default branch */
	const char *dir;    /* absolute; NULL: /workspace/<repository name> */
	int depth;          /* 0: the whole history */
	long timeout_ms;    /* 0: SBX_CLONE_TIMEOUT_MS; the HTTP deadline is a little longer */
	const atomic_bool *cancel; /* may be NULL; when it turns true the call gives up at once
				      with -ECANCELED, and the server, seeing the client go,
				      stops git (which removes what it had cloned) */
};

/* What a clone did: on success the directory and the branch checked out; on failure (any
 * negative return) `error`, git's own reason ("fatal: destination path ... already exists
 * ..."), or the transport's. Strings are malloc'd; free with sbx_clone_result_free. */
struct sbx_clone_result {
	char *dir, *branch;
	char *error;
};

/* Blocks until the clone is done. Errors: -EINVAL (bad request), -EEXIST (the target exists
 * and is not empty), -ENOENT (no such repository or branch), -EACCES (authentication),
 * -ETIMEDOUT (timeout_ms passed), -ECANCELED (cancelled), -EIO (anything else git reports),
 * transport errnos. */
int sbx_git_clone(struct sbx *s, const struct sbx_clone *c, struct sbx_clone_result *r);
void sbx_clone_result_free(struct sbx_clone_result *r);
#endif
