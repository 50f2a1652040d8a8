/*  test_queue: one credit-based queue of the broker (broker/casm_queue.h).

    Each test binds a queue on its own pair of tcp ports on 127.0.0.1 (from
    5600 up), connects fake upstream DEALERs to the frontend and fake stage
    instances to the backend, and drives the queue from the test's own
    thread: pump the queue's sockets for a moment, then look at what each
    fake peer received, unit by unit (several units for one peer come as a
    bundle, casm_bundle.h, which s_recv takes apart). The queue's clock is
    the real one plus a skew the test can advance, so expiry and deadlines
    need no long sleeps.                                                  */

#include "casm_bundle.h"
#include "casm_msg.h"
#include "casm_proto.h"
#include "casm_queue.h"
#include "casm_log.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

#define PORT_BASE 5600
#define SETTLE_MS 150

static int64_t s_skew = 0;

static int64_t
s_clock (void)
{
    return casm_now_ms () + s_skew;
}

static casm_queue_t *
s_queue (int queue, int slot, size_t fifo_max)
{
    char frontend [64], backend [64];
    snprintf (frontend, sizeof frontend, "tcp://127.0.0.1:%d",
              PORT_BASE + 2 * slot);
    snprintf (backend, sizeof backend, "tcp://127.0.0.1:%d",
              PORT_BASE + 2 * slot + 1);
    casm_queue_t *self = casm_queue_new (queue, frontend, backend, fifo_max);
    ck_assert_ptr_nonnull (self);
    s_skew = 0;
    casm_queue_set_clock (self, s_clock);
    return self;
}

//  A DEALER connected to the queue's frontend (side 0) or backend (1).
static zsock_t *
s_peer (int slot, int side)
{
    zsock_t *peer = zsock_new (ZMQ_DEALER);
    ck_assert_ptr_nonnull (peer);
    zsock_set_linger (peer, 0);
    zsock_set_rcvtimeo (peer, SETTLE_MS);
    ck_assert_int_eq (zsock_connect (peer, "tcp://127.0.0.1:%d",
                                     PORT_BASE + 2 * slot + side), 0);
    return peer;
}

//  The units each fake peer has received and not yet looked at.
#define PEERS_MAX 16
static struct {
    zsock_t *socket;
    casm_bundle_t *units;
} s_inboxes [PEERS_MAX];

//  The next unit a fake peer received, taken from a bundle when one came;
//  NULL when nothing came within the receive timeout.
static zmsg_t *
s_recv (zsock_t *socket)
{
    size_t i = 0;
    while (i < PEERS_MAX && s_inboxes [i].socket
           && s_inboxes [i].socket != socket)
        i++;
    ck_assert_uint_lt (i, PEERS_MAX);
    if (!s_inboxes [i].socket) {
        s_inboxes [i].socket = socket;
        s_inboxes [i].units = casm_bundle_new ();
    }
    casm_bundle_t *units = s_inboxes [i].units;
    if (casm_bundle_size (units) == 0) {
        zmsg_t *msg = zmsg_recv (socket);
        if (msg)
            ck_assert_int_gt (casm_bundle_unpack (units, &msg, NULL), 0);
    }
    return casm_bundle_pop (units);
}

//  Lets the queue handle what arrives for ms milliseconds.
static void
s_pump (casm_queue_t *queue, int ms)
{
    zpoller_t *poller = zpoller_new (casm_queue_frontend_socket (queue),
                                     casm_queue_backend_socket (queue),
                                     NULL);
    int64_t end = zclock_mono () + ms;
    int64_t left;
    while ((left = end - zclock_mono ()) > 0) {
        void *which = zpoller_wait (poller, (int) left);
        if (which == casm_queue_frontend_socket (queue))
            casm_queue_frontend (queue);
        else
        if (which == casm_queue_backend_socket (queue))
            casm_queue_backend (queue);
    }
    zpoller_destroy (&poller);
}

static void
s_command (zsock_t *instance, const char *command, int count)
{
    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, command);
    if (count >= 0)
        zmsg_addstrf (msg, "%d", count);
    ck_assert_int_eq (zmsg_send (&msg, instance), 0);
}

static casm_header_t
s_header (const char *request_id, int64_t deadline)
{
    casm_header_t header;
    memset (&header, 0, sizeof header);
    header.version = CASM_MSG_VERSION;
    header.kind = CASM_KIND_REQUEST;
    header.op = CASM_OP_UPDATE_ATTRIBUTES;
    header.deadline_ms = deadline;
    snprintf (header.request_id, sizeof header.request_id, "%s", request_id);
    snprintf (header.trace_id, sizeof header.trace_id, "trace-%s",
              request_id);
    return header;
}

