/*  casm_worker: the persistence stage's event loop.

    Takes units of work from Q2 against its credit, applies each in
    PostgreSQL (casm_store), answers errors at once on Q2, and forwards each
    committed change with its event to Q3. Replies from Q3 are relayed back
    to Q2; a Q3 rejection (no publisher could take the event, which stays in
    the outbox) becomes the success answer. Single-threaded: one zpoller
    over the Q2 stage socket and the Q3 DEALER.                            */

#ifndef CASM_WORKER_H
#define CASM_WORKER_H

#include <signal.h>

typedef struct casm_worker_t casm_worker_t;

//  A new worker from the environment: DATABASE_URL, WORKER_CREDIT (64),
//  REQUEST_RETENTION_HOURS (48, at least 24), SHUTDOWN_GRACE_MS (10000),
//  and the broker's address. Connects to Q3 at once; to PostgreSQL and Q2
//  when the loop runs. Returns NULL on failure (logged).
casm_worker_t *casm_worker_new (void);

//  Closes everything, NULLs the caller's pointer.
void casm_worker_destroy (casm_worker_t **self_p);

//  Runs the loop until *stop becomes non-zero, then drains: no more work
//  is asked for, units already here are finished, and replies from Q3 are
//  relayed until every forwarded unit is answered or SHUTDOWN_GRACE_MS has
//  passed. Returns 0 after a clean drain.
int casm_worker_run (casm_worker_t *self, volatile sig_atomic_t *stop);

#endif
