/* A growing vector of strings that ends with NULL, as argv and envp do. The vector owns its
 * strings; running out of memory aborts, as everywhere else in sbxd and sbxfs. */
#ifndef SBX_STRV_H
#define SBX_STRV_H
#include <stddef.h>

struct strv {
	char **v;       /* NULL until something is added (see strv_finish) */
	size_t n, cap;
};

/* Appends s, which the vector takes (NULL aborts: a failed strdup). */
void strv_push(struct strv *sv, char *s);
void strv_pushf(struct strv *sv, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends a copy of "K=V", or replaces an earlier "K=..." with it. */
void strv_setenv(struct strv *sv, const char *kv);
/* The vector, NULL-terminated even when empty; the caller frees it with strv_free(). */
char **strv_finish(struct strv *sv);
/* Frees a vector of strv_finish() (or any malloc'd NULL-terminated one of malloc'd strings). */
void strv_free(char **v);
#endif