//  Sends [correlation] [] [header] [body] [event]? from an upstream.
static void
s_request (zsock_t *upstream, const char *correlation, const char *body,
           const char *event, int64_t deadline)
{
    casm_header_t header = s_header (correlation, deadline);
    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, correlation);
    zmsg_addmem (msg, NULL, 0);
    zframe_t *frame = casm_header_encode (&header);
    zmsg_append (msg, &frame);
    zmsg_addstr (msg, body);
    if (event)
        zmsg_addstr (msg, event);
    ck_assert_int_eq (zmsg_send (&msg, upstream), 0);
}

static int64_t
s_later (int ms)
{
    return casm_now_ms () + ms;
}

//  Receives one unit of work on a fake instance: [upstream] [correlation]
//  [] [header] [body]. Returns NULL when none came.
static zmsg_t *
s_work (zsock_t *instance)
{
    zmsg_t *msg = s_recv (instance);
    if (msg)
        ck_assert_int_ge (zmsg_size (msg), 5);
    return msg;
}

//  Counts the units a fake instance receives, destroying them.
static int
s_drain_work (zsock_t *instance)
{
    int count = 0;
    zmsg_t *msg;
    while ((msg = s_work (instance))) {
        count++;
        zmsg_destroy (&msg);
    }
    return count;
}

//  The answer to a unit as an instance makes it: "R" and the work's
//  envelope, a reply header, and body. Destroys the work.
static zmsg_t *
s_reply_message (zmsg_t **work_p, const char *body)
{
    zmsg_t *work = *work_p;
    zmsg_t *reply = zmsg_new ();
    zmsg_addstr (reply, CASM_CMD_REPLY);
    zframe_t *frame;
    while ((frame = zmsg_pop (work))) {
        bool delimiter = zframe_size (frame) == 0;
        zmsg_append (reply, &frame);
        if (delimiter)
            break;
    }
    frame = zmsg_pop (work);
    casm_header_t header;
    ck_assert_int_eq (casm_header_decode (frame, &header), 0);
    zframe_destroy (&frame);
    header.kind = CASM_KIND_REPLY;
    header.status = 200;
    frame = casm_header_encode (&header);
    zmsg_append (reply, &frame);
    zmsg_addstr (reply, body);
    zmsg_destroy (work_p);
    return reply;
}

//  Answers a unit as an instance would, in a message of its own.
static void
s_answer (zsock_t *instance, zmsg_t **work_p, const char *body)
{
    zmsg_t *reply = s_reply_message (work_p, body);
    ck_assert_int_eq (zmsg_send (&reply, instance), 0);
}

//  Receives a reply on an upstream and checks its correlation, status,
//  flags and body; returns the frame count.
static size_t
s_expect_reply (zsock_t *upstream, const char *correlation, int status,
                int flags, const char *body)
{
    zmsg_t *msg = s_recv (upstream);
    ck_assert_msg (msg != NULL, "no reply for %s", correlation);
    size_t size = zmsg_size (msg);
    ck_assert_int_ge (size, 4);

    char *text = zmsg_popstr (msg);
    ck_assert_str_eq (text, correlation);
    free (text);
    zframe_t *frame = zmsg_pop (msg);
    ck_assert_int_eq (zframe_size (frame), 0);
    zframe_destroy (&frame);

    frame = zmsg_pop (msg);
    casm_header_t header;
    ck_assert_int_eq (casm_header_decode (frame, &header), 0);
    zframe_destroy (&frame);
    ck_assert_int_eq (header.kind, CASM_KIND_REPLY);
    ck_assert_int_eq (header.status, status);
    ck_assert_int_eq (header.flags, flags);
    ck_assert_str_eq (header.request_id, correlation);
    ck_assert_int_eq (header.op, CASM_OP_UPDATE_ATTRIBUTES);

    text = zmsg_popstr (msg);
    ck_assert_str_eq (text, body);
    free (text);
    zmsg_destroy (&msg);
    return size;
}

static void
s_expect_nothing (zsock_t *socket)
{
    zmsg_t *msg = s_recv (socket);
    ck_assert_msg (msg == NULL, "unexpected message");
}

static casm_queue_stats_t
s_stats (casm_queue_t *queue)
{
    casm_queue_stats_t stats;
    casm_queue_stats (queue, &stats);
    return stats;
}


START_TEST (test_credit_bounds_work)
{
    casm_queue_t *queue = s_queue (1, 0, 100);
    zsock_t *upstream = s_peer (0, 0);
    zsock_t *instance = s_peer (0, 1);
    s_command (instance, CASM_CMD_CREDIT, 2);
    s_pump (queue, SETTLE_MS);

    for (int i = 0; i < 5; i++)
        s_request (upstream, "c", "{}", NULL, s_later (10000));
    s_pump (queue, SETTLE_MS);
    ck_assert_int_eq (s_drain_work (instance), 2);
    ck_assert_int_eq (s_stats (queue).waiting, 3);

    s_command (instance, CASM_CMD_CREDIT, 1);
    s_pump (queue, SETTLE_MS);
    ck_assert_int_eq (s_drain_work (instance), 1);
    ck_assert_int_eq (s_stats (queue).waiting, 2);
    ck_assert_int_eq (s_stats (queue).dispatched, 3);

    zsock_destroy (&instance);
    zsock_destroy (&upstream);
    casm_queue_destroy (&queue);
}
END_TEST

