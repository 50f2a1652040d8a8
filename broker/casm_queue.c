/*  casm_queue: one credit-based queue. See casm_queue.h.

    Three structures carry the queue. The instance table maps an instance's
    identity (in hex) to its credit, its last-seen time and whether it
    drains. The ready ring holds, in round-robin order, exactly the
    instances that may receive work now (credit above zero, not draining),
    so choosing an instance costs nothing whatever the table's size. The
    FIFO holds whole frontend messages, frames untouched, with the deadline
    read once from the header.

    Bundles (casm_bundle.h) save wake-ups on both sides. A bundle that
    comes in is taken apart into its units, each given the sender's
    identity. Going out, the units one dispatch hands each instance leave
    as one bundle, and the replies for one upstream peer that arrive
    together leave as one bundle too.

    Sends use ZFRAME_REUSE, which shares each frame's buffer with libzmq
    instead of handing it over: when the ROUTER refuses a message
    (ZMQ_ROUTER_MANDATORY makes a vanished peer an error, and a full pipe
    one too), the message is still whole here and goes back where it was.  */

#include "casm_queue.h"
#include "casm_bundle.h"
#include "casm_curve.h"
#include "casm_log.h"
#include "casm_msg.h"
#include "casm_proto.h"
#include "casm_stage.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

//  Messages handled per call, so that a busy socket cannot starve the
//  other five in the broker's loop.
#define BATCH 100

//  Degraded operation (rejections, expiries, lost replies) is summed up in
//  one warning at most this often, not one line per request.
#define REPORT_MS 5000

//  A ZeroMQ identity is at most 255 bytes; the key is its hex.
#define KEY_SIZE (2 * 255 + 1)

typedef struct {
    char key [KEY_SIZE];        // identity in hex: table key, log name
    zframe_t *identity;         // the routing frame for the backend
    int64_t credit;             // units it will take now
    int64_t sent;               // units sent to it, modulo CASM_COUNT_MOD
    bool counted;               // sent is in step with its received count
    int64_t last_seen;          // monotonic ms of its last message
    bool draining;              // said "D": no more work, replies still
    void *ready;                // handle in the ready ring, or NULL
    casm_bundle_t *out;         // units a dispatch is giving it, or NULL
} s_instance_t;

typedef struct {
    zmsg_t *msg;                // [upstream] [...] [] [header] [body] [event]?
    int64_t deadline;           // ms since the epoch, 0 when unknown
} s_pending_t;

struct casm_queue_t {
    int number;                 // 1, 2 or 3
    char name [4];              // "Q1", for logs
    zsock_t *frontend;
    zsock_t *backend;
    zhashx_t *instances;        // key -> s_instance_t, owns them
    zlistx_t *ready;            // s_instance_t, borrowed
    zlistx_t *fifo;             // s_pending_t, owns them
    size_t fifo_max;
    size_t accepting;           // instances not draining
    casm_queue_clock_fn *clock;
    casm_queue_stats_t stats;
    casm_queue_stats_t reported;
    int64_t next_report;
    casm_bundle_t *units;       // the units of a bundle that came in
    zlistx_t *taking;           // instances given units by a dispatch
    zlistx_t *refused;          // instances whose pipe was full, for now
    casm_bundle_t *replies;     // replies for reply_to, not sent yet
    zframe_t *reply_to;         // their upstream identity, or NULL
};


//  --------------------------------------------------------------------
//  Clocks, identities, the table's destructors

static int64_t
s_mono (casm_queue_t *self)
{
    return self->clock ? self->clock () : zclock_mono ();
}

static int64_t
s_wall (casm_queue_t *self)
{
    return self->clock ? self->clock () : casm_now_ms ();
}

static void
s_key (zframe_t *identity, char *key)
{
    static const char digits [] = "0123456789abcdef";
    const byte *data = zframe_data (identity);
    size_t size = zframe_size (identity);
    if (size > 255)
        size = 255;
    for (size_t i = 0; i < size; i++) {
        key [2 * i] = digits [data [i] >> 4];
        key [2 * i + 1] = digits [data [i] & 15];
    }
    key [2 * size] = 0;
}

