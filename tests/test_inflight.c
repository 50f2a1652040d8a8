/*  test_inflight: the gateway's in-flight table (gateway/casm_inflight).

    The table is what turns a reply back into an HTTP answer, so the tests
    check that a correlation key finds its request and nothing else: not a
    reused slot, not a request that is no longer waiting, not a key of the
    wrong size. The deadline list decides 504s, so its order and its
    bookkeeping are checked, and the body buffer must never hold more than
    the limit it is given.                                                 */

#include "casm_inflight.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

START_TEST (test_take_until_full)
{
    casm_inflight_t *table = casm_inflight_new (3);
    ck_assert_ptr_nonnull (table);
    ck_assert_uint_eq (casm_inflight_capacity (table), 3);

    casm_request_t *taken [3];
    for (int i = 0; i < 3; i++) {
        taken [i] = casm_inflight_take (table);
        ck_assert_ptr_nonnull (taken [i]);
        ck_assert_int_eq (taken [i]->state, CASM_REQUEST_RECEIVING);
    }
    ck_assert_ptr_null (casm_inflight_take (table));
    ck_assert_uint_eq (casm_inflight_used (table), 3);

    casm_inflight_release (table, taken [1]);
    ck_assert_uint_eq (casm_inflight_used (table), 2);
    ck_assert_int_eq (taken [1]->state, CASM_REQUEST_FREE);

    //  Releasing twice changes nothing.
    casm_inflight_release (table, taken [1]);
    ck_assert_uint_eq (casm_inflight_used (table), 2);

    ck_assert_ptr_eq (casm_inflight_take (table), taken [1]);
    ck_assert_ptr_null (casm_inflight_take (table));
    casm_inflight_destroy (&table);
    ck_assert_ptr_null (table);
    ck_assert_ptr_null (casm_inflight_new (0));
}
END_TEST

START_TEST (test_take_clears_caller_fields)
{
    casm_inflight_t *table = casm_inflight_new (1);
    casm_request_t *request = casm_inflight_take (table);
    request->connection = request;
    request->op = 3;
    request->status = 504;
    request->error_code = "X";
    request->down = "pipeline";
    strcpy (request->trace_id, "abc");
    ck_assert_int_eq (casm_request_append (request, "xyz", 3, 10), 0);
    casm_inflight_release (table, request);

    request = casm_inflight_take (table);
    ck_assert_ptr_null (request->connection);
    ck_assert_int_eq (request->op, 0);
    ck_assert_uint_eq (request->status, 0);
    ck_assert_ptr_null (request->error_code);
    ck_assert_ptr_null (request->down);
    ck_assert_str_eq (request->trace_id, "");
    ck_assert_uint_eq (request->body_size, 0);
    ck_assert_int_eq (request->overflow, 0);
    casm_inflight_destroy (&table);
}
END_TEST

START_TEST (test_find_by_correlation)
{
    casm_inflight_t *table = casm_inflight_new (4);
    casm_request_t *a = casm_inflight_take (table);
    casm_request_t *b = casm_inflight_take (table);
    uint8_t key_a [CASM_CORRELATION_SIZE], key_b [CASM_CORRELATION_SIZE];
    casm_inflight_correlation (a, key_a);
    casm_inflight_correlation (b, key_b);
    ck_assert (memcmp (key_a, key_b, sizeof key_a) != 0);

    //  Only a waiting request can be found.
    ck_assert_ptr_null (casm_inflight_find (table, key_a, sizeof key_a));
    casm_inflight_wait (table, a, 100);
    casm_inflight_wait (table, b, 100);
    ck_assert_ptr_eq (casm_inflight_find (table, key_a, sizeof key_a), a);
    ck_assert_ptr_eq (casm_inflight_find (table, key_b, sizeof key_b), b);

    //  Wrong sizes, an index past the table, NULL.
    ck_assert_ptr_null (casm_inflight_find (table, key_a, 7));
    ck_assert_ptr_null (casm_inflight_find (table, key_a, 9));
    ck_assert_ptr_null (casm_inflight_find (table, NULL, 8));
    uint8_t past [CASM_CORRELATION_SIZE] = { 0, 0, 0, 4, 0, 0, 0, 1 };
    ck_assert_ptr_null (casm_inflight_find (table, past, sizeof past));
    uint8_t huge [CASM_CORRELATION_SIZE] = { 255, 255, 255, 255, 0, 0, 0, 1 };
    ck_assert_ptr_null (casm_inflight_find (table, huge, sizeof huge));

    //  Answered: the key no longer finds it.
    casm_inflight_answer (table, a);
    ck_assert_ptr_null (casm_inflight_find (table, key_a, sizeof key_a));
    casm_inflight_destroy (&table);
}
END_TEST