START_TEST (test_work_waits_for_credit)
{
    casm_queue_t *queue = s_queue (1, 1, 100);
    zsock_t *upstream = s_peer (1, 0);
    zsock_t *instance = s_peer (1, 1);
    s_command (instance, CASM_CMD_HEARTBEAT, 0);
    s_pump (queue, SETTLE_MS);
    ck_assert_int_eq (s_stats (queue).instances, 1);

    s_request (upstream, "corr-1", "{\"a\":1}", NULL, s_later (10000));
    s_pump (queue, SETTLE_MS);
    s_expect_nothing (instance);
    s_expect_nothing (upstream);
    ck_assert_int_eq (s_stats (queue).waiting, 1);

    s_command (instance, CASM_CMD_CREDIT, 1);
    s_pump (queue, SETTLE_MS);
    zmsg_t *work = s_work (instance);
    ck_assert_ptr_nonnull (work);
    ck_assert_int_eq (zmsg_size (work), 5);
    zframe_t *frame = zmsg_first (work);
    ck_assert_int_gt (zframe_size (frame), 0);      // upstream identity
    frame = zmsg_next (work);
    ck_assert (zframe_streq (frame, "corr-1"));
    frame = zmsg_next (work);
    ck_assert_int_eq (zframe_size (frame), 0);
    frame = zmsg_next (work);
    casm_header_t header;
    ck_assert_int_eq (casm_header_decode (frame, &header), 0);
    ck_assert_str_eq (header.request_id, "corr-1");
    frame = zmsg_next (work);
    ck_assert (zframe_streq (frame, "{\"a\":1}"));
    zmsg_destroy (&work);
    ck_assert_int_eq (s_stats (queue).waiting, 0);

    zsock_destroy (&instance);
    zsock_destroy (&upstream);
    casm_queue_destroy (&queue);
}
END_TEST

START_TEST (test_replies_route_back)
{
    casm_queue_t *queue = s_queue (2, 2, 100);
    zsock_t *alice = s_peer (2, 0);
    zsock_t *bob = s_peer (2, 0);
    zsock_t *instance = s_peer (2, 1);
    s_command (instance, CASM_CMD_CREDIT, 2);
    s_pump (queue, SETTLE_MS);

    s_request (alice, "alice", "{}", NULL, s_later (10000));
    s_request (bob, "bob", "{}", NULL, s_later (10000));
    s_pump (queue, SETTLE_MS);
    zmsg_t *first = s_work (instance);
    zmsg_t *second = s_work (instance);
    ck_assert_ptr_nonnull (first);
    ck_assert_ptr_nonnull (second);

    //  Answer in the other order: routing is by identity, not by turn.
    //  Each answer's body names the correlation it came with.
    zmsg_first (second);
    char *name = zframe_strdup (zmsg_next (second));
    s_answer (instance, &second, name);
    free (name);
    zmsg_first (first);
    name = zframe_strdup (zmsg_next (first));
    s_answer (instance, &first, name);
    free (name);
    s_pump (queue, SETTLE_MS);

    s_expect_reply (alice, "alice", 200, 0, "alice");
    s_expect_reply (bob, "bob", 200, 0, "bob");
    s_expect_nothing (alice);
    ck_assert_int_eq (s_stats (queue).replies, 2);

    zsock_destroy (&instance);
    zsock_destroy (&bob);
    zsock_destroy (&alice);
    casm_queue_destroy (&queue);
}
END_TEST

START_TEST (test_no_instance_rejects)
{
    casm_queue_t *queue = s_queue (1, 3, 100);
    zsock_t *upstream = s_peer (3, 0);

    s_request (upstream, "lonely", "{\"body\":true}", "the event",
               s_later (10000));
    s_pump (queue, SETTLE_MS);
    zmsg_t *msg = s_recv (upstream);
    ck_assert_ptr_nonnull (msg);
    ck_assert_int_eq (zmsg_size (msg), 5);
    ck_assert (zframe_streq (zmsg_last (msg), "the event"));
    zmsg_destroy (&msg);

    s_request (upstream, "lonely", "{\"body\":true}", NULL, s_later (10000));
    s_pump (queue, SETTLE_MS);
    ck_assert_int_eq (s_expect_reply (upstream, "lonely", 503,
                                      CASM_FLAG_REJECTED, "{\"body\":true}"),
                      4);
    ck_assert_int_eq (s_stats (queue).rejected, 2);

    zsock_destroy (&upstream);
    casm_queue_destroy (&queue);
}
END_TEST

