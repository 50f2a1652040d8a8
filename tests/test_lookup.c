/*  test_lookup: the validator's read-only look-ups (validator/casm_lookup.h)
    against a real PostgreSQL, named by CASM_TEST_DATABASE_URL (the suite
    skips when it is unset).

    The point is casm_lookup_prefetch, which makes the look-ups of a batch
    in one round trip: every answer it keeps must be the answer the single
    look-up gives (found, not found, same or another request), a look-up
    that fails must not take the others with it nor be kept, and nothing
    may be kept past casm_lookup_forget. The schema and the rows come from
    the worker's store, as in a running stack.                            */

#include "casm_lookup.h"
#include "casm_msg.h"
#include "casm_store.h"

#include <check.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SKIP_CODE 77

static const char *s_url;

//  A name no other test, run or process uses.
static void
s_unique (char *buffer, size_t size, const char *prefix)
{
    static int counter = 0;
    snprintf (buffer, size, "%s-%d-%lld-%d", prefix, (int) getpid (),
              (long long) casm_now_ms (), ++counter);
}

//  64 hex digits made from seed.
static void
s_hash (char *buffer, const char *seed)
{
    uint64_t state = 1469598103934665603ULL;
    for (const char *at = seed; *at; at++)
        state = (state ^ (unsigned char) *at) * 1099511628211ULL;
    for (int i = 0; i < 4; i++) {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        snprintf (buffer + 16 * i, 17, "%016llx", (unsigned long long) state);
    }
}

//  Creates a customer through the store (which also applies the schema);
//  its refId goes into ref_id (37 bytes) and the request is recorded
//  under request_id with the hash of request_id.
static void
s_customer (const char *request_id, const char *external_id, char *ref_id)
{
    casm_store_t *store = casm_store_new (s_url);
    ck_assert_int_eq (casm_store_open (store), 0);
    char hash [65];
    s_hash (hash, request_id);
    json_t *command = json_pack ("{ss ss ss}", "requestId", request_id,
                                 "requestHash", hash,
                                 "externalId", external_id);
    char *text = json_dumps (command, JSON_COMPACT);
    json_decref (command);
    casm_outcome_t outcome = { 0 };
    ck_assert_int_eq (casm_store_create_customer (store, text, strlen (text),
                                                  &outcome), 201);
    json_t *bt = json_loads (outcome.body, 0, NULL);
    snprintf (ref_id, 37, "%s", json_string_value (json_object_get (
        json_object_get (bt, "customer"), "refId")));
    json_decref (bt);
    casm_outcome_clear (&outcome);
    free (text);
    casm_store_destroy (&store);
}

//  Everything one key's single look-ups answer.
typedef struct {
    int request;
    int same;
    int status;
    char *body;
    int customer;
    char *ref_id;
    char *state;
} s_answers_t;

static void
s_ask (casm_lookup_t *lookup, const casm_lookup_key_t *key,
       s_answers_t *answers)
{
    memset (answers, 0, sizeof *answers);
    answers->request = casm_lookup_request (lookup, key->request_id,
                                            key->hash, &answers->same,
                                            &answers->status,
                                            &answers->body);
    answers->customer = casm_lookup_customer (lookup, key->ref_id,
                                              key->external_id,
                                              &answers->ref_id,
                                              &answers->state);
}

static void
s_answers_clear (s_answers_t *answers)
{
    free (answers->body);
    free (answers->ref_id);
    free (answers->state);
    memset (answers, 0, sizeof *answers);
}

static void
s_assert_same_answers (s_answers_t *a, s_answers_t *b)
{
    ck_assert_int_eq (a->request, b->request);
    ck_assert_int_eq (a->customer, b->customer);
    if (a->request == CASM_LOOKUP_FOUND) {
        ck_assert_int_eq (a->same, b->same);
        ck_assert_int_eq (a->status, b->status);
        ck_assert_str_eq (a->body, b->body);
    }
    if (a->customer == CASM_LOOKUP_FOUND) {
        ck_assert_str_eq (a->ref_id, b->ref_id);
        ck_assert_str_eq (a->state, b->state);
    }
}

