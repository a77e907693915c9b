/* Standard base64 (RFC 4648, '+/' alphabet, '=' padding), as the container API uses it. */
#ifndef SBX_BASE64_H
#define SBX_BASE64_H
#include <stddef.h>
#include <sys/types.h>

/* Length of the encoding of n bytes, without the terminating NUL. */
size_t base64_encoded_len(size_t n);
/* Encodes n bytes into out (base64_encoded_len(n) + 1 bytes); returns the length written. */
size_t base64_encode(const void *in, size_t n, char *out);
/* Newly allocated, NUL-terminated encoding; NULL when out of memory. */
char *base64_encode_alloc(const void *in, size_t n);
/* Upper bound of the decoded size of an encoding of n characters. */
size_t base64_decoded_max(size_t n);
/* Decodes n characters into out; returns the byte count, or -1 on a character outside the
 * alphabet or bad padding. Whitespace is not accepted (the container refuses it too). */
ssize_t base64_decode(const char *in, size_t n, void *out);
#endif
