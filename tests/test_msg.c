/*  test_msg: the internal message format (shared/casm_msg.h).

    The header frame must survive a round trip bit for bit at its limits,
    and a frame that is cut short, too long, or of another version must be
    refused the way the header promises, because every stage decides from
    the return code whether it can answer at all. The envelope is what
    routes a reply back to its HTTP connection: the tests check that replies
    and forwards carry it unchanged across a real ZeroMQ socket pair.      */

#include "casm_msg.h"
#include "casm_proto.h"

#include <check.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

//  A header with every field set, ids at their maximum length.
static casm_header_t
s_full_header (void)
{
    casm_header_t header;
    memset (&header, 0, sizeof header);
    header.version = CASM_MSG_VERSION;
    header.kind = CASM_KIND_REQUEST;
    header.op = CASM_OP_UPDATE_STATE;
    header.flags = CASM_FLAG_REPLAYED | CASM_FLAG_REJECTED;
    header.status = 65535;
    header.deadline_ms = INT64_C (0x0102030405060708);
    for (int i = 0; i < CASM_REQUEST_ID_MAX; i++)
        header.request_id [i] = (char) ('!' + i % 90);
    for (int i = 0; i < CASM_TRACE_ID_MAX; i++)
        header.trace_id [i] = (char) ('a' + i % 26);
    return header;
}

static void
s_assert_header_eq (const casm_header_t *a, const casm_header_t *b)
{
    ck_assert_uint_eq (a->version, b->version);
    ck_assert_uint_eq (a->kind, b->kind);
    ck_assert_uint_eq (a->op, b->op);
    ck_assert_uint_eq (a->flags, b->flags);
    ck_assert_uint_eq (a->status, b->status);
    ck_assert_int_eq (a->deadline_ms, b->deadline_ms);
    ck_assert_str_eq (a->request_id, b->request_id);
    ck_assert_str_eq (a->trace_id, b->trace_id);
}

//  A message [frames...] [""] [header] [body] from a NULL-ended list.
static zmsg_t *
s_message (const casm_header_t *header, const char *body, const char *event,
           const char *identity, ...)
{
    zmsg_t *msg = zmsg_new ();
    va_list args;
    va_start (args, identity);
    for (const char *id = identity; id; id = va_arg (args, const char *))
        zmsg_addstr (msg, id);
    va_end (args);

    zmsg_addmem (msg, NULL, 0);
    zframe_t *frame = casm_header_encode (header);
    zmsg_append (msg, &frame);
    if (body)
        zmsg_addstr (msg, body);
    if (event)
        zmsg_addstr (msg, event);
    return msg;
}

static void
s_assert_frame_str (zframe_t *frame, const char *expected)
{
    ck_assert_ptr_nonnull (frame);
    ck_assert_uint_eq (zframe_size (frame), strlen (expected));
    ck_assert (memcmp (zframe_data (frame), expected, strlen (expected)) == 0);
}

START_TEST (test_round_trip_max_ids)
{
    casm_header_t header = s_full_header ();
    zframe_t *frame = casm_header_encode (&header);
    ck_assert_ptr_nonnull (frame);
    ck_assert_uint_eq (zframe_size (frame),
                       16 + CASM_REQUEST_ID_MAX + CASM_TRACE_ID_MAX);

    casm_header_t decoded;
    ck_assert_int_eq (casm_header_decode (frame, &decoded), 0);
    s_assert_header_eq (&header, &decoded);
    zframe_destroy (&frame);
}
END_TEST

START_TEST (test_round_trip_empty_ids)
{
    casm_header_t header;
    memset (&header, 0, sizeof header);
    header.kind = CASM_KIND_REPLY;
    header.op = CASM_OP_PING;
    header.status = 503;
    header.deadline_ms = casm_now_ms ();

    zframe_t *frame = casm_header_encode (&header);
    ck_assert_uint_eq (zframe_size (frame), 16);

    casm_header_t decoded;
    ck_assert_int_eq (casm_header_decode (frame, &decoded), 0);

    //  encode always writes the current version, whatever the struct says.
    ck_assert_uint_eq (decoded.version, CASM_MSG_VERSION);
    header.version = CASM_MSG_VERSION;
    s_assert_header_eq (&header, &decoded);
    zframe_destroy (&frame);
}
END_TEST

