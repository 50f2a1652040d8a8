/*  test_producer: the publisher's Kafka side (publisher/casm_producer.h).

    The event frame is the worker's word on what to publish, so parsing it
    must take exactly the value bytes after the first newline and refuse
    anything it cannot publish faithfully: a refused frame is answered and
    left to the sweep, a wrongly accepted one would put a bad event on
    Kafka. The headers are the OCS.io contract of DESIGN.md 3. The last
    tests run the producer against librdkafka's mock cluster inside the
    test process, to see delivery reports arrive through the wake-up pipe
    and the message land with its key, value and headers.                */

#include "casm_producer.h"

#include <check.h>
#include <czmq.h>
#include <librdkafka/rdkafka_mock.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define META "{\"outboxId\":12,\"transactionId\":\"tx-1\"," \
             "\"requestId\":\"req-1\",\"operation\":\"createCustomer\"," \
             "\"key\":\"ref-1\"}"

//  Parses text (size from strlen) and expects it to be refused.
static void
s_assert_refused (const char *text)
{
    casm_event_t event;
    const char *error = NULL;
    ck_assert_msg (casm_event_parse (text, strlen (text), &event, &error)
                   == -1, "accepted: %s", text);
    ck_assert_ptr_nonnull (error);
    ck_assert_int_eq (event.outbox_id, 0);
    ck_assert_ptr_null (event.value);
}

START_TEST (test_parse_valid)
{
    const char *frame = META "\n{\"refId\":\"ref-1\",\"version\":3}";
    casm_event_t event;
    ck_assert_int_eq (casm_event_parse (frame, strlen (frame), &event, NULL),
                      0);
    ck_assert_int_eq (event.outbox_id, 12);
    ck_assert_str_eq (event.transaction_id, "tx-1");
    ck_assert_str_eq (event.request_id, "req-1");
    ck_assert_str_eq (event.operation, "createCustomer");
    ck_assert_str_eq (event.key, "ref-1");
    ck_assert_ptr_eq (event.value, strchr (frame, '\n') + 1);
    ck_assert_uint_eq (event.value_size,
                       strlen ("{\"refId\":\"ref-1\",\"version\":3}"));
}
END_TEST

//  The value is taken byte for byte: later newlines, spacing and bytes
//  that are not JSON at all belong to it, and nothing is NUL-terminated.
START_TEST (test_parse_value_byte_for_byte)
{
    const char value [] = "{ \"a\" :\n\"b\\n\" }\n\x00\xff";
    size_t value_size = sizeof value - 1;
    char frame [512];
    size_t meta_size = strlen (META);
    memcpy (frame, META, meta_size);
    frame [meta_size] = '\n';
    memcpy (frame + meta_size + 1, value, value_size);

    casm_event_t event;
    ck_assert_int_eq (casm_event_parse (frame, meta_size + 1 + value_size,
                                        &event, NULL), 0);
    ck_assert_uint_eq (event.value_size, value_size);
    ck_assert_int_eq (memcmp (event.value, value, value_size), 0);
}
END_TEST

START_TEST (test_parse_frame_shape_refused)
{
    s_assert_refused ("");
    s_assert_refused (META);                    // no newline
    s_assert_refused (META "\n");               // empty value
    s_assert_refused ("\n{}");                  // empty meta data
    s_assert_refused ("not json\n{}");
    s_assert_refused ("[1,2]\n{}");
    s_assert_refused ("\"text\"\n{}");

    casm_event_t event;
    const char *error = NULL;
    ck_assert_int_eq (casm_event_parse (NULL, 0, &event, &error), -1);
    ck_assert_ptr_nonnull (error);
}
END_TEST

START_TEST (test_parse_outbox_id_refused)
{
    s_assert_refused ("{\"transactionId\":\"t\",\"requestId\":\"r\","
                      "\"operation\":\"o\",\"key\":\"k\"}\n{}");
    s_assert_refused ("{\"outboxId\":0,\"transactionId\":\"t\","
                      "\"requestId\":\"r\",\"operation\":\"o\","
                      "\"key\":\"k\"}\n{}");
    s_assert_refused ("{\"outboxId\":-4,\"transactionId\":\"t\","
                      "\"requestId\":\"r\",\"operation\":\"o\","
                      "\"key\":\"k\"}\n{}");
    s_assert_refused ("{\"outboxId\":\"12\",\"transactionId\":\"t\","
                      "\"requestId\":\"r\",\"operation\":\"o\","
                      "\"key\":\"k\"}\n{}");
    s_assert_refused ("{\"outboxId\":1.5,\"transactionId\":\"t\","
                      "\"requestId\":\"r\",\"operation\":\"o\","
                      "\"key\":\"k\"}\n{}");
}
END_TEST

