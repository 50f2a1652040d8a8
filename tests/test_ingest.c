/*  test_ingest: casm_ingest against a real PostgreSQL.

    Needs CASM_TEST_DATABASE_URL (a database the suite may write to; it
    drops and recreates the schema dwh before every test). Without it the
    suite says so and exits 77, which CTest reports as skipped.

    Covered: a valid event lands in every table; a duplicate delivery
    changes nothing; an older version after a newer one moves neither the
    current customer nor the attribute index; malformed messages become
    dead letters and the good ones next to them are still stored; the
    metrics count each transaction once; PostgreSQL refusing one message
    does not block its batch; a database that is down is an error, not a
    crash; the asynchronous calls give the same result.                     */

#include "casm_ingest.h"

#include <check.h>
#include <libpq-fe.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define REF_A "11111111-1111-4111-8111-111111111111"
#define REF_B "22222222-2222-4222-8222-222222222222"
#define TOPIC "ocs.business-transactions"

static const char *s_url;

//  A message with the five headers of DESIGN.md 3, any of which may be
//  left out (NULL).
typedef struct {
    casm_ingest_header_t headers [5];
    casm_ingest_message_t message;
} s_message_t;

static void
s_build (s_message_t *self, int32_t partition, int64_t offset,
         const char *transaction_id, const char *operation,
         const char *request_id, const char *key, const char *value)
{
    memset (self, 0, sizeof *self);
    size_t count = 0;
    const char *names [5] = {
        CASM_HEADER_TRANSACTION_ID, CASM_HEADER_MESSAGE_CODE,
        CASM_HEADER_MESSAGE_PAYLOAD, CASM_HEADER_OPERATION,
        CASM_HEADER_REQUEST_ID };
    const char *values [5] = {
        transaction_id, "customer", "CustomerEx", operation, request_id };
    for (int i = 0; i < 5; i++)
        if (values [i])
            self->headers [count++] = (casm_ingest_header_t) {
                names [i], values [i], strlen (values [i]) };
    self->message = (casm_ingest_message_t) {
        .partition = partition, .offset = offset,
        .key = key, .key_size = key ? strlen (key) : 0,
        .value = value, .value_size = value ? strlen (value) : 0,
        .headers = self->headers, .header_count = count };
}

//  The customer JSON of DESIGN.md 2.2 (into a static buffer per slot).
static const char *
s_customer (int slot, const char *ref_id, int version,
            const char *attributes, const char *state)
{
    static char buffers [8][12000];
    snprintf (buffers [slot], sizeof buffers [slot],
              "{\"refId\":\"%s\",\"externalId\":\"CRM-%s\","
              "\"customName\":\"Name %d\",\"customerSegment\":null,"
              "\"state\":{\"state\":\"%s\",\"stateReason\":null,"
              "\"stateValidFrom\":\"2026-12-01T09:00:00.000Z\"},"
              "\"testCustomer\":false,\"customAttributes\":%s,"
              "\"version\":%d,\"createdAt\":\"2026-12-01T09:00:00.000Z\","
              "\"modifiedAt\":\"2026-12-03T18:00:%02d.123Z\"}",
              ref_id, ref_id, version, state, attributes, version,
              version % 60);
    return buffers [slot];
}

//  A transaction id that differs by n (one buffer per slot).
static const char *
s_tx (int slot, int n)
{
    static char buffers [16][40];
    snprintf (buffers [slot], sizeof buffers [slot],
              "0b9f3c7e-0000-4000-8000-%012d", n);
    return buffers [slot];
}

static PGconn *
s_admin (void)
{
    PGconn *connection = PQconnectdb (s_url);
    ck_assert_msg (PQstatus (connection) == CONNECTION_OK, "connect: %s",
                   PQerrorMessage (connection));
    return connection;
}

