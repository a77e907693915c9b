/* The filesystem's -o options (fs/fs.h): one table gives their parsing and their --help lines.
 * The program's own options are in src/sbxfs.c. */
#include "fs/fs.h"
#include <stddef.h>
#include <stdio.h>

#define FS_OPT(t, p) { t, offsetof(struct sbxfs_config, p), 1 }
const struct sbxfs_option sbxfs_cache_options[] = {
	{ FS_OPT("attr_timeout=%lf", attr_timeout), "attr_timeout=SECS",
	  "attribute cache while change events flow (10)" },
	{ FS_OPT("entry_timeout=%lf", entry_timeout), "entry_timeout=SECS",
	  "name cache while change events flow (10)" },
	{ FS_OPT("negative_timeout=%lf", negative_timeout), "negative_timeout=SECS",
	  "cache of missing names while events flow (5)" },
	{ FS_OPT("dir_cache_timeout=%lf", dir_cache_timeout), "dir_cache_timeout=SECS",
	  "listings and attributes kept by sbxfs (600)" },
	{ FS_OPT("dir_cache_max=%u", dir_cache_max), "dir_cache_max=N",
	  "directory listings kept at most (65536)" },
	{ FS_OPT("no_watch", no_watch), "no_watch",
	  "do not subscribe to change events (short timeouts)" },
	{ FS_OPT("stream_buffer=%u", stream_buffer), "stream_buffer=MiB",
	  "output a stream file keeps (ctx out, proc follow) (64)" },
	{ FUSE_OPT_END, NULL, NULL },
};
#define N_OPTIONS (sizeof(sbxfs_cache_options) / sizeof(sbxfs_cache_options[0]))

int sbxfs_config_parse(struct fuse_args *args, struct sbxfs_config *cfg)
{
	*cfg = (struct sbxfs_config){
		.attr_timeout = 10.0,
		.entry_timeout = 10.0,
		.negative_timeout = 5.0,
		.dir_cache_timeout = 600.0,
		.dir_cache_max = 65536,
		.stream_buffer = 64,
	};
	struct fuse_opt table[N_OPTIONS];
	for (size_t i = 0; i < N_OPTIONS; i++)
		table[i] = sbxfs_cache_options[i].opt;
	if (fuse_opt_parse(args, cfg, table, NULL) == -1)
		return -1;
	if (cfg->attr_timeout < 0 || cfg->entry_timeout < 0 || cfg->negative_timeout < 0 ||
	    cfg->dir_cache_timeout < 0) {
		fprintf(stderr, "sbxfs: cache timeouts must not be negative\n");
		return -1;
	}
	if (!cfg->dir_cache_max)
		cfg->dir_cache_max = 1;
	if (cfg->stream_buffer < 1 || cfg->stream_buffer > 65536) {
		fprintf(stderr, "sbxfs: stream_buffer is in MiB, from 1 to 65536\n");
		return -1;
	}
	return 0;
}
