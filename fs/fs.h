/* The FUSE filesystem over a sandbox, as the sbxfs program drives it:
 *
 *	struct sbxfs_config cfg;
 *	sbxfs_config_parse(&args, &cfg);          // cache options, before fuse_parse_cmdline
 *	struct sbxfs *fs = sbxfs_new(&cfg);
 *	se = fuse_session_new(&args, sbxfs_lowlevel_ops(), sizeof(struct fuse_lowlevel_ops), fs);
 *	... mount, daemonize, sbx_open ...
 *	sbxfs_start(fs, sandbox, se);             // before the loop: watch + invalidator
 *	fuse_session_loop_mt(se, ...);
 *	sbxfs_stop(fs);                           // after the loop, before unmount
 *	fuse_session_unmount(se); fuse_session_destroy(se);
 *	sbxfs_free(fs);                           // closes what is still open
 */
#ifndef SBX_FS_FS_H
#define SBX_FS_FS_H
#include <fuse_lowlevel.h>

struct sbx;
struct sbxfs;

struct sbxfs_config {
	double attr_timeout;      /* kernel attribute cache while the change stream is healthy */
	double entry_timeout;     /* kernel name cache, likewise */
	double negative_timeout;  /* kernel cache of "no such name", likewise */
	double dir_cache_timeout; /* our own listings */
	unsigned dir_cache_max;   /* listings kept at most */
	int no_watch;             /* do not subscribe to change events */
	unsigned stream_buffer;   /* MiB a stream file (ctx out, proc follow) holds at most */
};

/* One -o option: how fuse_opt parses it, and what --help shows of it (shown NULL: nothing). */
struct sbxfs_option {
	struct fuse_opt opt;
	const char *shown; /* "attr_timeout=SECS" */
	const char *help;
};
/* The filesystem's options (fs/options.c), ending with FUSE_OPT_END. */
extern const struct sbxfs_option sbxfs_cache_options[];
/* Parses and removes the filesystem's -o options from args (defaults filled in first).
 * Returns 0, or -1 after printing why. */
int sbxfs_config_parse(struct fuse_args *args, struct sbxfs_config *cfg);

struct sbxfs *sbxfs_new(const struct sbxfs_config *cfg);
const struct fuse_lowlevel_ops *sbxfs_lowlevel_ops(void);
/* Binds the sandbox and the session, subscribes to change events. */
int sbxfs_start(struct sbxfs *fs, struct sbx *sandbox, struct fuse_session *se);
/* Stops the change events and the invalidator thread. */
void sbxfs_stop(struct sbxfs *fs);
/* Closes the files the kernel left open (their buffered data is flushed) and frees fs. */
void sbxfs_free(struct sbxfs *fs);
#endif