//  The first column of the first row of a query, as text ("" for NULL).
static char *
s_value (const char *sql)
{
    PGconn *connection = s_admin ();
    PGresult *result = PQexec (connection, sql);
    ck_assert_msg (PQresultStatus (result) == PGRES_TUPLES_OK, "%s: %s",
                   sql, PQerrorMessage (connection));
    ck_assert_msg (PQntuples (result) == 1, "%s: %d rows", sql,
                   PQntuples (result));
    char *value = strdup (PQgetvalue (result, 0, 0));
    PQclear (result);
    PQfinish (connection);
    return value;
}

static long
s_count (const char *sql)
{
    char *text = s_value (sql);
    long value = atol (text);
    free (text);
    return value;
}

static void
s_assert_text (const char *sql, const char *expected)
{
    char *text = s_value (sql);
    if (strlen (text) > 300)
        text [300] = 0;
    ck_assert_msg (strcmp (text, expected) == 0, "%s\n  got:      %s\n"
                   "  expected: %s", sql, text, expected);
    free (text);
}

//  A fresh schema and a connected ingester.
static casm_ingest_t *
s_fresh (void)
{
    PGconn *connection = s_admin ();
    PGresult *result = PQexec (connection,
        "SET client_min_messages = warning; "
        "DROP SCHEMA IF EXISTS dwh CASCADE");
    ck_assert_msg (PQresultStatus (result) == PGRES_COMMAND_OK, "%s",
                   PQerrorMessage (connection));
    PQclear (result);
    PQfinish (connection);

    casm_ingest_t *ingest = casm_ingest_new (s_url, TOPIC);
    ck_assert_ptr_nonnull (ingest);
    ck_assert_int_eq (casm_ingest_connect (ingest), 0);
    return ingest;
}

static casm_ingest_stats_t
s_ingest (casm_ingest_t *ingest, s_message_t *messages, size_t count)
{
    casm_ingest_message_t batch [16];
    ck_assert (count <= 16);
    for (size_t i = 0; i < count; i++)
        batch [i] = messages [i].message;
    casm_ingest_stats_t stats;
    ck_assert_int_eq (casm_ingest_batch (ingest, batch, count, &stats), 0);
    return stats;
}

//  Everything the warehouse holds, as one text, to see that nothing moved.
#define STATE_SQL \
    "SELECT (SELECT coalesce (string_agg (t::text, '|' ORDER BY " \
    "transaction_id), '') FROM dwh.business_transactions t) || '#' || " \
    "(SELECT coalesce (string_agg (c::text, '|' ORDER BY ref_id), '') " \
    "FROM dwh.customers c) || '#' || (SELECT coalesce (string_agg " \
    "(a::text, '|' ORDER BY ref_id, key), '') FROM dwh.custom_attributes " \
    "a) || '#' || (SELECT coalesce (string_agg (m::text, '|' ORDER BY " \
    "day, operation), '') FROM dwh.metrics_daily m) || '#' || (SELECT " \
    "count (*) FROM dwh.dead_letters)"