static void
s_instance_destroy (void **item_p)
{
    s_instance_t *instance = (s_instance_t *) *item_p;
    if (!instance)
        return;
    zframe_destroy (&instance->identity);
    casm_bundle_destroy (&instance->out);
    free (instance);
    *item_p = NULL;
}

static void
s_pending_destroy (void **item_p)
{
    s_pending_t *pending = (s_pending_t *) *item_p;
    if (!pending)
        return;
    zmsg_destroy (&pending->msg);
    free (pending);
    *item_p = NULL;
}

//  Log fields for an identity the table may not hold.
static json_t *
s_identity_fields (casm_queue_t *self, const char *key)
{
    return json_pack ("{s:s,s:s}", "queue", self->name, "identity", key);
}

static json_t *
s_fields (casm_queue_t *self, s_instance_t *instance)
{
    json_t *fields = json_pack ("{s:s}", "queue", self->name);
    if (fields && instance) {
        json_object_set_new (fields, "identity",
                             json_string (instance->key));
        json_object_set_new (fields, "credit",
                             json_integer (instance->credit));
    }
    return fields;
}


//  --------------------------------------------------------------------
//  Sending: nothing is consumed, so a refused message stays whole.

//  Sends first (when not NULL) and then every frame of msg. Returns 0 when
//  sent, or -1 with errno set when the socket refused the first frame, and
//  then nothing went out. The caller still owns msg.
static int
s_send (zsock_t *socket, zframe_t *first, zmsg_t *msg)
{
    int flags = ZFRAME_REUSE | ZFRAME_DONTWAIT;
    bool started = false;
    if (first) {
        zframe_t *frame = first;
        if (zframe_send (&frame, socket, flags | ZFRAME_MORE) != 0)
            return -1;
        started = true;
    }

    zframe_t *frame = zmsg_first (msg);
    while (frame) {
        zframe_t *next = zmsg_next (msg);
        zframe_t *sending = frame;
        if (zframe_send (&sending, socket,
                         flags | (next ? ZFRAME_MORE : 0)) != 0) {
            if (!started)
                return -1;

            //  A ROUTER takes or refuses a message whole on its first
            //  frame, so this is not expected; the message is lost.
            casm_error (NULL, NULL, "a message was cut short: %s",
                        zmq_strerror (errno));
            return 0;
        }
        started = true;
        frame = next;
    }
    return 0;
}

//  The frame after the envelope's empty delimiter, or NULL. The upstream
//  identity comes first, so the delimiter is never frame 0.
static zframe_t *
s_header_frame (zmsg_t *msg)
{
    zframe_t *frame = zmsg_first (msg);
    if (!frame || zframe_size (frame) == 0)
        return NULL;

    while ((frame = zmsg_next (msg)))
        if (zframe_size (frame) == 0)
            return zmsg_next (msg);
    return NULL;
}

//  Answers a frontend message with a reply header (503, REJECTED, other
//  fields as the request's) and the original body and event, then
//  destroys it. A header of an unknown version gives a bare reply header.
static void
s_reject (casm_queue_t *self, zmsg_t **msg_p)
{
    zmsg_t *request = *msg_p;
    *msg_p = NULL;
    zmsg_t *reply = zmsg_new ();

    //  Move the envelope, then swap the header.
    zframe_t *frame;
    while ((frame = zmsg_pop (request))) {
        bool delimiter = zframe_size (frame) == 0;
        zmsg_append (reply, &frame);
        if (delimiter)
            break;
    }
    frame = zmsg_pop (request);
    casm_header_t header;
    if (casm_header_decode (frame, &header) != 0)
        memset (&header, 0, sizeof header);
    zframe_destroy (&frame);

    header.version = CASM_MSG_VERSION;
    header.kind = CASM_KIND_REPLY;
    header.status = 503;
    header.flags = CASM_FLAG_REJECTED;
    frame = casm_header_encode (&header);
    zmsg_append (reply, &frame);

    //  The body and event move over as they are.
    if (zmsg_size (request) == 0)
        zmsg_addmem (reply, NULL, 0);
    while ((frame = zmsg_pop (request)))
        zmsg_append (reply, &frame);
    zmsg_destroy (&request);

    self->stats.rejected++;
    if (s_send (self->frontend, NULL, reply) != 0) {
        self->stats.undeliverable++;
        casm_debug (header.request_id, s_fields (self, NULL),
                    "rejection not delivered: %s", zmq_strerror (errno));
    }
    zmsg_destroy (&reply);
}

