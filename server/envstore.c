/* The environment store behind server/envstore.h. One lock guards a vector of "K=V" strings
 * kept in the order the names were first set; readers copy what they need under the lock, so
 * an environment being built never sees half an update. */
#include "server/envstore.h"
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include "common/strv.h"

static const char *const defaults[] = {
	"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	"HOME=/root",
	"LANG=C.UTF-8",
	"TERM=dumb",
	NULL,
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct strv store; /* "K=V" */

const char *const *envstore_defaults(void)
{
	return defaults;
}

/* Adds the store's variables to sv. */
static void add_store(struct strv *sv)
{
	pthread_mutex_lock(&lock);
	for (size_t i = 0; i < store.n; i++)
		strv_setenv(sv, store.v[i]);
	pthread_mutex_unlock(&lock);
}

char **envstore_build(const char *const *extra)
{
	struct strv sv = { 0 };
	for (const char *const *e = defaults; *e; e++)
		strv_setenv(&sv, *e);
	add_store(&sv);
	for (; extra && *extra; extra++)
		strv_setenv(&sv, *extra);
	return strv_finish(&sv);
}

char **envstore_overlay(const char *const *extra)
{
	struct strv sv = { 0 };
	add_store(&sv);
	for (; extra && *extra; extra++)
		strv_setenv(&sv, *extra);
	return strv_finish(&sv);
}

char **envstore_list(void)
{
	return envstore_overlay(NULL);
}

static void unset_locked(const char *name)
{
	size_t n = strlen(name);
	for (size_t i = 0; i < store.n; i++)
		if (strncmp(store.v[i], name, n) == 0 && store.v[i][n] == '=') {
			free(store.v[i]);
			memmove(&store.v[i], &store.v[i + 1], (store.n - i) * sizeof *store.v);
			store.n--;
			return;
		}
}

int envstore_update(const char *const *set, const char *const *unset)
{
	size_t adding = 0;
	while (set && set[adding])
		adding++;
	pthread_mutex_lock(&lock);
	bool room = store.n + adding <= ENVSTORE_MAX_VARS;
	for (size_t i = 0; room && i < adding; i++)
		strv_setenv(&store, set[i]);
	for (; room && unset && *unset; unset++)
		unset_locked(*unset);
	pthread_mutex_unlock(&lock);
	return room ? 0 : -ENOSPC;
}
