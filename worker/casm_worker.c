/*  casm_worker: the persistence stage's loop. See casm_worker.h.

    The worker announces its credit on Q2 only once PostgreSQL is reachable
    and the schema is there, so that the broker hands work to instances
    that can do it. Its credit is its batch: when work arrives, every unit
    waiting on Q2 (at most the credit) is taken and applied as one batch,
    in one PostgreSQL transaction (casm_store_execute_batch), while the
    loop waits; more work arrives meanwhile, so the busier the worker, the
    bigger its batches and the fewer its commits. Each committed change is
    forwarded to Q3 with its event, errors are answered on Q2, and the
    batch's slots are given back together, since the rest of the way is
    the publisher's business. Replies from Q3 carry no slot: they are
    relayed. The batch's events leave for Q3 in one message, and its
    answers and slots for Q2 in another (bundles, casm_bundle.h).

    The one thing the worker must never do is answer a committed change
    with an error: when Q3 cannot take the event (a full or peerless
    socket, or the broker's rejection) the event is in the outbox, the
    publisher's sweep sends it later, and the client gets its success.    */

#include "casm_worker.h"
#include "casm_bundle.h"
#include "casm_config.h"
#include "casm_curve.h"
#include "casm_error.h"
#include "casm_log.h"
#include "casm_metrics_http.h"
#include "casm_msg.h"
#include "casm_proto.h"
#include "casm_stage.h"
#include "casm_store.h"

#include <string.h>

//  How often old idempotency records are deleted, and how many at most at
//  a time. A backlog is worked off a batch every HOUSEKEEPING_BACKLOG_MS,
//  up to 10,000 rows a second, well above what one worker commits, so the
//  table cannot outgrow its retention.
#define HOUSEKEEPING_MS 60000
#define HOUSEKEEPING_BACKLOG_MS 100
#define HOUSEKEEPING_BATCH 1000

//  How long a draining worker still reads Q2 for units that the broker
//  sent before it heard the worker say goodbye.
#define DRAIN_LINGER_MS 200

//  The longest the loop sleeps: the heartbeat and the stop flag need it
//  to come round regularly.
#define POLL_MS 100

struct casm_worker_t {
    casm_store_t *store;
    casm_stage_t *stage;        // NULL until the schema is there
    zsock_t *publishers;        // DEALER to Q3's frontend
    zpoller_t *poller;
    casm_bundle_t *outgoing;    // events of this batch for Q3, not sent yet
    casm_bundle_t *incoming;    // replies from Q3 taken apart
    int credit;
    casm_work_t **batch;        // the units being applied, credit of them
    casm_store_unit_t *units;   // and what the store makes of them
    int retention_hours;
    int64_t grace_ms;
    int pending;                // forwarded to Q3, not yet answered
    int64_t pending_until;      // the latest deadline among them
    int64_t next_connect;
    int64_t next_housekeeping;
};

casm_worker_t *
casm_worker_new (void)
{
    casm_worker_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;

    self->credit = (int) casm_config_int ("WORKER_CREDIT", 64, 1, 1000);
    self->batch = calloc ((size_t) self->credit, sizeof *self->batch);
    self->units = calloc ((size_t) self->credit, sizeof *self->units);
    self->retention_hours = (int) casm_config_int ("REQUEST_RETENTION_HOURS",
                                                   48, 24, 24 * 366);
    self->grace_ms = casm_config_int ("SHUTDOWN_GRACE_MS", 10000, 0,
                                      3600000);
    self->store = casm_store_new (casm_config_str ("DATABASE_URL", NULL));
    self->outgoing = casm_bundle_new ();
    self->incoming = casm_bundle_new ();

    char endpoint [256];
    casm_config_endpoint (endpoint, sizeof endpoint, CASM_QUEUE_PUBLISHER, 0,
                          0);
    self->publishers = zsock_new (ZMQ_DEALER);
    if (self->publishers) {
        casm_socket_tune (self->publishers);
        if (casm_curve_client (self->publishers) != 0
        ||  zsock_connect (self->publishers, "%s", endpoint) != 0) {
            casm_error (NULL, NULL, "cannot connect to %s", endpoint);
            zsock_destroy (&self->publishers);
        }
    }
    if (self->publishers)
        self->poller = zpoller_new (self->publishers, NULL);
    if (self->poller && casm_metrics_http_process ())
        zpoller_add (self->poller,
                     casm_metrics_http_reader (casm_metrics_http_process ()));

    if (!self->store || !self->publishers || !self->poller || !self->batch
    ||  !self->units || !self->outgoing || !self->incoming) {
        casm_worker_destroy (&self);
        return NULL;
    }
    return self;
}