START_TEST (test_valid_event)
{
    casm_ingest_t *ingest = s_fresh ();
    s_message_t message;
    s_build (&message, 2, 40, s_tx (0, 1), "createCustomer", "req-1", REF_A,
             s_customer (0, REF_A, 1, "{\"segmentHint\":\"gold\","
                         "\"preferredChannel\":\"email\"}", "ACTIVE"));
    casm_ingest_stats_t stats = s_ingest (ingest, &message, 1);
    ck_assert_uint_eq (stats.events, 1);
    ck_assert_uint_eq (stats.stored, 1);
    ck_assert_uint_eq (stats.moved, 1);
    ck_assert_uint_eq (stats.dead, 0);

    s_assert_text ("SELECT operation || ' ' || request_id || ' ' || ref_id "
                   "|| ' ' || version || ' ' || kafka_partition || ' ' || "
                   "kafka_offset || ' ' || (event ->> 'externalId') FROM "
                   "dwh.business_transactions",
                   "createCustomer req-1 " REF_A " 1 2 40 CRM-" REF_A);
    s_assert_text ("SELECT external_id || ' ' || custom_name || ' ' || "
                   "state || ' ' || test_customer || ' ' || version || ' ' "
                   "|| custom_attributes::text || ' ' || (modified_at = "
                   "'2026-12-03T18:00:01.123Z') FROM dwh.customers",
                   "CRM-" REF_A " Name 1 ACTIVE false 1 {\"segmentHint\": "
                   "\"gold\", \"preferredChannel\": \"email\"} true");
    s_assert_text ("SELECT string_agg (key || '=' || value, ',' ORDER BY "
                   "key) FROM dwh.custom_attributes",
                   "preferredChannel=email,segmentHint=gold");
    s_assert_text ("SELECT operation || ' ' || count FROM "
                   "dwh.metrics_daily WHERE day = '2026-12-03'",
                   "createCustomer 1");
    s_assert_text ("SELECT topic || ' ' || kafka_partition || ' ' || "
                   "last_offset || ' ' || (last_event_time = "
                   "'2026-12-03T18:00:01.123Z') || ' ' || (lag_at_ingest "
                   "IS NOT NULL) FROM dwh.ingest_lag",
                   TOPIC " 2 40 true true");
    s_assert_text ("SELECT string_agg (ref_id::text, ',') FROM "
                   "dwh.customers_with_attribute ('segmentHint', 'gold')",
                   REF_A);
    casm_ingest_destroy (&ingest);
    ck_assert_ptr_null (ingest);
}
END_TEST

START_TEST (test_duplicate_changes_nothing)
{
    casm_ingest_t *ingest = s_fresh ();
    s_message_t messages [2];
    s_build (&messages [0], 0, 1, s_tx (0, 1), "createCustomer", "req-1",
             REF_A, s_customer (0, REF_A, 1, "{\"a\":\"1\"}", "ACTIVE"));
    s_build (&messages [1], 0, 2, s_tx (1, 2),
             "updateCustomerCustomAttributes", "req-2", REF_A,
             s_customer (1, REF_A, 2, "{\"a\":\"2\",\"b\":\"3\"}",
                         "ACTIVE"));
    s_ingest (ingest, messages, 2);
    char *before = s_value (STATE_SQL);

    //  The same messages again, as a redelivery after a crash would bring
    //  them (other offsets, same transactions), alone and twice in a batch.
    messages [0].message.offset = 7;
    messages [1].message.offset = 8;
    casm_ingest_stats_t stats = s_ingest (ingest, messages, 2);
    ck_assert_uint_eq (stats.events, 2);
    ck_assert_uint_eq (stats.stored, 0);
    ck_assert_uint_eq (stats.moved, 0);
    s_message_t twice [2] = { messages [1], messages [1] };
    twice [0].message.headers = twice [0].headers;
    twice [1].message.headers = twice [1].headers;
    stats = s_ingest (ingest, twice, 2);
    ck_assert_uint_eq (stats.stored, 0);

    char *after = s_value (STATE_SQL);
    ck_assert_str_eq (before, after);
    free (before);
    free (after);
    ck_assert_int_eq (s_count ("SELECT sum (count) FROM dwh.metrics_daily"),
                      2);
    casm_ingest_destroy (&ingest);
}
END_TEST

START_TEST (test_duplicate_within_a_batch)
{
    casm_ingest_t *ingest = s_fresh ();
    s_message_t messages [3];
    for (int i = 0; i < 3; i++)
        s_build (&messages [i], 1, 10 + i, s_tx (0, 5), "createCustomer",
                 "req-5", REF_B, s_customer (0, REF_B, 1, "{}", "ACTIVE"));
    casm_ingest_stats_t stats = s_ingest (ingest, messages, 3);
    ck_assert_uint_eq (stats.events, 3);
    ck_assert_uint_eq (stats.stored, 1);
    ck_assert_int_eq (s_count ("SELECT count (*) FROM "
                               "dwh.business_transactions"), 1);
    ck_assert_int_eq (s_count ("SELECT sum (count) FROM dwh.metrics_daily"),
                      1);
    ck_assert_int_eq (s_count ("SELECT last_offset FROM dwh.ingest_status"),
                      12);
    casm_ingest_destroy (&ingest);
}
END_TEST

