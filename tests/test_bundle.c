/*  test_bundle: several messages in one (shared/casm_bundle.h).

    A bundle must arrive as the same units, frame for frame and in order,
    whatever their sizes and frame counts, through the socket pairs casm
    uses (DEALER to ROUTER, where the ROUTER adds the sender's identity,
    and ROUTER to DEALER, where the sender names the peer). One unit must
    travel as a plain message, so that a receiver that reads plain messages
    keeps working. A malformed bundle must be refused whole, and a refused
    send must leave every unit with the caller.                           */

#include "casm_bundle.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

//  Unit n: n + 1 frames, frame k holding "u<n>f<k>", and one empty frame
//  in the middle when n is even, so that empty frames inside units (the
//  envelope's delimiter) cannot be mistaken for anything else.
static zmsg_t *
s_unit (int n)
{
    zmsg_t *msg = zmsg_new ();
    for (int k = 0; k <= n; k++) {
        if (n % 2 == 0 && k == n / 2 && n > 0)
            zmsg_addmem (msg, NULL, 0);
        else
            zmsg_addstrf (msg, "u%df%d", n, k);
    }
    return msg;
}

static void
s_assert_unit (zmsg_t *msg, int n)
{
    ck_assert_ptr_nonnull (msg);
    ck_assert_uint_eq (zmsg_size (msg), (size_t) n + 1);
    zmsg_t *expected = s_unit (n);
    zframe_t *a = zmsg_first (msg);
    zframe_t *b = zmsg_first (expected);
    while (a && b) {
        ck_assert (zframe_eq (a, b));
        a = zmsg_next (msg);
        b = zmsg_next (expected);
    }
    zmsg_destroy (&expected);
}

START_TEST (test_append_pop_order)
{
    casm_bundle_t *bundle = casm_bundle_new ();
    //  More than the first ring, to make it grow with units in it.
    for (int round = 0; round < 3; round++) {
        for (int n = 0; n < 40; n++) {
            zmsg_t *unit = s_unit (n % 7);
            ck_assert_int_eq (casm_bundle_append (bundle, &unit), 0);
            ck_assert_ptr_null (unit);
        }
        for (int n = 0; n < 40; n++) {
            zmsg_t *unit = casm_bundle_pop (bundle);
            s_assert_unit (unit, n % 7);
            zmsg_destroy (&unit);
        }
        ck_assert_uint_eq (casm_bundle_size (bundle), 0);
        ck_assert_ptr_null (casm_bundle_pop (bundle));
    }
    casm_bundle_destroy (&bundle);
    ck_assert_ptr_null (bundle);
}
END_TEST

START_TEST (test_append_refuses_bad_units)
{
    casm_bundle_t *bundle = casm_bundle_new ();
    zmsg_t *empty = zmsg_new ();
    ck_assert_int_eq (casm_bundle_append (bundle, &empty), -1);
    ck_assert_ptr_null (empty);
    zmsg_t *large = zmsg_new ();
    for (int k = 0; k <= CASM_BUNDLE_FRAMES_MAX; k++)
        zmsg_addstr (large, "x");
    ck_assert_int_eq (casm_bundle_append (bundle, &large), -1);
    ck_assert_uint_eq (casm_bundle_size (bundle), 0);
    casm_bundle_destroy (&bundle);
}
END_TEST

//  A DEALER and a ROUTER connected over inproc.
typedef struct {
    zsock_t *router;
    zsock_t *dealer;
} pair_t;

static pair_t
s_pair (void)
{
    pair_t pair;
    pair.router = zsock_new_router ("inproc://test-bundle");
    pair.dealer = zsock_new_dealer (">inproc://test-bundle");
    ck_assert_ptr_nonnull (pair.router);
    ck_assert_ptr_nonnull (pair.dealer);
    zsock_set_rcvtimeo (pair.router, 2000);
    zsock_set_rcvtimeo (pair.dealer, 2000);
    return pair;
}

static void
s_pair_destroy (pair_t *pair)
{
    zsock_destroy (&pair->dealer);
    zsock_destroy (&pair->router);
}

