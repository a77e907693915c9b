/* Parsing HTTP/1.1 responses from a peer that may be hostile: a service in the sandbox answering
 * the preview proxy. Whatever it sends, sbxd must neither grow without bound, nor spin, nor
 * misread the framing of a body.
 *
 * Why our own parser and not Debian's libhttp-parser (nodejs/http-parser 2.9.4): upstream
 * archived it in 2022 as unmaintained, so what is found in it stays unfixed, and its successor
 * (llhttp) is not in Debian 12. And it would not take the work away: the bounds the proxy needs
 * (the bytes and lines of all heads of one answer together, a count of interim answers, a
 * deadline) and the framing rules (Content-Length digits only, duplicates agreeing, never with
 * Transfer-Encoding, no coding but chunked) would still be ours, around callbacks. What is left
 * to parse is small: a status line, field lines and chunk framing, which this file does in the
 * strictest form that real servers send (RFC 9112), refusing the rest; tests/fuzz/fuzz_preview
 * feeds it arbitrary bytes.
 *
 * Both parsers are push parsers over byte ranges without I/O, so a caller reads from its socket
 * as it likes and a fuzzer drives them directly. The head parser copies each line into a
 * buffer of its own (at most RESP_HEAD_MAX_BYTES in all), so the caller's read buffer is never
 * held; the chunk decoder keeps no bytes at all, only a state and counters, one byte of
 * framing at a time.
 *
 * Accepted: CR LF or a bare LF ending a line (RFC 9112 §2.2 allows a recipient that), obs-text
 * in values. Refused (-EPROTO): a bare CR, control characters (NUL included: values end up as C
 * strings) other than tab, obs-fold continuation lines, whitespace before a field's colon, a
 * name that is not a token, a 101 the request did not ask for (what follows is not HTTP). */
#include "server/http_response.h"
#include <errno.h>
#include <string.h>
#include <strings.h>

enum chunk_state {
	CH_SIZE,       /* hex digits of the size */
	CH_SIZE_MORE,  /* after a digit: more of them, or what ends the size */
	CH_SIZE_WS,    /* whitespace after the size: more, an extension or the line end */
	CH_EXT,        /* an extension, up to the line end */
	CH_SIZE_LF,    /* CR seen: LF */
	CH_DATA,
	CH_DATA_CR,    /* after the data: CR LF */
	CH_DATA_LF,
	CH_TRAILER,    /* the start of a trailer line, or the empty line that ends the body */
	CH_TRAILER_IN, /* within a trailer line */
	CH_TRAILER_LF, /* CR seen in a trailer line */
	CH_LAST_LF,    /* CR of the final empty line seen */
	CH_DONE,
};

