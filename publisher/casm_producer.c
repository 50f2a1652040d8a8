/*  casm_producer: the Kafka producer of the publisher.

    The producer is idempotent with acks=all, so a retried send never
    duplicates or reorders an event within a partition. librdkafka works
    in its own threads; everything it has to tell us (delivery reports,
    errors, its log lines) goes to its main queue, which wakes a pipe that
    the publisher's loop polls, and is served on the loop's thread by
    casm_producer_serve(). So callbacks never race the loop's state.     */

#define _GNU_SOURCE
#include "casm_producer.h"
#include "casm_log.h"

#include <czmq.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <string.h>
#include <unistd.h>

//  Warnings that can repeat (one per failed connection attempt) are
//  written at most once per this many milliseconds.
#define WARN_INTERVAL_MS 5000

struct casm_producer_t {
    rd_kafka_t *handle;
    rd_kafka_queue_t *main_queue;
    char *topic;
    int pipe [2];               // main queue events wake pipe [0]
    casm_delivery_fn *delivered;
    void *arg;
    int in_flight;
    int up;                     // 1 up, 0 down, -1 not known yet
    int fatal;
    int64_t next_error_log;     // rate limit for error_cb warnings
    int errors_suppressed;
};


//  Copies a JSON string member into buffer of max + 1 bytes. Returns -1
//  when it is missing, not a string, empty, too long or holds a NUL.

static int
s_copy_member (json_t *object, const char *name, char *buffer, size_t max)
{
    json_t *member = json_object_get (object, name);
    if (!json_is_string (member))
        return -1;

    const char *text = json_string_value (member);
    size_t length = json_string_length (member);
    if (length == 0 || length > max || strlen (text) != length)
        return -1;

    memcpy (buffer, text, length + 1);
    return 0;
}


int
casm_event_parse (const char *frame, size_t size, casm_event_t *event,
                  const char **error)
{
    const char *reason = NULL;
    memset (event, 0, sizeof *event);

    const char *newline = frame ? memchr (frame, '\n', size) : NULL;
    if (!newline) {
        reason = "no newline after the meta data";
        goto fail;
    }
    size_t meta_size = (size_t) (newline - frame);
    if (meta_size > CASM_EVENT_META_MAX) {
        reason = "meta data too long";
        goto fail;
    }
    if (newline + 1 == frame + size) {
        reason = "empty value";
        goto fail;
    }

    json_t *meta = json_loadb (frame, meta_size, 0, NULL);
    if (!json_is_object (meta)) {
        json_decref (meta);
        reason = "meta data is not a JSON object";
        goto fail;
    }
    json_t *outbox_id = json_object_get (meta, "outboxId");
    if (!json_is_integer (outbox_id)
    ||  json_integer_value (outbox_id) <= 0)
        reason = "outboxId is not a positive integer";
    else
    if (s_copy_member (meta, "transactionId", event->transaction_id,
                       CASM_EVENT_ID_MAX))
        reason = "bad transactionId";
    else
    if (s_copy_member (meta, "requestId", event->request_id,
                       CASM_EVENT_REQUEST_ID_MAX))
        reason = "bad requestId";
    else
    if (s_copy_member (meta, "operation", event->operation,
                       CASM_EVENT_OPERATION_MAX))
        reason = "bad operation";
    else
    if (s_copy_member (meta, "key", event->key, CASM_EVENT_ID_MAX))
        reason = "bad key";
    else
        event->outbox_id = json_integer_value (outbox_id);
    json_decref (meta);
    if (reason)
        goto fail;

    event->value = newline + 1;
    event->value_size = size - meta_size - 1;
    return 0;

fail:
    memset (event, 0, sizeof *event);
    if (error)
        *error = reason;
    return -1;
}


static int
s_copy_string (char *buffer, const char *text, size_t max)
{
    size_t length = text ? strlen (text) : 0;
    if (length == 0 || length > max)
        return -1;
    memcpy (buffer, text, length + 1);
    return 0;
}


