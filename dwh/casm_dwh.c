/*  casm_dwh: the DWH ingester's consumer loop. See casm_dwh.h.

    One thread, one loop. The partitions are spread over a few lanes
    (partition modulo the number of database connections); each lane has
    its own PostgreSQL connection, a batch being gathered and a batch with
    PostgreSQL, sent without waiting (libpq's asynchronous calls). So the
    loop reads Kafka and checks the next batch while PostgreSQL stores the
    previous ones, and the database works on several batches at once. A
    partition always goes to the same lane, and a lane has one batch out at
    a time, so each partition is stored in order; lanes share no customer
    (the key is the customer) and no counter row (the metrics are per
    partition), so they never wait for each other.

    librdkafka's callbacks (rebalance, errors) run inside
    rd_kafka_consumer_poll, on this thread. Offsets are never stored
    automatically (enable.auto.offset.store=false): an offset is stored and
    committed only after the database transaction that holds its message
    has committed. The loop sleeps in poll(2) on the lanes' connections and
    on a pipe that librdkafka writes to when messages arrive.               */

#define _GNU_SOURCE                     // pipe2

#include "casm_dwh.h"
#include "casm_ingest.h"
#include "casm_log.h"
#include "casm_metrics_http.h"

#include <fcntl.h>
#include <librdkafka/rdkafka.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define IDLE_POLL_MS 100
#define REPORT_MS 60000
//  A batch is full at batch_max messages or at this many bytes, so that
//  large messages cannot make a batch (and its SQL text) huge.
#define BATCH_BYTES_MAX (4 * 1024 * 1024)

typedef struct {
    rd_kafka_message_t **messages;      // in the order received
    size_t size;
    size_t bytes;                       // keys and values
} s_batch_t;

typedef struct {
    int id;
    casm_ingest_t *ingest;
    s_batch_t filling;                  // being gathered
    int64_t due;                        // when the filling batch is due
    s_batch_t flight;                   // with PostgreSQL, or to send again
    int sent;                           // the flight is with PostgreSQL now
    int64_t retry_at;                   // it failed: when to send it again
    int64_t backoff_ms;
    casm_ingest_message_t *described;   // the flight as casm_ingest sees it
    casm_ingest_header_t *headers;
    size_t header_max;
} s_lane_t;

struct casm_dwh_t {
    casm_dwh_config_t config;
    rd_kafka_t *consumer;
    rd_kafka_queue_t *queue;            // the consumer's queue
    int wake [2];                       // librdkafka writes: messages wait
    s_lane_t *lanes;
    int lane_count;
    int paused;                         // a lane waits for the database
    int draining;

    casm_ingest_stats_t totals;         // since the last report
    size_t batches;
    int64_t reported_at;
    size_t stored_batches;              // since start
};

