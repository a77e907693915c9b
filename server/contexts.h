/* Code contexts: persistent Python and JavaScript/TypeScript interpreters (container API §11).
 * The routes are declared in routes.h. */
#ifndef SBXD_CONTEXTS_H
#define SBXD_CONTEXTS_H

/* A session was deleted: the contexts created in it are deleted (their interpreters killed,
 * a running execution ends with InterpreterDied). */
void contexts_stop_session(unsigned long serial);
/* Kills every interpreter (contexts and warm spares) and waits until they are reaped. Call
 * after the HTTP server has stopped; later context requests fail. */
void contexts_shutdown(void);
#endif