int
casm_event_set (casm_event_t *event, int64_t outbox_id,
                const char *transaction_id, const char *request_id,
                const char *operation, const char *key, const char *value,
                size_t value_size)
{
    memset (event, 0, sizeof *event);
    if (outbox_id <= 0
    ||  s_copy_string (event->transaction_id, transaction_id,
                       CASM_EVENT_ID_MAX)
    ||  s_copy_string (event->request_id, request_id,
                       CASM_EVENT_REQUEST_ID_MAX)
    ||  s_copy_string (event->operation, operation,
                       CASM_EVENT_OPERATION_MAX)
    ||  s_copy_string (event->key, key, CASM_EVENT_ID_MAX)
    ||  !value || value_size == 0) {
        memset (event, 0, sizeof *event);
        return -1;
    }
    event->outbox_id = outbox_id;
    event->value = value;
    event->value_size = value_size;
    return 0;
}


rd_kafka_headers_t *
casm_event_headers (const casm_event_t *event)
{
    rd_kafka_headers_t *headers = rd_kafka_headers_new (5);
    rd_kafka_header_add (headers, "X-Ocs-Io-transaction-id", -1,
                         event->transaction_id, -1);
    rd_kafka_header_add (headers, "X-Ocs-Io-message-code", -1,
                         "customer", -1);
    rd_kafka_header_add (headers, "X-Ocs-Io-message-payload", -1,
                         "CustomerEx", -1);
    rd_kafka_header_add (headers, "X-Ocs-Io-operation", -1,
                         event->operation, -1);
    rd_kafka_header_add (headers, "X-Ocs-Io-request-id", -1,
                         event->request_id, -1);
    return headers;
}


static void
s_set_up (casm_producer_t *self, int up, const char *reason)
{
    if (self->up == up)
        return;

    int known = self->up >= 0;
    self->up = up;
    if (up && known)
        casm_warn (NULL, NULL, "kafka is up again");
    else
    if (up)
        casm_info (NULL, NULL, "kafka is up");
    else
        casm_warn (NULL, json_pack ("{s:s}", "reason", reason),
                   "kafka is down: events wait in the outbox");
}


static void
s_on_delivery (rd_kafka_t *handle, const rd_kafka_message_t *message,
               void *opaque)
{
    casm_producer_t *self = opaque;
    self->in_flight--;

    const char *error = NULL;
    if (message->err)
        error = rd_kafka_err2str (message->err);
    else
        s_set_up (self, 1, NULL);
    self->delivered (self->arg, message->_private, error);
}


static void
s_on_error (rd_kafka_t *handle, int code, const char *reason, void *opaque)
{
    casm_producer_t *self = opaque;

    if (code == RD_KAFKA_RESP_ERR__FATAL) {
        char text [512];
        rd_kafka_resp_err_t fatal = rd_kafka_fatal_error (handle, text,
                                                          sizeof text);
        self->fatal = 1;
        casm_error (NULL, json_pack ("{s:s}", "reason", text),
                    "kafka producer failed for good: %s",
                    rd_kafka_err2name (fatal));
        return;
    }
    if (code == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
        s_set_up (self, 0, reason);
        return;
    }

    //  Connection failures and the like repeat while Kafka is away and
    //  librdkafka recovers from them by itself.
    int64_t now = zclock_mono ();
    if (now < self->next_error_log) {
        self->errors_suppressed++;
        return;
    }
    casm_warn (NULL, json_pack ("{s:s,s:s,s:i}",
                                "error", rd_kafka_err2name (code),
                                "reason", reason,
                                "suppressed", self->errors_suppressed),
               "kafka client error");
    self->errors_suppressed = 0;
    self->next_error_log = now + WARN_INTERVAL_MS;
}