//  Each string field missing, of the wrong type, empty, or holding a NUL
//  that would cut it short in a header.
START_TEST (test_parse_string_fields_refused)
{
    const char *fields [] = {
        "transactionId", "requestId", "operation", "key"
    };
    const char *bad_values [] = {
        NULL, "5", "null", "\"\"", "\"a\\u0000b\"", "{}"
    };
    for (size_t f = 0; f < 4; f++)
        for (size_t v = 0; v < sizeof bad_values / sizeof *bad_values;
             v++) {
            char frame [512];
            size_t at = (size_t) snprintf (frame, sizeof frame,
                                           "{\"outboxId\":1");
            for (size_t i = 0; i < 4; i++) {
                if (i != f)
                    at += (size_t) snprintf (frame + at, sizeof frame - at,
                                             ",\"%s\":\"x\"", fields [i]);
                else
                if (bad_values [v])
                    at += (size_t) snprintf (frame + at, sizeof frame - at,
                                             ",\"%s\":%s", fields [i],
                                             bad_values [v]);
            }
            snprintf (frame + at, sizeof frame - at, "}\n{}");
            s_assert_refused (frame);
        }
}
END_TEST

//  Each text field at its limit is taken, one byte more is refused; so is
//  meta data longer than CASM_EVENT_META_MAX.
START_TEST (test_parse_limits)
{
    char long_id [CASM_EVENT_REQUEST_ID_MAX + 2];
    char frame [8192];

    memset (long_id, 'r', CASM_EVENT_REQUEST_ID_MAX);
    long_id [CASM_EVENT_REQUEST_ID_MAX] = 0;
    snprintf (frame, sizeof frame, "{\"outboxId\":1,\"transactionId\":\"t\","
              "\"requestId\":\"%s\",\"operation\":\"o\",\"key\":\"k\"}\n{}",
              long_id);
    casm_event_t event;
    ck_assert_int_eq (casm_event_parse (frame, strlen (frame), &event, NULL),
                      0);
    ck_assert_str_eq (event.request_id, long_id);

    strcat (long_id, "r");
    snprintf (frame, sizeof frame, "{\"outboxId\":1,\"transactionId\":\"t\","
              "\"requestId\":\"%s\",\"operation\":\"o\",\"key\":\"k\"}\n{}",
              long_id);
    s_assert_refused (frame);

    char key [CASM_EVENT_ID_MAX + 2];
    memset (key, 'k', CASM_EVENT_ID_MAX + 1);
    key [CASM_EVENT_ID_MAX + 1] = 0;
    snprintf (frame, sizeof frame, "{\"outboxId\":1,\"transactionId\":\"t\","
              "\"requestId\":\"r\",\"operation\":\"o\",\"key\":\"%s\"}\n{}",
              key);
    s_assert_refused (frame);

    //  Valid fields, padded with an unknown member past the meta limit.
    char padding [CASM_EVENT_META_MAX + 1];
    memset (padding, 'p', CASM_EVENT_META_MAX);
    padding [CASM_EVENT_META_MAX] = 0;
    snprintf (frame, sizeof frame, "{\"outboxId\":1,\"transactionId\":\"t\","
              "\"requestId\":\"r\",\"operation\":\"o\",\"key\":\"k\","
              "\"pad\":\"%s\"}\n{}", padding);
    s_assert_refused (frame);
}
END_TEST

START_TEST (test_event_set)
{
    casm_event_t event;
    ck_assert_int_eq (casm_event_set (&event, 7, "tx", "req", "op", "key",
                                      "{}", 2), 0);
    ck_assert_int_eq (event.outbox_id, 7);
    ck_assert_str_eq (event.transaction_id, "tx");
    ck_assert_str_eq (event.key, "key");
    ck_assert_uint_eq (event.value_size, 2);

    ck_assert_int_eq (casm_event_set (&event, 0, "tx", "req", "op", "key",
                                      "{}", 2), -1);
    ck_assert_int_eq (casm_event_set (&event, 7, "", "req", "op", "key",
                                      "{}", 2), -1);
    ck_assert_int_eq (casm_event_set (&event, 7, "tx", NULL, "op", "key",
                                      "{}", 2), -1);
    ck_assert_int_eq (casm_event_set (&event, 7, "tx", "req", "op", "key",
                                      "", 0), -1);
    ck_assert_int_eq (event.outbox_id, 0);
}
END_TEST