START_TEST (test_dealer_to_router_gives_identity_to_each)
{
    pair_t pair = s_pair ();
    casm_bundle_t *out = casm_bundle_new ();
    for (int n = 0; n < 5; n++) {
        zmsg_t *unit = s_unit (n);
        casm_bundle_append (out, &unit);
    }
    ck_assert_int_eq (casm_bundle_send (out, zsock_resolve (pair.dealer),
                                        NULL), 0);
    ck_assert_uint_eq (casm_bundle_size (out), 0);

    //  One ZeroMQ message: the identity, then the bundle.
    zmsg_t *msg = zmsg_recv (pair.router);
    ck_assert_ptr_nonnull (msg);
    zframe_t *identity = zmsg_pop (msg);
    ck_assert (casm_bundle_is (msg));

    casm_bundle_t *in = casm_bundle_new ();
    ck_assert_int_eq (casm_bundle_unpack (in, &msg, identity), 5);
    ck_assert_ptr_null (msg);
    for (int n = 0; n < 5; n++) {
        zmsg_t *unit = casm_bundle_pop (in);
        zframe_t *first = zmsg_pop (unit);
        ck_assert (zframe_eq (first, identity));
        zframe_destroy (&first);
        s_assert_unit (unit, n);
        zmsg_destroy (&unit);
    }
    zframe_destroy (&identity);
    casm_bundle_destroy (&in);
    casm_bundle_destroy (&out);
    s_pair_destroy (&pair);
}
END_TEST

START_TEST (test_router_to_dealer_names_the_peer)
{
    pair_t pair = s_pair ();
    zstr_send (pair.dealer, "hello");
    zmsg_t *hello = zmsg_recv (pair.router);
    zframe_t *identity = zmsg_pop (hello);
    zmsg_destroy (&hello);

    //  More units than one message holds: two messages, same order.
    int count = CASM_BUNDLE_UNITS_MAX + 3;
    casm_bundle_t *out = casm_bundle_new ();
    for (int n = 0; n < count; n++) {
        zmsg_t *unit = s_unit (n % 5);
        casm_bundle_append (out, &unit);
    }
    ck_assert_int_eq (casm_bundle_send (out, zsock_resolve (pair.router),
                                        identity), 0);
    ck_assert_ptr_nonnull (zframe_data (identity));

    casm_bundle_t *in = casm_bundle_new ();
    zmsg_t *msg = zmsg_recv (pair.dealer);
    ck_assert_int_eq (casm_bundle_unpack (in, &msg, NULL),
                      CASM_BUNDLE_UNITS_MAX);
    msg = zmsg_recv (pair.dealer);
    ck_assert_int_eq (casm_bundle_unpack (in, &msg, NULL), 3);
    for (int n = 0; n < count; n++) {
        zmsg_t *unit = casm_bundle_pop (in);
        s_assert_unit (unit, n % 5);
        zmsg_destroy (&unit);
    }
    zframe_destroy (&identity);
    casm_bundle_destroy (&in);
    casm_bundle_destroy (&out);
    s_pair_destroy (&pair);
}
END_TEST

START_TEST (test_one_unit_is_a_plain_message)
{
    pair_t pair = s_pair ();
    casm_bundle_t *out = casm_bundle_new ();
    zmsg_t *unit = s_unit (3);
    casm_bundle_append (out, &unit);
    ck_assert_int_eq (casm_bundle_send (out, zsock_resolve (pair.dealer),
                                        NULL), 0);

    zmsg_t *msg = zmsg_recv (pair.router);
    zframe_t *identity = zmsg_pop (msg);
    ck_assert (!casm_bundle_is (msg));
    s_assert_unit (msg, 3);

    //  Unpacked, a plain message is one unit, with the prefix in front.
    casm_bundle_t *in = casm_bundle_new ();
    ck_assert_int_eq (casm_bundle_unpack (in, &msg, identity), 1);
    zmsg_t *got = casm_bundle_pop (in);
    zframe_t *first = zmsg_pop (got);
    ck_assert (zframe_eq (first, identity));
    s_assert_unit (got, 3);
    zframe_destroy (&first);
    zmsg_destroy (&got);
    zframe_destroy (&identity);
    casm_bundle_destroy (&in);
    casm_bundle_destroy (&out);
    s_pair_destroy (&pair);
}
END_TEST

//  [empty] [index] then frames, as a peer might send them.
static zmsg_t *
s_raw_bundle (const byte *index, size_t index_size, int frames)
{
    zmsg_t *msg = zmsg_new ();
    zmsg_addmem (msg, NULL, 0);
    if (index)
        zmsg_addmem (msg, index, index_size);
    for (int k = 0; k < frames; k++)
        zmsg_addstrf (msg, "f%d", k);
    return msg;
}

