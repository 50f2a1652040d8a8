/*  casm_validator: the validator stage's loop. See casm_validator.h.

    The units waiting on Q1 are taken together: each is checked (a parse),
    then the look-ups of all of them go to PostgreSQL in one round trip
    (casm_lookup_prefetch), then each is handled to the end in turn. A
    round trip costs far more than the checks, so the busier the
    validator, the more units share one. Each wait is bounded by
    casm_lookup's timeouts, so a synchronous loop keeps the code plain.
    Throughput also comes from running more instances, which the broker's
    credit spreads the work over. What a batch sends on (commands to Q2,
    answers and slots to Q1) leaves in one message per socket, a bundle
    (casm_bundle.h), and replies from Q2 go back to Q1 the same way.

    The idempotency look-up comes before the business checks: a replay
    returns the recorded answer even when the customer has changed since
    (DESIGN.md 2.4). These checks are an early answer, not the guarantee:
    the worker checks again inside its transaction.                         */

#include "casm_validator.h"
#include "casm_bundle.h"
#include "casm_validate.h"
#include "casm_lookup.h"
#include "casm_config.h"
#include "casm_curve.h"
#include "casm_error.h"
#include "casm_log.h"
#include "casm_metrics.h"
#include "casm_metrics_http.h"
#include "casm_proto.h"
#include "casm_stage.h"

#include <stdlib.h>
#include <string.h>

#define TICK_MS 1000                // casm_stage_tick wants one a second
#define DRAIN_LINGER_MS 200         // reading units still on their way
#define BATCH_MAX 64                // units taken from Q1 in one go

struct casm_validator_t {
    casm_stage_t *stage;            // Q1: work in, replies out
    zsock_t *commands;              // Q2 frontend: commands out, replies in
    zpoller_t *poller;
    casm_lookup_t *lookup;
    casm_bundle_t *outgoing;        // commands of this batch, not sent yet
    casm_bundle_t *incoming;        // replies from Q2 taken apart
    int64_t grace_ms;
    uint64_t forwarded;             // units sent to Q2
    uint64_t relayed;               // replies from Q2 passed to Q1
    int64_t last_deadline;          // latest deadline of a forwarded unit
};

//  Answers with a casm_error_body and gives the slot back. errors, when
//  given, is consumed.
static void
s_reply_error (casm_validator_t *self, casm_work_t **work_p, int status,
               const char *code, const char *parameter,
               const char *request_id, json_t *errors)
{
    size_t size = 0;
    char *body = casm_error_body (status, code, NULL, parameter, request_id,
                                  errors, &size);
    if (casm_stage_reply (self->stage, work_p, (uint16_t) status, 0,
                          body ? body : "", size) != 0)
        casm_warn (NULL, json_pack ("{s:i}", "status", status),
                   "could not send a reply to Q1");
    free (body);
}

static void
s_reply (casm_validator_t *self, casm_work_t **work_p, int status,
         uint8_t flags, const char *body, const char *request_id)
{
    if (casm_stage_reply (self->stage, work_p, (uint16_t) status, flags,
                          body, strlen (body)) != 0)
        casm_warn (request_id, json_pack ("{s:i}", "status", status),
                   "could not send a reply to Q1");
}

//  Queues the work for Q2 with this body and gives its slot back; the
//  batch's commands leave together (s_forward_flush). When Q2 takes
//  nothing (its pipe is full), answers 503 instead.
static void
s_forward (casm_validator_t *self, casm_work_t **work_p, const char *body,
           size_t size)
{
    casm_work_t *work = *work_p;
    char id [CASM_REQUEST_ID_MAX + 1];
    snprintf (id, sizeof id, "%s", work->header.request_id);
    if (!(zsock_events (self->commands) & ZMQ_POLLOUT)) {
        casm_warn (id, NULL, "Q2 takes no more work; answering 503");
        s_reply_error (self, work_p, 503, CASM_ERR_UNAVAILABLE, NULL, id,
                       NULL);
        return;
    }

    //  A deadline of 0 means none: wait for that reply the whole grace.
    int64_t deadline = work->header.deadline_ms > 0
                     ? work->header.deadline_ms : INT64_MAX;
    zmsg_t *msg = casm_work_onward (work_p, body, size, NULL, 0);
    if (casm_bundle_append (self->outgoing, &msg) == 0) {
        self->forwarded++;
        if (deadline > self->last_deadline)
            self->last_deadline = deadline;
    }
    else
        casm_warn (id, NULL, "could not send a command to Q2");
    casm_stage_release (self->stage, 1);
}

