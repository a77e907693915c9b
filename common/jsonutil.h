/* Small cJSON helpers for the wire format: typed getters that tolerate missing fields, the
 * stat object of the filesystem extensions, ISO-8601 timestamps, and events of a server-sent
 * event stream. */
#ifndef SBX_JSONUTIL_H
#define SBX_JSONUTIL_H
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/stat.h>

/* NULL / dflt when the field is missing or of another type; json_int saturates a number beyond
 * int64_t. */
const char *json_str(const cJSON *obj, const char *key);
int64_t json_int(const cJSON *obj, const char *key, int64_t dflt);
bool json_bool(const cJSON *obj, const char *key, bool dflt);

/* Adds an integer that may exceed 2^53 without losing precision below it (cJSON stores
 * doubles; file sizes and inode numbers stay exact up to 2^53). */
cJSON *json_add_int(cJSON *obj, const char *key, int64_t v);

/* "2026-11-22T02:42:15.943Z" for now; buf needs 32 bytes. */
const char *json_timestamp(char buf[32]);

/* The stat object of docs/protocol.md: {"ino","mode","nlink","uid","gid","size","blocks",
 * "atime":[s,ns],"mtime":[s,ns],"ctime":[s,ns]} (+ "target" for symlinks, added by the caller).
 * The client reads it back with client/entry_check.c, which judges every field. */
cJSON *json_from_stat(const struct stat *st);
/* [sec, nsec]; reading fails for anything but two numbers that fit a timespec. */
cJSON *json_timespec(const struct timespec *ts);
bool json_get_timespec(const cJSON *v, struct timespec *ts);

/* Prints compactly; the caller frees with free(). */
char *json_print(const cJSON *v);

struct strbuf;
/* Appends the server-sent event "data: <compact json>\n\n". */
void sse_append(struct strbuf *out, const cJSON *event);
#endif