START_TEST (test_layout_big_endian)
{
    casm_header_t header;
    memset (&header, 0, sizeof header);
    header.kind = CASM_KIND_REQUEST;
    header.op = CASM_OP_CREATE;
    header.flags = CASM_FLAG_REJECTED;
    header.status = 0x01F4;
    header.deadline_ms = INT64_C (0x0000018C12345678);
    strcpy (header.request_id, "ab");
    strcpy (header.trace_id, "xyz");

    zframe_t *frame = casm_header_encode (&header);
    const byte expected [] = {
        CASM_MSG_VERSION, 1, 2, CASM_FLAG_REJECTED, 0x01, 0xF4,
        0x00, 0x00, 0x01, 0x8C, 0x12, 0x34, 0x56, 0x78,
        2, 'a', 'b', 3, 'x', 'y', 'z'
    };
    ck_assert_uint_eq (zframe_size (frame), sizeof expected);
    ck_assert (memcmp (zframe_data (frame), expected, sizeof expected) == 0);
    zframe_destroy (&frame);
}
END_TEST

START_TEST (test_truncated_frames)
{
    casm_header_t header = s_full_header ();
    zframe_t *frame = casm_header_encode (&header);
    size_t size = zframe_size (frame);

    //  Every proper prefix of a valid frame is malformed, the empty one too.
    for (size_t cut = 0; cut < size; cut++) {
        zframe_t *part = zframe_new (zframe_data (frame), cut);
        casm_header_t decoded;
        ck_assert_msg (casm_header_decode (part, &decoded) == -1,
                       "a frame cut to %zu of %zu bytes was accepted",
                       cut, size);
        zframe_destroy (&part);
    }
    zframe_destroy (&frame);

    casm_header_t decoded;
    ck_assert_int_eq (casm_header_decode (NULL, &decoded), -1);
}
END_TEST

START_TEST (test_trailing_bytes)
{
    casm_header_t header = s_full_header ();
    zframe_t *frame = casm_header_encode (&header);
    size_t size = zframe_size (frame);

    byte *data = malloc (size + 1);
    memcpy (data, zframe_data (frame), size);
    data [size] = 'x';
    zframe_t *longer = zframe_new (data, size + 1);
    casm_header_t decoded;
    ck_assert_int_eq (casm_header_decode (longer, &decoded), -1);

    zframe_destroy (&longer);
    zframe_destroy (&frame);
    free (data);
}
END_TEST

START_TEST (test_lengths_over_maximum)
{
    //  A request id length of 129 with 129 bytes present: refused, since
    //  the receiver's buffer holds 128.
    byte data [16 + 129 + 1];
    memset (data, 'r', sizeof data);
    data [0] = CASM_MSG_VERSION;
    data [1] = CASM_KIND_REQUEST;
    data [2] = CASM_OP_READ;
    data [3] = 0;
    memset (data + 4, 0, 10);
    data [14] = 129;
    data [15 + 129] = 0;
    zframe_t *frame = zframe_new (data, 16 + 129);
    casm_header_t decoded;
    ck_assert_int_eq (casm_header_decode (frame, &decoded), -1);
    zframe_destroy (&frame);

    //  A trace id length of 65 with 65 bytes present.
    byte trace [16 + 65];
    memset (trace, 't', sizeof trace);
    trace [0] = CASM_MSG_VERSION;
    memset (trace + 1, 0, 13);
    trace [14] = 0;
    trace [15] = 65;
    frame = zframe_new (trace, sizeof trace);
    ck_assert_int_eq (casm_header_decode (frame, &decoded), -1);
    zframe_destroy (&frame);
}
END_TEST