//  librdkafka's own log lines, served on our thread (log.queue), become
//  JSON lines like ours. Syslog levels: 0-3 error, 4 warning, 5-6 info.

static void
s_on_log (const rd_kafka_t *handle, int level, const char *facility,
          const char *text)
{
    //  Connection failures (facility FAIL) also come to s_on_error, which
    //  says it once in a while; here they would repeat on every attempt.
    casm_log_level_t ours = level <= 4 ? CASM_LOG_WARN
                          : level <= 6 ? CASM_LOG_INFO : CASM_LOG_DEBUG;
    if (strcmp (facility, "FAIL") == 0)
        ours = CASM_LOG_DEBUG;
    if (!casm_log_enabled (ours))
        return;
    casm_log (ours, NULL, json_pack ("{s:s}", "facility", facility),
              "librdkafka: %s", text);
}


static int
s_set (rd_kafka_conf_t *conf, const char *name, const char *value)
{
    char error [512];
    if (rd_kafka_conf_set (conf, name, value, error, sizeof error)
        == RD_KAFKA_CONF_OK)
        return 0;
    casm_error (NULL, json_pack ("{s:s,s:s}", "name", name, "value", value),
                "invalid kafka setting: %s", error);
    return -1;
}


//  The largest message the producer sends (librdkafka's own default is
//  about 1 MB). A customer's JSON is at most about 6.4 MB: 256 pairs of a
//  128-byte key and a 4096-byte value, written six bytes a byte when the
//  value is all control characters (\u0001), which a merge can build up
//  over several requests. Anything larger would be refused for ever and
//  sit in the outbox. Kafka itself must take as much (message.max.bytes
//  on the broker, max.message.bytes on the topic; compose.yaml sets both).
#define CASM_PRODUCER_MESSAGE_MAX "8388608"

casm_producer_t *
casm_producer_new (const casm_producer_config_t *config)
{
    assert (config->brokers && config->topic && config->delivered);
    casm_producer_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->pipe [0] = self->pipe [1] = -1;
    self->up = -1;
    self->delivered = config->delivered;
    self->arg = config->arg;
    self->topic = strdup (config->topic);

    //  A message not delivered within message.timeout.ms gets a failed
    //  report and waits in the outbox for the sweep. Reconnecting at least
    //  every 2 s (librdkafka's default backs off to 10 s) lets events flow
    //  soon after Kafka is back.
    char linger [32], timeout [32];
    snprintf (linger, sizeof linger, "%d", config->linger_ms);
    snprintf (timeout, sizeof timeout, "%d", config->message_timeout_ms);
    rd_kafka_conf_t *conf = rd_kafka_conf_new ();
    if (s_set (conf, "bootstrap.servers", config->brokers)
    ||  s_set (conf, "client.id", config->client_id ? config->client_id
                                                    : "casm-publisher")
    ||  s_set (conf, "enable.idempotence", "true")
    ||  s_set (conf, "acks", "all")
    ||  s_set (conf, "linger.ms", linger)
    ||  s_set (conf, "message.timeout.ms", timeout)
    ||  s_set (conf, "reconnect.backoff.max.ms", "2000")
    ||  s_set (conf, "message.max.bytes", CASM_PRODUCER_MESSAGE_MAX)
    ||  s_set (conf, "log.queue", "true")) {
        rd_kafka_conf_destroy (conf);
        casm_producer_destroy (&self);
        return NULL;
    }
    rd_kafka_conf_set_opaque (conf, self);
    rd_kafka_conf_set_dr_msg_cb (conf, s_on_delivery);
    rd_kafka_conf_set_error_cb (conf, s_on_error);
    rd_kafka_conf_set_log_cb (conf, s_on_log);

    char error [512];
    self->handle = rd_kafka_new (RD_KAFKA_PRODUCER, conf, error,
                                 sizeof error);
    if (!self->handle) {
        rd_kafka_conf_destroy (conf);
        casm_error (NULL, NULL, "cannot create the kafka producer: %s",
                    error);
        casm_producer_destroy (&self);
        return NULL;
    }

    //  The pipe must not block: librdkafka writes to it while holding the
    //  queue's lock.
    if (pipe2 (self->pipe, O_NONBLOCK | O_CLOEXEC) != 0) {
        casm_error (NULL, NULL, "cannot create a pipe: %s",
                    strerror (errno));
        casm_producer_destroy (&self);
        return NULL;
    }
    self->main_queue = rd_kafka_queue_get_main (self->handle);
    rd_kafka_set_log_queue (self->handle, NULL);
    rd_kafka_queue_io_event_enable (self->main_queue, self->pipe [1], "k", 1);
    return self;
}