//  Sends the batch's commands to Q2. Those it refuses (no broker, or its
//  pipe full) are answered 503: nothing was done for them.
static void
s_forward_flush (casm_validator_t *self)
{
    if (casm_bundle_send (self->outgoing, zsock_resolve (self->commands),
                          NULL) == 0)
        return;
    zmsg_t *msg;
    while ((msg = casm_bundle_pop (self->outgoing))) {
        self->forwarded--;
        casm_work_t *work = casm_work_take (&msg);
        if (!work)
            continue;
        casm_warn (work->header.request_id, NULL,
                   "could not send a command to Q2; answering 503");
        //  Its slot went back when it was queued; the answer takes none.
        char id [CASM_REQUEST_ID_MAX + 1];
        snprintf (id, sizeof id, "%s", work->header.request_id);
        size_t size = 0;
        char *body = casm_error_body (503, CASM_ERR_UNAVAILABLE, NULL, NULL,
                                      id, NULL, &size);
        zmsg_t *reply = casm_work_answer (&work, CASM_CMD_REPLY, 503, 0,
                                          body ? body : "", size);
        casm_stage_send (self->stage, &reply);
        free (body);
    }
}

static void
s_ping (casm_validator_t *self, casm_work_t **work_p)
{
    if (casm_lookup_ping (self->lookup) == CASM_LOOKUP_FOUND) {
        const char *body = "{\"validator\":\"up\",\"postgres\":\"up\"}";
        s_forward (self, work_p, body, strlen (body));
    }
    else
        s_reply (self, work_p, 503, 0,
                 "{\"validator\":\"up\",\"postgres\":\"down\"}", NULL);
}

static void
s_read (casm_validator_t *self, casm_work_t **work_p,
        casm_validate_t *check)
{
    char *json = NULL;
    int rc = casm_lookup_customer_json (self->lookup,
                                        casm_validate_ref_id (check),
                                        casm_validate_external_id (check),
                                        &json);
    if (rc == CASM_LOOKUP_FOUND)
        s_reply (self, work_p, 200, 0, json, NULL);
    else
    if (rc == CASM_LOOKUP_NONE)
        s_reply_error (self, work_p, 404, CASM_ERR_NOT_FOUND, "customer",
                       NULL, NULL);
    else
        s_reply_error (self, work_p, 503, CASM_ERR_UNAVAILABLE, "postgres",
                       NULL, NULL);
    free (json);
}

//  The business rules that can be answered early: the customer exists and
//  is not deactivated, or (create) its externalId is free. Forwards the
//  command when they hold.
static void
s_check_customer (casm_validator_t *self, casm_work_t **work_p,
                  casm_validate_t *check, int op)
{
    const char *request_id = casm_validate_request_id (check);
    char *ref_id = NULL;
    char *state = NULL;
    int rc = casm_lookup_customer (self->lookup,
                                   casm_validate_ref_id (check),
                                   casm_validate_external_id (check),
                                   &ref_id, &state);

    if (rc == CASM_LOOKUP_DOWN)
        s_reply_error (self, work_p, 503, CASM_ERR_UNAVAILABLE, "postgres",
                       request_id, NULL);
    else
    if (op == CASM_OP_CREATE && rc == CASM_LOOKUP_FOUND)
        s_reply_error (self, work_p, 400, CASM_ERR_EXTERNAL_ID_EXISTS,
                       "externalId", request_id, NULL);
    else
    if (op != CASM_OP_CREATE && rc == CASM_LOOKUP_NONE)
        s_reply_error (self, work_p, 400, CASM_ERR_NOT_FOUND_ENTITY,
                       "customer", request_id, NULL);
    else
    if (op != CASM_OP_CREATE && state && strcmp (state, "DEACTIVATED") == 0)
        s_reply_error (self, work_p, 400, CASM_ERR_DEACTIVATED, "customer",
                       request_id, NULL);
    else {
        if (ref_id)
            casm_validate_resolve (check, ref_id);
        size_t size;
        char *command = casm_validate_command_text (check, &size);
        if (command)
            s_forward (self, work_p, command, size);
        else
            s_reply_error (self, work_p, 500, CASM_ERR_INTERNAL, NULL,
                           request_id, NULL);
        free (command);
    }
    free (ref_id);
    free (state);
}

//  A change (update attributes, create, update state): validation, the
//  idempotency record, the business rules, then Q2.
static void
s_change (casm_validator_t *self, casm_work_t **work_p,
          casm_validate_t *check, int op)
{
    const char *request_id = casm_validate_request_id (check);
    int same = 0;
    int status = 0;
    char *recorded = NULL;
    int rc = casm_lookup_request (self->lookup, request_id,
                                  casm_validate_hash (check), &same,
                                  &status, &recorded);

    if (rc == CASM_LOOKUP_DOWN)
        s_reply_error (self, work_p, 503, CASM_ERR_UNAVAILABLE, "postgres",
                       request_id, NULL);
    else
    if (rc == CASM_LOOKUP_FOUND && same)
        s_reply (self, work_p, status, CASM_FLAG_REPLAYED, recorded,
                 request_id);
    else
    if (rc == CASM_LOOKUP_FOUND)
        s_reply_error (self, work_p, 422, CASM_ERR_REQUEST_ID_REUSED,
                       "requestId", request_id, NULL);
    else
        s_check_customer (self, work_p, check, op);
    free (recorded);
}