//  Asserts the five OCS.io headers of an event with these ids, in order.
static void
s_assert_headers (const rd_kafka_headers_t *headers, const char *tx,
                  const char *operation, const char *request_id)
{
    const char *expected [5][2] = {
        { "X-Ocs-Io-transaction-id", tx },
        { "X-Ocs-Io-message-code", "customer" },
        { "X-Ocs-Io-message-payload", "CustomerEx" },
        { "X-Ocs-Io-operation", operation },
        { "X-Ocs-Io-request-id", request_id }
    };
    ck_assert_uint_eq (rd_kafka_header_cnt (headers), 5);
    for (size_t i = 0; i < 5; i++) {
        const char *name;
        const void *value;
        size_t size;
        ck_assert_int_eq (rd_kafka_header_get_all (headers, i, &name,
                                                   &value, &size),
                          RD_KAFKA_RESP_ERR_NO_ERROR);
        ck_assert_str_eq (name, expected [i][0]);
        ck_assert_uint_eq (size, strlen (expected [i][1]));
        ck_assert_int_eq (memcmp (value, expected [i][1], size), 0);
    }
}

START_TEST (test_headers)
{
    const char *frame = META "\n{}";
    casm_event_t event;
    ck_assert_int_eq (casm_event_parse (frame, strlen (frame), &event, NULL),
                      0);
    rd_kafka_headers_t *headers = casm_event_headers (&event);
    s_assert_headers (headers, "tx-1", "createCustomer", "req-1");
    rd_kafka_headers_destroy (headers);
}
END_TEST

//  The delivery reports the producer under test hands back.
typedef struct {
    int count;
    void *opaque;
    const char *error;
} reports_t;

static void
s_on_delivered (void *arg, void *opaque, const char *error)
{
    reports_t *reports = arg;
    reports->count++;
    reports->opaque = opaque;
    reports->error = error;
}

//  Serves the producer when its pipe wakes, until a report or timeout.
static void
s_wait_report (casm_producer_t *producer, reports_t *reports, int timeout)
{
    int64_t deadline = zclock_mono () + timeout;
    while (reports->count == 0 && zclock_mono () < deadline) {
        struct pollfd item = {
            .fd = casm_producer_fd (producer), .events = POLLIN
        };
        poll (&item, 1, 100);
        casm_producer_serve (producer);
    }
}

