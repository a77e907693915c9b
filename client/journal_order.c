/* Which of the journal's operations depend on which: those that could come out otherwise
 * applied the other way round. The uploader (journal_upload.c) lets a change pass the large
 * files on the lane when it depends on none of them; the fallback (journal_fallback.c) runs
 * several of a batch's calls at once, each after those it depends on.
 *
 * By names and files: two ops depend on each other when a name one changes is a name the
 * other changes or a directory above or below it (a rename of a directory moves all below it;
 * an rmdir needs its children gone; a put needs its directory), or when they change the same
 * file (by its inode: a put, and the unlink of one of a file's names). A file with more than
 * one name can be changed through any of them, so it depends on everything. A symlink's
 * target is text, not a name it changes. */
#include "client/journal_impl.h"
#include <string.h>

/* a is b or a path inside it */
static bool path_within(const char *a, const char *b)
{
	size_t n = strlen(b);
	return strncmp(a, b, n) == 0 && (a[n] == '\0' || a[n] == '/');
}

static bool shared_file(const struct jinode *ino)
{
	return ino && ino->links > 1;
}

bool jop_depends_on(const struct jop *op, const struct jop *before)
{
	const struct jinode *a[2] = { op->ino, op->unlinked };
	const struct jinode *b[2] = { before->ino, before->unlinked };
	for (size_t i = 0; i < 2; i++) {
		if (shared_file(a[i]) || shared_file(b[i]))
			return true;
		for (size_t k = 0; k < 2; k++)
			if (a[i] && a[i] == b[k])
				return true;
	}
	const char *x[2] = { op->path, op->kind == JOP_SYMLINK ? NULL : op->path2 };
	const char *y[2] = { before->path, before->kind == JOP_SYMLINK ? NULL : before->path2 };
	for (size_t i = 0; i < 2; i++)
		for (size_t k = 0; k < 2; k++)
			if (x[i] && y[k] && (path_within(x[i], y[k]) || path_within(y[k], x[i])))
				return true;
	return false;
}