void
casm_worker_destroy (casm_worker_t **self_p)
{
    casm_worker_t *self = *self_p;
    if (!self)
        return;
    zpoller_destroy (&self->poller);
    casm_stage_destroy (&self->stage);
    zsock_destroy (&self->publishers);
    casm_store_destroy (&self->store);
    casm_bundle_destroy (&self->outgoing);
    casm_bundle_destroy (&self->incoming);
    free (self->batch);
    free (self->units);
    free (self);
    *self_p = NULL;
}


//  --------------------------------------------------------------------
//  Answers on Q2

//  Sends an answer on Q2 outside the credit protocol (no slot is given
//  back): the work's envelope, a reply header with this status and
//  flags, and the body. Destroys the work.
static void
s_answer (casm_worker_t *self, casm_work_t **work_p, uint16_t status,
          uint8_t flags, const char *body, size_t body_size)
{
    char id [CASM_REQUEST_ID_MAX + 1];
    snprintf (id, sizeof id, "%s", (*work_p)->header.request_id);
    zmsg_t *msg = casm_work_answer (work_p, CASM_CMD_REPLY, status, flags,
                                    body, body_size);
    if (casm_stage_send (self->stage, &msg) != 0)
        casm_warn (id, NULL, "could not answer on Q2");
}

//  Queues the work for Q3 with this status, body and event (its slot is
//  the caller's to give back); the batch's events leave together
//  (s_forward_flush).
static void
s_forward (casm_worker_t *self, casm_work_t **work_p, uint16_t status,
           const char *body, size_t body_size, const char *event,
           size_t event_size)
{
    casm_work_t *work = *work_p;
    *work_p = NULL;
    work->header.status = status;
    work->header.flags = 0;
    int64_t deadline = work->header.deadline_ms;
    zmsg_t *msg = casm_work_onward (&work, body, body_size, event,
                                    event_size);
    if (casm_bundle_append (self->outgoing, &msg) != 0) {
        casm_error (NULL, NULL, "out of memory: a unit is not answered");
        return;
    }
    self->pending++;
    if (deadline > self->pending_until)
        self->pending_until = deadline;
}

//  Sends the batch's events to Q3. When Q3 refuses them (a full or
//  peerless socket), each is answered on Q2 directly: the change is
//  committed and its event waits in the outbox. A PING that cannot go on
//  is answered 503.
static void
s_forward_flush (casm_worker_t *self)
{
    if (casm_bundle_send (self->outgoing, zsock_resolve (self->publishers),
                          NULL) == 0)
        return;
    zmsg_t *msg;
    while ((msg = casm_bundle_pop (self->outgoing))) {
        self->pending--;
        casm_work_t *work = casm_work_take (&msg);
        if (!work)
            continue;
        int ping = work->header.op == CASM_OP_PING;
        casm_warn (work->header.request_id, NULL,
                   "Q3 refused the message; answering directly%s",
                   ping ? "" : ", the event stays in the outbox");
        //  s_answer copies the body before it destroys the work.
        size_t size;
        const char *body = casm_work_body (work, &size);
        s_answer (self, &work, ping ? 503 : work->header.status, 0, body,
                  size);
    }
}


//  --------------------------------------------------------------------
//  Units of work

//  The readiness probe: PostgreSQL answers, so the probe goes on to the
//  publishers with our state added; else it ends here with 503.
static void
s_ping (casm_worker_t *self, casm_work_t **work_p)
{
    size_t size;
    const char *text = casm_work_body (*work_p, &size);
    json_t *body = json_loadb (text, size, 0, NULL);
    if (!json_is_object (body)) {
        json_decref (body);
        body = json_object ();
    }
    json_object_set_new (body, "worker", json_string ("up"));

    int up = casm_store_ping (self->store) == 0;
    if (!up)
        json_object_set_new (body, "postgres", json_string ("down"));
    char *reply = json_dumps (body, JSON_COMPACT);
    json_decref (body);
    size = reply ? strlen (reply) : 0;

    if (up) {
        s_forward (self, work_p, 200, reply, size, NULL, 0);
        casm_stage_release (self->stage, 1);
    }
    else
        casm_stage_reply (self->stage, work_p, 503, 0, reply, size);
    free (reply);
}

