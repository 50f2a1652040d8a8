/*  casm_guard: a deadline for receiving each HTTP request.

    libmicrohttpd's connection timeout counts idle time only: a client that
    sends one byte a second never goes idle, and could hold its connection
    (and, with enough of them, every connection) forever. The guard gives
    each connection a deadline instead: a complete request, headers and
    body, must arrive within a fixed time of the connection opening or of
    the previous answer on it. A request that has arrived is not timed here
    (the pipeline's deadline covers it); the next one is, once its
    predecessor has been answered.

    The guard only keeps the books: the caller closes what comes back from
    casm_guard_expired. Deadlines are all the same distance from their
    start, so the list is kept in order by appending, and every operation
    costs O(1).                                                            */

#ifndef CASM_GUARD_H
#define CASM_GUARD_H

#include <stdint.h>

typedef struct casm_guard_t casm_guard_t;

//  One watched connection.
typedef struct casm_guard_conn_t casm_guard_conn_t;

//  A guard that allows limit_ms to receive a request (at least 1).
casm_guard_t *casm_guard_new (int64_t limit_ms);

//  Frees the guard, NULLs the pointer. Close every connection first (the
//  HTTP server's close notices do, when it stops); the ones still armed
//  are freed here, but a disarmed one left open would be lost.
void casm_guard_destroy (casm_guard_t **self_p);

//  Starts watching the connection on descriptor fd, its deadline limit_ms
//  from now. NULL when memory runs out (the connection is then not timed).
casm_guard_conn_t *casm_guard_open (casm_guard_t *self, int fd, int64_t now);

//  Stops watching the connection, frees it, NULLs the pointer.
void casm_guard_close (casm_guard_t *self, casm_guard_conn_t **conn_p);

//  The request has arrived: no deadline until casm_guard_arm.
void casm_guard_disarm (casm_guard_t *self, casm_guard_conn_t *conn);

//  The connection waits for its next request: deadline limit_ms from now.
void casm_guard_arm (casm_guard_t *self, casm_guard_conn_t *conn,
                     int64_t now);

//  The earliest deadline, or INT64_MAX when no connection has one.
int64_t casm_guard_next_deadline (casm_guard_t *self);

//  The descriptor of a connection whose deadline is at or before now,
//  disarmed so that it comes back only once; -1 when there is none.
int casm_guard_expired (casm_guard_t *self, int64_t now);

//  Connections watched, and of those, how many have a deadline.
uint32_t casm_guard_size (casm_guard_t *self);
uint32_t casm_guard_armed (casm_guard_t *self);

#endif
