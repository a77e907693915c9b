/* The decoder and field helpers behind server/request.h. */
#include "server/request.h"
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "common/jsonutil.h"
#include "server/httpd.h"

static bool blank(const char *s)
{
	return s[strspn(s, " \t\r\n\v\f")] == '\0';
}

/* The value as a message shows it: a string as it is (cut short), else its JSON. */
static void value_text(const cJSON *v, char *out, size_t size)
{
	if (!v) {
		snprintf(out, size, "?");
		return;
	}
	if (cJSON_IsString(v)) {
		snprintf(out, size, "%s", v->valuestring);
		return;
	}
	if (cJSON_IsNumber(v)) {
		snprintf(out, size, "%g", v->valuedouble);
		return;
	}
	char *json = cJSON_PrintUnformatted(v);
	snprintf(out, size, "%s", json ? json : "?");
	cJSON_free(json);
}

/* "<name> must be ...", from the table. */
static void derived_wrong(const struct field *f, char *out, size_t size)
{
	switch (f->type) {
	case FIELD_STRING:
		if (f->max > 0)
			snprintf(out, size, "%s must be a %sstring of at most %.0f bytes", f->name,
				 f->flags & (FIELD_NOT_EMPTY | FIELD_NOT_BLANK) ? "non-empty " : "",
				 f->max);
		else
			snprintf(out, size, "%s must be a %sstring", f->name,
				 f->flags & (FIELD_NOT_EMPTY | FIELD_NOT_BLANK) ? "non-empty " : "");
		return;
	case FIELD_INT:
	case FIELD_NUMBER:
		if (f->min || f->max)
			snprintf(out, size, "%s must be %s from %.0f to %.0f", f->name,
				 f->type == FIELD_INT ? "an integer" : "a number", f->min, f->max);
		else
			snprintf(out, size, "%s must be %s", f->name,
				 f->type == FIELD_INT ? "an integer" : "a number");
		return;
	case FIELD_BOOL:
		snprintf(out, size, "%s must be true or false", f->name);
		return;
	case FIELD_OBJECT:
		snprintf(out, size, "%s must be an object", f->name);
		return;
	case FIELD_ARRAY:
		snprintf(out, size, "%s must be an array", f->name);
		return;
	}
}

static bool fail(struct field_error *e, const struct field *f, const cJSON *v, bool missing)
{
	char text[256];
	e->field = f;
	e->code = f->code ? f->code : "VALIDATION_FAILED";
	if (missing && f->missing)
		snprintf(e->message, sizeof e->message, "%s", f->missing);
	else if (missing && !f->wrong)
		snprintf(e->message, sizeof e->message, "%s is required", f->name);
	else if (f->wrong) {
		value_text(v, text, sizeof text);
		snprintf(e->message, sizeof e->message, f->wrong, text);
	} else {
		derived_wrong(f, e->message, sizeof e->message);
	}
	return false;
}

static bool in_bounds(const struct field *f, double d)
{
	return (!f->min && !f->max) || (d >= f->min && d <= f->max);
}

/* Checks v (present, not null) and stores it; false when it is wrong. */
static bool take(const struct field *f, const cJSON *v, char *out)
{
	switch (f->type) {
	case FIELD_STRING:
		if (!cJSON_IsString(v) || (f->max > 0 && strlen(v->valuestring) > f->max))
			return false;
		*(const char **)(out + f->at) = v->valuestring;
		return true;
	case FIELD_INT:
		/* range first: a cast out of range is undefined (and NaN fails every comparison) */
		if (!cJSON_IsNumber(v) || !(fabs(v->valuedouble) < 9.2e18) ||
		    v->valuedouble != (double)(int64_t)v->valuedouble || !in_bounds(f, v->valuedouble))
			return false;
		*(int64_t *)(out + f->at) = (int64_t)v->valuedouble;
		return true;
	case FIELD_NUMBER:
		if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || !in_bounds(f, v->valuedouble))
			return false;
		*(double *)(out + f->at) = v->valuedouble;
		return true;
	case FIELD_BOOL:
		if (!cJSON_IsBool(v))
			return false;
		*(bool *)(out + f->at) = cJSON_IsTrue(v);
		return true;
	case FIELD_OBJECT:
	case FIELD_ARRAY:
		if (f->type == FIELD_OBJECT ? !cJSON_IsObject(v) : !cJSON_IsArray(v))
			return false;
		*(const cJSON **)(out + f->at) = v;
		return true;
	}
	return false;
}

bool fields_decode(const cJSON *body, const struct field *fields, size_t n, void *out,
		   struct field_error *e)
{
	for (size_t i = 0; i < n; i++) {
		const struct field *f = &fields[i];
		const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, f->name);
		bool is_string = cJSON_IsString(v);
		bool empty = is_string && (f->flags & FIELD_NOT_BLANK ? blank(v->valuestring)
								     : !*v->valuestring);
		if (empty && f->flags & FIELD_EMPTY_ABSENT)
			v = NULL;
		if (!v || cJSON_IsNull(v)) {
			if (f->flags & FIELD_REQUIRED)
				return fail(e, f, v, true);
			continue;
		}
		if (empty && f->flags & (FIELD_NOT_EMPTY | FIELD_NOT_BLANK))
			return fail(e, f, v, f->flags & FIELD_REQUIRED);
		if (!take(f, v, out) || (f->valid && !f->valid(v)))
			return fail(e, f, v, false);
	}
	return true;
}

bool req_decode(struct req *r, const struct field *fields, size_t n, void *out)
{
	struct field_error e;
	if (fields_decode(req_json(r), fields, n, out, &e))
		return true;
	cJSON *ctx = cJSON_CreateObject();
	cJSON_AddStringToObject(ctx, "field", e.field->name);
	reply_error(r, 400, e.code, EINVAL, ctx, "%s", e.message);
	return false;
}

/* ---- the file routes' fields ---- */

const char *req_str_field(struct req *r, const char *key)
{
	const char *v = json_str(req_json(r), key);
	if (!v || !*v) {
		cJSON *ctx = cJSON_CreateObject();
		cJSON_AddStringToObject(ctx, "field", key);
		reply_error(r, 400, "VALIDATION_FAILED", EINVAL, ctx,
			    "'%s' must be a non-empty string", key);
		return NULL;
	}
	return v;
}

const char *req_ws_path(struct req *r, const char *key, char rel[WS_PATH_MAX + 1],
			char abs[WS_PATH_MAX + 16])
{
	const char *path = req_str_field(r, key);
	if (!path)
		return NULL;
	int err = ws_normalize(path, rel, WS_PATH_MAX + 1);
	if (err) {
		reply_ws_errno(r, err, path);
		return NULL;
	}
	ws_api_path(rel, abs, WS_PATH_MAX + 16);
	return path;
}

void reply_ws_errno(struct req *r, int err, const char *api_path)
{
	if (err < 0)
		err = -err;
	reply_errno(r, err, api_path, "%s: %s", ws_strerror(err), api_path ? api_path : "");
}