START_TEST (test_unknown_version)
{
    casm_header_t header = s_full_header ();
    zframe_t *frame = casm_header_encode (&header);
    byte *data = zframe_data (frame);

    data [0] = CASM_MSG_VERSION + 1;
    casm_header_t decoded;
    ck_assert_int_eq (casm_header_decode (frame, &decoded), -2);
    ck_assert_uint_eq (decoded.version, CASM_MSG_VERSION + 1);

    data [0] = 0;
    ck_assert_int_eq (casm_header_decode (frame, &decoded), -2);
    ck_assert_uint_eq (decoded.version, 0);
    zframe_destroy (&frame);

    //  A one-byte frame of another version is still "unknown version".
    byte one = 0xEE;
    frame = zframe_new (&one, 1);
    ck_assert_int_eq (casm_header_decode (frame, &decoded), -2);
    ck_assert_uint_eq (decoded.version, 0xEE);
    zframe_destroy (&frame);
}
END_TEST

START_TEST (test_op_names)
{
    ck_assert_str_eq (casm_op_name (CASM_OP_UPDATE_ATTRIBUTES),
                      "updateCustomerCustomAttributes");
    ck_assert_str_eq (casm_op_name (CASM_OP_CREATE), "createCustomer");
    ck_assert_str_eq (casm_op_name (CASM_OP_UPDATE_STATE),
                      "updateCustomerState");
    ck_assert_str_eq (casm_op_name (CASM_OP_READ), "readCustomer");
    ck_assert_str_eq (casm_op_name (CASM_OP_NONE), "unknown");
    ck_assert_str_eq (casm_op_name (200), "unknown");
    ck_assert_str_eq (casm_op_name (-1), "unknown");
}
END_TEST

START_TEST (test_take_full_message)
{
    casm_header_t header = s_full_header ();
    zmsg_t *msg = s_message (&header, "{\"a\":1}", "event", "gw", "corr",
                             NULL);
    casm_work_t *work = casm_work_take (&msg);
    ck_assert_ptr_null (msg);
    ck_assert_ptr_nonnull (work);

    ck_assert_uint_eq (zmsg_size (work->envelope), 3);
    s_assert_frame_str (zmsg_first (work->envelope), "gw");
    s_assert_frame_str (zmsg_next (work->envelope), "corr");
    ck_assert_uint_eq (zframe_size (zmsg_next (work->envelope)), 0);
    s_assert_header_eq (&header, &work->header);

    size_t size;
    const char *body = casm_work_body (work, &size);
    ck_assert_uint_eq (size, 7);
    ck_assert (memcmp (body, "{\"a\":1}", 7) == 0);
    s_assert_frame_str (work->event, "event");

    casm_work_destroy (&work);
    ck_assert_ptr_null (work);
    casm_work_destroy (&work);
}
END_TEST

START_TEST (test_take_empty_envelope)
{
    //  Only the delimiter: the gateway's DEALER side sees this shape.
    casm_header_t header = s_full_header ();
    zmsg_t *msg = s_message (&header, "{}", NULL, NULL);
    casm_work_t *work = casm_work_take (&msg);
    ck_assert_ptr_nonnull (work);
    ck_assert_uint_eq (zmsg_size (work->envelope), 1);
    ck_assert_ptr_null (work->event);
    casm_work_destroy (&work);
}
END_TEST

START_TEST (test_take_without_body)
{
    casm_header_t header = s_full_header ();
    zmsg_t *msg = s_message (&header, NULL, NULL, "id", NULL);
    casm_work_t *work = casm_work_take (&msg);
    ck_assert_ptr_nonnull (work);
    ck_assert_ptr_nonnull (work->body);
    size_t size = 99;
    casm_work_body (work, &size);
    ck_assert_uint_eq (size, 0);
    ck_assert_ptr_null (work->event);
    casm_work_destroy (&work);
}
END_TEST