START_TEST (test_prefetch_answers_as_single)
{
    char ref_id [37], request_id [128], external_id [128];
    s_unique (request_id, sizeof request_id, "lookup");
    s_unique (external_id, sizeof external_id, "CRM");
    s_customer (request_id, external_id, ref_id);
    char hash [65], other_hash [65], unknown_id [128];
    s_hash (hash, request_id);
    s_hash (other_hash, "another request");
    s_unique (unknown_id, sizeof unknown_id, "unknown");

    //  A recorded request with its own hash and another one, an unknown
    //  one; the customer by refId and by externalId, and a missing one.
    casm_lookup_key_t keys [] = {
        { request_id, hash, ref_id, NULL },
        { request_id, other_hash, NULL, external_id },
        { unknown_id, hash, "6f1c0a52-2c1e-4c8e-9d43-000000000000", NULL },
        { unknown_id, other_hash, NULL, "no-such-customer" },
    };
    size_t count = sizeof keys / sizeof keys [0];
    casm_lookup_t *lookup = casm_lookup_new (s_url);
    s_answers_t single [4], kept [4];
    for (size_t i = 0; i < count; i++)
        s_ask (lookup, &keys [i], &single [i]);
    ck_assert_int_eq (single [0].request, CASM_LOOKUP_FOUND);
    ck_assert (single [0].same);
    ck_assert_int_eq (single [0].status, 201);
    ck_assert_int_eq (single [1].request, CASM_LOOKUP_FOUND);
    ck_assert (!single [1].same);
    ck_assert_int_eq (single [2].request, CASM_LOOKUP_NONE);
    ck_assert_int_eq (single [0].customer, CASM_LOOKUP_FOUND);
    ck_assert_str_eq (single [1].ref_id, ref_id);
    ck_assert_int_eq (single [2].customer, CASM_LOOKUP_NONE);
    ck_assert_int_eq (single [3].customer, CASM_LOOKUP_NONE);

    //  Prefetched, the same answers come back (test_prefetch_forgets
    //  shows that they come without a query).
    casm_lookup_prefetch (lookup, keys, count);
    for (size_t i = 0; i < count; i++) {
        s_ask (lookup, &keys [i], &kept [i]);
        s_assert_same_answers (&single [i], &kept [i]);
    }

    for (size_t i = 0; i < count; i++) {
        s_answers_clear (&single [i]);
        s_answers_clear (&kept [i]);
    }
    casm_lookup_destroy (&lookup);
}
END_TEST

START_TEST (test_prefetch_forgets)
{
    char ref_id [37], request_id [128], external_id [128];
    s_unique (request_id, sizeof request_id, "forget");
    s_unique (external_id, sizeof external_id, "CRM");
    char hash [65];
    s_hash (hash, request_id);

    //  Kept "not found" answers are not answers once forgotten: the
    //  customer and the request created meanwhile are found.
    casm_lookup_t *lookup = casm_lookup_new (s_url);
    casm_lookup_key_t key = { request_id, hash, NULL, external_id };
    casm_lookup_prefetch (lookup, &key, 1);
    s_answers_t answers;
    s_ask (lookup, &key, &answers);
    ck_assert_int_eq (answers.request, CASM_LOOKUP_NONE);
    ck_assert_int_eq (answers.customer, CASM_LOOKUP_NONE);
    s_answers_clear (&answers);

    s_customer (request_id, external_id, ref_id);
    s_ask (lookup, &key, &answers);
    ck_assert_int_eq (answers.customer, CASM_LOOKUP_NONE);
    s_answers_clear (&answers);
    casm_lookup_forget (lookup);
    s_ask (lookup, &key, &answers);
    ck_assert_int_eq (answers.request, CASM_LOOKUP_FOUND);
    ck_assert_int_eq (answers.customer, CASM_LOOKUP_FOUND);
    ck_assert_str_eq (answers.ref_id, ref_id);
    s_answers_clear (&answers);
    casm_lookup_destroy (&lookup);
}
END_TEST

START_TEST (test_prefetch_quotes)
{
    //  The keys travel as array literals: quotes, backslashes, commas,
    //  braces, spaces and the word NULL must arrive as they are. A
    //  customer and a request with such names are found; the same names
    //  looked up before they exist are kept as "not found" (so the batch
    //  answered them, not a single look-up after a failure) until
    //  forgotten.
    static const char *oddities [] = {
        "a\"b", "c\\d", "e,f", "{g}", " h ", "NULL", "i\\\"j,{NULL}"
    };
    size_t count = sizeof oddities / sizeof oddities [0];
    char request_ids [7][160], external_ids [7][160], hashes [7][65];
    casm_lookup_key_t keys [7];
    for (size_t i = 0; i < count; i++) {
        char unique [128];
        s_unique (unique, sizeof unique, "odd");
        snprintf (request_ids [i], sizeof request_ids [i], "%s%s", unique,
                  oddities [i]);
        snprintf (external_ids [i], sizeof external_ids [i], "%s%s",
                  oddities [i], unique);
        s_hash (hashes [i], request_ids [i]);
        keys [i] = (casm_lookup_key_t) {
            request_ids [i], hashes [i], NULL, external_ids [i]
        };
    }
    casm_lookup_t *lookup = casm_lookup_new (s_url);
    casm_lookup_prefetch (lookup, keys, count);
    char ref_ids [7][37];
    for (size_t i = 0; i < count; i++)
        s_customer (request_ids [i], external_ids [i], ref_ids [i]);
    s_answers_t answers;
    for (size_t i = 0; i < count; i++) {
        s_ask (lookup, &keys [i], &answers);
        ck_assert_int_eq (answers.request, CASM_LOOKUP_NONE);
        ck_assert_int_eq (answers.customer, CASM_LOOKUP_NONE);
        s_answers_clear (&answers);
    }
    casm_lookup_forget (lookup);

    casm_lookup_prefetch (lookup, keys, count);
    for (size_t i = 0; i < count; i++) {
        s_ask (lookup, &keys [i], &answers);
        ck_assert_int_eq (answers.request, CASM_LOOKUP_FOUND);
        ck_assert (answers.same);
        ck_assert_int_eq (answers.customer, CASM_LOOKUP_FOUND);
        ck_assert_str_eq (answers.ref_id, ref_ids [i]);
        s_answers_clear (&answers);
    }
    casm_lookup_forget (lookup);
    casm_lookup_destroy (&lookup);
}
END_TEST