START_TEST (test_fifo_full_rejects)
{
    casm_queue_t *queue = s_queue (2, 4, 2);
    zsock_t *upstream = s_peer (4, 0);
    zsock_t *instance = s_peer (4, 1);
    s_command (instance, CASM_CMD_HEARTBEAT, 0);
    s_pump (queue, SETTLE_MS);

    s_request (upstream, "one", "{}", NULL, s_later (10000));
    s_request (upstream, "two", "{}", NULL, s_later (10000));
    s_request (upstream, "three", "{\"n\":3}", NULL, s_later (10000));
    s_pump (queue, SETTLE_MS);
    s_expect_reply (upstream, "three", 503, CASM_FLAG_REJECTED, "{\"n\":3}");
    s_expect_nothing (upstream);
    ck_assert_int_eq (s_stats (queue).waiting, 2);

    zsock_destroy (&instance);
    zsock_destroy (&upstream);
    casm_queue_destroy (&queue);
}
END_TEST

START_TEST (test_silent_instance_forgotten)
{
    casm_queue_t *queue = s_queue (1, 5, 100);
    zsock_t *upstream = s_peer (5, 0);
    zsock_t *silent = s_peer (5, 1);
    zsock_t *alive = s_peer (5, 1);
    s_command (silent, CASM_CMD_CREDIT, 5);
    s_command (alive, CASM_CMD_HEARTBEAT, 0);
    s_pump (queue, SETTLE_MS);
    ck_assert_int_eq (s_stats (queue).instances, 2);

    s_skew += CASM_PEER_EXPIRY_MS / 2;
    s_command (alive, CASM_CMD_HEARTBEAT, 0);
    s_pump (queue, SETTLE_MS);
    casm_queue_tick (queue);
    ck_assert_int_eq (s_stats (queue).instances, 2);

    s_skew += CASM_PEER_EXPIRY_MS / 2 + 500;
    casm_queue_tick (queue);
    ck_assert_int_eq (s_stats (queue).instances, 1);

    //  The silent one's credit is gone: the work waits for the other.
    s_request (upstream, "x", "{}", NULL, s_later (60000));
    s_pump (queue, SETTLE_MS);
    s_expect_nothing (silent);
    ck_assert_int_eq (s_stats (queue).waiting, 1);

    s_command (alive, CASM_CMD_CREDIT, 1);
    s_pump (queue, SETTLE_MS);
    ck_assert_int_eq (s_drain_work (alive), 1);

    //  With nobody left, new work is answered at once.
    s_skew += CASM_PEER_EXPIRY_MS + 500;
    casm_queue_tick (queue);
    ck_assert_int_eq (s_stats (queue).instances, 0);
    s_request (upstream, "y", "{}", NULL, s_later (60000));
    s_pump (queue, SETTLE_MS);
    s_expect_reply (upstream, "y", 503, CASM_FLAG_REJECTED, "{}");

    zsock_destroy (&alive);
    zsock_destroy (&silent);
    zsock_destroy (&upstream);
    casm_queue_destroy (&queue);
}
END_TEST

START_TEST (test_drain_stops_dispatch)
{
    casm_queue_t *queue = s_queue (2, 6, 100);
    zsock_t *upstream = s_peer (6, 0);
    zsock_t *draining = s_peer (6, 1);
    zsock_t *other = s_peer (6, 1);
    s_command (draining, CASM_CMD_CREDIT, 3);
    s_pump (queue, SETTLE_MS);
    s_command (other, CASM_CMD_HEARTBEAT, 0);
    s_pump (queue, SETTLE_MS);

    s_request (upstream, "held", "{}", NULL, s_later (10000));
    s_pump (queue, SETTLE_MS);
    zmsg_t *held = s_work (draining);
    ck_assert_ptr_nonnull (held);

    s_command (draining, CASM_CMD_DRAIN, -1);
    s_pump (queue, SETTLE_MS);
    ck_assert_int_eq (s_stats (queue).accepting, 1);
    s_request (upstream, "next", "{}", NULL, s_later (10000));
    s_pump (queue, SETTLE_MS);
    s_expect_nothing (draining);
    ck_assert_int_eq (s_stats (queue).waiting, 1);

    //  Its reply still goes home, and credit it sends changes nothing.
    s_answer (draining, &held, "done");
    s_command (draining, CASM_CMD_CREDIT, 3);
    s_pump (queue, SETTLE_MS);
    s_expect_reply (upstream, "held", 200, 0, "done");
    s_expect_nothing (draining);

    s_command (other, CASM_CMD_CREDIT, 1);
    s_pump (queue, SETTLE_MS);
    ck_assert_int_eq (s_drain_work (other), 1);

    zsock_destroy (&other);
    zsock_destroy (&draining);
    zsock_destroy (&upstream);
    casm_queue_destroy (&queue);
}
END_TEST

