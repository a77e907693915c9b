/* Background processes (container API §8 with the extensions of docs/protocol.md). Records
 * live in memory only: they survive until removed or until sbxd stops. */
#ifndef SBXD_PROCESSES_H
#define SBXD_PROCESSES_H

#include <stdbool.h>

/* What /api/port-watch asks about a process: 0 with whether it still runs and, once it has
 * ended, its exit code; -ENOENT for an unknown id. */
int processes_state(const char *id, bool *running, int *exit_code);
/* A session was deleted: its running processes get KILL, and this returns once they have
 * ended (bounded, a few seconds). */
void processes_stop_session(unsigned long serial);
/* Ends every running process (TERM, then KILL) and frees all records; call after the HTTP
 * server has stopped. */
void processes_shutdown(void);
#endif
