/*  casm_stage: credit and heartbeats for a stage instance.               */

#include "casm_stage.h"
#include "casm_bundle.h"
#include "casm_config.h"
#include "casm_curve.h"
#include "casm_log.h"
#include "casm_metrics.h"
#include "casm_proto.h"

struct casm_stage_t {
    const char *name;           // validator, worker, publisher: metrics
    zsock_t *socket;
    int capacity;
    int free;
    int64_t received;           // units received, modulo CASM_COUNT_MOD
    int draining;
    int64_t next_heartbeat;
    casm_bundle_t *inbox;       // units received, not taken yet
    casm_bundle_t *outbox;      // messages for the broker this turn
    int credit_due;             // slots given back, not announced yet
    int64_t next_warning;       // a failed flush is logged this often
};

void
casm_socket_tune (zsock_t *socket)
{
    zsock_set_linger (socket, 0);
    zsock_set_sndtimeo (socket, 0);
    zsock_set_sndhwm (socket, 10000);
    zsock_set_rcvhwm (socket, 10000);
    zsock_set_heartbeat_ivl (socket, 1000);
    zsock_set_heartbeat_timeout (socket, 3000);
    zsock_set_heartbeat_ttl (socket, 3000);
    zsock_set_reconnect_ivl (socket, 100);
    zsock_set_reconnect_ivl_max (socket, 1000);
}

static void
s_queue_count (casm_stage_t *self, const char *command, int count)
{
    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, command);
    zmsg_addstrf (msg, "%d", count);
    if (streq (command, CASM_CMD_HEARTBEAT))
        zmsg_addstrf (msg, "%lld", (long long) self->received);
    casm_bundle_append (self->outbox, &msg);
}

casm_stage_t *
casm_stage_new (int queue, int capacity)
{
    casm_stage_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;

    char endpoint [256];
    casm_config_endpoint (endpoint, sizeof endpoint, queue, 1, 0);
    self->socket = zsock_new (ZMQ_DEALER);
    self->inbox = casm_bundle_new ();
    self->outbox = casm_bundle_new ();
    if (!self->socket || !self->inbox || !self->outbox) {
        zsock_destroy (&self->socket);
        casm_bundle_destroy (&self->inbox);
        casm_bundle_destroy (&self->outbox);
        free (self);
        return NULL;
    }
    casm_socket_tune (self->socket);
    if (casm_curve_client (self->socket) != 0
    ||  zsock_connect (self->socket, "%s", endpoint) != 0) {
        casm_error (NULL, NULL, "cannot connect to %s", endpoint);
        zsock_destroy (&self->socket);
        casm_bundle_destroy (&self->inbox);
        casm_bundle_destroy (&self->outbox);
        free (self);
        return NULL;
    }
    self->name = queue == CASM_QUEUE_VALIDATOR ? "validator"
               : queue == CASM_QUEUE_WORKER ? "worker" : "publisher";
    self->capacity = capacity;
    self->free = capacity;
    s_queue_count (self, CASM_CMD_HEARTBEAT, self->free);
    casm_stage_flush (self);
    self->next_heartbeat = casm_now_ms () + CASM_HEARTBEAT_MS;
    return self;
}

void
casm_stage_destroy (casm_stage_t **self_p)
{
    casm_stage_t *self = *self_p;
    if (!self)
        return;
    if (!self->draining)
        casm_stage_drain (self);
    casm_stage_flush (self);
    zsock_destroy (&self->socket);
    casm_bundle_destroy (&self->inbox);
    casm_bundle_destroy (&self->outbox);
    free (self);
    *self_p = NULL;
}

zsock_t *
casm_stage_socket (casm_stage_t *self)
{
    return self->socket;
}

int
casm_stage_readable (casm_stage_t *self)
{
    return casm_bundle_size (self->inbox) > 0
        || (zsock_events (self->socket) & ZMQ_POLLIN);
}

int
casm_stage_waiting (casm_stage_t *self)
{
    return casm_bundle_size (self->inbox) > 0;
}