START_TEST (test_last_drain_rejects_waiting)
{
    casm_queue_t *queue = s_queue (1, 7, 100);
    zsock_t *upstream = s_peer (7, 0);
    zsock_t *instance = s_peer (7, 1);
    s_command (instance, CASM_CMD_HEARTBEAT, 0);
    s_pump (queue, SETTLE_MS);
    s_request (upstream, "w", "{}", NULL, s_later (10000));
    s_pump (queue, SETTLE_MS);
    ck_assert_int_eq (s_stats (queue).waiting, 1);

    s_command (instance, CASM_CMD_DRAIN, -1);
    s_pump (queue, SETTLE_MS);
    s_expect_reply (upstream, "w", 503, CASM_FLAG_REJECTED, "{}");
    ck_assert_int_eq (s_stats (queue).waiting, 0);

    zsock_destroy (&instance);
    zsock_destroy (&upstream);
    casm_queue_destroy (&queue);
}
END_TEST

START_TEST (test_heartbeat_registers)
{
    casm_queue_t *queue = s_queue (3, 8, 100);
    zsock_t *upstream = s_peer (8, 0);
    zsock_t *instance = s_peer (8, 1);
    s_command (instance, CASM_CMD_HEARTBEAT, 2);
    s_pump (queue, SETTLE_MS);
    ck_assert_int_eq (s_stats (queue).instances, 1);

    for (int i = 0; i < 3; i++)
        s_request (upstream, "h", "{}", "event", s_later (10000));
    s_pump (queue, SETTLE_MS);
    ck_assert_int_eq (s_drain_work (instance), 2);
    ck_assert_int_eq (s_stats (queue).waiting, 1);

    //  A second heartbeat from a known instance is not credit.
    s_command (instance, CASM_CMD_HEARTBEAT, 2);
    s_pump (queue, SETTLE_MS);
    s_expect_nothing (instance);
    ck_assert_int_eq (s_stats (queue).waiting, 1);

    zsock_destroy (&instance);
    zsock_destroy (&upstream);
    casm_queue_destroy (&queue);
}
END_TEST

//  A heartbeat that counts what the instance received sets its credit to
//  its free slots less what is still on the way: a lost "C" is repaired.
START_TEST (test_heartbeat_repairs_credit)
{
    casm_queue_t *queue = s_queue (2, 15, 100);
    zsock_t *upstream = s_peer (15, 0);
    zsock_t *instance = s_peer (15, 1);
    s_command (instance, CASM_CMD_HEARTBEAT, 2);
    s_pump (queue, SETTLE_MS);

    for (int i = 0; i < 3; i++)
        s_request (upstream, "r", "{}", NULL, s_later (10000));
    s_pump (queue, SETTLE_MS);
    ck_assert_int_eq (s_drain_work (instance), 2);
    ck_assert_int_eq (s_stats (queue).waiting, 1);

    //  Both units are done but their "C 2" never arrived; the heartbeat
    //  says two slots are free and two units were received.
    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, CASM_CMD_HEARTBEAT);
    zmsg_addstr (msg, "2");
    zmsg_addstr (msg, "2");
    ck_assert_int_eq (zmsg_send (&msg, instance), 0);
    s_pump (queue, SETTLE_MS);
    ck_assert_int_eq (s_drain_work (instance), 1);
    ck_assert_int_eq (s_stats (queue).waiting, 0);

    //  A stale heartbeat (2 free, 2 received) while more was sent since:
    //  what is on the way counts against the free slots, so only one more
    //  unit goes out, not two.
    for (int i = 0; i < 3; i++)
        s_request (upstream, "r", "{}", NULL, s_later (10000));
    msg = zmsg_new ();
    zmsg_addstr (msg, CASM_CMD_HEARTBEAT);
    zmsg_addstr (msg, "2");
    zmsg_addstr (msg, "2");
    ck_assert_int_eq (zmsg_send (&msg, instance), 0);
    s_pump (queue, SETTLE_MS);
    ck_assert_int_eq (s_drain_work (instance), 1);
    ck_assert_int_eq (s_stats (queue).waiting, 2);

    zsock_destroy (&instance);
    zsock_destroy (&upstream);
    casm_queue_destroy (&queue);
}
END_TEST