//  Checks a unit and answers at once what needs no database (a version or
//  an operation we do not know, a deadline passed, the readiness probe).
//  Returns the unit's validation, for s_handle, or NULL when it is done.
static casm_validate_t *
s_check (casm_validator_t *self, casm_work_t *work)
{
    if (work->header.version != CASM_MSG_VERSION) {
        casm_warn (NULL, json_pack ("{s:i}", "version",
                                    work->header.version),
                   "message of an unknown version; answering 500");
        s_reply_error (self, &work, 500, CASM_ERR_INTERNAL, NULL, NULL,
                       NULL);
        return NULL;
    }

    //  The gateway has answered 504 by now: nobody waits for this.
    if (work->header.deadline_ms > 0
    &&  casm_now_ms () > work->header.deadline_ms) {
        casm_debug (work->header.request_id, NULL,
                    "dropped work past its deadline");
        casm_work_destroy (&work);
        casm_stage_release (self->stage, 1);
        return NULL;
    }

    int op = work->header.op;
    if (op == CASM_OP_PING) {
        s_ping (self, &work);
        return NULL;
    }
    if (op != CASM_OP_UPDATE_ATTRIBUTES && op != CASM_OP_CREATE
    &&  op != CASM_OP_UPDATE_STATE && op != CASM_OP_READ) {
        casm_warn (NULL, json_pack ("{s:i}", "operation", op),
                   "unknown operation; answering 500");
        s_reply_error (self, &work, 500, CASM_ERR_INTERNAL, NULL, NULL,
                       NULL);
        return NULL;
    }

    size_t size;
    const char *body = casm_work_body (work, &size);
    casm_validate_t *check = casm_validate_new (op, body, size);
    if (!check) {
        casm_error (NULL, NULL, "out of memory validating a request");
        s_reply_error (self, &work, 500, CASM_ERR_INTERNAL, NULL, NULL,
                       NULL);
        return NULL;
    }

    //  From here on the request id travels in the header too.
    const char *request_id = casm_validate_request_id (check);
    if (request_id)
        snprintf (work->header.request_id, sizeof work->header.request_id,
                  "%s", request_id);
    casm_log_trace (request_id, work->header.trace_id);
    return check;
}

//  Answers or forwards a checked unit; destroys the validation.
static void
s_handle (casm_validator_t *self, casm_work_t *work, casm_validate_t *check)
{
    int op = work->header.op;
    const char *request_id = casm_validate_request_id (check);
    if (!casm_validate_ok (check))
        s_reply_error (self, &work, 400, CASM_ERR_VALIDATION, NULL,
                       request_id,
                       json_incref (casm_validate_errors (check)));
    else
    if (op == CASM_OP_READ)
        s_read (self, &work, check);
    else
        s_change (self, &work, check, op);
    casm_validate_destroy (&check);
}

//  Takes the units waiting on Q1 (at most BATCH_MAX) and checks them,
//  makes the look-ups of the changes among them in one round trip, then
//  handles each in turn.
static void
s_batch (casm_validator_t *self)
{
    casm_work_t *works [BATCH_MAX];
    casm_validate_t *checks [BATCH_MAX];
    casm_lookup_key_t keys [BATCH_MAX];
    size_t count = 0;
    size_t key_count = 0;
    while (count < BATCH_MAX && casm_stage_readable (self->stage)) {
        casm_work_t *work = casm_stage_recv (self->stage);
        casm_validate_t *check = work ? s_check (self, work) : NULL;
        if (!check)
            continue;
        if (work->header.op != CASM_OP_READ && casm_validate_ok (check))
            keys [key_count++] = (casm_lookup_key_t) {
                casm_validate_request_id (check), casm_validate_hash (check),
                casm_validate_ref_id (check),
                casm_validate_external_id (check)
            };
        works [count] = work;
        checks [count++] = check;
    }

    if (count > 0)
        casm_metrics_batch ("validator", count);
    casm_lookup_prefetch (self->lookup, keys, key_count);
    for (size_t i = 0; i < count; i++)
        s_handle (self, works [i], checks [i]);
    casm_lookup_forget (self->lookup);
    s_forward_flush (self);
}