START_TEST (test_malformed_bundles_are_refused_whole)
{
    casm_bundle_t *in = casm_bundle_new ();
    struct {
        byte index [4];
        size_t index_size;
        int frames;
    } cases [] = {
        { { 2, 2 }, 2, 3 },         // fewer frames than the index says
        { { 2, 2 }, 2, 5 },         // more
        { { 2, 0, 1 }, 3, 3 },      // a unit of no frames
        { { 0 }, 0, 2 },            // an empty index
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases [0]; i++) {
        zmsg_t *msg = s_raw_bundle (cases [i].index, cases [i].index_size,
                                    cases [i].frames);
        ck_assert_int_eq (casm_bundle_unpack (in, &msg, NULL), -1);
        ck_assert_ptr_null (msg);
        ck_assert_uint_eq (casm_bundle_size (in), 0);
    }
    //  No index at all.
    zmsg_t *msg = s_raw_bundle (NULL, 0, 0);
    ck_assert_int_eq (casm_bundle_unpack (in, &msg, NULL), -1);

    //  A unit of the most frames a bundle can say: whole without a
    //  prefix, but one frame too many with one, so refused then.
    byte most [] = { CASM_BUNDLE_FRAMES_MAX };
    msg = s_raw_bundle (most, 1, CASM_BUNDLE_FRAMES_MAX);
    zframe_t *prefix = zframe_new ("peer", 4);
    ck_assert_int_eq (casm_bundle_unpack (in, &msg, prefix), -1);
    ck_assert_uint_eq (casm_bundle_size (in), 0);
    msg = s_raw_bundle (most, 1, CASM_BUNDLE_FRAMES_MAX);
    ck_assert_int_eq (casm_bundle_unpack (in, &msg, NULL), 1);
    zmsg_t *whole = casm_bundle_pop (in);
    ck_assert_uint_eq (zmsg_size (whole), CASM_BUNDLE_FRAMES_MAX);
    zmsg_destroy (&whole);
    zframe_destroy (&prefix);

    //  And a good one, to show the cases above fail for their flaw.
    byte index [] = { 2, 1 };
    msg = s_raw_bundle (index, sizeof index, 3);
    ck_assert_int_eq (casm_bundle_unpack (in, &msg, NULL), 2);
    zmsg_t *unit = casm_bundle_pop (in);
    ck_assert_uint_eq (zmsg_size (unit), 2);
    zmsg_destroy (&unit);
    unit = casm_bundle_pop (in);
    ck_assert_uint_eq (zmsg_size (unit), 1);
    ck_assert (zframe_streq (zmsg_first (unit), "f2"));
    zmsg_destroy (&unit);
    casm_bundle_destroy (&in);
}
END_TEST

START_TEST (test_refused_send_keeps_units)
{
    //  A DEALER with no peer refuses at once (no send timeout).
    zsock_t *dealer = zsock_new (ZMQ_DEALER);
    zsock_set_sndtimeo (dealer, 0);
    casm_bundle_t *out = casm_bundle_new ();
    for (int n = 0; n < 3; n++) {
        zmsg_t *unit = s_unit (n);
        casm_bundle_append (out, &unit);
    }
    ck_assert_int_eq (casm_bundle_send (out, zsock_resolve (dealer), NULL),
                      -1);
    ck_assert_uint_eq (casm_bundle_size (out), 3);
    for (int n = 0; n < 3; n++) {
        zmsg_t *unit = casm_bundle_pop (out);
        s_assert_unit (unit, n);
        zmsg_destroy (&unit);
    }

    //  A ROUTER that must deliver refuses an unknown peer.
    zsock_t *router = zsock_new (ZMQ_ROUTER);
    zsock_set_router_mandatory (router, 1);
    zsock_set_sndtimeo (router, 0);
    zframe_t *nobody = zframe_new ("nobody", 6);
    for (int n = 0; n < 2; n++) {
        zmsg_t *unit = s_unit (n);
        casm_bundle_append (out, &unit);
    }
    ck_assert_int_eq (casm_bundle_send (out, zsock_resolve (router), nobody),
                      -1);
    ck_assert_uint_eq (casm_bundle_size (out), 2);
    zframe_destroy (&nobody);
    casm_bundle_destroy (&out);
    zsock_destroy (&router);
    zsock_destroy (&dealer);
}
END_TEST

int
main (void)
{
    Suite *suite = suite_create ("casm_bundle");
    TCase *ring = tcase_create ("ring");
    tcase_add_test (ring, test_append_pop_order);
    tcase_add_test (ring, test_append_refuses_bad_units);
    suite_add_tcase (suite, ring);

    TCase *wire = tcase_create ("wire");
    tcase_add_test (wire, test_dealer_to_router_gives_identity_to_each);
    tcase_add_test (wire, test_router_to_dealer_names_the_peer);
    tcase_add_test (wire, test_one_unit_is_a_plain_message);
    tcase_add_test (wire, test_malformed_bundles_are_refused_whole);
    tcase_add_test (wire, test_refused_send_keeps_units);
    suite_add_tcase (suite, wire);

    SRunner *runner = srunner_create (suite);
    srunner_run_all (runner, CK_NORMAL);
    int failed = srunner_ntests_failed (runner);
    srunner_free (runner);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