START_TEST (test_expired_dropped_on_q1)
{
    casm_queue_t *queue = s_queue (1, 9, 100);
    zsock_t *upstream = s_peer (9, 0);
    zsock_t *instance = s_peer (9, 1);
    s_command (instance, CASM_CMD_HEARTBEAT, 0);
    s_pump (queue, SETTLE_MS);

    s_request (upstream, "soon", "{}", NULL, s_later (1000));
    s_request (upstream, "late", "{}", NULL, s_later (60000));
    s_pump (queue, SETTLE_MS);
    ck_assert_int_eq (s_stats (queue).waiting, 2);

    s_skew += 2000;
    s_command (instance, CASM_CMD_HEARTBEAT, 0);
    s_pump (queue, SETTLE_MS);
    casm_queue_tick (queue);
    ck_assert_int_eq (s_stats (queue).waiting, 1);
    ck_assert_int_eq (s_stats (queue).expired, 1);
    s_expect_nothing (upstream);

    s_command (instance, CASM_CMD_CREDIT, 2);
    s_pump (queue, SETTLE_MS);
    zmsg_t *work = s_work (instance);
    ck_assert_ptr_nonnull (work);
    zmsg_first (work);
    ck_assert (zframe_streq (zmsg_next (work), "late"));
    zmsg_destroy (&work);
    s_expect_nothing (instance);

    zsock_destroy (&instance);
    zsock_destroy (&upstream);
    casm_queue_destroy (&queue);
}
END_TEST

START_TEST (test_expired_rejected_on_q3)
{
    casm_queue_t *queue = s_queue (3, 10, 100);
    zsock_t *upstream = s_peer (10, 0);
    zsock_t *instance = s_peer (10, 1);
    s_command (instance, CASM_CMD_HEARTBEAT, 0);
    s_pump (queue, SETTLE_MS);

    s_request (upstream, "committed", "{\"bt\":1}", "{\"outboxId\":1}\n{}",
               s_later (1000));
    s_pump (queue, SETTLE_MS);
    ck_assert_int_eq (s_stats (queue).waiting, 1);

    s_skew += 2000;
    s_command (instance, CASM_CMD_HEARTBEAT, 0);
    s_pump (queue, SETTLE_MS);
    casm_queue_tick (queue);
    ck_assert_int_eq (s_stats (queue).waiting, 0);
    ck_assert_int_eq (s_expect_reply (upstream, "committed", 503,
                                      CASM_FLAG_REJECTED, "{\"bt\":1}"), 5);

    zsock_destroy (&instance);
    zsock_destroy (&upstream);
    casm_queue_destroy (&queue);
}
END_TEST

START_TEST (test_round_robin)
{
    casm_queue_t *queue = s_queue (2, 11, 100);
    zsock_t *upstream = s_peer (11, 0);
    zsock_t *a = s_peer (11, 1);
    zsock_t *b = s_peer (11, 1);
    s_command (a, CASM_CMD_CREDIT, 10);
    s_command (b, CASM_CMD_CREDIT, 10);
    s_pump (queue, SETTLE_MS);

    for (int i = 0; i < 6; i++)
        s_request (upstream, "rr", "{}", NULL, s_later (10000));
    s_pump (queue, SETTLE_MS);
    ck_assert_int_eq (s_drain_work (a), 3);
    ck_assert_int_eq (s_drain_work (b), 3);

    zsock_destroy (&b);
    zsock_destroy (&a);
    zsock_destroy (&upstream);
    casm_queue_destroy (&queue);
}
END_TEST

START_TEST (test_vanished_instance)
{
    casm_queue_t *queue = s_queue (1, 12, 100);
    zsock_t *upstream = s_peer (12, 0);
    zsock_t *instance = s_peer (12, 1);
    s_command (instance, CASM_CMD_CREDIT, 5);
    s_pump (queue, SETTLE_MS);

    //  The ROUTER learns of the disconnect; the queue learns on sending.
    zsock_destroy (&instance);
    s_pump (queue, SETTLE_MS);
    s_request (upstream, "gone", "{}", NULL, s_later (10000));
    s_pump (queue, SETTLE_MS);
    s_expect_reply (upstream, "gone", 503, CASM_FLAG_REJECTED, "{}");
    ck_assert_int_eq (s_stats (queue).instances, 0);

    zsock_destroy (&upstream);
    casm_queue_destroy (&queue);
}
END_TEST

