/*  casm_publisher: units from Q3 to Kafka, answers back to Q3.

    Each event in flight has a delivery record, the opaque of its Kafka
    message: the outbox id to mark, and for a live unit the unit itself,
    waiting for its answer. A live unit is answered by whichever comes
    first, the delivery report or its reply time; the record lives on
    until the report, since only the report says whether the row may be
    marked sent. The records of live units that wait are kept in arrival
    order, which is also reply-time order (one timeout for all).        */

#include "casm_publisher.h"
#include "casm_error.h"
#include "casm_log.h"
#include "casm_metrics_http.h"
#include "casm_outbox.h"
#include "casm_producer.h"
#include "casm_proto.h"
#include "casm_stage.h"

#include <czmq.h>
#include <errno.h>
#include <string.h>

#define LOOP_WAIT_MS 100        // longest poll, whatever is due
#define RECV_BURST 256          // units taken per turn of the loop
#define PROBE_TIMEOUT_MS 250
#define PROBE_INTERVAL_MS 1000
#define WARN_INTERVAL_MS 5000
#define DRAIN_LINGER_MS 200     // reading units still on their way
#define BACKLOG_MS 5000         // outbox backlog measured, with metrics on

typedef struct delivery_t delivery_t;
struct delivery_t {
    int64_t outbox_id;
    char transaction_id [CASM_EVENT_ID_MAX + 1];
    char request_id [CASM_EVENT_REQUEST_ID_MAX + 1];
    casm_work_t *work;          // the live unit waiting, or NULL
    int64_t reply_at;           // zclock_mono time to answer it anyway
    int swept;                  // sent by the sweep
    delivery_t *prev, *next;    // in the waiting list while work is set
};

//  Warnings that can come once per event are written at most every
//  WARN_INTERVAL_MS, with the count of those left out.
typedef struct {
    int64_t next;
    int suppressed;
} limiter_t;

struct casm_publisher_t {
    casm_publisher_config_t config;
    casm_stage_t *stage;
    casm_producer_t *producer;
    casm_outbox_t *outbox;

    delivery_t *first;          // live units waiting, oldest first
    delivery_t *last;
    int swept_in_flight;
    int64_t next_probe;

    int draining;
    int64_t drain_deadline;
    int exit_status;

    limiter_t failed_warns;
    limiter_t malformed_errors;
};


//  Returns -1 when the line must be left out, else the count of lines
//  left out since the last one (and resets it).
static int
s_limit (limiter_t *limiter)
{
    int64_t now = zclock_mono ();
    if (now < limiter->next) {
        limiter->suppressed++;
        return -1;
    }
    int suppressed = limiter->suppressed;
    limiter->suppressed = 0;
    limiter->next = now + WARN_INTERVAL_MS;
    return suppressed;
}


static void
s_waiting_remove (casm_publisher_t *self, delivery_t *delivery)
{
    if (delivery->prev)
        delivery->prev->next = delivery->next;
    else
        self->first = delivery->next;
    if (delivery->next)
        delivery->next->prev = delivery->prev;
    else
        self->last = delivery->prev;
    delivery->prev = delivery->next = NULL;
}


static void
s_waiting_append (casm_publisher_t *self, delivery_t *delivery)
{
    delivery->prev = self->last;
    delivery->next = NULL;
    if (self->last)
        self->last->next = delivery;
    else
        self->first = delivery;
    self->last = delivery;
}


//  Answers a live unit: the change is committed whatever Kafka did, so
//  the answer is the worker's status and body. A status that is not an
//  HTTP status is a bug upstream; the client gets a 500 and may retry
//  with its requestId, which replays the committed outcome.
static void
s_answer (casm_publisher_t *self, casm_work_t **work_p)
{
    casm_work_t *work = *work_p;
    uint16_t status = work->header.status;
    if (status < 200 || status > 299) {
        casm_error (work->header.request_id,
                    json_pack ("{s:i}", "status", status),
                    "unit from the worker has no success status");
        size_t size;
        char *body = casm_error_body (500, CASM_ERR_INTERNAL, NULL, NULL,
                                      work->header.request_id, NULL, &size);
        casm_stage_reply (self->stage, work_p, 500, 0, body ? body : "{}",
                          body ? size : 2);
        free (body);
        return;
    }
    size_t size;
    const char *body = casm_work_body (work, &size);
    casm_stage_reply (self->stage, work_p, status,
                      work->header.flags & CASM_FLAG_REPLAYED, body, size);
}


