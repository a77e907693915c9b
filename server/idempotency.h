/* Idempotency keys (docs/protocol.md, "Exactly once"): a mutation sent with
 * "Idempotency-Key: K" is carried out once; a repeat of K is answered with the first outcome,
 * or waits for it while the first is still running. Kept in memory, per sbxd run. */
#ifndef SBXD_IDEMPOTENCY_H
#define SBXD_IDEMPOTENCY_H
#include <stddef.h>
#include <stdint.h>

#define IDEM_KEY_MAX 129  /* a key is 1 to 128 visible ASCII characters */

struct idem_entry;

enum idem_verdict {
	IDEM_RUN,      /* new key: run the request, then idem_complete() or idem_forget() */
	IDEM_REPLAY,   /* a repeat: answer with *out (caller frees body and content_type) */
	IDEM_REUSED,   /* the key was used for a different request */
	IDEM_STREAMED, /* the first answer was a stream, which cannot be replayed */
	IDEM_GONE,     /* the client left while waiting for the first to finish */
};

struct idem_answer {
	int status;
	char *content_type;
	char *body;
	size_t len;
};

/* Whether key has the form of a key. */
int idem_key_valid(const char *key);
/* Looks key up, fingerprint being a hash of the request (method, path, query, body). For a
 * key still running, waits for its end, asking client_gone(arg) every second whether the
 * client of this repeat hung up. *e is set for IDEM_RUN. */
enum idem_verdict idem_begin(const char *key, uint64_t fingerprint,
			     int (*client_gone)(void *arg), void *arg, struct idem_entry **e,
			     struct idem_answer *out);
/* The outcome of a request that got IDEM_RUN. Answers that say the request was not carried
 * out (429, 502, 503, 504; 499: stopped because its client hung up) are not kept: a repeat
 * runs again. */
void idem_complete(struct idem_entry *e, int status, const char *content_type,
		   const char *body, size_t len);
/* The answer is a stream: repeats get IDEM_STREAMED. */
void idem_streamed(struct idem_entry *e);
/* Frees everything (server shutdown; no request may be running). */
void idem_shutdown(void);

/* A 64-bit FNV-1a variant, to fingerprint a request piece by piece: h = idem_hash(h, data,
 * len), starting from IDEM_HASH_INIT (the same pieces in the same order give the same hash). */
#define IDEM_HASH_INIT 0xcbf29ce484222325ULL
uint64_t idem_hash(uint64_t h, const void *data, size_t len);
#endif