casm_work_t *
casm_stage_recv (casm_stage_t *self)
{
    if (casm_bundle_size (self->inbox) == 0) {
        zmsg_t *msg = zmsg_recv_nowait (zsock_resolve (self->socket));
        //  The units of a bundle that cannot be read still count as
        //  received (its index says how many), or the broker would take
        //  them for still on the way and the credit would shrink for good.
        zframe_t *index = msg && casm_bundle_is (msg) && zmsg_first (msg)
                        ? zmsg_next (msg) : NULL;
        size_t units = index ? zframe_size (index) : 0;
        if (msg && casm_bundle_unpack (self->inbox, &msg, NULL) < 0) {
            self->received = (self->received + (int64_t) units)
                           % CASM_COUNT_MOD;
            casm_error (NULL, json_pack ("{s:s}", "stage", self->name),
                        "dropped a malformed bundle from the broker");
        }
    }
    zmsg_t *msg = casm_bundle_pop (self->inbox);
    if (!msg)
        return NULL;

    self->free--;
    self->received = (self->received + 1) % CASM_COUNT_MOD;
    casm_work_t *work = casm_work_take (&msg);
    if (!work) {
        casm_stage_release (self, 1);
        return NULL;
    }
    work->stage = self->name;
    work->received_us = casm_metrics_now_us ();
    casm_log_trace (work->header.request_id, work->header.trace_id);
    return work;
}

void
casm_stage_release (casm_stage_t *self, int n)
{
    self->free += n;
    if (self->free > self->capacity)
        self->free = self->capacity;
    if (!self->draining)
        self->credit_due += n;
}

int
casm_stage_send (casm_stage_t *self, zmsg_t **msg_p)
{
    return casm_bundle_append (self->outbox, msg_p);
}

int
casm_stage_reply (casm_stage_t *self, casm_work_t **work_p, uint16_t status,
                  uint8_t flags, const char *body, size_t body_size)
{
    zmsg_t *msg = casm_work_answer (work_p, CASM_CMD_REPLY, status, flags,
                                    body, body_size);
    casm_stage_release (self, 1);
    return casm_stage_send (self, &msg);
}

int
casm_stage_relay (casm_stage_t *self, zmsg_t **msg_p)
{
    zmsg_pushstr (*msg_p, CASM_CMD_REPLY);
    return casm_stage_send (self, msg_p);
}

int
casm_stage_flush (casm_stage_t *self)
{
    if (self->credit_due > 0 && !self->draining) {
        s_queue_count (self, CASM_CMD_CREDIT, self->credit_due);
        self->credit_due = 0;
    }
    if (casm_bundle_size (self->outbox) == 0)
        return 0;
    if (casm_bundle_send (self->outbox, zsock_resolve (self->socket), NULL)
        == 0)
        return 0;

    //  No broker to take them: the replies are lost (their requests time
    //  out at the gateway), and the next heartbeat repairs the credit.
    size_t lost = casm_bundle_size (self->outbox);
    int64_t now = casm_now_ms ();
    if (now >= self->next_warning) {
        casm_warn (NULL, json_pack ("{s:s,s:i}", "stage", self->name,
                                    "messages", (int) lost),
                   "the broker took nothing: %s", zmq_strerror (errno));
        self->next_warning = now + CASM_HEARTBEAT_MS;
    }
    zmsg_t *msg;
    while ((msg = casm_bundle_pop (self->outbox)))
        zmsg_destroy (&msg);
    return -1;
}

void
casm_stage_tick (casm_stage_t *self)
{
    int64_t now = casm_now_ms ();
    if (now < self->next_heartbeat || self->draining)
        return;

    //  Slots given back this turn are announced before the heartbeat
    //  that counts them free.
    casm_stage_flush (self);
    s_queue_count (self, CASM_CMD_HEARTBEAT, self->free);
    casm_stage_flush (self);
    self->next_heartbeat = now + CASM_HEARTBEAT_MS;
}

void
casm_stage_drain (casm_stage_t *self)
{
    casm_stage_flush (self);
    self->draining = 1;
    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, CASM_CMD_DRAIN);
    casm_bundle_append (self->outbox, &msg);
    casm_stage_flush (self);
}

int
casm_stage_free (casm_stage_t *self)
{
    return self->free;
}

int
casm_stage_busy (casm_stage_t *self)
{
    return self->capacity - self->free;
}