START_TEST (test_stale_key_after_reuse)
{
    casm_inflight_t *table = casm_inflight_new (1);
    casm_request_t *request = casm_inflight_take (table);
    uint8_t old_key [CASM_CORRELATION_SIZE];
    casm_inflight_correlation (request, old_key);
    casm_inflight_wait (table, request, 10);

    //  Timed out, answered, released; the slot is reused and waits again.
    casm_inflight_answer (table, request);
    casm_inflight_release (table, request);
    casm_request_t *again = casm_inflight_take (table);
    ck_assert_ptr_eq (again, request);
    casm_inflight_wait (table, again, 20);

    uint8_t new_key [CASM_CORRELATION_SIZE];
    casm_inflight_correlation (again, new_key);
    ck_assert_ptr_null (casm_inflight_find (table, old_key, sizeof old_key));
    ck_assert_ptr_eq (casm_inflight_find (table, new_key, sizeof new_key),
                      again);
    casm_inflight_destroy (&table);
}
END_TEST

START_TEST (test_deadline_order)
{
    casm_inflight_t *table = casm_inflight_new (5);
    casm_request_t *r [5];
    int64_t deadlines [5] = { 50, 10, 30, 30, 20 };
    for (int i = 0; i < 5; i++) {
        r [i] = casm_inflight_take (table);
        casm_inflight_wait (table, r [i], deadlines [i]);
    }
    ck_assert_uint_eq (casm_inflight_waiting (table), 5);
    ck_assert_int_eq (casm_inflight_next_deadline (table), 10);
    ck_assert_ptr_null (casm_inflight_expired (table, 9));

    //  Expired in deadline order; equal deadlines in arrival order.
    casm_request_t *expected [5] = { r [1], r [4], r [2], r [3], r [0] };
    for (int i = 0; i < 5; i++) {
        casm_request_t *first = casm_inflight_expired (table, 100);
        ck_assert_ptr_eq (first, expected [i]);
        ck_assert_ptr_eq (casm_inflight_first (table), first);
        casm_inflight_answer (table, first);
        ck_assert_int_eq (first->state, CASM_REQUEST_ANSWERED);
    }
    ck_assert_uint_eq (casm_inflight_waiting (table), 0);
    ck_assert_int_eq (casm_inflight_next_deadline (table), INT64_MAX);
    ck_assert_ptr_null (casm_inflight_expired (table, INT64_MAX));
    ck_assert_ptr_null (casm_inflight_first (table));
    casm_inflight_destroy (&table);
}
END_TEST

START_TEST (test_release_while_waiting)
{
    casm_inflight_t *table = casm_inflight_new (3);
    casm_request_t *a = casm_inflight_take (table);
    casm_request_t *b = casm_inflight_take (table);
    casm_request_t *c = casm_inflight_take (table);
    casm_inflight_wait (table, a, 1);
    casm_inflight_wait (table, b, 2);
    casm_inflight_wait (table, c, 3);

    //  From the middle, then the ends: the list stays whole.
    casm_inflight_release (table, b);
    ck_assert_uint_eq (casm_inflight_waiting (table), 2);
    ck_assert_ptr_eq (casm_inflight_first (table), a);
    casm_inflight_release (table, a);
    ck_assert_ptr_eq (casm_inflight_first (table), c);
    casm_inflight_release (table, c);
    ck_assert_uint_eq (casm_inflight_waiting (table), 0);
    ck_assert_uint_eq (casm_inflight_used (table), 0);
    ck_assert_ptr_null (casm_inflight_first (table));
    casm_inflight_destroy (&table);
}
END_TEST