START_TEST (test_older_version_ignored)
{
    casm_ingest_t *ingest = s_fresh ();
    s_message_t newer, older;
    s_build (&newer, 0, 5, s_tx (0, 2), "updateCustomerCustomAttributes",
             "req-2", REF_A, s_customer (0, REF_A, 2,
                                         "{\"tier\":\"gold\"}", "ACTIVE"));
    s_build (&older, 0, 6, s_tx (1, 1), "updateCustomerCustomAttributes",
             "req-1", REF_A, s_customer (1, REF_A, 1,
                                         "{\"tier\":\"bronze\",\"x\":\"y\"}",
                                         "SUSPENDED"));
    s_ingest (ingest, &newer, 1);
    char *customer = s_value ("SELECT c::text FROM dwh.customers c");
    casm_ingest_stats_t stats = s_ingest (ingest, &older, 1);
    ck_assert_uint_eq (stats.stored, 1);
    ck_assert_uint_eq (stats.moved, 0);

    //  The history has both; the current customer and its attributes are
    //  still version 2's.
    char *now = s_value ("SELECT c::text FROM dwh.customers c");
    ck_assert_str_eq (customer, now);
    free (customer);
    free (now);
    s_assert_text ("SELECT string_agg (key || '=' || value, ',' ORDER BY "
                   "key) FROM dwh.custom_attributes", "tier=gold");
    ck_assert_int_eq (s_count ("SELECT count (*) FROM "
                               "dwh.business_transactions"), 2);
    ck_assert_int_eq (s_count ("SELECT count (*) FROM "
                               "dwh.customers_with_attribute ('tier', "
                               "'bronze')"), 0);
    casm_ingest_destroy (&ingest);
}
END_TEST

START_TEST (test_reordered_within_a_batch)
{
    casm_ingest_t *ingest = s_fresh ();
    s_message_t messages [3];
    s_build (&messages [0], 0, 1, s_tx (0, 3), "updateCustomerState",
             "req-3", REF_A, s_customer (0, REF_A, 3, "{\"k\":\"3\"}",
                                         "SUSPENDED"));
    s_build (&messages [1], 0, 2, s_tx (1, 1), "createCustomer", "req-1",
             REF_A, s_customer (1, REF_A, 1, "{\"k\":\"1\",\"old\":\"x\"}",
                                "ACTIVE"));
    s_build (&messages [2], 0, 3, s_tx (2, 2),
             "updateCustomerCustomAttributes", "req-2", REF_A,
             s_customer (2, REF_A, 2, "{\"k\":\"2\"}", "ACTIVE"));
    s_ingest (ingest, messages, 3);
    s_assert_text ("SELECT version || ' ' || state FROM dwh.customers",
                   "3 SUSPENDED");
    s_assert_text ("SELECT string_agg (key || '=' || value, ',' ORDER BY "
                   "key) FROM dwh.custom_attributes", "k=3");
    casm_ingest_destroy (&ingest);
}
END_TEST