//  Rejects everything in the FIFO: nothing is left to take it.
static void
s_reject_waiting (casm_queue_t *self)
{
    s_pending_t *pending;
    while ((pending = (s_pending_t *) zlistx_first (self->fifo))) {
        s_reject (self, &pending->msg);
        zlistx_delete (self->fifo, zlistx_cursor (self->fifo));
    }
}


//  --------------------------------------------------------------------
//  The instance table

//  Puts the instance in the ready ring, or takes it out, as its credit
//  and state say.
static void
s_instance_update (casm_queue_t *self, s_instance_t *instance)
{
    bool ready = instance->credit > 0 && !instance->draining;
    if (ready && !instance->ready)
        instance->ready = zlistx_add_end (self->ready, instance);
    else
    if (!ready && instance->ready) {
        zlistx_delete (self->ready, instance->ready);
        instance->ready = NULL;
    }
}

static s_instance_t *
s_instance_register (casm_queue_t *self, zframe_t *identity,
                     const char *key, int64_t credit)
{
    if (zhashx_size (self->instances) >= CASM_QUEUE_INSTANCES_MAX) {
        casm_warn (NULL, s_identity_fields (self, key),
                   "refused an instance: the queue has %d already",
                   CASM_QUEUE_INSTANCES_MAX);
        return NULL;
    }
    s_instance_t *instance = calloc (1, sizeof *instance);
    if (!instance)
        return NULL;

    snprintf (instance->key, sizeof instance->key, "%s", key);
    instance->identity = zframe_dup (identity);
    instance->credit = credit;
    instance->last_seen = s_mono (self);
    zhashx_insert (self->instances, instance->key, instance);
    self->accepting++;
    s_instance_update (self, instance);
    casm_info (NULL, s_fields (self, instance), "instance joined");
    return instance;
}

//  Forgets the instance and its credit; work it holds is its own to lose.
//  When no instance is left to take work, the waiting work is answered.
static void
s_instance_forget (casm_queue_t *self, s_instance_t *instance,
                   const char *why)
{
    json_t *fields = s_fields (self, instance);
    json_object_set_new (fields, "reason", json_string (why));
    casm_info (NULL, fields, "instance left");
    if (instance->ready)
        zlistx_delete (self->ready, instance->ready);
    if (!instance->draining)
        self->accepting--;
    zhashx_delete (self->instances, instance->key);

    if (self->accepting == 0)
        s_reject_waiting (self);
}


//  --------------------------------------------------------------------
//  Dispatch

//  Puts units a dispatch could not send back at the head of the FIFO, in
//  their order, with their deadlines read again.
static void
s_put_back (casm_queue_t *self, casm_bundle_t *units)
{
    zlistx_t *back = zlistx_new ();
    zmsg_t *msg;
    while ((msg = casm_bundle_pop (units))) {
        s_pending_t *pending = calloc (1, sizeof *pending);
        if (!pending) {
            zmsg_destroy (&msg);
            continue;
        }
        casm_header_t header;
        zframe_t *frame = s_header_frame (msg);
        if (frame && casm_header_decode (frame, &header) == 0)
            pending->deadline = header.deadline_ms;
        pending->msg = msg;
        zlistx_add_end (back, pending);
    }
    s_pending_t *pending = (s_pending_t *) zlistx_last (back);
    while (pending) {
        zlistx_add_start (self->fifo, pending);
        pending = (s_pending_t *) zlistx_prev (back);
    }
    zlistx_destroy (&back);
}