//  librdkafka's delivery report, served on the loop's thread.
static void
s_on_delivered (void *arg, void *opaque, const char *error)
{
    casm_publisher_t *self = arg;
    delivery_t *delivery = opaque;

    casm_metrics_kafka_delivery (error != NULL);
    if (!error)
        casm_outbox_delivered (self->outbox, delivery->outbox_id);
    else {
        //  The row stays unsent: the sweep sends it again.
        casm_outbox_release (self->outbox, delivery->outbox_id);
        int suppressed = s_limit (&self->failed_warns);
        if (suppressed >= 0)
            casm_warn (delivery->request_id,
                       json_pack ("{s:s,s:I,s:s,s:i}",
                                  "transactionId", delivery->transaction_id,
                                  "outboxId",
                                  (json_int_t) delivery->outbox_id,
                                  "error", error, "suppressed", suppressed),
                       "event not delivered to kafka; it stays in the "
                       "outbox");
    }

    if (delivery->work) {
        s_waiting_remove (self, delivery);
        s_answer (self, &delivery->work);
    }
    if (delivery->swept)
        self->swept_in_flight--;
    free (delivery);
}


static delivery_t *
s_delivery_new (const casm_event_t *event)
{
    delivery_t *delivery = calloc (1, sizeof *delivery);
    if (!delivery)
        return NULL;
    delivery->outbox_id = event->outbox_id;
    memcpy (delivery->transaction_id, event->transaction_id,
            sizeof delivery->transaction_id);
    memcpy (delivery->request_id, event->request_id,
            sizeof delivery->request_id);
    return delivery;
}


static void
s_send_failed (casm_publisher_t *self, const casm_event_t *event,
               const char *error)
{
    casm_metrics_kafka_delivery (1);
    int suppressed = s_limit (&self->failed_warns);
    if (suppressed >= 0)
        casm_warn (event->request_id,
                   json_pack ("{s:s,s:I,s:s,s:i}",
                              "transactionId", event->transaction_id,
                              "outboxId", (json_int_t) event->outbox_id,
                              "error", error, "suppressed", suppressed),
                   "cannot queue an event for kafka; it stays in the "
                   "outbox");
}


//  The sweep hands over an unsent row, claimed for us.
static int
s_on_swept (void *arg, const casm_event_t *event)
{
    casm_publisher_t *self = arg;
    delivery_t *delivery = s_delivery_new (event);
    if (!delivery)
        return -1;

    delivery->swept = 1;
    const char *error = NULL;
    if (casm_producer_send (self->producer, event, delivery, &error)) {
        s_send_failed (self, event, error);
        free (delivery);
        return -1;
    }
    self->swept_in_flight++;
    return 0;
}


//  PING: add our state to the body so far; 503 when Kafka is down.
static void
s_ping (casm_publisher_t *self, casm_work_t **work_p)
{
    int64_t now = zclock_mono ();
    if (!casm_producer_up (self->producer) && now >= self->next_probe) {
        self->next_probe = now + PROBE_INTERVAL_MS;
        casm_producer_probe (self->producer, PROBE_TIMEOUT_MS);
    }
    int up = casm_producer_up (self->producer);

    size_t size;
    const char *text = casm_work_body (*work_p, &size);
    json_t *body = json_loadb (text, size, 0, NULL);
    if (!json_is_object (body)) {
        json_decref (body);
        body = json_object ();
    }
    json_object_set_new (body, "publisher", json_string ("up"));
    json_object_set_new (body, "kafka", json_string (up ? "up" : "down"));
    char *answer = json_dumps (body, JSON_COMPACT);
    json_decref (body);
    casm_stage_reply (self->stage, work_p, up ? 200 : 503, 0,
                      answer ? answer : "{}", answer ? strlen (answer) : 2);
    free (answer);
}


//  A committed change: publish its event, answer when Kafka has it.
static void
s_publish (casm_publisher_t *self, casm_work_t **work_p)
{
    casm_work_t *work = *work_p;
    casm_event_t event;
    const char *error = "no event frame";
    if (!work->event
    ||  casm_event_parse ((const char *) zframe_data (work->event),
                          zframe_size (work->event), &event, &error)) {
        //  The row, if there is one, stays unsent: the sweep sends it from
        //  the database.
        int suppressed = s_limit (&self->malformed_errors);
        if (suppressed >= 0)
            casm_error (work->header.request_id,
                        json_pack ("{s:s,s:i}", "error", error,
                                   "suppressed", suppressed),
                        "malformed event frame from the worker");
        s_answer (self, work_p);
        return;
    }

    //  The sweep has it already (the unit was held up for longer than the
    //  sweep's age): it is on its way.
    if (casm_outbox_claim (self->outbox, event.outbox_id)) {
        s_answer (self, work_p);
        return;
    }

    delivery_t *delivery = s_delivery_new (&event);
    if (!delivery) {
        casm_outbox_release (self->outbox, event.outbox_id);
        s_answer (self, work_p);
        return;
    }
    if (casm_producer_send (self->producer, &event, delivery, &error)) {
        s_send_failed (self, &event, error);
        casm_outbox_release (self->outbox, event.outbox_id);
        free (delivery);
        s_answer (self, work_p);
        return;
    }
    delivery->work = work;
    *work_p = NULL;
    delivery->reply_at = zclock_mono () + self->config.publish_timeout_ms;
    s_waiting_append (self, delivery);
}


