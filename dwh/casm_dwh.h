/*  casm_dwh: the DWH ingester's consumer loop.

    A librdkafka consumer in a consumer group reads the Business
    Transactions; the loop gathers them into batches (up to batch_max
    messages or batch_ms after the first), stores each batch in one
    database transaction (casm_ingest) and only then commits the batch's
    offsets. Delivery is at least once; the warehouse's deduplication makes
    it exactly once in effect. The partitions are spread over `connections`
    database connections, which store their batches at the same time.

    While the database is down the batch is kept, the partitions are paused
    (the consumer stays in its group) and the batch is tried again with a
    bounded backoff: it is never lost and the process never stops. When the
    group takes partitions away, the messages of theirs not yet stored are
    dropped, uncommitted, for their next owner to read again.               */

#ifndef CASM_DWH_H
#define CASM_DWH_H

#include <signal.h>
#include <stdint.h>

typedef struct {
    const char *kafka_brokers;
    const char *kafka_topic;
    const char *group;                  // the consumer group
    const char *database_url;
    const char *instance;               // client.id
    int batch_max;                      // messages per batch
    int batch_ms;                       // wait for a batch to fill
    int64_t grace_ms;                   // SIGTERM to exit
    int session_timeout_ms;             // the group's session timeout
    int queue_kbytes;                   // librdkafka's prefetch bound
    int connections;                    // database connections (lanes)
    int crash_after;                    // tests: see casm_dwh_run
} casm_dwh_config_t;

typedef struct casm_dwh_t casm_dwh_t;

//  Creates the consumer (not yet subscribed). The configuration's strings
//  must outlive the ingester. Returns NULL when librdkafka refuses the
//  configuration (logged).
casm_dwh_t *casm_dwh_new (const casm_dwh_config_t *config);

//  Closes what is open, frees the ingester and NULLs the pointer.
void casm_dwh_destroy (casm_dwh_t **self_p);

//  Connects to the database (waiting for it as long as needed), subscribes
//  and consumes until *signals becomes non-zero; then stores and commits
//  the batch in hand, leaves the group and returns, all within grace_ms.
//  Returns 0, or 1 when the warehouse schema cannot be migrated or the
//  subscription fails. For the tests, crash_after > 0 makes the process
//  die (exit status 137, as if SIGKILLed) right after that many batches
//  are stored and before the last one's offsets are committed: the one
//  moment where a crash leaves stored messages to be delivered again.
int casm_dwh_run (casm_dwh_t *self, volatile sig_atomic_t *signals);

#endif