//  One round of dispatch: waiting work goes to the ready instances,
//  round-robin, one unit each in turn, until the FIFO or the credit runs
//  out; then each instance's units leave as one message. An instance that
//  vanished is forgotten, one whose pipe is full goes into refused; the
//  units of either go back to the FIFO. Returns how many instances were
//  given units: 0 means nothing changed.
static size_t
s_dispatch_round (casm_queue_t *self, zlistx_t *refused)
{
    int64_t now = s_wall (self);
    bool drop_expired = self->number != CASM_QUEUE_PUBLISHER;
    zlistx_t *taking = self->taking;

    while (zlistx_size (self->fifo) > 0 && zlistx_size (self->ready) > 0) {
        s_pending_t *pending = (s_pending_t *) zlistx_first (self->fifo);
        void *handle = zlistx_cursor (self->fifo);

        //  Nobody waits for an expired request any more (the gateway has
        //  answered 504); on Q3 the publisher still publishes it.
        if (drop_expired && pending->deadline > 0
            && pending->deadline <= now) {
            self->stats.expired++;
            zlistx_delete (self->fifo, handle);
            continue;
        }
        s_instance_t *instance = (s_instance_t *) zlistx_first (self->ready);
        if (!instance->out && !(instance->out = casm_bundle_new ()))
            break;
        if (casm_bundle_size (instance->out) == 0)
            zlistx_add_end (taking, instance);
        zmsg_t *msg = pending->msg;
        pending->msg = NULL;
        zlistx_delete (self->fifo, handle);
        if (casm_bundle_append (instance->out, &msg) != 0) {
            casm_error (NULL, s_fields (self, instance),
                        "out of memory: a unit of work was dropped");
            continue;
        }
        instance->credit--;
        zlistx_move_end (self->ready, instance->ready);
        s_instance_update (self, instance);
    }

    //  From the last instance given units to the first, so that when
    //  several refuse, the first units are back first.
    size_t given = zlistx_size (taking);
    s_instance_t *instance;
    while ((instance = (s_instance_t *) zlistx_last (taking))) {
        zlistx_delete (taking, zlistx_cursor (taking));
        size_t count = casm_bundle_size (instance->out);
        if (casm_bundle_send (instance->out, zsock_resolve (self->backend),
                              instance->identity) == 0) {
            self->stats.dispatched += count;
            instance->sent = (instance->sent + (int64_t) count)
                           % CASM_COUNT_MOD;
            continue;
        }
        int error = errno;
        size_t kept = casm_bundle_size (instance->out);
        self->stats.dispatched += count - kept;
        instance->sent = (instance->sent + (int64_t) (count - kept))
                       % CASM_COUNT_MOD;
        instance->credit += (int64_t) kept;
        s_put_back (self, instance->out);
        if (error == EHOSTUNREACH)
            s_instance_forget (self, instance, "unreachable");
        else {
            if (error == EAGAIN)
                casm_debug (NULL, s_fields (self, instance),
                            "instance pipe full, skipped");
            else
                casm_error (NULL, s_fields (self, instance),
                            "backend send: %s", zmq_strerror (error));
            if (instance->ready) {
                zlistx_delete (self->ready, instance->ready);
                instance->ready = NULL;
            }
            zlistx_add_end (refused, instance);
        }
    }
    return given;
}

//  Sends waiting work to ready instances until the FIFO or the credit
//  runs out, or every instance with credit refused. Refused instances
//  are ready again for the next dispatch.
static void
s_dispatch (casm_queue_t *self)
{
    if (zlistx_size (self->fifo) == 0 || zlistx_size (self->ready) == 0)
        return;
    //  Each round either sends everything it can or takes an instance out
    //  of the ring (refused or forgotten), so the rounds end.
    zlistx_t *refused = self->refused;
    while (zlistx_size (self->fifo) > 0 && zlistx_size (self->ready) > 0
           && s_dispatch_round (self, refused) > 0)
        ;
    s_instance_t *instance;
    while ((instance = (s_instance_t *) zlistx_first (refused))) {
        zlistx_delete (refused, zlistx_cursor (refused));
        s_instance_update (self, instance);
    }
}


//  --------------------------------------------------------------------
//  Lifecycle

