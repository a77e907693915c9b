/* The workspace's change-event source behind POST /api/watch (watch.c). */
#ifndef SBXD_WATCH_H
#define SBXD_WATCH_H

/* Starts the inotify thread (after ws_init); failures are logged and make /api/watch answer
 * 500 WATCH_START_ERROR. */
void watch_init(void);
/* Ends every stream with a "stopped" event and stops the thread. */
void watch_shutdown(void);
#endif
