/*  casm_store: the worker's PostgreSQL side.

    Each unit of work is a command body that the validator sent
    (docs/internals.md, "the command body"); the store applies it together
    with its idempotency record (casm.requests) and its event
    (casm.outbox), then says what to answer: an outcome with the HTTP
    status, the response body (the Business Transaction of DESIGN.md 2.2,
    or an error body), the reply flags, and for a committed change the
    event frame for the publisher. A batch of units is applied in one
    transaction (one commit for all, sent in libpq's pipeline mode), but
    each unit gets its own answer: a unit that cannot be done (no such
    customer, a requestId already recorded) changes nothing and takes
    nothing else down. createCustomer runs in a transaction of its own.

    A status of 200 or 201 with an event means the change is committed. Any
    doubt about the commit (connection lost mid-statement) gives 503: the
    client retries with the same requestId and is replayed if it did
    commit. The store never blocks for long: connections time out after
    2 s, statements after CASM_STORE_STATEMENT_MS (PostgreSQL cancels
    them), and a server that stops answering altogether after
    CASM_STORE_WAIT_MS (the connection is dropped). The worker's loop waits
    meanwhile, so both stay under the broker's peer expiry.              */

#ifndef CASM_STORE_H
#define CASM_STORE_H

#include <stddef.h>
#include <stdint.h>

//  The longest a statement may run before PostgreSQL cancels it, and the
//  longest the store waits for any answer.
#define CASM_STORE_STATEMENT_MS 2000
#define CASM_STORE_WAIT_MS 3000

typedef struct casm_store_t casm_store_t;

//  What to answer for one unit of work. Owns body and event.
typedef struct {
    uint16_t status;            // HTTP status
    uint8_t flags;              // CASM_FLAG_REPLAYED for a recorded answer
    char *body;                 // JSON text, never NULL after an operation
    size_t body_size;
    char *event;                // the event frame of a committed change
    size_t event_size;          // (meta line, newline, customer), or NULL
} casm_outcome_t;

//  A new store for this connection string (a postgresql:// URL or
//  key=value words; NULL or "" means libpq's defaults). Does not connect.
casm_store_t *casm_store_new (const char *database_url);

//  Closes the connection, NULLs the caller's pointer.
void casm_store_destroy (casm_store_t **self_p);

//  Connects (or reconnects), applies missing migrations and prepares the
//  statements. Returns 0, or -1 when PostgreSQL cannot be reached or the
//  schema cannot be applied (logged at warning level once per outage).
int casm_store_open (casm_store_t *self);

//  True when the store is connected and its statements are prepared.
int casm_store_ready (casm_store_t *self);

//  Checks that PostgreSQL answers, reconnecting first when the connection
//  was lost (at most one attempt per second). Returns 0 or -1.
int casm_store_ping (casm_store_t *self);

//  One unit of a batch: the operation (casm_op_t) and its command, which
//  the store reads and does not keep; then what to answer, which the
//  caller clears with casm_outcome_clear.
typedef struct {
    int op;
    const char *command;
    size_t size;
    casm_outcome_t outcome;
} casm_store_unit_t;

//  Applies count units: the changes to existing customers in one
//  transaction, each createCustomer in its own, and fills every unit's
//  outcome, whatever happens (503 for each unit whose fate is not known,
//  a 200 or 201 only once its COMMIT is).
void casm_store_execute_batch (casm_store_t *self, casm_store_unit_t *units,
                               size_t count);

//  The three operations, one unit each. Each fills outcome (which the
//  caller clears with casm_outcome_clear) and returns its status.
int casm_store_update_attributes (casm_store_t *self, const char *command,
                                  size_t size, casm_outcome_t *outcome);
int casm_store_create_customer (casm_store_t *self, const char *command,
                                size_t size, casm_outcome_t *outcome);
int casm_store_update_state (casm_store_t *self, const char *command,
                             size_t size, casm_outcome_t *outcome);

//  Calls the function of operation op (casm_op_t); any other operation
//  gets 500.
int casm_store_execute (casm_store_t *self, int op, const char *command,
                        size_t size, casm_outcome_t *outcome);

//  Deletes at most limit idempotency records older than hours. Returns the
//  number deleted, or -1.
int casm_store_purge_requests (casm_store_t *self, int hours, int limit);

//  The SQL text of the prepared statement called name (update_attributes,
//  create_customer, update_state, ...), or NULL. For the benchmark, which
//  runs the worker's own statements under pgbench.
const char *casm_store_statement (const char *name);

//  Frees the outcome's body and event and zeroes it.
void casm_outcome_clear (casm_outcome_t *outcome);

#endif
