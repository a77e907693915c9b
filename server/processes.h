/* Background processes (container API §8 with the extensions of docs/protocol.md). Records
 * live in memory only: they survive until removed or until sbxd stops. */
#ifndef SBXD_PROCESSES_H
#define SBXD_PROCESSES_H

/* Ends every running process (TERM, then KILL) and frees all records; call after the HTTP
 * server has stopped. */
void processes_shutdown(void);
#endif
