/*  casm_producer: the publisher's Kafka side.

    Wraps one librdkafka producer (idempotent, acks=all) that sends
    business-transaction events to the events topic (DESIGN.md 3): key =
    the customer's refId, value = the customer JSON, and the OCS.io
    headers. It also parses the event frame that the worker sends with a
    unit of work (docs/internals.md):

        {"outboxId":12,"transactionId":"...","requestId":"...",
         "operation":"...","key":"<refId>"}\n{...customer...}

    librdkafka's callbacks (delivery reports, errors, its own log lines)
    are served only from the caller's thread: the main queue signals a
    non-blocking pipe whose read end the caller polls with its sockets,
    and casm_producer_serve() runs the callbacks. Nothing here blocks but
    casm_producer_probe() (bounded) and casm_producer_destroy().         */

#ifndef CASM_PRODUCER_H
#define CASM_PRODUCER_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdint.h>

#define CASM_EVENT_ID_MAX 64            // transaction id, key (uuids)
#define CASM_EVENT_OPERATION_MAX 64
#define CASM_EVENT_REQUEST_ID_MAX 128
#define CASM_EVENT_META_MAX 4096        // the first line of the frame

//  One event to publish: the outbox row's id, the fields that become the
//  key and the headers, and the value. value points into memory the event
//  does not own (the frame or the database row it came from).
typedef struct {
    int64_t outbox_id;
    char transaction_id [CASM_EVENT_ID_MAX + 1];
    char request_id [CASM_EVENT_REQUEST_ID_MAX + 1];
    char operation [CASM_EVENT_OPERATION_MAX + 1];
    char key [CASM_EVENT_ID_MAX + 1];
    const char *value;
    size_t value_size;
} casm_event_t;

//  Parses an event frame of size bytes into event. Returns 0, or -1 when
//  the frame is malformed (no newline, meta data that is not a JSON object
//  with a positive integer outboxId and non-empty strings transactionId,
//  requestId, operation and key within their limits, or an empty value);
//  then error (may be NULL) says why, in a static string.
int casm_event_parse (const char *frame, size_t size, casm_event_t *event,
                      const char **error);

//  Sets the event's text fields from strings, cutting none: returns -1
//  when one is empty or longer than its limit. value is not copied.
int casm_event_set (casm_event_t *event, int64_t outbox_id,
                    const char *transaction_id, const char *request_id,
                    const char *operation, const char *key,
                    const char *value, size_t value_size);

//  The Kafka headers of the event: X-Ocs-Io-transaction-id,
//  X-Ocs-Io-message-code, X-Ocs-Io-message-payload, X-Ocs-Io-operation,
//  X-Ocs-Io-request-id. The caller owns the result (producing it hands it
//  to librdkafka).
rd_kafka_headers_t *casm_event_headers (const casm_event_t *event);

typedef struct casm_producer_t casm_producer_t;

//  Called from casm_producer_serve() for each delivery report: opaque is
//  what was given to casm_producer_send(), error is NULL when Kafka
//  acknowledged the message, else what went wrong.
typedef void (casm_delivery_fn) (void *arg, void *opaque,
                                 const char *error);

typedef struct {
    const char *brokers;        // bootstrap servers, mandatory
    const char *topic;
    const char *client_id;
    int linger_ms;
    int message_timeout_ms;     // longest a message may wait for Kafka
    casm_delivery_fn *delivered;
    void *arg;                  // passed to delivered
} casm_producer_config_t;

//  Creates the producer. Returns NULL (and logs why) when librdkafka
//  refuses the configuration.
casm_producer_t *casm_producer_new (const casm_producer_config_t *config);

//  Drops what is still queued (its delivery reports are served, with an
//  error, before the handle goes), destroys the producer, NULLs the
//  pointer. Serve it until casm_producer_in_flight() is 0 to let
//  deliveries finish first.
void casm_producer_destroy (casm_producer_t **self_p);

//  Queues the event for Kafka. Returns 0, and then exactly one delivery
//  report with this opaque follows; or -1 when librdkafka refused it at
//  once (queue full, fatal error), with no report, error says why.
int casm_producer_send (casm_producer_t *self, const casm_event_t *event,
                        void *opaque, const char **error);

//  The descriptor that becomes readable when callbacks are waiting.
int casm_producer_fd (casm_producer_t *self);

//  Runs the waiting callbacks. Call it when the descriptor is readable,
//  and now and then anyway.
void casm_producer_serve (casm_producer_t *self);

//  Messages queued and not yet reported.
int casm_producer_in_flight (casm_producer_t *self);

//  True when Kafka is believed reachable: set by a successful delivery or
//  probe, cleared when librdkafka reports all brokers down.
int casm_producer_up (casm_producer_t *self);

//  Asks the cluster for metadata, waiting up to timeout_ms (this blocks),
//  and updates the state. Returns casm_producer_up().
int casm_producer_probe (casm_producer_t *self, int timeout_ms);

//  True once librdkafka has raised a fatal error: the producer can send
//  nothing more and the process should restart.
int casm_producer_fatal (casm_producer_t *self);

#endif
