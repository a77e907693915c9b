/* The lines of an env file (fs/env.c), also sessions/<id>/env's format (fs/sessions.c). */
#ifndef SBX_FS_ENV_H
#define SBX_FS_ENV_H
#include <stdbool.h>
#include <stddef.h>

/* "NAME=VALUE" sets, "-NAME" unsets, '#' comments: the changes they ask for, each name once,
 * in the state its last line left it. */
struct env_change {
	char **set, **unset; /* "NAME=VALUE", "NAME" */
	size_t nset, nunset;
};
/* 0, or -EINVAL with a reason (sbx_last_error) for a malformed line. */
int env_parse(const char *text, size_t len, struct env_change *c);
void env_change_free(struct env_change *c);
/* s[0..n) is a variable name: letters, digits and '_', not starting with a digit. */
bool env_is_name(const char *s, size_t n);
#endif