START_TEST (test_take_without_delimiter)
{
    casm_header_t header = s_full_header ();
    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, "id");
    zframe_t *frame = casm_header_encode (&header);
    zmsg_append (msg, &frame);
    zmsg_addstr (msg, "{}");

    casm_work_t *work = casm_work_take (&msg);
    ck_assert_ptr_null (work);
    ck_assert_ptr_null (msg);
}
END_TEST

START_TEST (test_take_without_header)
{
    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, "id");
    zmsg_addmem (msg, NULL, 0);
    casm_work_t *work = casm_work_take (&msg);
    ck_assert_ptr_null (work);
    ck_assert_ptr_null (msg);

    //  An empty message and no message at all.
    msg = zmsg_new ();
    ck_assert_ptr_null (casm_work_take (&msg));
    ck_assert_ptr_null (msg);
    ck_assert_ptr_null (casm_work_take (&msg));
}
END_TEST

START_TEST (test_take_unknown_version)
{
    casm_header_t header = s_full_header ();
    zmsg_t *msg = s_message (&header, "{}", NULL, "id", NULL);
    zframe_t *frame = zmsg_first (msg);
    frame = zmsg_next (msg);
    frame = zmsg_next (msg);
    zframe_data (frame) [0] = 7;

    //  A work to answer, whose version says it cannot be read.
    casm_work_t *work = casm_work_take (&msg);
    ck_assert_ptr_nonnull (work);
    ck_assert_uint_eq (work->header.version, 7);
    ck_assert_uint_eq (zmsg_size (work->envelope), 2);
    casm_work_destroy (&work);
}
END_TEST

START_TEST (test_take_malformed_header)
{
    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, "id");
    zmsg_addmem (msg, NULL, 0);
    byte junk [] = { CASM_MSG_VERSION, 1, 2 };
    zmsg_addmem (msg, junk, sizeof junk);
    zmsg_addstr (msg, "{}");

    casm_work_t *work = casm_work_take (&msg);
    ck_assert_ptr_nonnull (work);
    ck_assert_uint_ne (work->header.version, CASM_MSG_VERSION);
    ck_assert_uint_eq (zmsg_size (work->envelope), 2);
    casm_work_destroy (&work);
}
END_TEST

//  Two connected PAIR sockets over inproc.
static void
s_pair (zsock_t **a, zsock_t **b)
{
    *a = zsock_new_pair ("@inproc://test_msg");
    *b = zsock_new_pair (">inproc://test_msg");
    ck_assert_ptr_nonnull (*a);
    ck_assert_ptr_nonnull (*b);
    zsock_set_rcvtimeo (*a, 2000);
    zsock_set_rcvtimeo (*b, 2000);
}

START_TEST (test_reply_keeps_envelope)
{
    zsock_t *a, *b;
    s_pair (&a, &b);

    casm_header_t header = s_full_header ();
    header.flags = 0;
    header.status = 0;
    zmsg_t *msg = s_message (&header, "{\"q\":1}", NULL, "validator",
                             "gateway", "corr-7", NULL);
    ck_assert_int_eq (casm_msg_send (&msg, zsock_resolve (a)), 0);
    ck_assert_ptr_null (msg);

    msg = zmsg_recv (b);
    ck_assert_ptr_nonnull (msg);
    casm_work_t *work = casm_work_take (&msg);
    ck_assert_ptr_nonnull (work);
    msg = casm_work_answer (&work, CASM_CMD_REPLY, 404, CASM_FLAG_REPLAYED,
                            "{\"r\":2}", 7);
    ck_assert_ptr_null (work);
    ck_assert_int_eq (casm_msg_send (&msg, zsock_resolve (b)), 0);

    msg = zmsg_recv (a);
    ck_assert_ptr_nonnull (msg);
    ck_assert_uint_eq (zmsg_size (msg), 7);
    s_assert_frame_str (zmsg_first (msg), CASM_CMD_REPLY);
    s_assert_frame_str (zmsg_next (msg), "validator");
    s_assert_frame_str (zmsg_next (msg), "gateway");
    s_assert_frame_str (zmsg_next (msg), "corr-7");
    ck_assert_uint_eq (zframe_size (zmsg_next (msg)), 0);

    casm_header_t reply;
    ck_assert_int_eq (casm_header_decode (zmsg_next (msg), &reply), 0);
    ck_assert_uint_eq (reply.kind, CASM_KIND_REPLY);
    ck_assert_uint_eq (reply.status, 404);
    ck_assert_uint_eq (reply.flags, CASM_FLAG_REPLAYED);
    ck_assert_uint_eq (reply.op, header.op);
    ck_assert_int_eq (reply.deadline_ms, header.deadline_ms);
    ck_assert_str_eq (reply.request_id, header.request_id);
    ck_assert_str_eq (reply.trace_id, header.trace_id);
    s_assert_frame_str (zmsg_next (msg), "{\"r\":2}");
    zmsg_destroy (&msg);

    zsock_destroy (&b);
    zsock_destroy (&a);
}
END_TEST