casm_queue_t *
casm_queue_new (int queue, const char *frontend, const char *backend,
                size_t fifo_max)
{
    assert (queue >= 1 && queue <= 3);
    assert (fifo_max > 0);
    casm_queue_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;

    self->number = queue;
    snprintf (self->name, sizeof self->name, "Q%d", queue);
    self->fifo_max = fifo_max;
    self->instances = zhashx_new ();
    zhashx_set_destructor (self->instances, s_instance_destroy);
    self->ready = zlistx_new ();
    self->fifo = zlistx_new ();
    zlistx_set_destructor (self->fifo, s_pending_destroy);
    self->units = casm_bundle_new ();
    self->replies = casm_bundle_new ();
    self->taking = zlistx_new ();
    self->refused = zlistx_new ();
    if (!self->units || !self->replies || !self->taking || !self->refused) {
        casm_queue_destroy (&self);
        return NULL;
    }

    const char *endpoints [2] = { frontend, backend };
    zsock_t **sockets [2] = { &self->frontend, &self->backend };
    for (int i = 0; i < 2; i++) {
        zsock_t *socket = zsock_new (ZMQ_ROUTER);
        *sockets [i] = socket;
        if (!socket) {
            casm_error (NULL, s_fields (self, NULL),
                        "cannot make a socket for %s", endpoints [i]);
            casm_queue_destroy (&self);
            return NULL;
        }
        casm_socket_tune (socket);
        zsock_set_router_mandatory (socket, 1);
        if (casm_curve_server (socket) != 0) {
            casm_queue_destroy (&self);
            return NULL;
        }
        if (zsock_bind (socket, "%s", endpoints [i]) == -1) {
            casm_error (NULL, s_fields (self, NULL), "cannot bind %s: %s",
                        endpoints [i], zmq_strerror (errno));
            casm_queue_destroy (&self);
            return NULL;
        }
    }
    self->next_report = s_mono (self) + REPORT_MS;
    return self;
}

void
casm_queue_destroy (casm_queue_t **self_p)
{
    casm_queue_t *self = *self_p;
    if (!self)
        return;

    //  Waiting work gets its 503 now rather than a 504 later; a short
    //  linger lets those answers leave before the socket closes.
    if (self->frontend && zlistx_size (self->fifo) > 0) {
        zsock_set_linger (self->frontend, 500);
        s_reject_waiting (self);
    }
    zsock_destroy (&self->frontend);
    zsock_destroy (&self->backend);
    zlistx_destroy (&self->fifo);
    zlistx_destroy (&self->ready);
    zhashx_destroy (&self->instances);
    casm_bundle_destroy (&self->units);
    casm_bundle_destroy (&self->replies);
    zlistx_destroy (&self->taking);
    zlistx_destroy (&self->refused);
    zframe_destroy (&self->reply_to);
    free (self);
    *self_p = NULL;
}

zsock_t *
casm_queue_frontend_socket (casm_queue_t *self)
{
    return self->frontend;
}

zsock_t *
casm_queue_backend_socket (casm_queue_t *self)
{
    return self->backend;
}


//  --------------------------------------------------------------------
//  Frontend: [upstream] [envelope ...] [] [header] [body] [event]?

static void
s_frontend_message (casm_queue_t *self, zmsg_t **msg_p)
{
    zframe_t *header_frame = zmsg_size (*msg_p) <= CASM_BUNDLE_FRAMES_MAX
                           ? s_header_frame (*msg_p) : NULL;
    if (!header_frame) {
        self->stats.malformed++;
        casm_warn (NULL, s_fields (self, NULL),
                   "dropped a request without envelope or header");
        zmsg_destroy (msg_p);
        return;
    }

    //  A header of another version is still routed: the stage answers it.
    casm_header_t header;
    int64_t deadline = 0;
    if (casm_header_decode (header_frame, &header) == 0)
        deadline = header.deadline_ms;

    //  Work read in this call is dispatched at its end, all together; a
    //  full FIFO first gives what it can to the instances.
    if (zlistx_size (self->fifo) >= self->fifo_max)
        s_dispatch (self);
    if (self->accepting == 0 || zlistx_size (self->fifo) >= self->fifo_max) {
        s_reject (self, msg_p);
        return;
    }
    s_pending_t *pending = calloc (1, sizeof *pending);
    if (!pending) {
        s_reject (self, msg_p);
        return;
    }
    pending->msg = *msg_p;
    *msg_p = NULL;
    pending->deadline = deadline;
    zlistx_add_end (self->fifo, pending);
}