//  Takes one unit from Q2 and answers at once what needs no database (a
//  version we do not know, a deadline passed, the readiness probe).
//  Returns the unit to apply, or NULL.
static casm_work_t *
s_take (casm_worker_t *self)
{
    casm_work_t *work = casm_stage_recv (self->stage);
    if (!work)
        return NULL;

    if (work->header.version != CASM_MSG_VERSION) {
        casm_warn (NULL, json_pack ("{si}", "version", work->header.version),
                   "received a message of an unknown version");
        size_t size;
        char *body = casm_error_body (500, CASM_ERR_INTERNAL, NULL, NULL,
                                      NULL, NULL, &size);
        casm_stage_reply (self->stage, &work, 500, 0, body, size);
        free (body);
        return NULL;
    }

    //  The gateway has answered 504 already and nothing was done: the
    //  client may retry, so doing it now could only surprise it.
    if (work->header.deadline_ms
    &&  work->header.deadline_ms <= casm_now_ms ()) {
        casm_debug (work->header.request_id,
                    json_pack ("{ss}", "operation",
                               casm_op_name (work->header.op)),
                    "skipped a unit past its deadline");
        casm_work_destroy (&work);
        casm_stage_release (self->stage, 1);
        return NULL;
    }

    if (work->header.op == CASM_OP_PING) {
        s_ping (self, &work);
        return NULL;
    }
    return work;
}

//  Takes every unit waiting on Q2 (at most the credit), applies them as
//  one batch, answers each, and gives their slots back in one message.
static void
s_batch (casm_worker_t *self)
{
    size_t count = 0;
    while (count < (size_t) self->credit
       &&  casm_stage_readable (self->stage)) {
        casm_work_t *work = s_take (self);
        if (work)
            self->batch [count++] = work;
    }
    if (count == 0) {
        s_forward_flush (self);     // a readiness probe may be going on
        return;
    }

    for (size_t i = 0; i < count; i++) {
        casm_store_unit_t *unit = &self->units [i];
        memset (unit, 0, sizeof *unit);
        unit->op = self->batch [i]->header.op;
        unit->command = casm_work_body (self->batch [i], &unit->size);
    }
    casm_metrics_batch ("worker", count);
    int64_t start = casm_now_ms ();
    casm_store_execute_batch (self->store, self->units, count);
    casm_debug (NULL, json_pack ("{sI sI}", "units", (json_int_t) count,
                                 "ms", (json_int_t) (casm_now_ms () - start)),
                "applied a batch");

    for (size_t i = 0; i < count; i++) {
        casm_outcome_t *outcome = &self->units [i].outcome;
        if (outcome->event)
            s_forward (self, &self->batch [i], outcome->status,
                       outcome->body, outcome->body_size, outcome->event,
                       outcome->event_size);
        else
            s_answer (self, &self->batch [i], outcome->status,
                      outcome->flags, outcome->body, outcome->body_size);
        casm_outcome_clear (outcome);
    }
    s_forward_flush (self);
    casm_stage_release (self->stage, (int) count);
}


//  --------------------------------------------------------------------
//  Replies from Q3

//  A readiness probe that no publisher took ends here: 503, with the
//  publishers' state added to the body.
static void
s_ping_rejected (casm_worker_t *self, casm_work_t **work_p)
{
    size_t size;
    const char *text = casm_work_body (*work_p, &size);
    json_t *body = json_loadb (text, size, 0, NULL);
    if (!json_is_object (body)) {
        json_decref (body);
        body = json_object ();
    }
    json_object_set_new (body, "publisher", json_string ("down"));
    char *reply = json_dumps (body, JSON_COMPACT);
    json_decref (body);
    s_answer (self, work_p, 503, 0, reply ? reply : "{}",
              reply ? strlen (reply) : 2);
    free (reply);
}