START_TEST (test_produce_to_mock_cluster)
{
    //  A mock cluster hosted by a handle of its own, with one topic of one
    //  partition so the message is found at offset 0.
    char error [512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new ();
    rd_kafka_conf_set (conf, "log_level", "0", error, sizeof error);
    rd_kafka_t *host = rd_kafka_new (RD_KAFKA_PRODUCER, conf, error,
                                     sizeof error);
    ck_assert_ptr_nonnull (host);
    rd_kafka_mock_cluster_t *cluster = rd_kafka_mock_cluster_new (host, 1);
    ck_assert_ptr_nonnull (cluster);
    ck_assert_int_eq (rd_kafka_mock_topic_create (cluster, "events", 1, 1),
                      0);
    const char *brokers = rd_kafka_mock_cluster_bootstraps (cluster);

    reports_t reports = { 0 };
    casm_producer_config_t config = {
        .brokers = brokers, .topic = "events", .linger_ms = 0,
        .message_timeout_ms = 10000, .delivered = s_on_delivered,
        .arg = &reports
    };
    casm_producer_t *producer = casm_producer_new (&config);
    ck_assert_ptr_nonnull (producer);
    ck_assert (!casm_producer_up (producer));

    const char *frame = META "\n{\"refId\":\"ref-1\"}";
    casm_event_t event;
    ck_assert_int_eq (casm_event_parse (frame, strlen (frame), &event, NULL),
                      0);
    int opaque;
    ck_assert_int_eq (casm_producer_send (producer, &event, &opaque, NULL),
                      0);
    ck_assert_int_eq (casm_producer_in_flight (producer), 1);
    s_wait_report (producer, &reports, 10000);
    ck_assert_int_eq (reports.count, 1);
    ck_assert_ptr_eq (reports.opaque, &opaque);
    ck_assert_ptr_null (reports.error);
    ck_assert_int_eq (casm_producer_in_flight (producer), 0);
    ck_assert (casm_producer_up (producer));
    casm_producer_destroy (&producer);
    ck_assert_ptr_null (producer);

    //  Read it back.
    conf = rd_kafka_conf_new ();
    rd_kafka_conf_set (conf, "bootstrap.servers", brokers, error,
                       sizeof error);
    rd_kafka_conf_set (conf, "group.id", "test", error, sizeof error);
    rd_kafka_t *consumer = rd_kafka_new (RD_KAFKA_CONSUMER, conf, error,
                                         sizeof error);
    ck_assert_ptr_nonnull (consumer);
    rd_kafka_topic_partition_list_t *partitions =
        rd_kafka_topic_partition_list_new (1);
    rd_kafka_topic_partition_list_add (partitions, "events", 0)->offset =
        RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign (consumer, partitions);
    rd_kafka_topic_partition_list_destroy (partitions);

    rd_kafka_message_t *message = NULL;
    int64_t deadline = zclock_mono () + 10000;
    while (zclock_mono () < deadline) {
        message = rd_kafka_consumer_poll (consumer, 100);
        if (message && !message->err)
            break;
        if (message)
            rd_kafka_message_destroy (message);
        message = NULL;
    }
    ck_assert_ptr_nonnull (message);
    ck_assert_uint_eq (message->key_len, 5);
    ck_assert_int_eq (memcmp (message->key, "ref-1", 5), 0);
    ck_assert_uint_eq (message->len, event.value_size);
    ck_assert_int_eq (memcmp (message->payload, event.value, message->len),
                      0);
    rd_kafka_headers_t *headers = NULL;
    ck_assert_int_eq (rd_kafka_message_headers (message, &headers), 0);
    s_assert_headers (headers, "tx-1", "createCustomer", "req-1");
    rd_kafka_message_destroy (message);

    rd_kafka_consumer_close (consumer);
    rd_kafka_destroy (consumer);
    rd_kafka_mock_cluster_destroy (cluster);
    rd_kafka_destroy (host);
}
END_TEST

//  A producer that cannot reach Kafka: the probe says so within its bound,
//  and destroying it still reports the queued message, as failed.
START_TEST (test_unreachable_kafka)
{
    reports_t reports = { 0 };
    casm_producer_config_t config = {
        .brokers = "127.0.0.1:1", .topic = "events", .linger_ms = 0,
        .message_timeout_ms = 60000, .delivered = s_on_delivered,
        .arg = &reports
    };
    casm_producer_t *producer = casm_producer_new (&config);
    ck_assert_ptr_nonnull (producer);

    int64_t started = zclock_mono ();
    ck_assert (!casm_producer_probe (producer, 250));
    ck_assert_int_lt (zclock_mono () - started, 1000);

    const char *frame = META "\n{}";
    casm_event_t event;
    ck_assert_int_eq (casm_event_parse (frame, strlen (frame), &event, NULL),
                      0);
    int opaque;
    ck_assert_int_eq (casm_producer_send (producer, &event, &opaque, NULL),
                      0);
    casm_producer_destroy (&producer);
    ck_assert_int_eq (reports.count, 1);
    ck_assert_ptr_eq (reports.opaque, &opaque);
    ck_assert_ptr_nonnull (reports.error);
}
END_TEST

int
main (void)
{
    Suite *suite = suite_create ("casm_producer");
    TCase *frame = tcase_create ("event frame");
    tcase_add_test (frame, test_parse_valid);
    tcase_add_test (frame, test_parse_value_byte_for_byte);
    tcase_add_test (frame, test_parse_frame_shape_refused);
    tcase_add_test (frame, test_parse_outbox_id_refused);
    tcase_add_test (frame, test_parse_string_fields_refused);
    tcase_add_test (frame, test_parse_limits);
    tcase_add_test (frame, test_event_set);
    tcase_add_test (frame, test_headers);
    suite_add_tcase (suite, frame);

    TCase *kafka = tcase_create ("kafka");
    tcase_set_timeout (kafka, 30);
    tcase_add_test (kafka, test_produce_to_mock_cluster);
    tcase_add_test (kafka, test_unreachable_kafka);
    suite_add_tcase (suite, kafka);

    SRunner *runner = srunner_create (suite);
    srunner_run_all (runner, CK_NORMAL);
    int failed = srunner_ntests_failed (runner);
    srunner_free (runner);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
