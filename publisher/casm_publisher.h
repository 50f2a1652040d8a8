/*  casm_publisher: the publisher's event loop.

    Takes units of work from queue Q3 (a committed change: the Business
    Transaction and its event frame), produces each event to Kafka, and
    answers the unit with the worker's status and body once Kafka has
    acknowledged the event, or after publish_timeout_ms, whichever comes
    first: a slow or absent Kafka delays answers by at most that bound,
    and the event then waits in the outbox for the sweep (casm_outbox).
    Answers PING with the state of the Kafka producer.

    One thread: the stage's socket, librdkafka's wake-up pipe and the
    PostgreSQL connection are polled together.                          */

#ifndef CASM_PUBLISHER_H
#define CASM_PUBLISHER_H

#include <signal.h>

typedef struct {
    const char *database_url;   // mandatory
    const char *kafka_brokers;  // mandatory
    const char *kafka_topic;
    const char *client_id;      // librdkafka's client.id
    int linger_ms;
    int message_timeout_ms;     // librdkafka gives a message up after this
    int credit;                 // units held at once
    int publish_timeout_ms;     // longest wait for Kafka before answering
    int sweep_ms;
    int sweep_age_ms;
    int sweep_batch;            // rows per sweep, and sweep messages in
                                // flight beyond which a sweep is skipped
    int retention_s;
    int shutdown_grace_ms;
} casm_publisher_config_t;

typedef struct casm_publisher_t casm_publisher_t;

//  Creates the producer, the outbox and the link to Q3. Returns NULL (and
//  logs why) when one cannot be made. PostgreSQL and Kafka need not be
//  up.
casm_publisher_t *casm_publisher_new (const casm_publisher_config_t *config);

//  Destroys the publisher and NULLs the pointer. Units still held are
//  dropped (the broker's deadline answers them).
void casm_publisher_destroy (casm_publisher_t **self_p);

//  Runs the loop. *signals counts the SIGTERM/SIGINT received (the
//  caller's handler increments it): the first starts a drain (no new
//  work; answer what is held, let Kafka deliver, mark delivered rows sent,
//  within shutdown_grace_ms), the second ends the loop at once. Returns
//  the process's exit status: 0 after a drain, 1 when the Kafka producer
//  failed for good or the second signal cut the drain short.
int casm_publisher_run (casm_publisher_t *self,
                        volatile sig_atomic_t *signals);

#endif