//  Replies from Q2 go back to Q1 as they are, frames moved, not copied:
//  those waiting now, a bounded number at a time.
static void
s_relay (casm_validator_t *self)
{
    for (int taken = 0; taken < BATCH_MAX; taken++) {
        zmsg_t *msg = zmsg_recv_nowait (zsock_resolve (self->commands));
        if (!msg)
            break;
        if (casm_bundle_unpack (self->incoming, &msg, NULL) < 0)
            casm_warn (NULL, NULL, "dropped a malformed bundle from Q2");
        while ((msg = casm_bundle_pop (self->incoming))) {
            self->relayed++;
            if (casm_stage_relay (self->stage, &msg) != 0)
                casm_warn (NULL, NULL, "could not relay a reply to Q1");
        }
    }
}

casm_validator_t *
casm_validator_new (const char *database_url, int credit, int64_t grace_ms)
{
    casm_validator_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->grace_ms = grace_ms;

    self->lookup = casm_lookup_new (database_url);
    self->stage = casm_stage_new (CASM_QUEUE_VALIDATOR, credit);
    self->commands = zsock_new (ZMQ_DEALER);
    self->outgoing = casm_bundle_new ();
    self->incoming = casm_bundle_new ();
    if (!self->lookup || !self->stage || !self->commands || !self->outgoing
    ||  !self->incoming) {
        casm_error (NULL, NULL, "cannot set up the validator");
        casm_validator_destroy (&self);
        return NULL;
    }

    char endpoint [256];
    casm_config_endpoint (endpoint, sizeof endpoint, CASM_QUEUE_WORKER, 0,
                          0);
    casm_socket_tune (self->commands);
    if (casm_curve_client (self->commands) != 0
    ||  zsock_connect (self->commands, "%s", endpoint) != 0) {
        casm_error (NULL, json_pack ("{s:s}", "endpoint", endpoint),
                    "cannot connect to Q2");
        casm_validator_destroy (&self);
        return NULL;
    }

    self->poller = zpoller_new (casm_stage_socket (self->stage),
                                self->commands, NULL);
    if (self->poller && casm_metrics_http_process ())
        zpoller_add (self->poller,
                     casm_metrics_http_reader (casm_metrics_http_process ()));
    if (!self->poller) {
        casm_validator_destroy (&self);
        return NULL;
    }
    casm_info (NULL, json_pack ("{s:i, s:s}", "credit", credit,
                                "q2", endpoint),
               "validator started");
    return self;
}

void
casm_validator_destroy (casm_validator_t **self_p)
{
    casm_validator_t *self = *self_p;
    if (!self)
        return;
    zpoller_destroy (&self->poller);
    zsock_destroy (&self->commands);
    casm_stage_destroy (&self->stage);
    casm_lookup_destroy (&self->lookup);
    casm_bundle_destroy (&self->outgoing);
    casm_bundle_destroy (&self->incoming);
    free (self);
    *self_p = NULL;
}

//  True when the drain is over: every forwarded unit has its reply, or
//  the grace period is over, or every reply still due is past its
//  deadline (the gateway has answered those with 504). Never before
//  DRAIN_LINGER_MS, so that units the broker sent before it heard us say
//  goodbye still come in and are answered.
static int
s_drained (casm_validator_t *self, int64_t drain_end)
{
    int64_t now = casm_now_ms ();
    if (now >= drain_end)
        return 1;
    if (now < drain_end - self->grace_ms + DRAIN_LINGER_MS)
        return 0;
    return self->relayed >= self->forwarded
        || now > self->last_deadline;
}

int
casm_validator_run (casm_validator_t *self, volatile sig_atomic_t *signals)
{
    int64_t drain_end = 0;
    while (1) {
        if (*signals && !drain_end) {
            casm_stage_drain (self->stage);
            drain_end = casm_now_ms () + self->grace_ms;
            casm_info (NULL, json_pack ("{s:I}", "outstanding",
                                        (json_int_t) (self->forwarded
                                                      - self->relayed)),
                       "draining");
        }
        if (drain_end && s_drained (self, drain_end))
            break;

        int timeout = drain_end ? DRAIN_LINGER_MS / 4 : TICK_MS;
        if (drain_end && drain_end - casm_now_ms () < timeout)
            timeout = (int) (drain_end - casm_now_ms ());
        if (timeout < 0 || casm_stage_waiting (self->stage))
            timeout = 0;

        //  Work that was on its way before the drain is still handled:
        //  answering it is cheaper than letting it time out. Units of a
        //  bundle already here do not make the socket readable.
        casm_stage_flush (self->stage);
        void *which = zpoller_wait (self->poller, timeout);
        if (which == self->commands)
            s_relay (self);
        if (which == casm_stage_socket (self->stage)
        ||  casm_stage_waiting (self->stage))
            s_batch (self);
        casm_metrics_http_serve (casm_metrics_http_process ());
        casm_stage_tick (self->stage);
    }
    casm_stage_flush (self->stage);

    casm_info (NULL, json_pack ("{s:I, s:I}",
                                "forwarded", (json_int_t) self->forwarded,
                                "relayed", (json_int_t) self->relayed),
               "validator stopped");
    return 0;
}