START_TEST (test_prefetch_failure_is_not_kept)
{
    char ref_id [37], request_id [128], external_id [128];
    char later_ref [37], later_id [128], later_external [128];
    s_unique (request_id, sizeof request_id, "failing");
    s_unique (external_id, sizeof external_id, "CRM");
    s_unique (later_id, sizeof later_id, "later");
    s_unique (later_external, sizeof later_external, "CRM");
    s_customer (request_id, external_id, ref_id);
    char hash [65];
    s_hash (hash, request_id);

    //  A refId that is no UUID makes the batch's statement fail. Then
    //  nothing is kept and each look-up runs on its own: the answers are
    //  the ones single look-ups give, so a customer created after the
    //  prefetch is found. The failed key's own look-up fails as it always
    //  did, and the connection still serves.
    casm_lookup_t *lookup = casm_lookup_new (s_url);
    casm_lookup_key_t keys [] = {
        { request_id, hash, ref_id, NULL },
        { request_id, hash, "not-a-uuid", NULL },
        { later_id, hash, NULL, later_external },
    };
    casm_lookup_prefetch (lookup, keys, 3);
    s_customer (later_id, later_external, later_ref);

    s_answers_t answers;
    s_ask (lookup, &keys [0], &answers);
    ck_assert_int_eq (answers.request, CASM_LOOKUP_FOUND);
    ck_assert_int_eq (answers.customer, CASM_LOOKUP_FOUND);
    ck_assert_str_eq (answers.ref_id, ref_id);
    s_answers_clear (&answers);
    s_ask (lookup, &keys [2], &answers);
    ck_assert_int_eq (answers.request, CASM_LOOKUP_FOUND);
    ck_assert_int_eq (answers.customer, CASM_LOOKUP_FOUND);
    ck_assert_str_eq (answers.ref_id, later_ref);
    s_answers_clear (&answers);

    char *state = NULL;
    ck_assert_int_eq (casm_lookup_customer (lookup, "not-a-uuid", NULL,
                                            NULL, &state),
                      CASM_LOOKUP_DOWN);
    ck_assert_int_eq (casm_lookup_ping (lookup), CASM_LOOKUP_FOUND);
    casm_lookup_forget (lookup);
    casm_lookup_destroy (&lookup);
}
END_TEST

START_TEST (test_prefetch_unreachable)
{
    //  Without PostgreSQL nothing is kept and every look-up says so.
    casm_lookup_t *lookup = casm_lookup_new (
        "postgresql://casm@127.0.0.1:1/casm");
    char hash [65];
    s_hash (hash, "x");
    casm_lookup_key_t key = { "r", hash, NULL, "e" };
    casm_lookup_prefetch (lookup, &key, 1);
    s_answers_t answers;
    s_ask (lookup, &key, &answers);
    ck_assert_int_eq (answers.request, CASM_LOOKUP_DOWN);
    ck_assert_int_eq (answers.customer, CASM_LOOKUP_DOWN);
    s_answers_clear (&answers);
    casm_lookup_forget (lookup);
    casm_lookup_destroy (&lookup);
}
END_TEST

int
main (void)
{
    s_url = getenv ("CASM_TEST_DATABASE_URL");
    if (!s_url || !*s_url) {
        printf ("test_lookup: skipped, CASM_TEST_DATABASE_URL is not set\n");
        return SKIP_CODE;
    }

    Suite *suite = suite_create ("casm_lookup");
    TCase *prefetch = tcase_create ("prefetch");
    tcase_add_test (prefetch, test_prefetch_answers_as_single);
    tcase_add_test (prefetch, test_prefetch_forgets);
    tcase_add_test (prefetch, test_prefetch_quotes);
    tcase_add_test (prefetch, test_prefetch_failure_is_not_kept);
    tcase_add_test (prefetch, test_prefetch_unreachable);
    suite_add_tcase (suite, prefetch);

    SRunner *runner = srunner_create (suite);
    srunner_run_all (runner, CK_NORMAL);
    int failed = srunner_ntests_failed (runner);
    srunner_free (runner);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