static void
s_handle (casm_publisher_t *self, casm_work_t **work_p)
{
    casm_work_t *work = *work_p;
    if (work->header.version != CASM_MSG_VERSION) {
        casm_warn (NULL, json_pack ("{s:i}", "version",
                                    work->header.version),
                   "unit with an unknown message version");
        size_t size;
        char *body = casm_error_body (500, CASM_ERR_INTERNAL,
                                      "Unknown message version.", NULL,
                                      NULL, NULL, &size);
        casm_stage_reply (self->stage, work_p, 500, 0, body ? body : "{}",
                          body ? size : 2);
        free (body);
        return;
    }
    if (work->header.op == CASM_OP_PING)
        s_ping (self, work_p);
    else
        s_publish (self, work_p);
}


//  Live units whose reply time has come are answered; their events go on
//  in librdkafka and are marked sent if they arrive.
static void
s_answer_late (casm_publisher_t *self)
{
    int64_t now = zclock_mono ();
    while (self->first && self->first->reply_at <= now) {
        delivery_t *delivery = self->first;
        s_waiting_remove (self, delivery);
        s_answer (self, &delivery->work);
    }
}


casm_publisher_t *
casm_publisher_new (const casm_publisher_config_t *config)
{
    casm_publisher_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->config = *config;

    casm_producer_config_t producer = {
        .brokers = config->kafka_brokers,
        .topic = config->kafka_topic,
        .client_id = config->client_id,
        .linger_ms = config->linger_ms,
        .message_timeout_ms = config->message_timeout_ms,
        .delivered = s_on_delivered,
        .arg = self
    };
    casm_outbox_config_t outbox = {
        .database_url = config->database_url,
        .sweep_ms = config->sweep_ms,
        .sweep_age_ms = config->sweep_age_ms,
        .retention_s = config->retention_s,
        .backlog_ms = casm_metrics_http_process () ? BACKLOG_MS : 0,
        .swept = s_on_swept,
        .arg = self
    };
    self->producer = casm_producer_new (&producer);
    self->outbox = casm_outbox_new (&outbox);
    self->stage = casm_stage_new (CASM_QUEUE_PUBLISHER, config->credit);
    if (!self->producer || !self->outbox || !self->stage) {
        casm_error (NULL, NULL, "cannot start the publisher");
        casm_publisher_destroy (&self);
        return NULL;
    }
    return self;
}


void
casm_publisher_destroy (casm_publisher_t **self_p)
{
    casm_publisher_t *self = *self_p;
    if (!self)
        return;

    //  The producer goes first: its last delivery reports still answer
    //  units and release claims.
    casm_producer_destroy (&self->producer);
    while (self->first) {
        delivery_t *delivery = self->first;
        s_waiting_remove (self, delivery);
        casm_work_destroy (&delivery->work);
        free (delivery);
    }
    casm_outbox_destroy (&self->outbox);
    casm_stage_destroy (&self->stage);
    free (self);
    *self_p = NULL;
}


static void
s_drain_start (casm_publisher_t *self, int exit_status)
{
    self->draining = 1;
    self->exit_status = exit_status;
    self->drain_deadline = zclock_mono () + self->config.shutdown_grace_ms;
    casm_stage_drain (self->stage);
    casm_info (NULL, json_pack ("{s:i,s:i}",
                                "inFlight",
                                casm_producer_in_flight (self->producer),
                                "graceMs", self->config.shutdown_grace_ms),
               "draining");
}