START_TEST (test_bad_input_dropped)
{
    casm_queue_t *queue = s_queue (1, 13, 100);
    zsock_t *upstream = s_peer (13, 0);
    zsock_t *instance = s_peer (13, 1);

    //  No delimiter; a delimiter but no header; bad commands and counts.
    zstr_send (upstream, "no envelope");
    zstr_sendm (upstream, "corr");
    zstr_send (upstream, "");
    zstr_send (instance, "X");
    zstr_sendm (instance, CASM_CMD_CREDIT);
    zstr_send (instance, "-1");
    zstr_sendm (instance, CASM_CMD_CREDIT);
    zstr_send (instance, "99999999");
    zstr_send (instance, CASM_CMD_CREDIT);
    zstr_send (instance, CASM_CMD_REPLY);
    s_pump (queue, SETTLE_MS);
    s_expect_nothing (upstream);
    ck_assert_int_eq (s_stats (queue).malformed, 7);
    ck_assert_int_eq (s_stats (queue).instances, 0);

    //  A header of an unknown version is still routed.
    s_command (instance, CASM_CMD_CREDIT, 1);
    s_pump (queue, SETTLE_MS);
    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, "v9");
    zmsg_addmem (msg, NULL, 0);
    zmsg_addmem (msg, "\x09\x01", 2);
    zmsg_addstr (msg, "{}");
    zmsg_send (&msg, upstream);
    s_pump (queue, SETTLE_MS);
    ck_assert_int_eq (s_drain_work (instance), 1);

    zsock_destroy (&instance);
    zsock_destroy (&upstream);
    casm_queue_destroy (&queue);
}
END_TEST

START_TEST (test_destroy_rejects_waiting)
{
    casm_queue_t *queue = s_queue (2, 14, 100);
    zsock_t *upstream = s_peer (14, 0);
    zsock_t *instance = s_peer (14, 1);
    s_command (instance, CASM_CMD_HEARTBEAT, 0);
    s_pump (queue, SETTLE_MS);
    s_request (upstream, "bye", "{}", NULL, s_later (10000));
    s_pump (queue, SETTLE_MS);

    casm_queue_destroy (&queue);
    ck_assert_ptr_null (queue);
    s_expect_reply (upstream, "bye", 503, CASM_FLAG_REJECTED, "{}");


    zsock_destroy (&instance);
    zsock_destroy (&upstream);
}
END_TEST

//  The units one dispatch gives an instance leave as one message, in
//  FIFO order; the instance's credit still bounds them.
START_TEST (test_dispatch_bundles_units)
{
    casm_queue_t *queue = s_queue (1, 20, 100);
    zsock_t *upstream = s_peer (20, 0);
    zsock_t *instance = s_peer (20, 1);
    s_command (instance, CASM_CMD_HEARTBEAT, 0);
    s_pump (queue, SETTLE_MS);

    const char *names [] = { "b-1", "b-2", "b-3", "b-4" };
    for (int i = 0; i < 4; i++)
        s_request (upstream, names [i], "{}", NULL, s_later (10000));
    s_pump (queue, SETTLE_MS);
    s_command (instance, CASM_CMD_CREDIT, 3);
    s_pump (queue, SETTLE_MS);

    zmsg_t *msg = zmsg_recv (instance);
    ck_assert_ptr_nonnull (msg);
    ck_assert (casm_bundle_is (msg));
    casm_bundle_t *units = casm_bundle_new ();
    ck_assert_int_eq (casm_bundle_unpack (units, &msg, NULL), 3);
    ck_assert_ptr_null (zmsg_recv (instance));
    for (int i = 0; i < 3; i++) {
        zmsg_t *unit = casm_bundle_pop (units);
        zmsg_first (unit);
        ck_assert (zframe_streq (zmsg_next (unit), names [i]));
        zmsg_destroy (&unit);
    }
    ck_assert_int_eq (s_stats (queue).waiting, 1);
    ck_assert_int_eq (s_stats (queue).dispatched, 3);
    casm_bundle_destroy (&units);

    zsock_destroy (&instance);
    zsock_destroy (&upstream);
    casm_queue_destroy (&queue);
}
END_TEST