//  The units of a bundle from peer: msg is the bundle, peer its sender's
//  identity, which each unit gets in front. Returns the units, or -1
//  when the bundle is malformed (it is dropped and counted).
static int
s_unbundle (casm_queue_t *self, zmsg_t **msg_p, zframe_t *peer)
{
    int units = casm_bundle_unpack (self->units, msg_p, peer);
    if (units < 0) {
        self->stats.malformed++;
        casm_warn (NULL, s_fields (self, NULL), "dropped a malformed bundle");
    }
    return units;
}

//  True when the message is [identity] [bundle ...].
static bool
s_bundled (zmsg_t *msg)
{
    zframe_t *second = zmsg_first (msg) ? zmsg_next (msg) : NULL;
    return second && zframe_size (second) == 0;
}

//  Reads up to BATCH messages from socket and hands each unit, a bundle's
//  one by one, to handle. Returns the messages read.
static int
s_read (casm_queue_t *self, zsock_t *socket,
        void (*handle) (casm_queue_t *, zmsg_t **))
{
    int count = 0;
    zmsg_t *msg;
    while (count < BATCH
           && (msg = zmsg_recv_nowait (zsock_resolve (socket)))) {
        if (s_bundled (msg)) {
            zframe_t *peer = zmsg_pop (msg);
            s_unbundle (self, &msg, peer);
            zframe_destroy (&peer);
            zmsg_t *unit;
            while ((unit = casm_bundle_pop (self->units)))
                handle (self, &unit);
        }
        else
            handle (self, &msg);
        count++;
    }
    return count;
}

int
casm_queue_frontend (casm_queue_t *self)
{
    int count = s_read (self, self->frontend, s_frontend_message);
    s_dispatch (self);
    return count;
}


//  --------------------------------------------------------------------
//  Backend: [instance] [command] [...]

//  The count in a "C" or "H" frame: decimal text, 0 to a million.
static int
s_count (zframe_t *frame, int64_t *count)
{
    if (!frame || zframe_size (frame) == 0 || zframe_size (frame) > 7)
        return -1;

    const byte *data = zframe_data (frame);
    int64_t value = 0;
    for (size_t i = 0; i < zframe_size (frame); i++) {
        if (data [i] < '0' || data [i] > '9')
            return -1;
        value = value * 10 + (data [i] - '0');
    }
    if (value > 1000000)
        return -1;
    *count = value;
    return 0;
}

static void
s_credit (casm_queue_t *self, s_instance_t *instance, int64_t count)
{
    if (instance->draining)
        return;
    instance->credit += count;
    if (instance->credit > CASM_QUEUE_CREDIT_MAX)
        instance->credit = CASM_QUEUE_CREDIT_MAX;
    s_instance_update (self, instance);
}

//  A heartbeat says how many slots the instance has free and how many
//  units it has received in all. What we sent that it has not received
//  yet is still on the way and takes slots too; the rest is its credit.
//  This corrects the credit should a "C" have been lost.
static void
s_heartbeat (casm_queue_t *self, s_instance_t *instance, int64_t free_slots,
             zframe_t *received_frame)
{
    int64_t received = 0;
    if (instance->draining || !received_frame
        || s_count (received_frame, &received) != 0)
        return;

    //  An instance that joined with a "C" has received work from another
    //  broker (this one restarted): its count is where ours starts.
    if (!instance->counted) {
        instance->sent = received;
        instance->counted = true;
    }
    int64_t on_the_way = (instance->sent - received + CASM_COUNT_MOD)
                         % CASM_COUNT_MOD;
    int64_t credit = free_slots - on_the_way;
    if (credit < 0)
        credit = 0;
    if (credit != instance->credit) {
        instance->credit = credit;
        s_instance_update (self, instance);
    }
}

