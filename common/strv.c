#include "common/strv.h"
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void strv_push(struct strv *sv, char *s)
{
	if (!s)
		abort();
	if (sv->n + 2 > sv->cap) {
		sv->cap = sv->cap ? 2 * sv->cap : 16;
		sv->v = realloc(sv->v, sv->cap * sizeof *sv->v);
		if (!sv->v)
			abort();
	}
	sv->v[sv->n++] = s;
	sv->v[sv->n] = NULL;
}

void strv_pushf(struct strv *sv, const char *fmt, ...)
{
	va_list ap;
	char *s;
	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		s = NULL;
	va_end(ap);
	strv_push(sv, s);
}

void strv_setenv(struct strv *sv, const char *kv)
{
	size_t klen = strcspn(kv, "=");
	char *copy = strdup(kv);
	if (!copy)
		abort();
	for (size_t i = 0; i < sv->n; i++)
		if (strncmp(sv->v[i], kv, klen) == 0 && sv->v[i][klen] == '=') {
			free(sv->v[i]);
			sv->v[i] = copy;
			return;
		}
	strv_push(sv, copy);
}

char **strv_finish(struct strv *sv)
{
	if (!sv->v) {
		sv->v = calloc(1, sizeof *sv->v);
		if (!sv->v)
			abort();
	}
	return sv->v;
}

void strv_free(char **v)
{
	for (char **p = v; p && *p; p++)
		free(*p);
	free(v);
}