START_TEST (test_attributes_follow_current)
{
    casm_ingest_t *ingest = s_fresh ();
    s_message_t message;
    s_build (&message, 0, 1, s_tx (0, 1), "createCustomer", "r1", REF_A,
             s_customer (0, REF_A, 1, "{\"a\":\"1\",\"b\":\"2\"}",
                         "ACTIVE"));
    s_ingest (ingest, &message, 1);
    s_build (&message, 0, 2, s_tx (0, 2), "updateCustomerCustomAttributes",
             "r2", REF_A, s_customer (0, REF_A, 2, "{\"b\":\"3\",\"c\":"
                                      "\"4\"}", "ACTIVE"));
    s_ingest (ingest, &message, 1);
    s_assert_text ("SELECT string_agg (key || '=' || value, ',' ORDER BY "
                   "key) FROM dwh.custom_attributes", "b=3,c=4");
    s_assert_text ("SELECT string_agg (ref_id::text, ',') FROM "
                   "dwh.customers_with_attribute ('c', '4')", REF_A);

    //  A long value (over a btree entry's limit) is stored and found.
    char attributes [5000];
    char long_value [4097];
    memset (long_value, 'v', 4096);
    long_value [4096] = 0;
    snprintf (attributes, sizeof attributes, "{\"long\":\"%s\"}",
              long_value);
    s_build (&message, 0, 3, s_tx (0, 3), "updateCustomerCustomAttributes",
             "r3", REF_A, s_customer (0, REF_A, 3, attributes, "ACTIVE"));
    s_ingest (ingest, &message, 1);
    char query [4400];
    snprintf (query, sizeof query, "SELECT count (*) FROM "
              "dwh.customers_with_attribute ('long', '%s')", long_value);
    ck_assert_int_eq (s_count (query), 1);
    ck_assert_int_eq (s_count ("SELECT count (*) FROM "
                               "dwh.custom_attributes"), 1);

    //  An empty set clears the customer's rows.
    s_build (&message, 0, 4, s_tx (0, 4), "updateCustomerCustomAttributes",
             "r4", REF_A, s_customer (0, REF_A, 4, "{}", "ACTIVE"));
    s_ingest (ingest, &message, 1);
    ck_assert_int_eq (s_count ("SELECT count (*) FROM "
                               "dwh.custom_attributes"), 0);
    casm_ingest_destroy (&ingest);
}
END_TEST

START_TEST (test_malformed_dead_letters)
{
    casm_ingest_t *ingest = s_fresh ();
    const char *good = s_customer (0, REF_A, 1, "{}", "ACTIVE");
    const char *no_ref = "{\"version\":1}";
    const char *no_version = "{\"refId\":\"" REF_A "\"}";
    const char *bad_time = "{\"refId\":\"" REF_A "\",\"version\":1,"
                           "\"modifiedAt\":\"2026-02-30T00:00:00Z\"}";
    s_message_t messages [9];
    s_build (&messages [0], 0, 0, s_tx (1, 1), "createCustomer", "r",
             "key-0", "not json {");
    s_build (&messages [1], 0, 1, NULL, "createCustomer", "r", REF_A, good);
    s_build (&messages [2], 0, 2, s_tx (2, 2), "deleteCustomer", "r", REF_A,
             good);
    s_build (&messages [3], 0, 3, s_tx (3, 3), "createCustomer", NULL,
             REF_A, good);
    s_build (&messages [4], 0, 4, "not-a-uuid", "createCustomer", "r", REF_A,
             good);
    s_build (&messages [5], 0, 5, s_tx (5, 5), "createCustomer", "r", REF_A,
             no_ref);
    s_build (&messages [6], 0, 6, s_tx (6, 6), "createCustomer", "r", REF_A,
             no_version);
    s_build (&messages [7], 0, 7, s_tx (7, 7), "createCustomer", "r", REF_A,
             bad_time);
    //  The good one, after all the bad ones.
    s_build (&messages [8], 0, 8, s_tx (8, 8), "createCustomer", "r-good",
             REF_A, good);
    casm_ingest_stats_t stats = s_ingest (ingest, messages, 9);
    ck_assert_uint_eq (stats.dead, 8);
    ck_assert_uint_eq (stats.events, 1);
    ck_assert_uint_eq (stats.stored, 1);

    s_assert_text ("SELECT string_agg (kafka_offset || ':' || reason, '|' "
                   "ORDER BY kafka_offset) FROM dwh.dead_letters",
                   "0:value is not JSON: '[' or '{' expected near 'not' "
                   "(at byte 3)|"
                   "1:missing header X-Ocs-Io-transaction-id|"
                   "2:unknown operation deleteCustomer|"
                   "3:missing header X-Ocs-Io-request-id|"
                   "4:header X-Ocs-Io-transaction-id is not a UUID|"
                   "5:missing refId|6:missing version|"
                   "7:modifiedAt is not an RFC 3339 timestamp");
    //  The raw bytes are kept.
    s_assert_text ("SELECT convert_from (value, 'UTF8') || ' ' || "
                   "convert_from (key, 'UTF8') FROM dwh.dead_letters WHERE "
                   "kafka_offset = 0", "not json { key-0");
    s_assert_text ("SELECT headers FROM dwh.dead_letters WHERE "
                   "kafka_offset = 2",
                   "[[\"X-Ocs-Io-transaction-id\","
                   "\"0b9f3c7e-0000-4000-8000-000000000002\"],"
                   "[\"X-Ocs-Io-message-code\",\"customer\"],"
                   "[\"X-Ocs-Io-message-payload\",\"CustomerEx\"],"
                   "[\"X-Ocs-Io-operation\",\"deleteCustomer\"],"
                   "[\"X-Ocs-Io-request-id\",\"r\"]]");
    s_assert_text ("SELECT request_id FROM dwh.business_transactions",
                   "r-good");
    ck_assert_int_eq (s_count ("SELECT last_offset FROM dwh.ingest_status"),
                      8);

    //  Read again (a redelivery), the dead letters are not doubled.
    stats = s_ingest (ingest, messages, 9);
    ck_assert_int_eq (s_count ("SELECT count (*) FROM dwh.dead_letters"),
                      8);
    casm_ingest_destroy (&ingest);
}
END_TEST

