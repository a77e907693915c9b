/* server/request.c: the declarative decoder of request bodies, without HTTP. */
#include <stddef.h>
#include <string.h>
#include "server/request.h"
#include "unit.h"

struct example {
	const char *command, *cwd, *id;
	int64_t depth;
	double timeout;
	bool verbose;
	const cJSON *env;
};

static bool no_dash(const cJSON *v)
{
	return v->valuestring[0] != '-';
}

static const struct field fields[] = {
	FIELD("command", FIELD_STRING, struct example, command,
	      .flags = FIELD_REQUIRED | FIELD_NOT_BLANK, .code = "INVALID_COMMAND",
	      .wrong = "Invalid command: empty command provided",
	      .missing = "Invalid command: empty command provided"),
	FIELD("cwd", FIELD_STRING, struct example, cwd, .flags = FIELD_EMPTY_ABSENT, .max = 8),
	FIELD("id", FIELD_STRING, struct example, id, .valid = no_dash, .wrong = "bad id '%s'"),
	FIELD("depth", FIELD_INT, struct example, depth, .min = 1, .max = 100),
	FIELD("timeoutMs", FIELD_NUMBER, struct example, timeout, .min = 0, .max = 1e6),
	FIELD("verbose", FIELD_BOOL, struct example, verbose),
	FIELD("env", FIELD_OBJECT, struct example, env),
};

/* Decodes json; the error's message, or "" when it decoded. */
static const char *decode(const char *json, struct example *x, struct field_error *e)
{
	static char msg[600];
	cJSON *body = cJSON_Parse(json);
	*x = (struct example){ .cwd = "/default", .depth = 7 };
	bool ok = fields_decode(body, fields, FIELDS_N(fields), x, e);
	snprintf(msg, sizeof msg, "%s", ok ? "" : e->message);
	/* the strings point into the body, which the request would keep: copy what we check */
	static char command[64], cwd[64], id[64];
	snprintf(command, sizeof command, "%s", x->command ? x->command : "(null)");
	snprintf(cwd, sizeof cwd, "%s", x->cwd ? x->cwd : "(null)");
	snprintf(id, sizeof id, "%s", x->id ? x->id : "(null)");
	x->command = command;
	x->cwd = cwd;
	x->id = id;
	x->env = x->env ? (const cJSON *)1 : NULL;
	cJSON_Delete(body);
	return msg;
}

int main(void)
{
	struct example x;
	struct field_error e;

	CHECK_STR(decode("{\"command\":\"ls\"}", &x, &e), "");
	CHECK_STR(x.command, "ls");
	CHECK_STR(x.cwd, "/default");   /* absent: the default stays */
	CHECK(x.depth == 7 && x.timeout == 0 && !x.verbose && !x.env);

	CHECK_STR(decode("{\"command\":\"ls\",\"cwd\":\"/a\",\"id\":\"x\",\"depth\":3,"
			 "\"timeoutMs\":2.5,\"verbose\":true,\"env\":{}}", &x, &e), "");
	CHECK_STR(x.cwd, "/a");
	CHECK_STR(x.id, "x");
	CHECK(x.depth == 3 && x.timeout == 2.5 && x.verbose && x.env);

	/* null is absent; "" is absent where the table says so */
	CHECK_STR(decode("{\"command\":\"ls\",\"cwd\":null,\"depth\":null}", &x, &e), "");
	CHECK_STR(x.cwd, "/default");
	CHECK(x.depth == 7);
	CHECK_STR(decode("{\"command\":\"ls\",\"cwd\":\"\"}", &x, &e), "");
	CHECK_STR(x.cwd, "/default");

	/* required, blank, with its own code and messages */
	CHECK_STR(decode("{}", &x, &e), "Invalid command: empty command provided");
	CHECK_STR(e.code, "INVALID_COMMAND");
	CHECK_STR(e.field->name, "command");
	CHECK_STR(decode("{\"command\":\" \\t\\n\"}", &x, &e),
		  "Invalid command: empty command provided");
	CHECK_STR(decode("{\"command\":5}", &x, &e), "Invalid command: empty command provided");

	/* the derived messages */
	CHECK_STR(decode("{\"command\":\"ls\",\"cwd\":7}", &x, &e),
		  "cwd must be a string of at most 8 bytes");
	CHECK_STR(e.code, "VALIDATION_FAILED");
	CHECK_STR(decode("{\"command\":\"ls\",\"cwd\":\"/123456789\"}", &x, &e),
		  "cwd must be a string of at most 8 bytes");
	CHECK_STR(decode("{\"command\":\"ls\",\"depth\":0}", &x, &e),
		  "depth must be an integer from 1 to 100");
	CHECK_STR(decode("{\"command\":\"ls\",\"depth\":2.5}", &x, &e),
		  "depth must be an integer from 1 to 100");
	CHECK_STR(decode("{\"command\":\"ls\",\"depth\":\"3\"}", &x, &e),
		  "depth must be an integer from 1 to 100");
	CHECK_STR(decode("{\"command\":\"ls\",\"depth\":1e300}", &x, &e),
		  "depth must be an integer from 1 to 100");
	CHECK_STR(decode("{\"command\":\"ls\",\"depth\":-1e19}", &x, &e),
		  "depth must be an integer from 1 to 100");
	CHECK_STR(decode("{\"command\":\"ls\",\"timeoutMs\":1e300}", &x, &e),
		  "timeoutMs must be a number from 0 to 1000000");
	CHECK_STR(decode("{\"command\":\"ls\",\"timeoutMs\":-1}", &x, &e),
		  "timeoutMs must be a number from 0 to 1000000");
	CHECK_STR(decode("{\"command\":\"ls\",\"verbose\":1}", &x, &e),
		  "verbose must be true or false");
	CHECK_STR(decode("{\"command\":\"ls\",\"env\":[]}", &x, &e), "env must be an object");

	/* a check of the handler's own, with the value in its message */
	CHECK_STR(decode("{\"command\":\"ls\",\"id\":\"-rf\"}", &x, &e), "bad id '-rf'");
	CHECK_STR(decode("{\"command\":\"ls\",\"id\":[1]}", &x, &e), "bad id '[1]'");

	/* the first wrong field in table order is the one reported */
	CHECK_STR(decode("{\"depth\":0,\"command\":\"\"}", &x, &e),
		  "Invalid command: empty command provided");
	return UNIT_DONE();
}