static int64_t
s_clock_ms (void)
{
    struct timespec now;
    clock_gettime (CLOCK_MONOTONIC, &now);
    return (int64_t) now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

//  The partitions as a JSON array of numbers, for the logs.
static json_t *
s_partition_list (const rd_kafka_topic_partition_list_t *partitions)
{
    json_t *list = json_array ();
    for (int i = 0; partitions && i < partitions->cnt; i++)
        json_array_append_new (list, json_integer (
            partitions->elems [i].partition));
    return list;
}


//  ---------------------------------------------------------------------
//  Batches and lanes

static s_lane_t *
s_lane_of (casm_dwh_t *self, int32_t partition)
{
    return &self->lanes [(partition < 0 ? -partition : partition)
                         % self->lane_count];
}

static void
s_batch_clear (s_batch_t *batch)
{
    for (size_t i = 0; i < batch->size; i++)
        rd_kafka_message_destroy (batch->messages [i]);
    batch->size = 0;
    batch->bytes = 0;
}

static int
s_batch_full (casm_dwh_t *self, const s_batch_t *batch)
{
    return batch->size >= (size_t) self->config.batch_max
           || batch->bytes >= BATCH_BYTES_MAX;
}

//  Drops the batch's messages of these partitions; returns how many.
static size_t
s_batch_drop (s_batch_t *batch,
              const rd_kafka_topic_partition_list_t *partitions)
{
    size_t kept = 0, dropped = 0;
    batch->bytes = 0;
    for (size_t i = 0; i < batch->size; i++) {
        rd_kafka_message_t *message = batch->messages [i];
        if (rd_kafka_topic_partition_list_find (
                partitions, rd_kafka_topic_name (message->rkt),
                message->partition)) {
            rd_kafka_message_destroy (message);
            dropped++;
        }
        else {
            batch->messages [kept++] = message;
            batch->bytes += message->len + message->key_len;
        }
    }
    batch->size = kept;
    return dropped;
}

//  Pauses or resumes the whole assignment.
static void
s_pause (casm_dwh_t *self, int pause)
{
    if (self->paused == pause)
        return;
    self->paused = pause;
    rd_kafka_topic_partition_list_t *assignment = NULL;
    if (rd_kafka_assignment (self->consumer, &assignment) == 0) {
        if (pause)
            rd_kafka_pause_partitions (self->consumer, assignment);
        else
            rd_kafka_resume_partitions (self->consumer, assignment);
        rd_kafka_topic_partition_list_destroy (assignment);
    }
    if (pause)
        casm_warn (NULL, NULL, "database unavailable: consumption paused, "
                   "the batch is kept and retried");
    else
        casm_info (NULL, NULL, "database available: consumption resumed");
}

//  Describes the lane's flight for casm_ingest. Returns -1 when out of
//  memory.
static int
s_describe (s_lane_t *lane)
{
    s_batch_t *batch = &lane->flight;
    size_t total = 0;
    for (size_t i = 0; i < batch->size; i++) {
        rd_kafka_headers_t *headers;
        if (rd_kafka_message_headers (batch->messages [i], &headers) == 0)
            total += rd_kafka_header_cnt (headers);
    }
    if (total > lane->header_max) {
        casm_ingest_header_t *grown = realloc (lane->headers,
                                               total * sizeof *grown);
        if (!grown)
            return -1;
        lane->headers = grown;
        lane->header_max = total;
    }

    size_t used = 0;
    for (size_t i = 0; i < batch->size; i++) {
        rd_kafka_message_t *message = batch->messages [i];
        casm_ingest_message_t *described = &lane->described [i];
        *described = (casm_ingest_message_t) {
            .partition = message->partition,
            .offset = message->offset,
            .key = message->key,
            .key_size = message->key_len,
            .value = message->payload,
            .value_size = message->len,
            .headers = lane->headers + used,
        };
        rd_kafka_headers_t *headers;
        if (rd_kafka_message_headers (message, &headers) != 0)
            continue;
        const char *name;
        const void *value;
        size_t size;
        for (size_t h = 0; rd_kafka_header_get_all (headers, h, &name,
                                                    &value, &size) == 0;
             h++) {
            lane->headers [used++] = (casm_ingest_header_t) {
                name, value, size };
            described->header_count++;
        }
    }
    return 0;
}

//  Stores and commits the offsets of a stored batch (the next offset of
//  each partition). A failed commit loses nothing: the messages come again
//  and the warehouse ignores them.
static void
s_commit (casm_dwh_t *self, s_batch_t *batch)
{
    rd_kafka_topic_partition_list_t *offsets =
        rd_kafka_topic_partition_list_new (8);
    for (size_t i = 0; i < batch->size; i++) {
        rd_kafka_message_t *message = batch->messages [i];
        const char *topic = rd_kafka_topic_name (message->rkt);
        rd_kafka_topic_partition_t *entry =
            rd_kafka_topic_partition_list_find (offsets, topic,
                                                message->partition);
        if (!entry)
            entry = rd_kafka_topic_partition_list_add (offsets, topic,
                                                       message->partition);
        if (message->offset + 1 > entry->offset)
            entry->offset = message->offset + 1;
    }

    rd_kafka_offsets_store (self->consumer, offsets);
    rd_kafka_resp_err_t failure = rd_kafka_commit (self->consumer, offsets,
                                                   0);
    if (failure)
        casm_warn (NULL, json_pack ("{ss}", "error",
                                    rd_kafka_err2name (failure)),
                   "offset commit failed (the batch is stored; it will "
                   "be read again and ignored): %s",
                   rd_kafka_err2str (failure));
    rd_kafka_topic_partition_list_destroy (offsets);
}

//  The lane's flight could not be stored: keep it and try again later.
static void
s_lane_failed (casm_dwh_t *self, s_lane_t *lane)
{
    lane->sent = 0;
    lane->retry_at = s_clock_ms () + lane->backoff_ms;
    lane->backoff_ms *= 2;
    if (lane->backoff_ms > BACKOFF_MAX_MS)
        lane->backoff_ms = BACKOFF_MAX_MS;
    s_pause (self, 1);
}

//  Seconds since the batch's oldest message was produced (its Kafka
//  timestamp), 0 when none has one: how far the warehouse trails.
static double
s_batch_age (const s_batch_t *batch)
{
    int64_t oldest = INT64_MAX;
    for (size_t i = 0; i < batch->size; i++) {
        int64_t stamp = rd_kafka_message_timestamp (batch->messages [i],
                                                    NULL);
        if (stamp >= 0 && stamp < oldest)
            oldest = stamp;
    }
    struct timespec now;
    clock_gettime (CLOCK_REALTIME, &now);
    double age = now.tv_sec + now.tv_nsec / 1e9 - oldest / 1e3;
    return oldest == INT64_MAX || age < 0 ? 0 : age;
}

//  The lane's flight is stored: commit its offsets and let it go.
static void
s_lane_stored (casm_dwh_t *self, s_lane_t *lane,
               const casm_ingest_stats_t *stats)
{
    if (self->config.crash_after && ++self->stored_batches
                                    == (size_t) self->config.crash_after) {
        casm_warn (NULL, NULL, "crashing as asked (DWH_TEST_CRASH_AFTER_"
                   "BATCHES): stored, offsets not committed");
        _exit (137);
    }
    casm_metrics_dwh_batch (lane->flight.size, stats->events, stats->dead,
                            s_batch_age (&lane->flight));
    s_commit (self, &lane->flight);
    casm_debug (NULL, json_pack ("{sisIsIsIsI}", "lane", lane->id,
                "messages", (json_int_t) lane->flight.size,
                "stored", (json_int_t) stats->stored,
                "dead", (json_int_t) stats->dead,
                "databaseMs", (json_int_t) (stats->database_us / 1000)),
                "batch stored");
    s_batch_clear (&lane->flight);
    lane->sent = 0;
    lane->retry_at = 0;
    lane->backoff_ms = BACKOFF_MIN_MS;
    self->totals.events += stats->events;
    self->totals.stored += stats->stored;
    self->totals.moved += stats->moved;
    self->totals.dead += stats->dead;
    self->batches++;
}

//  Sends the lane's flight to PostgreSQL.
static void
s_lane_send (casm_dwh_t *self, s_lane_t *lane)
{
    if (s_describe (lane) != 0) {
        casm_error (NULL, NULL, "out of memory describing a batch");
        s_lane_failed (self, lane);
        return;
    }
    if (casm_ingest_send (lane->ingest, lane->described,
                          lane->flight.size) != 0) {
        s_lane_failed (self, lane);
        return;
    }
    lane->sent = 1;
}

//  Reads PostgreSQL's answer when there is one.
static void
s_lane_poll (casm_dwh_t *self, s_lane_t *lane)
{
    casm_ingest_stats_t stats;
    int rc = casm_ingest_poll (lane->ingest, &stats);
    if (rc == 0)
        s_lane_stored (self, lane, &stats);
    else
    if (rc < 0)
        s_lane_failed (self, lane);
}

//  Waits for the lane's flight to be stored or to fail.
static void
s_lane_wait (casm_dwh_t *self, s_lane_t *lane)
{
    while (lane->sent) {
        struct pollfd ready = { casm_ingest_socket (lane->ingest), POLLIN,
                                0 };
        if (ready.fd >= 0)
            poll (&ready, 1, IDLE_POLL_MS);
        s_lane_poll (self, lane);
    }
}

//  Moves the lane on: reads an answer, sends a batch again after a
//  failure, or sends the gathered batch once it is full or due.
static void
s_lane_step (casm_dwh_t *self, s_lane_t *lane, int64_t now)
{
    if (lane->sent)
        s_lane_poll (self, lane);
    if (lane->sent)
        return;

    if (lane->flight.size > 0) {
        if (now >= lane->retry_at)
            s_lane_send (self, lane);
        return;
    }
    if (lane->filling.size > 0
    &&  (s_batch_full (self, &lane->filling) || now >= lane->due
         || self->draining)) {
        s_batch_t swap = lane->flight;
        lane->flight = lane->filling;
        lane->filling = swap;
        s_lane_send (self, lane);
    }
}


//  ---------------------------------------------------------------------
//  librdkafka's callbacks

//  librdkafka's own log lines, as casm log lines. Called from librdkafka's
//  threads; casm_log writes each line with one call.
static void
s_on_log (const rd_kafka_t *consumer, int level, const char *facility,
          const char *text)
{
    casm_log_level_t casm_level = level <= 4 ? CASM_LOG_WARN
                                : level <= 6 ? CASM_LOG_INFO
                                : CASM_LOG_DEBUG;
    if (casm_log_enabled (casm_level))
        casm_log (casm_level, NULL, json_pack ("{ss}", "facility", facility),
                  "kafka: %s", text);
}

static void
s_on_error (rd_kafka_t *consumer, int error, const char *reason,
            void *opaque)
{
    casm_log_level_t level = error == RD_KAFKA_RESP_ERR__FATAL
                             ? CASM_LOG_ERROR : CASM_LOG_WARN;
    casm_log (level, NULL, json_pack ("{ss}", "error",
                                      rd_kafka_err2name (error)),
              "kafka: %s", reason);
}

//  Partitions taken away: what is with PostgreSQL is finished (and its
//  offsets committed while the partitions are still ours); what is not
//  stored of theirs is dropped, uncommitted, for the next owner to read
//  again.
static void
s_revoke (casm_dwh_t *self, rd_kafka_topic_partition_list_t *partitions,
          int lost)
{
    size_t dropped = 0;
    for (int i = 0; i < self->lane_count; i++) {
        s_lane_t *lane = &self->lanes [i];
        s_lane_wait (self, lane);
        dropped += s_batch_drop (&lane->filling, partitions);
        dropped += s_batch_drop (&lane->flight, partitions);
        if (lane->flight.size == 0)
            lane->retry_at = 0;
    }
    if (dropped)
        casm_info (NULL, json_pack ("{sI}", "messages", (json_int_t) dropped),
                   "dropped unstored messages of revoked partitions");

    //  Whatever is stored but not committed (a commit failed) goes now.
    if (!lost) {
        rd_kafka_resp_err_t failure = rd_kafka_commit (self->consumer, NULL,
                                                       0);
        if (failure && failure != RD_KAFKA_RESP_ERR__NO_OFFSET)
            casm_warn (NULL, NULL, "commit on revocation failed: %s",
                       rd_kafka_err2str (failure));
    }
}

static void
s_on_rebalance (rd_kafka_t *consumer, rd_kafka_resp_err_t error,
                rd_kafka_topic_partition_list_t *partitions, void *opaque)
{
    casm_dwh_t *self = opaque;
    int cooperative = strcmp (rd_kafka_rebalance_protocol (consumer),
                              "COOPERATIVE") == 0;

    if (error == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        casm_info (NULL, json_pack ("{so}", "partitions",
                                    s_partition_list (partitions)),
                   "partitions assigned");
        if (cooperative) {
            rd_kafka_error_t *failure = rd_kafka_incremental_assign (
                consumer, partitions);
            if (failure) {
                casm_error (NULL, NULL, "incremental assign failed: %s",
                            rd_kafka_error_string (failure));
                rd_kafka_error_destroy (failure);
            }
        }
        else
            rd_kafka_assign (consumer, partitions);

        //  A partition keeps its pause across assignments: set it either
        //  way, to match the database's state now.
        if (self->paused)
            rd_kafka_pause_partitions (consumer, partitions);
        else
            rd_kafka_resume_partitions (consumer, partitions);
        return;
    }

    if (error == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
        int lost = rd_kafka_assignment_lost (consumer);
        casm_info (NULL, json_pack ("{sosb}", "partitions",
                                    s_partition_list (partitions),
                                    "lost", lost),
                   "partitions revoked");
        s_revoke (self, partitions, lost);
        if (cooperative) {
            rd_kafka_error_t *failure = rd_kafka_incremental_unassign (
                consumer, partitions);
            if (failure)
                rd_kafka_error_destroy (failure);
        }
        else
            rd_kafka_assign (consumer, NULL);
        return;
    }

    casm_warn (NULL, NULL, "rebalance failed: %s",
               rd_kafka_err2str (error));
    rd_kafka_assign (consumer, NULL);
}


//  ---------------------------------------------------------------------
//  Construction

static int
s_set (rd_kafka_conf_t *conf, const char *name, const char *value)
{
    char reason [512];
    if (rd_kafka_conf_set (conf, name, value, reason, sizeof reason)
        == RD_KAFKA_CONF_OK)
        return 0;
    casm_error (NULL, json_pack ("{ssss}", "setting", name, "value", value),
                "kafka configuration refused: %s", reason);
    return -1;
}

static rd_kafka_t *
s_consumer_new (casm_dwh_t *self)
{
    //  Memory stays bounded by the prefetch queue and by what one fetch
    //  may bring (librdkafka's default, 50 MB, is most of the footprint
    //  otherwise): a quarter of the queue, at least 2 MB.
    char session [32], queue [32], fetch [32];
    snprintf (session, sizeof session, "%d",
              self->config.session_timeout_ms);
    snprintf (queue, sizeof queue, "%d", self->config.queue_kbytes);
    int fetch_bytes = self->config.queue_kbytes / 4 * 1024;
    snprintf (fetch, sizeof fetch, "%d",
              fetch_bytes > 2097152 ? fetch_bytes : 2097152);

    rd_kafka_conf_t *conf = rd_kafka_conf_new ();
    int rc = 0;
    rc |= s_set (conf, "bootstrap.servers", self->config.kafka_brokers);
    rc |= s_set (conf, "group.id", self->config.group);
    rc |= s_set (conf, "client.id", self->config.instance);
    rc |= s_set (conf, "enable.auto.commit", "false");
    rc |= s_set (conf, "enable.auto.offset.store", "false");
    rc |= s_set (conf, "auto.offset.reset", "earliest");
    rc |= s_set (conf, "enable.partition.eof", "false");
    rc |= s_set (conf, "session.timeout.ms", session);
    rc |= s_set (conf, "queued.max.messages.kbytes", queue);
    rc |= s_set (conf, "fetch.max.bytes", fetch);
    if (rc != 0) {
        rd_kafka_conf_destroy (conf);
        return NULL;
    }
    rd_kafka_conf_set_log_cb (conf, s_on_log);
    rd_kafka_conf_set_error_cb (conf, s_on_error);
    rd_kafka_conf_set_rebalance_cb (conf, s_on_rebalance);
    rd_kafka_conf_set_opaque (conf, self);

    char reason [512];
    rd_kafka_t *consumer = rd_kafka_new (RD_KAFKA_CONSUMER, conf, reason,
                                         sizeof reason);
    if (!consumer) {
        casm_error (NULL, NULL, "cannot create the kafka consumer: %s",
                    reason);
        rd_kafka_conf_destroy (conf);
        return NULL;
    }
    //  Every event, rebalances included, comes through consumer_poll, and
    //  a byte on the pipe says that something is waiting there.
    rd_kafka_poll_set_consumer (consumer);
    self->queue = rd_kafka_queue_get_consumer (consumer);
    rd_kafka_queue_io_event_enable (self->queue, self->wake [1], "m", 1);
    return consumer;
}

static int
s_lanes_new (casm_dwh_t *self)
{
    self->lane_count = self->config.connections;
    self->lanes = calloc ((size_t) self->lane_count, sizeof *self->lanes);
    if (!self->lanes)
        return -1;
    size_t max = (size_t) self->config.batch_max;
    for (int i = 0; i < self->lane_count; i++) {
        s_lane_t *lane = &self->lanes [i];
        lane->id = i;
        lane->backoff_ms = BACKOFF_MIN_MS;
        lane->filling.messages = calloc (max, sizeof (void *));
        lane->flight.messages = calloc (max, sizeof (void *));
        lane->described = calloc (max, sizeof *lane->described);
        lane->ingest = casm_ingest_new (self->config.database_url,
                                        self->config.kafka_topic);
        if (!lane->filling.messages || !lane->flight.messages
        ||  !lane->described || !lane->ingest)
            return -1;
    }
    return 0;
}

//  Before each scrape: the lag grows while messages wait (the database
//  is down, a batch is slow).
static void
s_metrics_collect (void *arg)
{
    casm_dwh_t *self = arg;
    double age = 0;
    for (int i = 0; i < self->lane_count; i++) {
        double filling = s_batch_age (&self->lanes [i].filling);
        double flight = s_batch_age (&self->lanes [i].flight);
        age = filling > age ? filling : age;
        age = flight > age ? flight : age;
    }
    if (age > 0)
        casm_metrics_dwh_lag (age);
}

casm_dwh_t *
casm_dwh_new (const casm_dwh_config_t *config)
{
    casm_dwh_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->config = *config;
    self->wake [0] = self->wake [1] = -1;

    if (pipe2 (self->wake, O_NONBLOCK | O_CLOEXEC) != 0
    ||  s_lanes_new (self) != 0
    ||  !(self->consumer = s_consumer_new (self)))
        casm_dwh_destroy (&self);
    else
        casm_metrics_on_collect (NULL, s_metrics_collect, self);
    return self;
}

void
casm_dwh_destroy (casm_dwh_t **self_p)
{
    casm_dwh_t *self = *self_p;
    if (!self)
        return;
    casm_metrics_off_collect (NULL, s_metrics_collect, self);
    for (int i = 0; self->lanes && i < self->lane_count; i++) {
        s_lane_t *lane = &self->lanes [i];
        //  The connection goes first: a batch still with PostgreSQL is
        //  abandoned (rolled back) before its messages are freed.
        casm_ingest_destroy (&lane->ingest);
        if (lane->filling.messages)
            s_batch_clear (&lane->filling);
        if (lane->flight.messages)
            s_batch_clear (&lane->flight);
        free (lane->filling.messages);
        free (lane->flight.messages);
        free (lane->described);
        free (lane->headers);
    }
    free (self->lanes);
    if (self->queue) {
        rd_kafka_queue_io_event_enable (self->queue, -1, NULL, 0);
        rd_kafka_queue_destroy (self->queue);
    }
    if (self->consumer)
        rd_kafka_destroy_flags (self->consumer,
                                RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
    for (int i = 0; i < 2; i++)
        if (self->wake [i] >= 0)
            close (self->wake [i]);
    free (self);
    *self_p = NULL;
}


//  ---------------------------------------------------------------------
//  The loop

//  Takes a message from the consumer into its lane's batch.
static void
s_take (casm_dwh_t *self, rd_kafka_message_t *message)
{
    if (message->err) {
        casm_warn (NULL, json_pack ("{ss}", "error",
                                    rd_kafka_err2name (message->err)),
                   "kafka: %s", rd_kafka_message_errstr (message));
        rd_kafka_message_destroy (message);
        return;
    }
    s_lane_t *lane = s_lane_of (self, message->partition);
    if (lane->filling.size == (size_t) self->config.batch_max) {
        //  Only possible while paused, which should deliver nothing: go
        //  back to this offset, so that nothing is skipped.
        rd_kafka_topic_partition_list_t *back =
            rd_kafka_topic_partition_list_new (1);
        rd_kafka_topic_partition_list_add (
            back, rd_kafka_topic_name (message->rkt), message->partition)
            ->offset = message->offset;
        rd_kafka_error_t *failure = rd_kafka_seek_partitions (
            self->consumer, back, 1000);
        if (failure)
            rd_kafka_error_destroy (failure);
        rd_kafka_topic_partition_list_destroy (back);
        rd_kafka_message_destroy (message);
        return;
    }
    if (lane->filling.size == 0)
        lane->due = s_clock_ms () + self->config.batch_ms;
    lane->filling.messages [lane->filling.size++] = message;
    lane->filling.bytes += message->len + message->key_len;
}

//  A line now and then on what was done, when anything was.
static void
s_report (casm_dwh_t *self, int64_t now)
{
    if (now - self->reported_at < REPORT_MS)
        return;
    if (self->batches)
        casm_info (NULL, json_pack ("{sIsIsIsIsI}",
                   "batches", (json_int_t) self->batches,
                   "events", (json_int_t) self->totals.events,
                   "stored", (json_int_t) self->totals.stored,
                   "customersMoved", (json_int_t) self->totals.moved,
                   "deadLetters", (json_int_t) self->totals.dead),
                   "ingested since the last report");
    memset (&self->totals, 0, sizeof self->totals);
    self->batches = 0;
    self->reported_at = now;
}

//  True when every lane has room for one more message.
static int
s_room (casm_dwh_t *self)
{
    for (int i = 0; i < self->lane_count; i++)
        if (s_batch_full (self, &self->lanes [i].filling))
            return 0;
    return 1;
}

//  True when nothing is held: no message gathered, sent or to send.
static int
s_empty (casm_dwh_t *self)
{
    for (int i = 0; i < self->lane_count; i++)
        if (self->lanes [i].filling.size || self->lanes [i].flight.size)
            return 0;
    return 1;
}

//  Sleeps until PostgreSQL answers, messages arrive (when wake is set), a
//  batch is due or a retry is, at most IDLE_POLL_MS.
static void
s_sleep (casm_dwh_t *self, int64_t now, int wake)
{
    struct pollfd ready [2 + self->lane_count];
    nfds_t count = 0;
    int64_t timeout = IDLE_POLL_MS;
    if (wake)
        ready [count++] = (struct pollfd) { self->wake [0], POLLIN, 0 };
    int metrics = casm_metrics_http_fd (casm_metrics_http_process ());
    if (metrics >= 0)
        ready [count++] = (struct pollfd) { metrics, POLLIN, 0 };
    for (int i = 0; i < self->lane_count; i++) {
        s_lane_t *lane = &self->lanes [i];
        int fd = lane->sent ? casm_ingest_socket (lane->ingest) : -1;
        if (fd >= 0)
            ready [count++] = (struct pollfd) { fd, POLLIN, 0 };
        if (lane->filling.size && !lane->flight.size
        &&  lane->due - now < timeout)
            timeout = lane->due - now;
        if (lane->flight.size && !lane->sent
        &&  lane->retry_at - now < timeout)
            timeout = lane->retry_at - now;
    }
    poll (ready, count, (int) (timeout < 0 ? 0 : timeout));

    char drain [64];
    while (wake && read (self->wake [0], drain, sizeof drain) > 0)
        ;
}

//  Waits for the database at start, as long as it takes or until a
//  signal. Returns 0 when every lane is connected, 1 when the schema is
//  broken, 2 on a signal.
static int
s_wait_database (casm_dwh_t *self, volatile sig_atomic_t *signals)
{
    int64_t backoff = BACKOFF_MIN_MS;
    int connected = 0;
    while (!*signals) {
        int rc = casm_ingest_connect (self->lanes [connected].ingest);
        if (rc == -2)
            return 1;
        if (rc == 0 && ++connected == self->lane_count)
            return 0;
        if (rc == 0)
            continue;

        int64_t until = s_clock_ms () + backoff;
        while (!*signals && s_clock_ms () < until) {
            struct timespec pause = { 0, 50 * 1000000L };
            nanosleep (&pause, NULL);
            casm_metrics_http_serve (casm_metrics_http_process ());
        }
        backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS
                                               : backoff * 2;
    }
    return 2;
}

//  Leaves the group within the time left: commits what is stored, has the
//  assignment revoked and closes. Returns when closed or out of time.
static void
s_close (casm_dwh_t *self, int64_t deadline)
{
    rd_kafka_resp_err_t failure = rd_kafka_commit (self->consumer, NULL, 0);
    if (failure && failure != RD_KAFKA_RESP_ERR__NO_OFFSET)
        casm_warn (NULL, NULL, "final commit failed: %s",
                   rd_kafka_err2str (failure));

    rd_kafka_queue_t *queue = rd_kafka_queue_new (self->consumer);
    rd_kafka_error_t *error = rd_kafka_consumer_close_queue (self->consumer,
                                                             queue);
    if (error) {
        casm_warn (NULL, NULL, "closing the consumer failed: %s",
                   rd_kafka_error_string (error));
        rd_kafka_error_destroy (error);
    }
    else {
        //  The close hands its rebalance (the revocation) to this queue as
        //  an event; the rebalance callback does the work.
        while (!rd_kafka_consumer_closed (self->consumer)
               && s_clock_ms () < deadline) {
            rd_kafka_event_t *event = rd_kafka_queue_poll (queue,
                                                           IDLE_POLL_MS);
            if (event && rd_kafka_event_type (event)
                         == RD_KAFKA_EVENT_REBALANCE)
                s_on_rebalance (self->consumer, rd_kafka_event_error (event),
                                rd_kafka_event_topic_partition_list (event),
                                self);
            rd_kafka_event_destroy (event);
        }
        if (!rd_kafka_consumer_closed (self->consumer))
            casm_warn (NULL, NULL, "the consumer did not close within the "
                       "grace period");
    }
    rd_kafka_queue_destroy (queue);
}

//  Drops whatever is held, unstored and uncommitted, to be read again.
static void
s_abandon (casm_dwh_t *self)
{
    size_t held = 0;
    for (int i = 0; i < self->lane_count; i++) {
        s_lane_t *lane = &self->lanes [i];
        held += lane->filling.size + lane->flight.size;
        if (lane->sent) {
            //  Closing the connection rolls the batch back.
            casm_ingest_destroy (&lane->ingest);
            lane->sent = 0;
        }
        s_batch_clear (&lane->filling);
        s_batch_clear (&lane->flight);
    }
    casm_warn (NULL, json_pack ("{sI}", "messages", (json_int_t) held),
               "grace period over: messages left unstored and uncommitted, "
               "to be read again");
}

int
casm_dwh_run (casm_dwh_t *self, volatile sig_atomic_t *signals)
{
    int rc = s_wait_database (self, signals);
    if (rc == 1) {
        casm_error (NULL, NULL, "the warehouse schema cannot be migrated");
        return 1;
    }
    if (rc == 2) {
        casm_info (NULL, NULL, "stopped before the database was reached");
        return 0;
    }

    rd_kafka_topic_partition_list_t *topics =
        rd_kafka_topic_partition_list_new (1);
    rd_kafka_topic_partition_list_add (topics, self->config.kafka_topic,
                                       RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t failure = rd_kafka_subscribe (self->consumer,
                                                      topics);
    rd_kafka_topic_partition_list_destroy (topics);
    if (failure) {
        casm_error (NULL, NULL, "cannot subscribe to %s: %s",
                    self->config.kafka_topic, rd_kafka_err2str (failure));
        return 1;
    }
    casm_info (NULL, json_pack ("{sssssisisi}",
               "topic", self->config.kafka_topic,
               "group", self->config.group,
               "batchMax", self->config.batch_max,
               "batchMs", self->config.batch_ms,
               "connections", self->lane_count), "dwh started");
    self->reported_at = s_clock_ms ();

    int64_t drain_deadline = 0;
    while (1) {
        casm_metrics_http_serve (casm_metrics_http_process ());
        int64_t now = s_clock_ms ();
        if (*signals && !self->draining) {
            self->draining = 1;
            drain_deadline = now + self->config.grace_ms;
            casm_info (NULL, NULL, "draining: storing the batches in hand");
        }
        if (self->draining && s_empty (self))
            break;
        //  Keep a little of the grace period for leaving the group.
        if (self->draining && now >= drain_deadline - 1000) {
            s_abandon (self);
            break;
        }

        int retrying = 0;
        for (int i = 0; i < self->lane_count; i++) {
            s_lane_step (self, &self->lanes [i], now);
            retrying |= self->lanes [i].retry_at != 0;
        }
        s_pause (self, retrying);

        //  Take what librdkafka has; sleep when it has nothing. While
        //  paused, consumer_poll only serves the group (rebalances).
        int take = !self->draining && (self->paused || s_room (self));
        if (take) {
            rd_kafka_message_t *message = rd_kafka_consumer_poll (
                self->consumer, 0);
            if (message) {
                s_take (self, message);
                continue;
            }
        }
        s_report (self, now);
        s_sleep (self, s_clock_ms (), take);
    }

    int64_t close_deadline = drain_deadline ? drain_deadline
                                            : s_clock_ms () + 1000;
    if (close_deadline < s_clock_ms () + 500)
        close_deadline = s_clock_ms () + 500;
    s_close (self, close_deadline);
    s_report (self, s_clock_ms () + REPORT_MS);
    casm_info (NULL, NULL, "dwh stopped");
    return 0;
}