//  Sends the replies held for one upstream peer, as one message.
static void
s_replies_flush (casm_queue_t *self)
{
    size_t count = casm_bundle_size (self->replies);
    if (count > 0) {
        if (casm_bundle_send (self->replies, zsock_resolve (self->frontend),
                              self->reply_to) != 0) {
            size_t lost = casm_bundle_size (self->replies);
            self->stats.undeliverable += lost;
            count -= lost;
            casm_debug (NULL, s_fields (self, NULL),
                        "%zu replies not delivered: %s", lost,
                        zmq_strerror (errno));
            zmsg_t *msg;
            while ((msg = casm_bundle_pop (self->replies)))
                zmsg_destroy (&msg);
        }
        self->stats.replies += count;
    }
    zframe_destroy (&self->reply_to);
}

//  Passes everything after the command to the frontend, which routes it
//  by its first frame, the upstream identity. Replies for the same peer
//  wait to leave together (s_replies_flush, at the end of the call).
static void
s_reply (casm_queue_t *self, zmsg_t **msg_p)
{
    if (zmsg_size (*msg_p) < 2) {
        self->stats.malformed++;
        casm_warn (NULL, s_fields (self, NULL), "dropped an empty reply");
        zmsg_destroy (msg_p);
        return;
    }
    zframe_t *peer = zmsg_pop (*msg_p);
    if (self->reply_to && !zframe_eq (peer, self->reply_to))
        s_replies_flush (self);
    if (!self->reply_to)
        self->reply_to = peer;
    else
        zframe_destroy (&peer);
    if (casm_bundle_append (self->replies, msg_p) != 0)
        self->stats.undeliverable++;
}

static void
s_backend_message (casm_queue_t *self, zmsg_t **msg_p)
{
    zmsg_t *msg = *msg_p;
    zframe_t *identity = zmsg_pop (msg);
    zframe_t *command = zmsg_pop (msg);
    if (!identity) {
        zframe_destroy (&command);
        zmsg_destroy (msg_p);
        return;
    }
    char key [KEY_SIZE];
    s_key (identity, key);
    s_instance_t *instance =
        (s_instance_t *) zhashx_lookup (self->instances, key);
    if (instance)
        instance->last_seen = s_mono (self);

    int64_t count = 0;
    if (command && zframe_streq (command, CASM_CMD_REPLY))
        s_reply (self, msg_p);
    else
    if (command && (zframe_streq (command, CASM_CMD_CREDIT)
                    || zframe_streq (command, CASM_CMD_HEARTBEAT))) {
        bool credit = zframe_streq (command, CASM_CMD_CREDIT);
        if (s_count (zmsg_first (msg), &count) != 0) {
            self->stats.malformed++;
            casm_warn (NULL, s_identity_fields (self, key),
                       "dropped a bad count from an instance");
        }
        else
        if (!instance) {
            //  A heartbeat from a stranger is how a restarted broker
            //  learns its instances again: its free slots are its credit,
            //  and the units it has received so far (from the broker
            //  before us, maybe) are where our count of units sent starts.
            instance = s_instance_register (self, identity, key, count);
            int64_t received = 0;
            if (instance && !credit
            &&  s_count (zmsg_next (msg), &received) == 0) {
                instance->sent = received;
                instance->counted = true;
            }
        }
        else
        if (credit)
            s_credit (self, instance, count);
        else
            s_heartbeat (self, instance, count, zmsg_next (msg));
    }
    else
    if (command && zframe_streq (command, CASM_CMD_DRAIN)) {
        if (instance && !instance->draining) {
            instance->draining = true;
            instance->credit = 0;
            s_instance_update (self, instance);
            self->accepting--;
            casm_info (NULL, s_fields (self, instance), "instance drains");
            if (self->accepting == 0)
                s_reject_waiting (self);
        }
    }
    else {
        self->stats.malformed++;
        casm_warn (NULL, s_identity_fields (self, key),
                   "dropped an unknown command from an instance");
    }
    zframe_destroy (&identity);
    zframe_destroy (&command);
    zmsg_destroy (msg_p);
}

