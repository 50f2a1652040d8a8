/*  casm_lookup: the validator's read-only view of PostgreSQL.

    One connection, read-only (default_transaction_read_only), with its
    statements prepared once per connection. Nothing here ever waits
    without bound: connecting is limited by connect_timeout, every query
    by a timeout after which the connection is dropped. When PostgreSQL is
    down, each call answers CASM_LOOKUP_DOWN at once (reconnections back
    off from 0.5 s to 4 s between attempts), and service resumes by itself
    when it returns. The schema is not created here: a missing schema is "down"
    until the worker has applied the migrations.                           */

#ifndef CASM_LOOKUP_H
#define CASM_LOOKUP_H

#include <stddef.h>

#define CASM_LOOKUP_DOWN -1         // unreachable, failed, or no schema yet
#define CASM_LOOKUP_NONE 0          // no such row
#define CASM_LOOKUP_FOUND 1

typedef struct casm_lookup_t casm_lookup_t;

//  A look-up on the database at url (a libpq URI or key=value string).
//  Tries to connect at once, but returns a usable look-up even when
//  PostgreSQL is down (logged as a warning). NULL only when memory runs
//  out.
casm_lookup_t *casm_lookup_new (const char *url);

//  Closes the connection and NULLs the caller's pointer.
void casm_lookup_destroy (casm_lookup_t **self_p);

//  CASM_LOOKUP_FOUND when PostgreSQL answers and the schema is there,
//  else CASM_LOOKUP_DOWN.
int casm_lookup_ping (casm_lookup_t *self);

//  The idempotency record of request_id. When found, *same says whether
//  its hash is hash (64 hex digits), *status and *body are the recorded
//  answer; the caller frees *body.
int casm_lookup_request (casm_lookup_t *self, const char *request_id,
                         const char *hash, int *same, int *status,
                         char **body);

//  The customer by ref_id or, when ref_id is NULL, by external_id. When
//  found, *ref_id_p and *state_p are its refId and state; the caller frees
//  both. Either pointer may be NULL when not wanted.
int casm_lookup_customer (casm_lookup_t *self, const char *ref_id,
                          const char *external_id, char **ref_id_p,
                          char **state_p);

//  The customer JSON of DESIGN.md 2.2, by ref_id or external_id as above;
//  the caller frees *json.
int casm_lookup_customer_json (casm_lookup_t *self, const char *ref_id,
                               const char *external_id, char **json);

//  What one change request needs looked up: its idempotency record
//  (request_id, hash as for casm_lookup_request) and its customer (by
//  ref_id or, when ref_id is NULL, external_id). Strings are copied.
typedef struct {
    const char *request_id;
    const char *hash;
    const char *ref_id;
    const char *external_id;
} casm_lookup_key_t;

//  Makes the look-ups of count requests at once, in one round trip (one
//  statement for them all), and keeps the answers: until
//  casm_lookup_forget, casm_lookup_request and casm_lookup_customer
//  answer a key asked here without a query. A look-up that failed is not
//  kept (the call then queries as usual), so this never changes an answer,
//  only how many round trips it takes.
void casm_lookup_prefetch (casm_lookup_t *self, const casm_lookup_key_t *keys,
                           size_t count);

//  Drops the answers kept by casm_lookup_prefetch.
void casm_lookup_forget (casm_lookup_t *self);

#endif