START_TEST (test_metrics_counted_once)
{
    casm_ingest_t *ingest = s_fresh ();
    s_message_t messages [4];
    s_build (&messages [0], 0, 0, s_tx (0, 1), "createCustomer", "r1", REF_A,
             s_customer (0, REF_A, 1, "{}", "ACTIVE"));
    s_build (&messages [1], 1, 0, s_tx (1, 2), "createCustomer", "r2", REF_B,
             s_customer (1, REF_B, 1, "{}", "ACTIVE"));
    s_build (&messages [2], 0, 1, s_tx (2, 3),
             "updateCustomerCustomAttributes", "r3", REF_A,
             s_customer (2, REF_A, 2, "{\"a\":\"b\"}", "ACTIVE"));
    s_build (&messages [3], 0, 2, s_tx (3, 3),
             "updateCustomerCustomAttributes", "r3", REF_A,
             s_customer (2, REF_A, 2, "{\"a\":\"b\"}", "ACTIVE"));
    s_ingest (ingest, messages, 4);
    s_ingest (ingest, messages, 4);
    s_ingest (ingest, messages + 2, 1);
    s_assert_text ("SELECT string_agg (operation || '=' || count, ',' "
                   "ORDER BY operation) FROM dwh.metrics_daily",
                   "createCustomer=2,updateCustomerCustomAttributes=1");
    casm_ingest_destroy (&ingest);
}
END_TEST

START_TEST (test_refused_by_postgres)
{
    //  A key over a btree entry's limit passes the checks but not the
    //  primary key: that message alone becomes a dead letter.
    casm_ingest_t *ingest = s_fresh ();
    char attributes [9000];
    char key [8193];
    //  Random letters: pglz finds nothing to compress.
    unsigned int seed = 12345;
    for (int i = 0; i < 8192; i++) {
        seed = seed * 1103515245 + 12345;
        key [i] = (char) ('a' + (seed >> 16) % 26);
    }
    key [8192] = 0;
    snprintf (attributes, sizeof attributes, "{\"%s\":\"x\"}", key);
    s_message_t messages [2];
    s_build (&messages [0], 0, 0, s_tx (0, 1), "createCustomer", "r1", REF_A,
             s_customer (0, REF_A, 1, attributes, "ACTIVE"));
    s_build (&messages [1], 0, 1, s_tx (1, 2), "createCustomer", "r2", REF_B,
             s_customer (1, REF_B, 1, "{\"ok\":\"yes\"}", "ACTIVE"));
    casm_ingest_stats_t stats = s_ingest (ingest, messages, 2);
    ck_assert_uint_eq (stats.dead, 1);
    ck_assert_uint_eq (stats.stored, 1);
    s_assert_text ("SELECT kafka_offset || ' ' || (reason LIKE 'refused by "
                   "PostgreSQL:%') FROM dwh.dead_letters", "0 true");
    s_assert_text ("SELECT ref_id::text FROM dwh.customers", REF_B);
    casm_ingest_destroy (&ingest);
}
END_TEST

