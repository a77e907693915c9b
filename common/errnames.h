/* The error vocabulary of the wire: errno <-> "ENOENT" names, and errno <-> the container API's
 * error codes and HTTP statuses. Both sides use it, so the mapping lives in one table. */
#ifndef SBX_ERRNAMES_H
#define SBX_ERRNAMES_H

/* "ENOENT" for ENOENT; NULL for an errno the table does not know. */
const char *errno_name(int err);
/* ENOENT for "ENOENT"; 0 when unknown or NULL. */
int errno_from_name(const char *name);
/* The container API's code for an errno ("FILE_NOT_FOUND" for ENOENT), "FILESYSTEM_ERROR" when
 * none fits better, and its HTTP status in *status. */
const char *errno_to_code(int err, int *status);
/* Best errno for a container API error: the "errno" extension field if present, else the code,
 * else the HTTP status. Never returns 0: EIO when nothing fits. */
int errno_from_api_error(const char *errno_field, const char *code, long http_status);
#endif
