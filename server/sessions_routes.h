/* What the routes that run commands read about sessions from a request. */
#ifndef SBXD_SESSIONS_ROUTES_H
#define SBXD_SESSIONS_ROUTES_H
#include <cjson/cJSON.h>
#include <stdbool.h>

struct req;

/* The session id a command request names: body "sessionId" (an empty string counts as
 * absent), then the X-Session-Id header, then ?session= or ?sessionId=, else "default". Never
 * the Authorization header (our bearer token). *given tells whether the request named one.
 * NULL after answering the request with an error (an id that is blank, too long or not
 * UTF-8). */
const char *session_id_of_request(struct req *r, bool *given);
/* The same from the body's "sessionId" only (the container's rule for /api/process/start and
 * the file routes): SESSION_NONE when it names none (or names SESSION_NONE). */
const char *session_id_of_body(struct req *r, bool *given);
/* "K=V" strings from a request's env object: names must match [A-Za-z_][A-Za-z0-9_]*, null
 * values are skipped, numbers and booleans become their text. NULL after answering 400. */
char **session_env_from_json(struct req *r, const cJSON *obj);
#endif