//  Drained when no unit waits, Kafka has reported on every message, and
//  delivered rows are marked sent (unless PostgreSQL is away: then the
//  sweep sends them again one day); and not before DRAIN_LINGER_MS, so
//  that units the broker sent before it heard us say goodbye still come
//  in and are answered.
static int
s_drained (casm_publisher_t *self)
{
    int64_t drain_start = self->drain_deadline
                        - self->config.shutdown_grace_ms;
    return zclock_mono () - drain_start >= DRAIN_LINGER_MS
        && !self->first
        && casm_producer_in_flight (self->producer) == 0
        && (casm_outbox_unmarked (self->outbox) == 0
        ||  !casm_outbox_connected (self->outbox));
}


//  How long the poll may wait: until the next reply time, the outbox's
//  next job, or the end of the grace period, at most LOOP_WAIT_MS.
static int
s_wait_ms (casm_publisher_t *self)
{
    int64_t now = zclock_mono ();
    int wait = casm_outbox_wait_ms (self->outbox, LOOP_WAIT_MS);
    if (self->first) {
        int64_t until = self->first->reply_at - now;
        if (until < wait)
            wait = until > 0 ? (int) until : 0;
    }
    if (self->draining && self->drain_deadline - now < wait)
        wait = self->drain_deadline > now
             ? (int) (self->drain_deadline - now) : 0;
    return wait;
}


static int
s_sweep_limit (casm_publisher_t *self)
{
    if (self->draining)
        return 0;
    int limit = self->config.sweep_batch - self->swept_in_flight;
    return limit > 0 ? limit : 0;
}


int
casm_publisher_run (casm_publisher_t *self, volatile sig_atomic_t *signals)
{
    void *socket = zsock_resolve (casm_stage_socket (self->stage));
    casm_info (NULL, json_pack ("{s:s,s:i,s:i}",
                                "topic", self->config.kafka_topic,
                                "credit", self->config.credit,
                                "publishTimeoutMs",
                                self->config.publish_timeout_ms),
               "started");

    while (1) {
        if (*signals >= 2) {
            casm_warn (NULL, json_pack ("{s:i}", "inFlight",
                       casm_producer_in_flight (self->producer)),
                       "second signal: stopping now");
            return 1;
        }
        if (*signals == 1 && !self->draining)
            s_drain_start (self, 0);
        if (casm_producer_fatal (self->producer) && !self->draining)
            s_drain_start (self, 1);
        if (self->draining
        &&  (s_drained (self) || zclock_mono () >= self->drain_deadline))
            break;

        zmq_pollitem_t items [4] = {
            { socket, 0, ZMQ_POLLIN, 0 },
            { NULL, casm_producer_fd (self->producer), ZMQ_POLLIN, 0 }
        };
        int count = 2;
        short events;
        int fd = casm_outbox_socket (self->outbox, &events);
        if (fd >= 0)
            items [count++] = (zmq_pollitem_t) { NULL, fd, events, 0 };
        casm_metrics_http_t *metrics = casm_metrics_http_process ();
        if (metrics)
            items [count++] = (zmq_pollitem_t) {
                NULL, casm_metrics_http_fd (metrics), ZMQ_POLLIN, 0 };

        //  The answers of the last turn leave together. Units of a bundle
        //  already here do not make the socket readable: then the poll
        //  does not wait.
        casm_stage_flush (self->stage);
        int wait = casm_stage_waiting (self->stage) ? 0 : s_wait_ms (self);
        if (zmq_poll (items, count, wait) < 0) {
            if (errno == EINTR)
                continue;
            casm_error (NULL, NULL, "poll failed: %s", zmq_strerror (errno));
            self->exit_status = 1;
            break;
        }

        //  Served every turn, not only when the pipe says so: cheap, and
        //  proof against a missed wake-up.
        casm_producer_serve (self->producer);
        if (fd >= 0 && items [2].revents)
            casm_outbox_serve (self->outbox);
        casm_metrics_http_serve (metrics);

        for (int taken = 0; taken < RECV_BURST
             && casm_stage_readable (self->stage); taken++) {
            casm_work_t *work = casm_stage_recv (self->stage);
            if (work)
                s_handle (self, &work);
        }

        s_answer_late (self);
        casm_stage_tick (self->stage);
        casm_outbox_tick (self->outbox, s_sweep_limit (self));
    }

    //  Whatever Kafka has not taken by now stays in the outbox.
    s_answer_late (self);
    while (self->first) {
        delivery_t *delivery = self->first;
        s_waiting_remove (self, delivery);
        s_answer (self, &delivery->work);
    }
    casm_stage_flush (self->stage);
    casm_info (NULL, json_pack ("{s:i,s:i}",
                                "undelivered",
                                casm_producer_in_flight (self->producer),
                                "unmarked",
                                casm_outbox_unmarked (self->outbox)),
               "stopped");
    return self->exit_status;
}
