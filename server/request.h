/* Reading a request's fields, for the route handlers: a declarative decoder (a table that
 * says, for each field of the JSON body, its name, type, whether it is required, its bounds
 * and where its value goes), so that a handler reads as what it does; and the helpers for the
 * fields every file route has (a path in the workspace) and their errors.
 *
 * The decoder leaves a field that is absent (or null) as the handler set it beforehand: that
 * is how a default is given. Values point into the request's body, which lives as long as the
 * request. fields_decode() knows nothing of HTTP, req_decode() answers for it. */
#ifndef SBXD_REQUEST_H
#define SBXD_REQUEST_H
#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include "server/workspace.h"

struct req;

enum field_type {
	FIELD_STRING,    /* const char *, NUL-terminated */
	FIELD_INT,       /* int64_t: a whole number */
	FIELD_NUMBER,    /* double */
	FIELD_BOOL,      /* bool */
	FIELD_OBJECT,    /* const cJSON *, an object */
	FIELD_ARRAY,     /* const cJSON *, an array */
};

enum field_flags {
	FIELD_REQUIRED = 1 << 0,    /* absent or null is an error */
	FIELD_NOT_EMPTY = 1 << 1,   /* a string: "" is an error (with FIELD_REQUIRED, "missing") */
	FIELD_NOT_BLANK = 1 << 2,   /* a string: white space alone is an error, as "" is */
	FIELD_EMPTY_ABSENT = 1 << 3, /* a string: "" counts as absent */
};

struct field {
	const char *name;
	enum field_type type;
	unsigned flags;
	size_t at;              /* offsetof() the value in the handler's struct */
	double min, max;        /* numbers: inclusive bounds (both 0: any); strings: at most max
				 * bytes (0: any) */
	bool (*valid)(const cJSON *value); /* what else the value must be; NULL: nothing */
	const char *code;       /* of the error; NULL: "VALIDATION_FAILED" */
	const char *wrong;      /* its message when the value is wrong, with at most one %s for the
				 * value as text; NULL: "<name> must be <what the table says>" */
	const char *missing;    /* its message when a required field is missing; NULL: "<name> is
				 * required" */
};

/* A table row: FIELD("cwd", FIELD_STRING, struct my_req, cwd, .flags = FIELD_EMPTY_ABSENT). */
#define FIELD(name_, type_, st, member, ...) \
	{ .name = (name_), .type = (type_), .at = offsetof(st, member), __VA_ARGS__ }
#define FIELDS_N(table) (sizeof(table) / sizeof((table)[0]))

/* What is wrong with a body: the field (NULL: the body itself), the code and the message. */
struct field_error {
	const struct field *field;
	const char *code;
	char message[512];
};

/* Reads the fields of body (a JSON object) into out; false at the first that is wrong, with
 * *e saying why. */
bool fields_decode(const cJSON *body, const struct field *fields, size_t n, void *out,
		   struct field_error *e);
/* The same on the request's JSON body; false after answering 400 with the error's code and
 * message (context: {"field": name}). */
bool req_decode(struct req *r, const struct field *fields, size_t n, void *out);

/* A required string field of the JSON body; answers 400 VALIDATION_FAILED and returns NULL
 * when it is missing or empty. */
const char *req_str_field(struct req *r, const char *key);
/* The path in field key normalised beneath /workspace: rel ("a/b", "." for the root) and its
 * API form abs ("/workspace/a/b"); NULL after answering, else the path as given. */
const char *req_ws_path(struct req *r, const char *key, char rel[WS_PATH_MAX + 1],
			char abs[WS_PATH_MAX + 16]);
/* Answers the standard error for err on api_path, with ws_strerror's reason. */
void reply_ws_errno(struct req *r, int err, const char *api_path);
#endif