START_TEST (test_database_down)
{
    casm_ingest_t *ingest = casm_ingest_new (
        "postgresql://casm@127.0.0.1:1/casm", TOPIC);
    ck_assert_ptr_nonnull (ingest);
    ck_assert_int_eq (casm_ingest_connect (ingest), -1);
    s_message_t message;
    s_build (&message, 0, 0, s_tx (0, 1), "createCustomer", "r1", REF_A,
             s_customer (0, REF_A, 1, "{}", "ACTIVE"));
    casm_ingest_stats_t stats;
    ck_assert_int_eq (casm_ingest_batch (ingest, &message.message, 1,
                                         &stats), -1);
    ck_assert_int_eq (casm_ingest_send (ingest, &message.message, 1), -1);
    casm_ingest_destroy (&ingest);
}
END_TEST

START_TEST (test_send_and_poll)
{
    casm_ingest_t *ingest = s_fresh ();
    s_message_t message;
    s_build (&message, 0, 0, s_tx (0, 1), "createCustomer", "r1", REF_A,
             s_customer (0, REF_A, 1, "{\"a\":\"1\"}", "ACTIVE"));
    ck_assert_int_eq (casm_ingest_send (ingest, &message.message, 1), 0);
    casm_ingest_stats_t stats;
    int rc;
    int rounds = 0;
    while ((rc = casm_ingest_poll (ingest, &stats)) == 1) {
        struct pollfd ready = { casm_ingest_socket (ingest), POLLIN, 0 };
        ck_assert_int_ge (ready.fd, 0);
        poll (&ready, 1, 1000);
        ck_assert_int_lt (++rounds, 100);
    }
    ck_assert_int_eq (rc, 0);
    ck_assert_uint_eq (stats.stored, 1);
    ck_assert_int_eq (casm_ingest_socket (ingest), -1);
    ck_assert_int_eq (s_count ("SELECT count (*) FROM "
                               "dwh.custom_attributes"), 1);
    casm_ingest_destroy (&ingest);
}
END_TEST

START_TEST (test_migrations_once)
{
    casm_ingest_t *first = s_fresh ();
    casm_ingest_t *second = casm_ingest_new (s_url, TOPIC);
    ck_assert_int_eq (casm_ingest_connect (second), 0);
    ck_assert_int_eq (s_count ("SELECT count (*) FROM "
                               "dwh.schema_migrations"), 1);
    casm_ingest_destroy (&first);
    casm_ingest_destroy (&second);
}
END_TEST

int
main (void)
{
    s_url = getenv ("CASM_TEST_DATABASE_URL");
    if (!s_url || !*s_url) {
        printf ("test_ingest: CASM_TEST_DATABASE_URL is not set: skipped "
                "(it needs a PostgreSQL database it may write to)\n");
        return 77;
    }

    Suite *suite = suite_create ("ingest");
    TCase *tc = tcase_create ("ingest");
    tcase_set_timeout (tc, 30);
    tcase_add_test (tc, test_valid_event);
    tcase_add_test (tc, test_duplicate_changes_nothing);
    tcase_add_test (tc, test_duplicate_within_a_batch);
    tcase_add_test (tc, test_older_version_ignored);
    tcase_add_test (tc, test_reordered_within_a_batch);
    tcase_add_test (tc, test_attributes_follow_current);
    tcase_add_test (tc, test_malformed_dead_letters);
    tcase_add_test (tc, test_metrics_counted_once);
    tcase_add_test (tc, test_refused_by_postgres);
    tcase_add_test (tc, test_database_down);
    tcase_add_test (tc, test_send_and_poll);
    tcase_add_test (tc, test_migrations_once);
    suite_add_tcase (suite, tc);

    SRunner *runner = srunner_create (suite);
    srunner_run_all (runner, CK_NORMAL);
    int failed = srunner_ntests_failed (runner);
    srunner_free (runner);
    return failed ? 1 : 0;
}
