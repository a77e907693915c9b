/* A mount's life (fs/fs.h): the filesystem state made, bound to the sandbox and the FUSE
 * session with change events flowing into the invalidator, stopped before unmount, freed. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "client/sandbox.h"
#include "common/log.h"
#include "fs/control.h"
#include "fs/internal.h"
#include "fs/invalidate.h"
#include "fs/root.h"
#include "fs/timeouts.h"
#include "fs/workspace.h"

struct sbxfs *sbxfs_new(const struct sbxfs_config *cfg)
{
	struct sbxfs *fs = calloc(1, sizeof(*fs));
	if (!fs)
		abort();
	fs->cfg = *cfg;
	fs->trees = root_trees;
	ctl_set_stream_buffer((size_t)cfg->stream_buffer << 20);
	nodes_init(&fs->nodes, cfg->dir_cache_max);
	atomic_init(&fs->healthy, false);
	atomic_init(&fs->events, 0);
	pthread_mutex_init(&fs->ring_lock, NULL);
	atomic_init(&fs->expire_only, false);
	clock_gettime(CLOCK_REALTIME, &fs->mount_time);
	fs->uid = getuid();
	fs->gid = getgid();
	return fs;
}

/* ---- change events, on the HTTP client's network thread: counted, then queued ---- */

static void on_change(void *arg, const char *path, const char *type, bool is_dir)
{
	struct sbxfs *fs = arg;
	fs_note_event(fs, path, strcmp(type, "create") == 0);
	invalidator_change(fs->inval, path, type, is_dir);
}

/* Not an event: nothing fetched meanwhile is in doubt (fs->events stays). */
static void on_settled(void *arg, const char *path, const struct stat *st, uint64_t handover)
{
	struct sbxfs *fs = arg;
	invalidator_settled(fs->inval, path, st, handover);
}

static void on_resync(void *arg)
{
	struct sbxfs *fs = arg;
	fs_note_event(fs, NULL, false);
	invalidator_resync(fs->inval);
}

static void on_state(void *arg, bool healthy)
{
	struct sbxfs *fs = arg;
	if (healthy)
		log_info("change events flowing: caches trusted");
	else
		log_warn("change events interrupted: short cache timeouts until they resume");
	/* Whatever happened while the stream was down is unknown: start over. */
	if (healthy && !atomic_load(&fs->healthy))
		on_resync(fs);
	atomic_store(&fs->healthy, healthy);
}

static const struct sbx_watch_ops watch_ops = {
	.on_change = on_change,
	.on_settled = on_settled,
	.on_resync = on_resync,
	.on_state = on_state,
};

int sbxfs_start(struct sbxfs *fs, struct sbx *sandbox, struct fuse_session *se)
{
	fs->sbx = sandbox;
	fs->se = se;
	fs->inval = invalidator_start(fs);
	if (!fs->inval)
		return -ENOMEM;
	if (!fs->cfg.no_watch) {
		fs->watch = sbx_watch_start(sandbox, "/workspace", &watch_ops, fs);
		if (!fs->watch)
			log_warn("no change events (%s): sandbox-side changes show up within "
				 "1 s (short cache timeouts)", sbx_last_error());
	}
	return 0;
}

void sbxfs_stop(struct sbxfs *fs)
{
	ctl_stop(fs);
	if (fs->watch)
		sbx_watch_stop(fs->watch);
	fs->watch = NULL;
	atomic_store(&fs->healthy, false);
	if (fs->inval)
		invalidator_stop(fs->inval);
	fs->inval = NULL;
}

void sbxfs_free(struct sbxfs *fs)
{
	if (!fs)
		return;
	sbxfs_stop(fs);
	if (fs->sbx)
		workspace_close_all(fs);
	nodes_destroy(&fs->nodes);
	for (size_t i = 0; i < EVENT_RING; i++)
		free(fs->ring[i].path);
	pthread_mutex_destroy(&fs->ring_lock);
	free(fs);
}