//  Bundles coming in are taken apart: each request keeps its sender's
//  identity (so its reply finds the way back), each command in an
//  instance's bundle counts, and the replies for one upstream peer go
//  back together.
START_TEST (test_bundles_taken_apart)
{
    casm_queue_t *queue = s_queue (2, 21, 100);
    zsock_t *upstream = s_peer (21, 0);
    zsock_t *instance = s_peer (21, 1);
    s_command (instance, CASM_CMD_CREDIT, 2);
    s_pump (queue, SETTLE_MS);

    //  Two requests in one bundle.
    casm_bundle_t *out = casm_bundle_new ();
    const char *names [] = { "one", "two" };
    for (int i = 0; i < 2; i++) {
        casm_header_t header = s_header (names [i], s_later (10000));
        zmsg_t *msg = zmsg_new ();
        zmsg_addstr (msg, names [i]);
        zmsg_addmem (msg, NULL, 0);
        zframe_t *frame = casm_header_encode (&header);
        zmsg_append (msg, &frame);
        zmsg_addstr (msg, "{}");
        casm_bundle_append (out, &msg);
    }
    ck_assert_int_eq (casm_bundle_send (out, zsock_resolve (upstream), NULL),
                      0);
    s_pump (queue, SETTLE_MS);
    ck_assert_int_eq (s_stats (queue).dispatched, 2);
    ck_assert_int_eq (s_stats (queue).credit, 0);

    //  Both answers and the slots back, in one bundle.
    for (int i = 0; i < 2; i++) {
        zmsg_t *work = s_work (instance);
        ck_assert_ptr_nonnull (work);
        zmsg_t *reply = s_reply_message (&work, names [i]);
        casm_bundle_append (out, &reply);
    }
    zmsg_t *credit = zmsg_new ();
    zmsg_addstr (credit, CASM_CMD_CREDIT);
    zmsg_addstr (credit, "2");
    casm_bundle_append (out, &credit);
    ck_assert_int_eq (casm_bundle_send (out, zsock_resolve (instance), NULL),
                      0);
    s_pump (queue, SETTLE_MS);

    ck_assert_int_eq (s_stats (queue).replies, 2);
    ck_assert_int_eq (s_stats (queue).credit, 2);
    zmsg_t *raw = zmsg_recv (upstream);
    ck_assert_ptr_nonnull (raw);
    ck_assert (casm_bundle_is (raw));
    casm_bundle_t *in = casm_bundle_new ();
    ck_assert_int_eq (casm_bundle_unpack (in, &raw, NULL), 2);
    for (int i = 0; i < 2; i++) {
        zmsg_t *reply = casm_bundle_pop (in);
        ck_assert (zframe_streq (zmsg_first (reply), names [i]));
        ck_assert (zframe_streq (zmsg_last (reply), names [i]));
        zmsg_destroy (&reply);
    }
    casm_bundle_destroy (&in);
    casm_bundle_destroy (&out);

    zsock_destroy (&instance);
    zsock_destroy (&upstream);
    casm_queue_destroy (&queue);
}
END_TEST

//  A bundle whose index does not match its frames is dropped whole and
//  counted, on either side.
START_TEST (test_malformed_bundle_dropped)
{
    casm_queue_t *queue = s_queue (1, 22, 100);
    zsock_t *upstream = s_peer (22, 0);
    zsock_t *instance = s_peer (22, 1);
    s_command (instance, CASM_CMD_CREDIT, 5);
    s_pump (queue, SETTLE_MS);

    byte index [] = { 4, 4 };
    for (int side = 0; side < 2; side++) {
        zmsg_t *msg = zmsg_new ();
        zmsg_addmem (msg, NULL, 0);
        zmsg_addmem (msg, index, sizeof index);
        zmsg_addstr (msg, "C");
        zmsg_addstr (msg, "3");
        ck_assert_int_eq (zmsg_send (&msg, side ? instance : upstream), 0);
    }
    s_pump (queue, SETTLE_MS);
    ck_assert_int_eq (s_stats (queue).malformed, 2);
    ck_assert_int_eq (s_stats (queue).waiting, 0);
    ck_assert_int_eq (s_stats (queue).credit, 5);
    s_expect_nothing (instance);

    zsock_destroy (&instance);
    zsock_destroy (&upstream);
    casm_queue_destroy (&queue);
}
END_TEST

static Suite *
s_suite (void)
{
    Suite *suite = suite_create ("queue");
    TCase *tc = tcase_create ("queue");
    tcase_set_timeout (tc, 20);
    tcase_add_test (tc, test_credit_bounds_work);
    tcase_add_test (tc, test_work_waits_for_credit);
    tcase_add_test (tc, test_replies_route_back);
    tcase_add_test (tc, test_no_instance_rejects);
    tcase_add_test (tc, test_fifo_full_rejects);
    tcase_add_test (tc, test_silent_instance_forgotten);
    tcase_add_test (tc, test_drain_stops_dispatch);
    tcase_add_test (tc, test_last_drain_rejects_waiting);
    tcase_add_test (tc, test_heartbeat_registers);
    tcase_add_test (tc, test_heartbeat_repairs_credit);
    tcase_add_test (tc, test_expired_dropped_on_q1);
    tcase_add_test (tc, test_expired_rejected_on_q3);
    tcase_add_test (tc, test_round_robin);
    tcase_add_test (tc, test_vanished_instance);
    tcase_add_test (tc, test_bad_input_dropped);
    tcase_add_test (tc, test_destroy_rejects_waiting);
    tcase_add_test (tc, test_dispatch_bundles_units);
    tcase_add_test (tc, test_bundles_taken_apart);
    tcase_add_test (tc, test_malformed_bundle_dropped);
    suite_add_tcase (suite, tc);
    return suite;
}

int
main (void)
{
    casm_log_init ("test_queue", NULL);
    SRunner *runner = srunner_create (s_suite ());
    srunner_run_all (runner, CK_NORMAL);
    int failed = srunner_ntests_failed (runner);
    srunner_free (runner);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
