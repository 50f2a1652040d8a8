/*  casm-dwh-load: synthetic Business Transactions for the DWH benchmark and
    the end-to-end test.

    Produces count events, in the shape the publisher sends (DESIGN.md 3:
    key = refId, the five X-Ocs-Io headers, value = the customer JSON),
    spread over a number of customers. Event j belongs to customer
    j % customers and is that customer's step q = j / customers: version
    q + 1, createCustomer first, then updates of its custom attributes
    (every tenth an updateCustomerState). Transaction and customer ids are
    derived from the seed and j, so that the same seed produces the same
    events again (duplicates, for the deduplication to ignore), and a test
    can tell exactly what the warehouse must hold in the end.

        casm-dwh-load --count N [--customers C] [--seed S] [--first J]
                      [--attributes K] [--churn] [--brokers B] [--topic T]

    Each step changes a few attribute pairs (see s_value); --churn changes
    every value at every step, the worst case for the attribute index.

    KAFKA_BROKERS and KAFKA_TOPIC are the defaults of --brokers and --topic.
    Prints one JSON line with what was produced; exits 1 when any event was
    not acknowledged.                                                       */

#include <getopt.h>
#include <inttypes.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *s_segments [] = { "gold", "silver", "bronze" };

static long s_failed = 0;
static int s_churn = 0;

static void
s_on_delivery (rd_kafka_t *producer, const rd_kafka_message_t *message,
               void *opaque)
{
    if (message->err)
        s_failed++;
}

static void
s_now_rfc3339 (char *buffer, size_t size)
{
    struct timespec now;
    clock_gettime (CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r (&now.tv_sec, &tm);
    snprintf (buffer, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ",
              tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
              tm.tm_min, tm.tm_sec, (long) (now.tv_nsec / 1000000));
}

//  The customer JSON of event j (see the file's comment).
static int
s_value (char *buffer, size_t size, const char *ref_id, long customer,
         long step, int attributes, const char *created, const char *now)
{
    int used = snprintf (buffer, size,
        "{\"refId\":\"%s\",\"externalId\":\"LOAD-%ld\","
        "\"customName\":\"Customer %ld\",\"customerSegment\":null,"
        "\"state\":{\"state\":\"%s\",\"stateReason\":null,"
        "\"stateValidFrom\":\"%s\"},\"testCustomer\":false,"
        "\"customAttributes\":{\"segment\":\"%s\"",
        ref_id, customer, customer,
        step % 10 == 9 ? "SUSPENDED" : "ACTIVE", created,
        s_segments [(customer + step) % 3]);

    //  Like a CRM's updates, each step changes a few pairs: segment, the
    //  key a<k> with k = step % attributes, and the last key, which odd
    //  steps leave out. With churn every value changes at every step.
    int keys = step % 2 ? attributes - 1 : attributes;
    for (int k = 0; k < keys && used < (int) size; k++) {
        long generation = s_churn ? step
                                  : (step + attributes - k) / attributes;
        used += snprintf (buffer + used, size - (size_t) used,
                          ",\"a%d\":\"v%ld-%d\"", k, generation, k);
    }
    if (used < (int) size)
        used += snprintf (buffer + used, size - (size_t) used,
                          "},\"version\":%ld,\"createdAt\":\"%s\","
                          "\"modifiedAt\":\"%s\"}", step + 1, created, now);
    return used < (int) size ? used : -1;
}

static rd_kafka_t *
s_producer_new (const char *brokers)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new ();
    char reason [512];
    const char *settings [][2] = {
        { "bootstrap.servers", brokers },
        { "enable.idempotence", "true" },
        { "acks", "all" },
        { "linger.ms", "20" },
        { "batch.num.messages", "10000" },
        { "queue.buffering.max.messages", "500000" },
    };
    for (size_t i = 0; i < sizeof settings / sizeof settings [0]; i++)
        if (rd_kafka_conf_set (conf, settings [i][0], settings [i][1],
                               reason, sizeof reason) != RD_KAFKA_CONF_OK) {
            fprintf (stderr, "casm-dwh-load: %s\n", reason);
            rd_kafka_conf_destroy (conf);
            return NULL;
        }
    rd_kafka_conf_set_dr_msg_cb (conf, s_on_delivery);
    rd_kafka_t *producer = rd_kafka_new (RD_KAFKA_PRODUCER, conf, reason,
                                         sizeof reason);
    if (!producer) {
        fprintf (stderr, "casm-dwh-load: %s\n", reason);
        rd_kafka_conf_destroy (conf);
    }
    return producer;
}

