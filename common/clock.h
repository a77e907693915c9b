/* Monotonic time, in the units the rest of the code counts deadlines in: milliseconds of
 * CLOCK_MONOTONIC in an int64_t, -1 (any negative value) for "no deadline". Condition variables
 * made by mono_cond_init() wait on that clock too, so that a change of the wall clock can
 * neither stretch nor cut a wait. */
#ifndef SBX_CLOCK_H
#define SBX_CLOCK_H
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <time.h>

/* Milliseconds of CLOCK_MONOTONIC. */
int64_t mono_ms(void);
/* CLOCK_MONOTONIC ms milliseconds from now, for pthread_cond_timedwait on a condition
 * variable whose clock is CLOCK_MONOTONIC. */
struct timespec mono_after_ms(long ms);
/* What is left until deadline, as poll() takes it: -1 when deadline < 0 (none), 0 once it has
 * passed, else the milliseconds left (at most INT_MAX). */
int mono_left_ms(int64_t deadline);
/* The earlier of two deadlines, where a negative one is none. */
int64_t mono_earlier(int64_t a, int64_t b);
/* Initialises a condition variable whose timed waits count on CLOCK_MONOTONIC. */
void mono_cond_init(pthread_cond_t *cond);
/* Waits on cond (made by mono_cond_init, lock held) until it is signalled or deadline passes;
 * false, without waiting, once deadline has passed. */
bool mono_cond_wait_until(pthread_cond_t *cond, pthread_mutex_t *lock, int64_t deadline);
#endif