START_TEST (test_release_closes_reply)
{
    casm_inflight_t *table = casm_inflight_new (1);
    casm_request_t *request = casm_inflight_take (table);
    zmq_msg_init_size (&request->reply, 1000);
    request->has_reply = 1;
    casm_inflight_release (table, request);
    ck_assert_int_eq (request->has_reply, 0);

    //  And destroying a table with a reply still held frees it too.
    request = casm_inflight_take (table);
    zmq_msg_init_size (&request->reply, 1000);
    request->has_reply = 1;
    casm_inflight_destroy (&table);
}
END_TEST

START_TEST (test_body_limit)
{
    casm_inflight_t *table = casm_inflight_new (1);
    casm_request_t *request = casm_inflight_take (table);
    char data [100];
    memset (data, 'x', sizeof data);

    //  Up to the limit exactly.
    ck_assert_int_eq (casm_request_append (request, data, 60, 100), 0);
    ck_assert_int_eq (casm_request_append (request, data, 40, 100), 0);
    ck_assert_uint_eq (request->body_size, 100);
    ck_assert_uint_le (request->body_capacity, 100);
    ck_assert_int_eq (request->overflow, 0);

    //  One byte more: refused, counted, and everything after too.
    ck_assert_int_eq (casm_request_append (request, data, 1, 100), -1);
    ck_assert_int_eq (request->overflow, 1);
    ck_assert_uint_eq (request->body_size, 100);
    ck_assert_int_eq (casm_request_append (request, data, 0, 100), -1);
    ck_assert_int_eq (casm_request_append (request, data, 50, 100), -1);
    ck_assert_uint_eq (request->dropped, 51);
    ck_assert_uint_eq (request->body_size, 100);
    casm_inflight_destroy (&table);
}
END_TEST

START_TEST (test_body_growth)
{
    casm_inflight_t *table = casm_inflight_new (1);
    casm_request_t *request = casm_inflight_take (table);
    size_t limit = 300000;
    char *data = malloc (limit);
    for (size_t i = 0; i < limit; i++)
        data [i] = (char) ('a' + i % 26);

    //  Many small pieces; the content comes out as it went in.
    for (size_t at = 0; at < limit; at += 1000)
        ck_assert_int_eq (casm_request_append (request, data + at, 1000,
                                               limit), 0);
    ck_assert_uint_eq (request->body_size, limit);
    ck_assert_uint_le (request->body_capacity, limit);
    ck_assert (memcmp (request->body, data, limit) == 0);

    //  A large buffer is given back when the request ends; a small one
    //  is kept for the next request.
    casm_inflight_release (table, request);
    ck_assert_ptr_null (request->body);
    request = casm_inflight_take (table);
    ck_assert_int_eq (casm_request_append (request, data, 100, limit), 0);
    char *kept = request->body;
    casm_inflight_release (table, request);
    request = casm_inflight_take (table);
    ck_assert_ptr_eq (request->body, kept);
    ck_assert_uint_eq (request->body_size, 0);

    free (data);
    casm_inflight_destroy (&table);
}
END_TEST

int
main (void)
{
    Suite *suite = suite_create ("casm_inflight");

    TCase *slots = tcase_create ("slots");
    tcase_add_test (slots, test_take_until_full);
    tcase_add_test (slots, test_take_clears_caller_fields);
    tcase_add_test (slots, test_find_by_correlation);
    tcase_add_test (slots, test_stale_key_after_reuse);
    tcase_add_test (slots, test_release_closes_reply);
    suite_add_tcase (suite, slots);

    TCase *deadlines = tcase_create ("deadlines");
    tcase_add_test (deadlines, test_deadline_order);
    tcase_add_test (deadlines, test_release_while_waiting);
    suite_add_tcase (suite, deadlines);

    TCase *body = tcase_create ("body");
    tcase_add_test (body, test_body_limit);
    tcase_add_test (body, test_body_growth);
    suite_add_tcase (suite, body);

    SRunner *runner = srunner_create (suite);
    srunner_run_all (runner, CK_NORMAL);
    int failed = srunner_ntests_failed (runner);
    srunner_free (runner);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