//  Produces one event, waiting while librdkafka's queue is full.
static int
s_produce (rd_kafka_t *producer, const char *topic, uint32_t seed, long j,
           long customers, int attributes, const char *created)
{
    long customer = j % customers;
    long step = j / customers;
    char ref_id [64], transaction_id [64], request_id [64], now [96];
    snprintf (ref_id, sizeof ref_id, "%08" PRIx32 "-0000-4000-8000-%012lx",
              seed, customer);
    snprintf (transaction_id, sizeof transaction_id,
              "%08" PRIx32 "-0001-4000-8000-%012lx", seed, j);
    snprintf (request_id, sizeof request_id, "load-%" PRIu32 "-%ld", seed,
              j);
    s_now_rfc3339 (now, sizeof now);
    const char *operation = step == 0 ? "createCustomer"
                          : step % 10 == 9 ? "updateCustomerState"
                          : "updateCustomerCustomAttributes";

    char value [4096];
    int size = s_value (value, sizeof value, ref_id, customer, step,
                        attributes, created, now);
    if (size < 0)
        return -1;

    while (1) {
        rd_kafka_headers_t *headers = rd_kafka_headers_new (5);
        rd_kafka_header_add (headers, "X-Ocs-Io-transaction-id", -1,
                             transaction_id, -1);
        rd_kafka_header_add (headers, "X-Ocs-Io-message-code", -1,
                             "customer", -1);
        rd_kafka_header_add (headers, "X-Ocs-Io-message-payload", -1,
                             "CustomerEx", -1);
        rd_kafka_header_add (headers, "X-Ocs-Io-operation", -1, operation,
                             -1);
        rd_kafka_header_add (headers, "X-Ocs-Io-request-id", -1, request_id,
                             -1);
        rd_kafka_resp_err_t error = rd_kafka_producev (
            producer, RD_KAFKA_V_TOPIC (topic),
            RD_KAFKA_V_KEY (ref_id, strlen (ref_id)),
            RD_KAFKA_V_VALUE (value, (size_t) size),
            RD_KAFKA_V_MSGFLAGS (RD_KAFKA_MSG_F_COPY),
            RD_KAFKA_V_HEADERS (headers), RD_KAFKA_V_END);
        if (!error)
            return 0;
        rd_kafka_headers_destroy (headers);
        if (error != RD_KAFKA_RESP_ERR__QUEUE_FULL) {
            fprintf (stderr, "casm-dwh-load: produce failed: %s\n",
                     rd_kafka_err2str (error));
            return -1;
        }
        rd_kafka_poll (producer, 100);
    }
}

int
main (int argc, char *argv [])
{
    const char *brokers = getenv ("KAFKA_BROKERS");
    const char *topic = getenv ("KAFKA_TOPIC");
    if (!topic || !*topic)
        topic = "ocs.business-transactions";
    long count = 0, customers = 1000, first = 0;
    int attributes = 4;
    uint32_t seed = 1;

    static struct option options [] = {
        { "brokers", required_argument, NULL, 'b' },
        { "topic", required_argument, NULL, 't' },
        { "count", required_argument, NULL, 'n' },
        { "customers", required_argument, NULL, 'c' },
        { "seed", required_argument, NULL, 's' },
        { "first", required_argument, NULL, 'f' },
        { "attributes", required_argument, NULL, 'a' },
        { "churn", no_argument, NULL, 'x' },
        { NULL, 0, NULL, 0 }
    };
    int option;
    while ((option = getopt_long (argc, argv, "b:t:n:c:s:f:a:x", options,
                                  NULL)) != -1) {
        switch (option) {
            case 'b': brokers = optarg; break;
            case 't': topic = optarg; break;
            case 'n': count = atol (optarg); break;
            case 'c': customers = atol (optarg); break;
            case 's': seed = (uint32_t) strtoul (optarg, NULL, 10); break;
            case 'f': first = atol (optarg); break;
            case 'a': attributes = atoi (optarg); break;
            case 'x': s_churn = 1; break;
            default: return 2;
        }
    }
    if (!brokers || !*brokers || count < 0 || customers < 1 || first < 0
    ||  attributes < 1 || attributes > 64) {
        fprintf (stderr, "usage: casm-dwh-load --count N [--customers C] "
                 "[--seed S] [--first J] [--attributes 1..64] [--churn] "
                 "[--brokers B] [--topic T]\n");
        return 2;
    }

    rd_kafka_t *producer = s_producer_new (brokers);
    if (!producer)
        return 1;

    char created [96];
    s_now_rfc3339 (created, sizeof created);
    struct timespec start, end;
    clock_gettime (CLOCK_MONOTONIC, &start);
    int rc = 0;
    for (long j = first; j < first + count && rc == 0; j++) {
        rc = s_produce (producer, topic, seed, j, customers, attributes,
                        created);
        rd_kafka_poll (producer, 0);
    }
    if (rd_kafka_flush (producer, 120000) != RD_KAFKA_RESP_ERR_NO_ERROR)
        rc = -1;
    clock_gettime (CLOCK_MONOTONIC, &end);
    double seconds = (double) (end.tv_sec - start.tv_sec)
                     + (double) (end.tv_nsec - start.tv_nsec) / 1e9;
    printf ("{\"produced\":%ld,\"failed\":%ld,\"seconds\":%.3f}\n", count,
            s_failed, seconds);
    rd_kafka_destroy (producer);
    return rc == 0 && s_failed == 0 ? 0 : 1;
}
