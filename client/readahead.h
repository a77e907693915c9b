/* Read-ahead of a file read in order: the next ranges are asked for, several at once, before
 * the reads come (client/readahead.c). One per open file of the extensions' backend. */
#ifndef SBX_READAHEAD_H
#define SBX_READAHEAD_H
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct sbx;
struct readahead;

/* For the file at path (read by path until readahead_set_source names a handle). */
struct readahead *readahead_new(struct sbx *s, const char *path);
/* The owner is done; ranges still on their way are dropped when they come. */
void readahead_free(struct readahead *ra);
/* Where the ranges are read from from now on (a handle, once the file has one; a new path,
 * after a rename); what was fetched is kept only if it is the same file. */
void readahead_set_source(struct readahead *ra, const char *handle, const char *path);
/* What was fetched is not the file's content any more (it changed, or may have). */
void readahead_forget(struct readahead *ra);
/* Serves [off, off + len) from the ranges fetched ahead, as far as they go, waiting for those
 * already on their way; returns the bytes served (0: the caller reads it all itself, fewer
 * than len and *eof: the file ends there) and asks for the next ranges when the reads go in
 * order. */
size_t readahead_read(struct readahead *ra, void *buf, size_t len, off_t off, bool *eof);
/* The caller read [off, off + got) itself: the next read in order is expected after it. */
void readahead_done(struct readahead *ra, off_t off, size_t got);
#endif
