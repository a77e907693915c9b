#include "common/jsonutil.h"
#include "common/strbuf.h"
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

const char *json_str(const cJSON *obj, const char *key)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
	return cJSON_IsString(v) ? v->valuestring : NULL;
}

int64_t json_int(const cJSON *obj, const char *key, int64_t dflt)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
	if (!cJSON_IsNumber(v) || v->valuedouble != v->valuedouble) /* NaN */
		return dflt;
	/* casting a double beyond int64_t is undefined behaviour: saturate (2^63 is exact) */
	if (v->valuedouble >= 9223372036854775808.0)
		return INT64_MAX;
	if (v->valuedouble <= -9223372036854775808.0)
		return INT64_MIN;
	return (int64_t)v->valuedouble;
}

bool json_bool(const cJSON *obj, const char *key, bool dflt)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
	return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

cJSON *json_add_int(cJSON *obj, const char *key, int64_t v)
{
	return cJSON_AddNumberToObject(obj, key, (double)v);
}

const char *json_timestamp(char buf[32])
{
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	/* strftime cannot overflow a field the way a printf width can, so no truncation warning */
	size_t n = strftime(buf, 32, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf + n, 32 - n, ".%03dZ", (int)(ts.tv_nsec / 1000000) % 1000);
	return buf;
}

cJSON *json_timespec(const struct timespec *ts)
{
	cJSON *a = cJSON_CreateArray();
	cJSON_AddItemToArray(a, cJSON_CreateNumber((double)ts->tv_sec));
	cJSON_AddItemToArray(a, cJSON_CreateNumber((double)ts->tv_nsec));
	return a;
}

bool json_get_timespec(const cJSON *v, struct timespec *ts)
{
	if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 2)
		return false;
	const cJSON *s = cJSON_GetArrayItem(v, 0), *ns = cJSON_GetArrayItem(v, 1);
	if (!cJSON_IsNumber(s) || !cJSON_IsNumber(ns))
		return false;
	/* range first: a cast out of range is undefined (and NaN fails every comparison) */
	double tmax = sizeof(time_t) >= 8 ? 9.2e18 : 2147483647.0;
	if (!(s->valuedouble >= -tmax && s->valuedouble <= tmax) ||
	    !(ns->valuedouble >= 0 && ns->valuedouble < 1e9))
		return false;
	ts->tv_sec = (time_t)s->valuedouble;
	ts->tv_nsec = (long)ns->valuedouble;
	return true;
}

cJSON *json_from_stat(const struct stat *st)
{
	cJSON *o = cJSON_CreateObject();
	json_add_int(o, "ino", (int64_t)st->st_ino);
	json_add_int(o, "mode", st->st_mode);
	json_add_int(o, "nlink", (int64_t)st->st_nlink);
	json_add_int(o, "uid", st->st_uid);
	json_add_int(o, "gid", st->st_gid);
	json_add_int(o, "size", st->st_size);
	json_add_int(o, "blocks", st->st_blocks);
	cJSON_AddItemToObject(o, "atime", json_timespec(&st->st_atim));
	cJSON_AddItemToObject(o, "mtime", json_timespec(&st->st_mtim));
	cJSON_AddItemToObject(o, "ctime", json_timespec(&st->st_ctim));
	return o;
}

char *json_print(const cJSON *v) { return cJSON_PrintUnformatted(v); }

void sse_append(struct strbuf *out, const cJSON *event)
{
	char *text = json_print(event);
	if (!text)
		return;
	strbuf_appends(out, "data: ");
	strbuf_appends(out, text);
	strbuf_appends(out, "\n\n");
	free(text);
}
