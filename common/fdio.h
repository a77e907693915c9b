/* Whole transfers on file descriptors: the loops around read(), write() and poll() that EINTR,
 * short counts, non-blocking descriptors and a peer that went away call for. Every function
 * returns 0 (or a count) or a negative errno. */
#ifndef SBX_FDIO_H
#define SBX_FDIO_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Reads until len bytes are in or the end of the file; *got says how many. */
int fd_read_full(int fd, void *buf, size_t len, size_t *got);
/* The same at offset off, without moving the file offset; the count read. */
ssize_t fd_pread_full(int fd, void *buf, size_t len, off_t off);
/* Writes all of buf at offset off, without moving the file offset. */
int fd_pwrite_full(int fd, const void *buf, size_t len, off_t off);
/* Writes all of buf to a blocking descriptor. */
int fd_write_full(int fd, const void *buf, size_t len);
/* Writes all of buf to a descriptor that may be non-blocking, waiting for room until
 * deadline (common/clock.h; < 0: no deadline): -ETIMEDOUT when it passes first. */
int fd_write_until(int fd, const void *buf, size_t len, int64_t deadline);
/* One write() to a pipe whose reader may have gone: -EPIPE then, never SIGPIPE, whatever the
 * process's disposition of it (the signal is blocked in this thread for the call and a pending
 * one is consumed). */
ssize_t fd_write_nosigpipe(int fd, const void *buf, size_t len);
/* Whether the peer of a connected socket has hung up (or the socket was shut down or has
 * failed), looking without waiting; bytes it sent and nobody read yet do not count. False for
 * fd < 0. */
bool fd_peer_gone(int fd);
#endif