int
casm_queue_backend (casm_queue_t *self)
{
    int count = s_read (self, self->backend, s_backend_message);
    s_replies_flush (self);
    s_dispatch (self);
    return count;
}


//  --------------------------------------------------------------------
//  Tick

//  Drops (Q1, Q2) or rejects (Q3) waiting work past its deadline. On Q3
//  the change is committed: the worker turns the rejection into its
//  success answer and the outbox sweep publishes the event later.
static void
s_expire_waiting (casm_queue_t *self)
{
    int64_t now = s_wall (self);
    s_pending_t *pending = (s_pending_t *) zlistx_first (self->fifo);
    while (pending) {
        void *handle = zlistx_cursor (self->fifo);
        s_pending_t *next = (s_pending_t *) zlistx_next (self->fifo);
        if (pending->deadline > 0 && pending->deadline <= now) {
            if (self->number == CASM_QUEUE_PUBLISHER)
                s_reject (self, &pending->msg);
            else {
                self->stats.expired++;
                if (casm_log_enabled (CASM_LOG_DEBUG)) {
                    casm_header_t header;
                    casm_header_decode (s_header_frame (pending->msg),
                                        &header);
                    casm_debug (header.request_id, s_fields (self, NULL),
                                "dropped expired work");
                }
            }
            zlistx_delete (self->fifo, handle);
        }
        pending = next;
    }
}

static void
s_expire_instances (casm_queue_t *self)
{
    int64_t now = s_mono (self);
    zlistx_t *expired = zlistx_new ();
    s_instance_t *instance = (s_instance_t *) zhashx_first (self->instances);
    while (instance) {
        if (now - instance->last_seen > CASM_PEER_EXPIRY_MS)
            zlistx_add_end (expired, instance);
        instance = (s_instance_t *) zhashx_next (self->instances);
    }
    while ((instance = (s_instance_t *) zlistx_first (expired))) {
        zlistx_delete (expired, zlistx_cursor (expired));
        s_instance_forget (self, instance, "silent too long");
    }
    zlistx_destroy (&expired);
}

static void
s_report (casm_queue_t *self)
{
    casm_queue_stats_t *now = &self->stats;
    casm_queue_stats_t *then = &self->reported;
    if (now->rejected != then->rejected || now->expired != then->expired
        || now->undeliverable != then->undeliverable) {
        json_t *fields = s_fields (self, NULL);
        json_object_set_new (fields, "rejected",
            json_integer ((json_int_t) (now->rejected - then->rejected)));
        json_object_set_new (fields, "expired",
            json_integer ((json_int_t) (now->expired - then->expired)));
        json_object_set_new (fields, "undeliverable", json_integer (
            (json_int_t) (now->undeliverable - then->undeliverable)));
        json_object_set_new (fields, "waiting",
            json_integer ((json_int_t) zlistx_size (self->fifo)));
        casm_warn (NULL, fields, "queue degraded in the last %d s",
                   REPORT_MS / 1000);
    }
    *then = *now;
}

void
casm_queue_tick (casm_queue_t *self)
{
    s_expire_instances (self);

    s_expire_waiting (self);

    s_dispatch (self);

    if (s_mono (self) >= self->next_report) {
        s_report (self);
        self->next_report = s_mono (self) + REPORT_MS;
    }
}

void
casm_queue_stats (casm_queue_t *self, casm_queue_stats_t *stats)
{
    *stats = self->stats;
    stats->instances = zhashx_size (self->instances);
    stats->accepting = self->accepting;
    stats->waiting = zlistx_size (self->fifo);
    stats->credit = 0;
    s_instance_t *instance = (s_instance_t *) zhashx_first (self->instances);
    while (instance) {
        stats->credit += instance->credit;
        instance = (s_instance_t *) zhashx_next (self->instances);
    }
}

void
casm_queue_set_clock (casm_queue_t *self, casm_queue_clock_fn *clock)
{
    self->clock = clock;
}
