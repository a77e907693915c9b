/* Echoes: which change events a client's own journal caused (echo.c).
 *
 * A mount that changed a file through POST /api/x/journal knows the outcome already (the op's
 * result carries the stat); the change events of that very change only cost it a round trip
 * to learn it again. The journal engine notes, for each op it carries out, the state the op
 * left each path in and the events it causes; the watcher tags an event with the journal's id
 * when the path is still in exactly that state (same inode, size, mode, links, mtime and ctime,
 * or still absent), so the client can tell its echoes from the sandbox's own changes. */
#ifndef SBXD_ECHO_H
#define SBXD_ECHO_H
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

/* Held around an op and its notes, and by echo_origin(): the watcher never compares a path
 * with a note while an op is still changing it. */
void echo_lock(void);
void echo_unlock(void);

/* A number for a batch of ops: the events of a batch's ops on one path add up (a file made and
 * removed again in one batch: its "create" is an echo too). */
uint64_t echo_batch(void);
/* With echo_lock held: journal's op of batch left api_path as it is now; it causes the watch
 * events in `events` (WATCH_* bits). */
void echo_note(const char *journal, uint64_t batch, const char *api_path, unsigned events);
/* With echo_lock held: a name in the directory of api_path came or went; a note of that
 * directory (its own creation) is kept current with its times. */
void echo_renote_dir_of(const char *api_path);
/* With echo_lock held: the other names of an inode an op changed (an unlink of one of its
 * hard links, st: its stat before) are noted as they are now. */
void echo_renote_inode(const struct stat *st);

/* Whether the event (one WATCH_* bit) on rel (normalised) is an echo: the path is as a
 * journal's op left it, and that op causes such an event. Copies the journal's id into out
 * (JOURNAL_ID_MAX + 1 bytes). Takes echo_lock. */
bool echo_origin(const char *rel, unsigned event, char *out);

/* Forgets every note (shutdown). */
void echo_clear(void);
#endif
