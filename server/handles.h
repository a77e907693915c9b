/* Server-side open files of the filesystem extension (/api/x/open ... /api/x/close).
 *
 * A handle is an fd in a table, named "h<N>" on the wire. The table holds one reference; every
 * use takes another for its duration, so a close that races with a pread only drops the
 * table's reference and the fd is closed when the pread is done with it. A handle opened by a
 * client with a lease (server/leases.h) belongs to it and is closed when the lease ends; one
 * opened without is closed after an hour unused. Either way it is ESTALE afterwards. At most
 * HANDLES_MAX are open at once (EMFILE).
 *
 * Writes through a handle can carry a sequence number, growing with each write the client
 * sends: one that arrives after a later one (a request that outlived its client's deadline
 * in some queue) is refused with ESTALE instead of overwriting newer data. */
#ifndef SBXD_HANDLES_H
#define SBXD_HANDLES_H
#include <stddef.h>

#define HANDLES_MAX 4096
#define HANDLE_ID_MAX 24

struct handle;

/* Takes ownership of fd (closed on failure); writes the id; 0, -EMFILE or -ENOMEM. owner:
 * the client whose lease the handle lives by, or NULL. */
int handles_add(int fd, const char *owner, char id[HANDLE_ID_MAX]);
/* Looks the handle up and takes a reference; -EBADF for an id never issued or malformed,
 * -ESTALE for one that was closed or expired. */
int handles_get(const char *id, struct handle **h);
int handle_fd(const struct handle *h);
void handles_put(struct handle *h);
/* Starts a write of sequence number seq (0: none) through h: refused with -ESTALE when a
 * write of a later or equal number already started; else the handle's writes are serialised
 * until handle_write_end(). */
int handle_write_begin(struct handle *h, unsigned long long seq);
void handle_write_end(struct handle *h);
/* Removes the handle from the table (the fd closes with the last reference). */
int handles_close(const char *id);
/* Closes owner's handles: those named in ids (n of them; others are left alone), or all of
 * them when ids is NULL. Returns how many were closed. */
size_t handles_close_owned(const char *owner, const char *const *ids, size_t n);
/* How many handles owner holds. */
size_t handles_count_owned(const char *owner);
/* Closes everything (server shutdown). */
void handles_shutdown(void);
#endif
