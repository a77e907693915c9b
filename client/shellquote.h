/* Quoting for the POSIX shell: the fallback backend runs commands such as
 * `mv -T -- 'a' 'b'` through the container's shell, so every path becomes one single-quoted
 * word that the shell takes literally, whatever bytes it holds. */
#ifndef SBX_SHELLQUOTE_H
#define SBX_SHELLQUOTE_H

struct strbuf;

/* 'it'\''s' for it's; NULL when out of memory. The caller frees. */
char *shell_quote(const char *s);
/* Appends shell_quote(s) to sb. */
void shell_append_quoted(struct strbuf *sb, const char *s);
#endif