START_TEST (test_reply_to_unknown_version)
{
    //  The stage answers a version it does not know with a reply of its own
    //  version: the header is readable on the way back.
    zsock_t *a, *b;
    s_pair (&a, &b);

    casm_header_t header = s_full_header ();
    zmsg_t *msg = s_message (&header, "{}", NULL, "gw", NULL);
    zframe_t *frame = zmsg_first (msg);
    frame = zmsg_next (msg);
    frame = zmsg_next (msg);
    zframe_data (frame) [0] = 42;
    casm_work_t *work = casm_work_take (&msg);
    ck_assert_ptr_nonnull (work);
    msg = casm_work_answer (&work, NULL, 500, 0, "{}", 2);
    ck_assert_int_eq (casm_msg_send (&msg, zsock_resolve (b)), 0);

    msg = zmsg_recv (a);
    ck_assert_ptr_nonnull (msg);
    ck_assert_uint_eq (zmsg_size (msg), 4);
    s_assert_frame_str (zmsg_first (msg), "gw");
    ck_assert_uint_eq (zframe_size (zmsg_next (msg)), 0);
    casm_header_t reply;
    ck_assert_int_eq (casm_header_decode (zmsg_next (msg), &reply), 0);
    ck_assert_uint_eq (reply.version, CASM_MSG_VERSION);
    ck_assert_uint_eq (reply.kind, CASM_KIND_REPLY);
    ck_assert_uint_eq (reply.status, 500);
    zmsg_destroy (&msg);

    zsock_destroy (&b);
    zsock_destroy (&a);
}
END_TEST

START_TEST (test_forward_keeps_envelope)
{
    zsock_t *a, *b;
    s_pair (&a, &b);

    casm_header_t header = s_full_header ();
    header.kind = CASM_KIND_REQUEST;
    header.status = 0;
    zmsg_t *msg = s_message (&header, "{\"in\":1}", NULL, "w", "v", "g",
                             "c", NULL);
    ck_assert_int_eq (casm_msg_send (&msg, zsock_resolve (a)), 0);

    msg = zmsg_recv (b);
    casm_work_t *work = casm_work_take (&msg);
    ck_assert_ptr_nonnull (work);
    const char *event = "{\"outboxId\":1}\n{\"refId\":\"x\"}";
    msg = casm_work_onward (&work, "{\"out\":2}", 9, event, strlen (event));
    ck_assert_ptr_null (work);
    ck_assert_int_eq (casm_msg_send (&msg, zsock_resolve (b)), 0);

    msg = zmsg_recv (a);
    ck_assert_ptr_nonnull (msg);
    ck_assert_uint_eq (zmsg_size (msg), 8);
    s_assert_frame_str (zmsg_first (msg), "w");
    s_assert_frame_str (zmsg_next (msg), "v");
    s_assert_frame_str (zmsg_next (msg), "g");
    s_assert_frame_str (zmsg_next (msg), "c");
    ck_assert_uint_eq (zframe_size (zmsg_next (msg)), 0);
    casm_header_t forwarded;
    ck_assert_int_eq (casm_header_decode (zmsg_next (msg), &forwarded), 0);
    s_assert_header_eq (&header, &forwarded);
    s_assert_frame_str (zmsg_next (msg), "{\"out\":2}");
    s_assert_frame_str (zmsg_next (msg), event);
    zmsg_destroy (&msg);

    //  Without an event there is no event frame.
    msg = s_message (&header, "{}", NULL, "g", NULL);
    work = casm_work_take (&msg);
    msg = casm_work_onward (&work, "{}", 2, NULL, 0);
    ck_assert_int_eq (casm_msg_send (&msg, zsock_resolve (b)), 0);
    msg = zmsg_recv (a);
    ck_assert_ptr_nonnull (msg);
    ck_assert_uint_eq (zmsg_size (msg), 4);
    zmsg_destroy (&msg);

    zsock_destroy (&b);
    zsock_destroy (&a);
}
END_TEST