void
casm_producer_destroy (casm_producer_t **self_p)
{
    casm_producer_t *self = *self_p;
    if (!self)
        return;

    if (self->handle) {
        //  Whatever was not delivered stays unsent in the outbox; its
        //  reports must still be served, since their opaques are owned by
        //  the caller.
        rd_kafka_purge (self->handle, RD_KAFKA_PURGE_F_QUEUE
                                    | RD_KAFKA_PURGE_F_INFLIGHT);
        int64_t deadline = zclock_mono () + 2000;
        while (self->in_flight > 0 && zclock_mono () < deadline)
            rd_kafka_poll (self->handle, 10);
        rd_kafka_queue_io_event_enable (self->main_queue, -1, NULL, 0);
        rd_kafka_queue_destroy (self->main_queue);
        rd_kafka_destroy (self->handle);
    }
    if (self->pipe [0] >= 0)
        close (self->pipe [0]);
    if (self->pipe [1] >= 0)
        close (self->pipe [1]);
    free (self->topic);
    free (self);
    *self_p = NULL;
}


int
casm_producer_send (casm_producer_t *self, const casm_event_t *event,
                    void *opaque, const char **error)
{
    rd_kafka_headers_t *headers = casm_event_headers (event);
    rd_kafka_resp_err_t code = rd_kafka_producev (
        self->handle,
        RD_KAFKA_V_TOPIC (self->topic),
        RD_KAFKA_V_KEY (event->key, strlen (event->key)),
        RD_KAFKA_V_VALUE ((void *) event->value, event->value_size),
        RD_KAFKA_V_MSGFLAGS (RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_HEADERS (headers),
        RD_KAFKA_V_OPAQUE (opaque),
        RD_KAFKA_V_END);
    if (code) {
        rd_kafka_headers_destroy (headers);
        if (error)
            *error = rd_kafka_err2str (code);
        return -1;
    }
    self->in_flight++;
    return 0;
}


int
casm_producer_fd (casm_producer_t *self)
{
    return self->pipe [0];
}


void
casm_producer_serve (casm_producer_t *self)
{
    //  Empty the pipe first: an event queued after this wakes it again.
    char buffer [256];
    while (read (self->pipe [0], buffer, sizeof buffer) > 0)
        ;
    rd_kafka_poll (self->handle, 0);
}


int
casm_producer_in_flight (casm_producer_t *self)
{
    return self->in_flight;
}


int
casm_producer_up (casm_producer_t *self)
{
    return self->up == 1;
}


int
casm_producer_probe (casm_producer_t *self, int timeout_ms)
{
    const struct rd_kafka_metadata *metadata = NULL;
    rd_kafka_resp_err_t code = rd_kafka_metadata (self->handle, 0, NULL,
                                                  &metadata, timeout_ms);
    if (code == RD_KAFKA_RESP_ERR_NO_ERROR) {
        rd_kafka_metadata_destroy (metadata);
        s_set_up (self, 1, NULL);
    }
    else
        s_set_up (self, 0, rd_kafka_err2str (code));
    return self->up == 1;
}


int
casm_producer_fatal (casm_producer_t *self)
{
    return self->fatal;
}
