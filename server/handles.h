/* Server-side open files of the filesystem extension (/api/x/open ... /api/x/close).
 *
 * A handle is an fd in a table, named "h<N>" on the wire. The table holds one reference; every
 * use takes another for its duration, so a close that races with a pread only drops the
 * table's reference and the fd is closed when the pread is done with it. Handles unused for an
 * hour are closed (ESTALE afterwards); at most HANDLES_MAX are open at once (EMFILE). */
#ifndef SBXD_HANDLES_H
#define SBXD_HANDLES_H

#define HANDLES_MAX 4096
#define HANDLE_ID_MAX 24

struct handle;

/* Takes ownership of fd (closed on failure); writes the id; 0, -EMFILE or -ENOMEM. */
int handles_add(int fd, char id[HANDLE_ID_MAX]);
/* Looks the handle up and takes a reference; -EBADF for an id never issued or malformed,
 * -ESTALE for one that was closed or expired. */
int handles_get(const char *id, struct handle **h);
int handle_fd(const struct handle *h);
void handles_put(struct handle *h);
/* Removes the handle from the table (the fd closes with the last reference). */
int handles_close(const char *id);
/* Closes everything (server shutdown). */
void handles_shutdown(void);
#endif
