/* A tiny TAP producer for the C unit tests (meson runs them with protocol: 'tap'). */
#ifndef SBX_UNIT_H
#define SBX_UNIT_H
#include <stdio.h>
#include <string.h>

static int unit_n, unit_failed;

#define CHECK(cond) \
	do { \
		unit_n++; \
		if (cond) { \
			printf("ok %d - %s\n", unit_n, #cond); \
		} else { \
			unit_failed++; \
			printf("not ok %d - %s (%s:%d)\n", unit_n, #cond, __FILE__, __LINE__); \
		} \
	} while (0)
#define CHECK_STR(a, b) CHECK((a) != NULL && strcmp((a), (b)) == 0)
/* whether text (NULL: none yet) holds needle, or lacks it */
#define CHECK_HAS(text, needle) CHECK((text) != NULL && strstr((text), (needle)) != NULL)
#define CHECK_LACKS(text, needle) CHECK((text) == NULL || strstr((text), (needle)) == NULL)
#define CHECK_MEM(a, b, n) CHECK(memcmp((a), (b), (n)) == 0)
#define UNIT_DONE() (printf("1..%d\n", unit_n), unit_failed ? 1 : 0)
#endif
