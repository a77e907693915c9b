/* Monotonic time, in the units the rest of the code counts deadlines in. */
#ifndef SBX_CLOCK_H
#define SBX_CLOCK_H
#include <stdint.h>
#include <time.h>

/* Milliseconds of CLOCK_MONOTONIC. */
int64_t mono_ms(void);
/* CLOCK_MONOTONIC ms milliseconds from now, for pthread_cond_timedwait on a condition
 * variable whose clock is CLOCK_MONOTONIC. */
struct timespec mono_after_ms(long ms);
#endif
