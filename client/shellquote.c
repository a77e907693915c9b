#include "client/shellquote.h"
#include <stdlib.h>
#include <string.h>
#include "common/strbuf.h"

/* Inside single quotes nothing is special except the closing quote, so a quote is written as
 * '\'' (close, escaped quote, reopen). NUL cannot be passed to a shell at all; C strings end
 * there anyway. */
void shell_append_quoted(struct strbuf *sb, const char *s)
{
	strbuf_append(sb, "'", 1);
	for (const char *q; (q = strchr(s, '\'')); s = q + 1) {
		strbuf_append(sb, s, (size_t)(q - s));
		strbuf_append(sb, "'\\''", 4);
	}
	strbuf_appends(sb, s);
	strbuf_append(sb, "'", 1);
}

char *shell_quote(const char *s)
{
	struct strbuf sb = STRBUF_INIT;
	shell_append_quoted(&sb, s);
	return strbuf_detach(&sb, NULL);
}