static bool is_tchar(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	       (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* A control character other than tab (NUL, CR and LF among them), or DEL. */
static bool is_ctl(unsigned char c)
{
	return (c < 0x20 && c != '\t') || c == 0x7f;
}

static bool has_ctl(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (is_ctl((unsigned char)s[i]))
			return true;
	return false;
}

void resp_head_init(struct resp_head *h, bool want_upgrade)
{
	memset(h, 0, sizeof *h);
	h->want_upgrade = want_upgrade;
}

void resp_head_free(struct resp_head *h)
{
	strbuf_free(&h->fields);
	strbuf_free(&h->line);
}

/* "HTTP/1.<digit> <3 digits>[ <reason>]" */
static int status_line(struct resp_head *h, const char *s, size_t n)
{
	if (n < 12 || memcmp(s, "HTTP/1.", 7) != 0 || s[7] < '0' || s[7] > '9' || s[8] != ' ')
		return -EPROTO;
	int status = 0;
	for (size_t i = 9; i < 12; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -EPROTO;
		status = status * 10 + (s[i] - '0');
	}
	if (status < 100 || (n > 12 && s[12] != ' ') || has_ctl(s + 12, n - 12))
		return -EPROTO;
	h->status = status;
	h->status_seen = true;
	strbuf_reset(&h->fields);
	return RESP_MORE;
}

/* "name: value", stored as name\0value\0 with the value's surrounding whitespace cut. */
static int field_line(struct resp_head *h, const char *s, size_t n)
{
	size_t nl = 0;
	while (nl < n && is_tchar((unsigned char)s[nl]))
		nl++;
	if (nl == 0 || nl == n || s[nl] != ':')
		return -EPROTO; /* obs-fold, a space before the colon, no colon, a bad name */
	const char *v = s + nl + 1;
	size_t vl = n - nl - 1;
	while (vl && (*v == ' ' || *v == '\t'))
		v++, vl--;
	while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
		vl--;
	if (has_ctl(v, vl))
		return -EPROTO;
	strbuf_append(&h->fields, s, nl);
	strbuf_append(&h->fields, "", 1);
	strbuf_append(&h->fields, v, vl);
	strbuf_append(&h->fields, "", 1);
	return RESP_MORE;
}

/* The empty line: the head is complete. */
static int head_end(struct resp_head *h)
{
	h->status_seen = false;
	h->in_head = false;
	if (h->status >= 200 || (h->status == 101 && h->want_upgrade))
		return RESP_FINAL;
	if (h->status == 101)
		return -EPROTO;
	if (++h->interim > RESP_MAX_INTERIM)
		return -EMSGSIZE;
	strbuf_reset(&h->fields);
	return RESP_INTERIM;
}

static int take_line(struct resp_head *h)
{
	char *s = h->line.data;
	size_t n = h->line.len - 1; /* without the LF */
	if (n && s[n - 1] == '\r')
		n--;
	h->line.len = 0;
	if (!h->status_seen)
		return status_line(h, s, n);
	if (n == 0)
		return head_end(h);
	return field_line(h, s, n);
}

int resp_head_feed(struct resp_head *h, const char *in, size_t len, size_t *used)
{
	size_t off = 0;
	int rc = RESP_MORE;
	while (off < len && rc == RESP_MORE) {
		const char *nl = memchr(in + off, '\n', len - off);
		size_t n = nl ? (size_t)(nl - in) + 1 - off : len - off;
		if (n > RESP_HEAD_MAX_BYTES - h->bytes || (nl && h->lines == RESP_HEAD_MAX_LINES)) {
			rc = -EMSGSIZE;
			break;
		}
		h->bytes += n;
		h->in_head = true;
		strbuf_append(&h->line, in + off, n);
		off += n;
		if (!nl)
			break;
		h->lines++;
		rc = take_line(h);
	}
	*used = off;
	return rc;
}

bool resp_head_next(const struct resp_head *h, size_t *pos, const char **name,
		    const char **value)
{
	if (*pos >= h->fields.len)
		return false;
	*name = h->fields.data + *pos;
	*value = *name + strlen(*name) + 1;
	*pos = (size_t)(*value + strlen(*value) + 1 - h->fields.data);
	return true;
}

/* The elements of a comma-separated list value, whitespace around them cut: false at the end. */
static bool next_element(const char **s, const char **elem, size_t *len)
{
	const char *p = *s;
	p += strspn(p, " \t");
	if (!*p)
		return false;
	size_t n = strcspn(p, ",");
	*elem = p;
	*s = p[n] ? p + n + 1 : p + n;
	while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
		n--;
	*len = n;
	return true;
}

/* One Content-Length element: digits only, at most RESP_LENGTH_MAX. */
static bool parse_length(const char *s, size_t n, uint64_t *out)
{
	uint64_t v = 0;
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return false;
		unsigned d = (unsigned)(s[i] - '0');
		if (v > (RESP_LENGTH_MAX - d) / 10)
			return false;
		v = v * 10 + d;
	}
	*out = v;
	return true;
}

int resp_framing(const struct resp_head *h, uint64_t *length)
{
	const char *name, *value, *e;
	size_t el;
	unsigned codings = 0;
	bool chunked = false, have_length = false;
	for (size_t pos = 0; resp_head_next(h, &pos, &name, &value);) {
		if (strcasecmp(name, "Transfer-Encoding") == 0) {
			if (!*value)
				return -EPROTO;
			while (next_element(&value, &e, &el)) {
				codings++;
				chunked = el == 7 && strncasecmp(e, "chunked", 7) == 0;
			}
		} else if (strcasecmp(name, "Content-Length") == 0) {
			if (!*value)
				return -EPROTO;
			for (const char *s = value; *s;) {
				uint64_t v;
				if (!next_element(&s, &e, &el) || !parse_length(e, el, &v) ||
				    (have_length && v != *length))
					return -EPROTO;
				*length = v;
				have_length = true;
			}
		}
	}
	if (codings)
		return codings == 1 && chunked && !have_length ? RESP_BY_CHUNKS : -EPROTO;
	return have_length ? RESP_BY_LENGTH : RESP_BY_CLOSE;
}

void chunked_init(struct chunked *c)
{
	memset(c, 0, sizeof *c);
	c->state = CH_SIZE;
}

bool chunked_done(const struct chunked *c)
{
	return c->state == CH_DONE;
}

static int hex_value(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c |= 0x20;
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

static int size_line_end(struct chunked *c)
{
	c->line = 0;
	c->state = c->left ? CH_DATA : CH_TRAILER;
	return 0;
}

/* A byte of a size line: 1*HEXDIG [BWS] [";" extension...], extensions ignored. */
static int size_byte(struct chunked *c, unsigned char b)
{
	int d;
	if (++c->line > RESP_CHUNK_LINE_MAX)
		return -EMSGSIZE;
	if (c->state != CH_SIZE && b == '\r') {
		c->state = CH_SIZE_LF;
		return 0;
	}
	if (c->state != CH_SIZE && b == '\n')
		return size_line_end(c);
	if (c->state == CH_EXT)
		return is_ctl(b) ? -EPROTO : 0;
	if (c->state != CH_SIZE_WS && (d = hex_value(b)) >= 0) {
		if (c->left >> 60)
			return -EPROTO; /* more than 64 bits */
		c->left = c->left << 4 | (uint64_t)d;
		c->state = CH_SIZE_MORE;
		return 0;
	}
	if (c->state == CH_SIZE)
		return -EPROTO; /* no digit */
	if (b == ' ' || b == '\t')
		c->state = CH_SIZE_WS;
	else if (b == ';')
		c->state = CH_EXT;
	else
		return -EPROTO;
	return 0;
}

/* A byte of a trailer line (trailers are dropped). */
static int trailer_byte(struct chunked *c, unsigned char b)
{
	if (++c->trailer_bytes > RESP_HEAD_MAX_BYTES)
		return -EMSGSIZE;
	if (c->state == CH_TRAILER_LF) {
		if (b != '\n')
			return -EPROTO;
		c->state = CH_TRAILER;
	} else if (b == '\r') {
		c->state = CH_TRAILER_LF;
	} else if (b == '\n') {
		c->state = CH_TRAILER;
	} else if (is_ctl(b)) {
		return -EPROTO;
	}
	return 0;
}

/* One byte of framing; 0 or -errno. */
static int chunk_byte(struct chunked *c, unsigned char b)
{
	switch (c->state) {
	case CH_SIZE:
	case CH_SIZE_MORE:
	case CH_SIZE_WS:
	case CH_EXT:
		return size_byte(c, b);
	case CH_SIZE_LF:
		return b == '\n' ? size_line_end(c) : -EPROTO;
	case CH_DATA_CR:
		if (b == '\n')
			c->state = CH_SIZE;
		else if (b == '\r')
			c->state = CH_DATA_LF;
		else
			return -EPROTO;
		return 0;
	case CH_DATA_LF:
	case CH_LAST_LF:
		if (b != '\n')
			return -EPROTO;
		c->state = c->state == CH_DATA_LF ? CH_SIZE : CH_DONE;
		return 0;
	case CH_TRAILER:
		if (b == '\r') {
			c->state = CH_LAST_LF;
			return 0;
		}
		if (b == '\n') {
			c->state = CH_DONE;
			return 0;
		}
		if (++c->trailer_lines > RESP_HEAD_MAX_LINES)
			return -EMSGSIZE;
		c->state = CH_TRAILER_IN;
		return trailer_byte(c, b);
	case CH_TRAILER_IN:
	case CH_TRAILER_LF:
		return trailer_byte(c, b);
	}
	return -EPROTO; /* CH_DATA and CH_DONE take no framing */
}

ssize_t chunked_decode(struct chunked *c, const char *in, size_t len, size_t max, size_t *data,
		       size_t *data_len)
{
	size_t off = 0;
	*data = *data_len = 0;
	while (off < len && c->state != CH_DONE) {
		if (c->state == CH_DATA) {
			size_t n = len - off < max ? len - off : max;
			if (n > c->left)
				n = (size_t)c->left;
			c->left -= n;
			if (c->left == 0)
				c->state = CH_DATA_CR;
			*data = off;
			*data_len = n;
			return (ssize_t)(off + n);
		}
		int err = chunk_byte(c, (unsigned char)in[off++]);
		if (err)
			return err;
	}
	return (ssize_t)off;
}