//  A reply from the publishers goes back to Q2 as it is, unless the broker
//  rejected the unit (no publisher could take it): then the change is
//  committed and in the outbox, and the answer is the success.
static void
s_relay_one (casm_worker_t *self, zmsg_t *msg)
{
    if (self->pending > 0)
        self->pending--;
    if (!self->stage) {
        zmsg_destroy (&msg);
        return;
    }

    zframe_t *frame = zmsg_first (msg);
    while (frame && zframe_size (frame) > 0)
        frame = zmsg_next (msg);
    frame = frame ? zmsg_next (msg) : NULL;
    casm_header_t header;
    if (!frame || casm_header_decode (frame, &header) != 0
    ||  !(header.flags & CASM_FLAG_REJECTED)) {
        if (casm_stage_relay (self->stage, &msg) != 0)
            casm_warn (NULL, NULL, "could not relay a reply to Q2");
        return;
    }

    casm_work_t *work = casm_work_take (&msg);
    if (!work)
        return;
    if (work->header.op == CASM_OP_PING) {
        s_ping_rejected (self, &work);
        return;
    }
    uint16_t status = work->header.op == CASM_OP_CREATE ? 201 : 200;
    casm_debug (work->header.request_id, NULL,
                "no publisher took the event; it stays in the outbox");

    //  s_answer copies the body into the answer before it destroys the
    //  work that holds it.
    size_t size;
    const char *body = casm_work_body (work, &size);
    s_answer (self, &work, status, 0, body, size);
}

//  The replies waiting from Q3, a bounded number of messages at a time.
static void
s_relay (casm_worker_t *self)
{
    for (int taken = 0; taken < self->credit; taken++) {
        zmsg_t *msg = zmsg_recv_nowait (zsock_resolve (self->publishers));
        if (!msg)
            break;
        if (casm_bundle_unpack (self->incoming, &msg, NULL) < 0)
            casm_warn (NULL, NULL, "dropped a malformed bundle from Q3");
        while ((msg = casm_bundle_pop (self->incoming)))
            s_relay_one (self, msg);
    }
}


//  --------------------------------------------------------------------
//  The loop

static void
s_housekeeping (casm_worker_t *self, int64_t now)
{
    if (now < self->next_housekeeping || !casm_store_ready (self->store))
        return;

    int deleted = casm_store_purge_requests (self->store,
                                             self->retention_hours,
                                             HOUSEKEEPING_BATCH);
    if (deleted > 0)
        casm_debug (NULL, json_pack ("{si}", "deleted", deleted),
                    "deleted old idempotency records");
    self->next_housekeeping = now + (deleted == HOUSEKEEPING_BATCH
                                     ? HOUSEKEEPING_BACKLOG_MS
                                     : HOUSEKEEPING_MS);
}

//  Until PostgreSQL is there, try it once a second; once it is, join Q2.
static void
s_connect (casm_worker_t *self, int64_t now)
{
    if (self->stage || now < self->next_connect)
        return;
    self->next_connect = now + 1000;
    if (casm_store_open (self->store) != 0)
        return;

    self->stage = casm_stage_new (CASM_QUEUE_WORKER, self->credit);
    if (!self->stage)
        return;
    zpoller_add (self->poller, casm_stage_socket (self->stage));
    self->next_housekeeping = now;
    casm_info (NULL, json_pack ("{si}", "credit", self->credit),
               "worker ready");
}

int
casm_worker_run (casm_worker_t *self, volatile sig_atomic_t *stop)
{
    int64_t drain_start = 0;
    while (1) {
        int64_t now = casm_now_ms ();
        if (*stop && !drain_start) {
            drain_start = now;
            if (self->stage)
                casm_stage_drain (self->stage);
            casm_info (NULL, json_pack ("{si}", "pending", self->pending),
                       "draining");
        }
        if (drain_start) {
            int answered = self->pending == 0 || now > self->pending_until;
            if (!self->stage
            ||  (answered && now - drain_start >= DRAIN_LINGER_MS))
                break;
            if (now - drain_start >= self->grace_ms) {
                casm_warn (NULL, json_pack ("{si}", "pending",
                                            self->pending),
                           "grace period over, replies left unrelayed");
                break;
            }
        }

        s_connect (self, now);
        if (self->stage) {
            casm_stage_tick (self->stage);
            s_housekeeping (self, now);
        }

        //  Units of a bundle already here do not make the socket
        //  readable: then the loop does not wait.
        int waiting = self->stage && casm_stage_waiting (self->stage);
        if (self->stage)
            casm_stage_flush (self->stage);
        void *which = zpoller_wait (self->poller, waiting ? 0 : POLL_MS);
        casm_metrics_http_serve (casm_metrics_http_process ());
        if (which == self->publishers)
            s_relay (self);
        if (self->stage && (which == casm_stage_socket (self->stage)
                            || casm_stage_waiting (self->stage)))
            s_batch (self);
    }
    if (self->stage)
        casm_stage_flush (self->stage);
    casm_info (NULL, NULL, "worker stopped");
    return 0;
}