START_TEST (test_work_message_moves_envelope)
{
    casm_header_t header = s_full_header ();
    zmsg_t *msg = s_message (&header, "{}", NULL, "x", "y", NULL);
    casm_work_t *work = casm_work_take (&msg);

    zmsg_t *out = casm_work_message (work, "R", &header, "body", 4, NULL, 0);
    ck_assert_uint_eq (zmsg_size (out), 6);
    s_assert_frame_str (zmsg_first (out), "R");
    s_assert_frame_str (zmsg_next (out), "x");
    ck_assert_ptr_nonnull (work->envelope);
    ck_assert_uint_eq (zmsg_size (work->envelope), 0);
    zmsg_destroy (&out);
    casm_work_destroy (&work);
}
END_TEST

START_TEST (test_send_without_peer)
{
    //  A DEALER with no peer and a zero send timeout refuses at once; the
    //  message is destroyed either way.
    zsock_t *dealer = zsock_new (ZMQ_DEALER);
    zsock_set_sndtimeo (dealer, 0);
    zsock_set_linger (dealer, 0);
    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, "x");
    ck_assert_int_eq (casm_msg_send (&msg, zsock_resolve (dealer)), -1);
    ck_assert_ptr_null (msg);
    zsock_destroy (&dealer);
}
END_TEST

int
main (void)
{
    //  No zsys_init here: a ZeroMQ context made before check forks would
    //  have no I/O threads in the children. Each test makes its own.
    Suite *suite = suite_create ("casm_msg");

    TCase *header = tcase_create ("header");
    tcase_add_test (header, test_round_trip_max_ids);
    tcase_add_test (header, test_round_trip_empty_ids);
    tcase_add_test (header, test_layout_big_endian);
    tcase_add_test (header, test_truncated_frames);
    tcase_add_test (header, test_trailing_bytes);
    tcase_add_test (header, test_lengths_over_maximum);
    tcase_add_test (header, test_unknown_version);
    tcase_add_test (header, test_op_names);
    suite_add_tcase (suite, header);

    TCase *work = tcase_create ("work");
    tcase_add_test (work, test_take_full_message);
    tcase_add_test (work, test_take_empty_envelope);
    tcase_add_test (work, test_take_without_body);
    tcase_add_test (work, test_take_without_delimiter);
    tcase_add_test (work, test_take_without_header);
    tcase_add_test (work, test_take_unknown_version);
    tcase_add_test (work, test_take_malformed_header);
    tcase_add_test (work, test_work_message_moves_envelope);
    suite_add_tcase (suite, work);

    TCase *wire = tcase_create ("wire");
    tcase_add_test (wire, test_reply_keeps_envelope);
    tcase_add_test (wire, test_reply_to_unknown_version);
    tcase_add_test (wire, test_forward_keeps_envelope);
    tcase_add_test (wire, test_send_without_peer);
    suite_add_tcase (suite, wire);

    SRunner *runner = srunner_create (suite);
    srunner_run_all (runner, CK_NORMAL);
    int failed = srunner_ntests_failed (runner);
    srunner_free (runner);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
