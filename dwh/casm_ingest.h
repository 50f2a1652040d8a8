/*  casm_ingest: a batch of Kafka messages into the warehouse, in one
    database transaction.

    Each message is checked: a Business Transaction (DESIGN.md 3) becomes a
    row of dwh.business_transactions (once per transaction id), moves
    dwh.customers forward when its version is higher than the stored one
    (and with it the customer's rows in dwh.custom_attributes), and counts
    once in dwh.metrics_daily; anything else (not JSON, a missing or wrong
    header, an unknown operation, no refId or version, a bad timestamp) is
    stored in dwh.dead_letters with its raw bytes and the reason, and logged
    at warn. The whole batch is one SQL statement, so it is stored entirely
    or not at all; storing it twice changes nothing.

    The module knows nothing of librdkafka: the consumer hands it plain
    descriptions of its messages, and tests can make their own.              */

#ifndef CASM_INGEST_H
#define CASM_INGEST_H

#include "casm_migrate.h"

#include <stddef.h>
#include <stdint.h>

//  The warehouse schema's migrations (dwh/migrations/*.sql, embedded).
extern const casm_migration_t casm_dwh_migrations [];

//  The schema casm-dwh writes. Fixed: the migrations name it.
#define CASM_DWH_SCHEMA "dwh"

//  The header names of DESIGN.md 3.
#define CASM_HEADER_TRANSACTION_ID "X-Ocs-Io-transaction-id"
#define CASM_HEADER_MESSAGE_CODE "X-Ocs-Io-message-code"
#define CASM_HEADER_MESSAGE_PAYLOAD "X-Ocs-Io-message-payload"
#define CASM_HEADER_OPERATION "X-Ocs-Io-operation"
#define CASM_HEADER_REQUEST_ID "X-Ocs-Io-request-id"

typedef struct {
    const char *name;           // NUL-terminated
    const void *value;          // NULL when the header has no value
    size_t size;
} casm_ingest_header_t;

//  One Kafka message as the consumer received it. Nothing is copied: the
//  pointers must stay valid during casm_ingest_batch.
typedef struct {
    int32_t partition;
    int64_t offset;
    const void *key;            // NULL when the message has no key
    size_t key_size;
    const void *value;          // NULL when the message has no value
    size_t value_size;
    const casm_ingest_header_t *headers;
    size_t header_count;
} casm_ingest_message_t;

//  What a stored batch did.
typedef struct {
    size_t events;              // valid Business Transactions in the batch
    size_t stored;              // of which new (not stored before)
    size_t moved;               // customers moved to a newer version
    size_t dead;                // messages sent to the dead letters
    int64_t database_us;        // time spent waiting for PostgreSQL
} casm_ingest_stats_t;

typedef struct casm_ingest_t casm_ingest_t;

//  A new ingester for this database and topic (the topic is recorded with
//  the dead letters and the ingestion status). Does not connect yet.
casm_ingest_t *casm_ingest_new (const char *database_url, const char *topic);

//  Closes the connection, frees the ingester, NULLs the pointer.
void casm_ingest_destroy (casm_ingest_t **self_p);

//  Connects when not connected, applies the warehouse migrations and
//  prepares the batch statement. Returns 0, -1 when the database cannot be
//  reached (try again later), or -2 when it answered but the migrations
//  failed (a broken schema: retrying will not help). Errors are logged.
int casm_ingest_connect (casm_ingest_t *self);

//  Stores a batch in one transaction, connecting first when needed, and
//  waits for the outcome. stats may be NULL. Returns 0 when the batch is
//  committed, or -1 when it is not (the database is down or busy: the
//  caller keeps the batch and tries again later). A message that
//  PostgreSQL itself refuses (which the checks should have caught) does not
//  block the batch: the batch is then stored message by message and the
//  refused one becomes a dead letter.
int casm_ingest_batch (casm_ingest_t *self,
                       const casm_ingest_message_t *messages, size_t count,
                       casm_ingest_stats_t *stats);

//  The same in two steps, so that the caller can go on while PostgreSQL
//  works: casm_ingest_send starts storing the batch (count > 0) and returns
//  0, or -1 when it cannot (the database is down); then casm_ingest_poll
//  returns 1 while PostgreSQL is still at it, and at last 0 or -1 as
//  casm_ingest_batch. The messages must stay valid until then; one batch
//  at a time. casm_ingest_socket is the descriptor to wait on (readable)
//  while a batch is out, or -1.
int casm_ingest_send (casm_ingest_t *self,
                      const casm_ingest_message_t *messages, size_t count);
int casm_ingest_poll (casm_ingest_t *self, casm_ingest_stats_t *stats);
int casm_ingest_socket (casm_ingest_t *self);

#endif
