/* sync: `cat MOUNT/sync` returns once everything written through the mount before it was
 * opened is acknowledged by the sandbox (the write-back journal, docs/writeback.md), and fails
 * with the errno of a change that failed for good since the previous sync (the reason is in
 * the log). libfuse 3.14 has no syncfs, so this file stands for it. The open waits, for at
 * most the request deadline (-o timeout): ETIMEDOUT then, and the uploads go on. Without a
 * journal (-o writeback=off) every change is in the sandbox when it returns, and so is sync. */
#include <errno.h>
#include "client/journal.h"
#include "common/log.h"
#include "fs/control.h"
#include "fs/internal.h"

static int sync_open(struct ctl_handle *h)
{
	int err = sbx_journal_sync(h->sbx, 0);
	if (err)
		log_warn("sync: %s", sbx_last_error());
	return err;
}

const struct ctl_entry ctl_sync_file = {
	.name = "sync", .mode = S_IFREG | 0444, .open = sync_open,
};
