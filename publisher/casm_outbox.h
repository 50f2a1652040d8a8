/*  casm_outbox: the publisher's side of the outbox table.

    The worker writes each event to casm.outbox in the transaction of the
    change. The publisher sends it to Kafka and, once Kafka has it, marks
    the row sent; rows that stay unsent (Kafka was down, a publisher
    crashed) are found by the sweep and sent again. This module owns the
    publisher's PostgreSQL connection and does three jobs on it:

    - marking: ids of delivered events are collected and marked sent in
      batches; while PostgreSQL is away they are kept (bounded) and marked
      later.
    - sweep: every sweep_ms, in a short transaction, claim unsent rows
      older than sweep_age_ms (FOR UPDATE SKIP LOCKED), hand each to the
      caller to produce, commit at once.
    - housekeeping: delete sent rows older than retention_s, a bounded
      batch at a time.
    - backlog: every backlog_ms, count the unsent rows and the age of the
      oldest, for the metrics (casm_metrics_outbox).

    It also keeps the set of outbox ids this process is publishing (claim,
    release), so that the sweep never sends again what is in flight or
    delivered and not yet marked.

    Every query is asynchronous: the caller polls casm_outbox_socket() with
    its other sockets and calls casm_outbox_serve() when it is ready and
    casm_outbox_tick() on every turn of its loop. Nothing here blocks, but
    for the host name lookup of a new connection. The publisher starts and
    runs without PostgreSQL; only marking and sweeping wait for it.     */

#ifndef CASM_OUTBOX_H
#define CASM_OUTBOX_H

#include "casm_producer.h"

#include <stdint.h>

typedef struct casm_outbox_t casm_outbox_t;

//  Called by the sweep for each unsent row that this process did not
//  claim before: the row is claimed for the caller, who produces it and
//  returns 0, or returns -1 and the claim is released. The event's value
//  is valid only during the call.
typedef int (casm_outbox_row_fn) (void *arg, const casm_event_t *event);

typedef struct {
    const char *database_url;
    int sweep_ms;               // how often the sweep runs
    int sweep_age_ms;           // rows younger than this are left alone
    int retention_s;            // sent rows older than this are deleted
    int backlog_ms;             // how often the backlog is measured for
                                // the metrics; 0: never
    casm_outbox_row_fn *swept;
    void *arg;                  // passed to swept
} casm_outbox_config_t;

//  Creates the outbox; the connection is made by casm_outbox_tick().
casm_outbox_t *casm_outbox_new (const casm_outbox_config_t *config);

//  Closes the connection, NULLs the pointer. Delivered ids not yet marked
//  are forgotten: the sweep sends those rows again later.
void casm_outbox_destroy (casm_outbox_t **self_p);

//  Claims the row: returns 0, or -1 when this process already has it.
int casm_outbox_claim (casm_outbox_t *self, int64_t id);

//  Gives a claimed row up: it was not delivered, the sweep will send it.
void casm_outbox_release (casm_outbox_t *self, int64_t id);

//  Kafka has the row's event: it will be marked sent, and released then.
void casm_outbox_delivered (casm_outbox_t *self, int64_t id);

//  Delivered ids not yet marked sent.
int casm_outbox_unmarked (casm_outbox_t *self);

//  Rows claimed now (in flight or waiting to be marked).
int casm_outbox_claimed (casm_outbox_t *self);

//  True when a query is running.
int casm_outbox_busy (casm_outbox_t *self);

//  True when connected to PostgreSQL.
int casm_outbox_connected (casm_outbox_t *self);

//  Does what is due: connects, marks a batch, starts a sweep of at most
//  sweep_limit rows (0: no sweep now), deletes old rows.
void casm_outbox_tick (casm_outbox_t *self, int sweep_limit);

//  The connection's descriptor and the poll events it waits for
//  (ZMQ_POLLIN, ZMQ_POLLOUT), or -1 when it waits for none.
int casm_outbox_socket (casm_outbox_t *self, short *events);

//  Reads what PostgreSQL sent and moves the running query on. Call it
//  when the descriptor is ready.
void casm_outbox_serve (casm_outbox_t *self);

//  Milliseconds until casm_outbox_tick() has something to do (0: now),
//  at most max_ms.
int casm_outbox_wait_ms (casm_outbox_t *self, int max_ms);

#endif
