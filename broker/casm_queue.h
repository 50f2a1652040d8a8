/*  casm_queue: one credit-based queue of the broker (Q1, Q2 or Q3).

    A queue is two ROUTER sockets: the frontend, where upstream DEALERs send
    requests and receive replies, and the backend, where the stage's
    instances connect a DEALER and speak casm_proto.h. Work goes to an
    instance only against credit the instance has announced, round-robin
    among the instances that have some; work that finds no credit waits in
    a bounded FIFO; work that cannot be held (no instance takes work, FIFO
    full) is answered at once with status 503 and CASM_FLAG_REJECTED, the
    original body and event riding back unchanged.

    The queue does no I/O of its own accord: the caller polls the two
    sockets, calls casm_queue_frontend or casm_queue_backend when one is
    readable, and casm_queue_tick about every CASM_QUEUE_TICK_MS.           */

#ifndef CASM_QUEUE_H
#define CASM_QUEUE_H

#include <czmq.h>
#include <stdint.h>

//  How often the caller should call casm_queue_tick.
#define CASM_QUEUE_TICK_MS 250

//  At most this many instances per queue; more are refused with a warning.
#define CASM_QUEUE_INSTANCES_MAX 4096

//  Credit one instance can hold, whatever it announces.
#define CASM_QUEUE_CREDIT_MAX 100000

typedef struct casm_queue_t casm_queue_t;

//  What a queue has seen since it was made. Counters only grow.
typedef struct {
    size_t instances;           // instances registered now
    size_t accepting;           // of those, not draining
    size_t waiting;             // work in the FIFO now
    int64_t credit;             // credit of all instances now
    uint64_t dispatched;        // work sent to an instance
    uint64_t replies;           // replies passed upstream
    uint64_t rejected;          // answered 503 REJECTED
    uint64_t expired;           // dropped from the FIFO past its deadline
    uint64_t undeliverable;     // replies whose upstream was gone or full
    uint64_t malformed;         // messages dropped as unreadable
} casm_queue_stats_t;

//  A clock in milliseconds. The queue uses casm_now_ms for deadlines and
//  a monotonic clock for instance expiry unless one is given.
typedef int64_t (casm_queue_clock_fn) (void);

//  Binds the frontend and backend ROUTERs of queue number queue (1, 2, 3)
//  on these endpoints, with a FIFO of at most fifo_max units of work.
//  Returns NULL, after logging why, when a socket cannot be made or bound.
casm_queue_t *casm_queue_new (int queue, const char *frontend,
                              const char *backend, size_t fifo_max);

//  Answers the work still waiting with 503 REJECTED, closes the sockets,
//  frees the queue and NULLs the caller's pointer.
void casm_queue_destroy (casm_queue_t **self_p);

//  The sockets to poll for input. Owned by the queue.
zsock_t *casm_queue_frontend_socket (casm_queue_t *self);
zsock_t *casm_queue_backend_socket (casm_queue_t *self);

//  Handles the messages waiting on the frontend (requests from upstream),
//  a bounded batch at a time; never blocks. Returns how many it handled.
int casm_queue_frontend (casm_queue_t *self);

//  Handles the messages waiting on the backend (commands from instances),
//  a bounded batch at a time; never blocks. Returns how many it handled.
int casm_queue_backend (casm_queue_t *self);

//  Forgets instances not heard from for CASM_PEER_EXPIRY_MS, drops (Q1,
//  Q2) or rejects (Q3) waiting work whose deadline has passed, and logs a
//  summary of degraded operation now and then.
void casm_queue_tick (casm_queue_t *self);

//  Fills stats with the queue's counters.
void casm_queue_stats (casm_queue_t *self, casm_queue_stats_t *stats);

//  Replaces both clocks with this one (NULL restores them); for tests.
void casm_queue_set_clock (casm_queue_t *self, casm_queue_clock_fn *clock);

#endif
