/* Client leases (docs/protocol.md, "Leases"): what sbxd holds for a client (open file
 * handles) lives as long as the client does. A client names itself with the "Sbx-Client"
 * header; every authenticated request carrying it renews its lease, and a client that has sent
 * nothing for the lease's duration is gone: its handles are closed. The lease counts only time
 * during which sbxd itself ran, so a stopped or starved sbxd does not expire its clients. */
#ifndef SBXD_LEASES_H
#define SBXD_LEASES_H
#include <stdbool.h>

#define LEASE_ID_MAX 65  /* 1 to 64 of [A-Za-z0-9._-] */

/* Starts the reaper; lease_ms is the lease's duration. */
void leases_start(long lease_ms);
void leases_stop(void);
long leases_duration_ms(void);
bool lease_id_valid(const char *id);
/* Renews (or starts) id's lease; false when id has none (an id of the wrong form, or too many
 * clients). */
bool leases_renew(const char *id);
/* Ends id's lease now, closing its handles; returns how many. */
long leases_end(const char *id);
#endif
