/*  casm_store: the worker's PostgreSQL side. See casm_store.h.

    A batch of changes to existing customers is one transaction, sent in
    one go in libpq's pipeline mode (see "Batches" below): one statement
    per round of units (S_CHANGE) that, for each unit, locks the customer
    with a conditional look-up (the row must exist and not be DEACTIVATED,
    and a merge must not leave more than 256 pairs, all checked against
    the row as it is when the lock is granted, so a concurrent deactivation
    cannot slip through), inserts the idempotency record (casm.requests)
    FIRST with ON CONFLICT DO NOTHING, and only for a record it inserted
    changes the customer and queues the event (casm.outbox). A unit that
    cannot be done changes nothing and fails nothing; after the COMMIT a
    second statement finds out why: a recorded request with this requestId
    (a copy that committed first, or came earlier in the batch), or no
    such customer, or a deactivated one, or too many pairs. A copy still in
    flight in another transaction makes the insert wait for it, so
    concurrent copies of one request execute once.

    createCustomer is one statement of its own (S_RECORD): it inserts the
    customer with ON CONFLICT on the externalId and records the request
    last; a collision with a copy that committed while we waited for it
    (unique violation) rolls the statement back, and we answer what the
    copy recorded.                                                         */

#include "casm_store.h"
#include "casm_customer.h"
#include "casm_error.h"
#include "casm_log.h"
#include "casm_migrate.h"
#include "casm_msg.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

//  Attempts at a statement that changed nothing for no reason we could
//  find (the row changed between the two statements), or that hit a
//  deadlock or serialization failure.
#define ATTEMPTS_MAX 3

//  The least time between two connection attempts.
#define RECONNECT_MS 1000

#define STR(x) #x
#define XSTR(x) STR (x)

//  The resulting attribute set of updateCustomerCustomAttributes, from
//  row c and the parameters that hold the given pairs and merge.
#define S_NEW_ATTRIBUTES(pairs, merge) \
    "CASE WHEN " merge "::boolean" \
    " THEN jsonb_strip_nulls (c.custom_attributes || " pairs "::jsonb)" \
    " ELSE " pairs "::jsonb END"

//  The common end of each change statement: from CTE "changed" (ref_id,
//  version, modified_at, customer) build the Business Transaction, record
//  the request with its answer, queue the event, and return outbox id,
//  transaction id, ref id, customer JSON and Business Transaction. to_json
//  escapes the strings; the customer text is embedded as PostgreSQL made
//  it, so the answer and the event carry the same bytes.
#define S_RECORD(operation, status) \
    "bt AS (" \
    " SELECT changed.ref_id, changed.version, changed.customer, ids.tid," \
    " '{\"transactionId\":' || to_json (ids.tid::text)::text" \
    " || ',\"requestId\":' || to_json ($1::text)::text" \
    " || ',\"operation\":\"" operation "\"'" \
    " || ',\"timestamp\":'" \
    " || to_json (casm.rfc3339 (changed.modified_at))::text" \
    " || ',\"customer\":' || changed.customer || '}' AS body" \
    " FROM changed, ids), " \
    "recorded AS (" \
    " INSERT INTO casm.requests" \
    " (request_id, request_hash, operation, status, body)" \
    " SELECT $1::text, decode ($2::text, 'hex'), '" operation "', " \
    status ", bt.body FROM bt), " \
    "queued AS (" \
    " INSERT INTO casm.outbox (transaction_id, request_id, operation," \
    " customer_ref, version, payload)" \
    " SELECT bt.tid, $1::text, '" operation "', bt.ref_id, bt.version," \
    " bt.customer FROM bt RETURNING id) " \
    "SELECT queued.id, bt.tid, bt.ref_id, bt.customer, bt.body" \
    " FROM bt, queued"

#define S_CHANGED_RETURNING \
    " RETURNING c.ref_id, c.version, c.modified_at, " \
    CASM_CUSTOMER_JSON_SQL " AS customer) "

//  The statement of a change to existing customers, for a whole round of
//  a batch: $1 is a JSON array of the validator's commands, each one
//  customer at most once and each requestId at most once (the caller
//  makes rounds so; the "input" CTE drops any later repeat, which then
//  changes nothing). It must never fail for a reason of one unit: a
//  unit that cannot be done changes nothing instead, and the worker asks
//  why later. One statement per round, not per unit: PostgreSQL plans it
//  and the functions it calls once for all of them.
//
//  CTE "cur" finds and locks the rows (in ref_id order, so that two
//  workers lock in the same order; the conditions are checked again on
//  the newest version of a row it had to wait for) with the new values;
//  "nxt" is each row as it will be; the requests rows are inserted FIRST,
//  with ON CONFLICT DO NOTHING, and a customer is updated, and its event
//  queued, only when its request's row was inserted. A copy of the
//  request that committed first, or one earlier in the same transaction,
//  thus leaves no change and no event; a copy still in flight elsewhere
//  makes the insert wait for its outcome. jsonb populates nxt from cur's
//  row, so a column added to casm.customers later keeps its value; the
//  update writes nxt's values and the customer JSON is made from nxt by
//  casm.customer_json with CASM_ATTRIBUTES_JSON_SQL, the rendering that
//  CASM_CUSTOMER_JSON_SQL gives, so row, answer, event and a later read
//  agree byte for byte. "bt" is MATERIALIZED because "answer" names its
//  customer twice: inlined, each row's JSON would be rendered twice.
//  Rows: the unit's position in $1 (from 1), outbox id, transaction id,
//  ref id, customer JSON, Business Transaction.
#define S_CHANGE(operation, fields, condition, changes, new_columns, set) \
    "WITH listed AS (" \
    " SELECT e.n, e.doc->>'requestId' AS request_id," \
    " e.doc->>'requestHash' AS hash, (e.doc->>'refId')::uuid AS ref_id" \
    fields \
    " FROM jsonb_array_elements ($1::jsonb) WITH ORDINALITY AS e (doc, n)), " \
    "input AS (" \
    " SELECT listed.*, gen_random_uuid () AS tid FROM listed" \
    " WHERE NOT EXISTS (SELECT FROM listed AS earlier" \
    " WHERE earlier.n < listed.n AND (earlier.ref_id = listed.ref_id" \
    " OR earlier.request_id = listed.request_id))), " \
    "cur AS (" \
    " SELECT input.*, c AS old" changes \
    " FROM input JOIN casm.customers c ON c.ref_id = input.ref_id" \
    " WHERE c.state <> 'DEACTIVATED'" condition \
    " ORDER BY c.ref_id FOR UPDATE OF c), " \
    "nxt AS (" \
    " SELECT cur.n, cur.request_id, cur.hash, cur.tid," \
    " jsonb_populate_record (cur.old, jsonb_build_object (" \
    new_columns ", 'version', (cur.old).version + 1," \
    " 'modified_at', now ())) AS c FROM cur), " \
    "bt AS MATERIALIZED (" \
    " SELECT nxt.*, casm.customer_json (nxt.c, " \
    CASM_ATTRIBUTES_JSON_SQL ("(nxt.c).custom_attributes") \
    ") AS customer FROM nxt), " \
    "answer AS (" \
    " SELECT bt.n, bt.request_id, bt.hash, bt.tid, (bt.c).ref_id," \
    " (bt.c).version, bt.customer," \
    " '{\"transactionId\":' || to_json (bt.tid::text)::text" \
    " || ',\"requestId\":' || to_json (bt.request_id)::text" \
    " || ',\"operation\":\"" operation "\"'" \
    " || ',\"timestamp\":'" \
    " || to_json (casm.rfc3339 ((bt.c).modified_at))::text" \
    " || ',\"customer\":' || bt.customer || '}' AS body" \
    " FROM bt), " \
    "recorded AS (" \
    " INSERT INTO casm.requests" \
    " (request_id, request_hash, operation, status, body)" \
    " SELECT answer.request_id, decode (answer.hash, 'hex'), '" \
    operation "', 200, answer.body FROM answer" \
    " ON CONFLICT (request_id) DO NOTHING RETURNING request_id), " \
    "changed AS (" \
    " UPDATE casm.customers c SET " set ", version = (nxt.c).version," \
    " modified_at = (nxt.c).modified_at" \
    " FROM nxt JOIN recorded USING (request_id)" \
    " WHERE c.ref_id = (nxt.c).ref_id RETURNING nxt.request_id), " \
    "queued AS (" \
    " INSERT INTO casm.outbox (transaction_id, request_id, operation," \
    " customer_ref, version, payload)" \
    " SELECT answer.tid, answer.request_id, '" operation "'," \
    " answer.ref_id, answer.version, answer.customer" \
    " FROM answer JOIN changed USING (request_id)" \
    " RETURNING id, request_id) " \
    "SELECT answer.n, queued.id, answer.tid, answer.ref_id," \
    " answer.customer, answer.body" \
    " FROM answer JOIN queued USING (request_id)"

//  The attribute set that an update leaves, from row c and input's pairs.
#define S_BATCH_ATTRIBUTES \
    "CASE WHEN input.merge" \
    " THEN jsonb_strip_nulls (c.custom_attributes || input.pairs)" \
    " ELSE input.pairs END"

//  $1 a JSON array of updateCustomerCustomAttributes commands.
static const char *s_update_attributes_sql =
    S_CHANGE ("updateCustomerCustomAttributes",
              ", e.doc->'customAttributes' AS pairs,"
              " coalesce ((e.doc->>'merge')::boolean, false) AS merge",
              " AND (SELECT count (*) FROM jsonb_object_keys ("
              S_BATCH_ATTRIBUTES ")) <= " XSTR (CASM_ATTRIBUTES_MAX),
              ", " S_BATCH_ATTRIBUTES " AS attributes",
              "'custom_attributes', cur.attributes",
              "custom_attributes = (nxt.c).custom_attributes");

//  $1 request id, $2 hash, $3 external id, $4 custom name, $5 segment,
//  $6 state, $7 test customer, $8 attributes, $9 state reason. The only
//  change that does not go into a batch: it could fail two ways (the
//  externalId and the requestId taken), and no order of the two inserts
//  makes both harmless, so it runs alone and a collision on the requestId
//  rolls it back.
static const char *s_create_customer_sql =
    "WITH ids AS (SELECT gen_random_uuid () AS tid), "
    "changed AS ("
    " INSERT INTO casm.customers AS c (external_id, custom_name,"
    " customer_segment, state, test_customer, custom_attributes,"
    " state_reason)"
    " VALUES ($3::text, $4::text, $5::text, coalesce ($6::text, 'ACTIVE'),"
    " coalesce ($7::boolean, false), coalesce ($8::jsonb, '{}'::jsonb),"
    " $9::text)"
    " ON CONFLICT (external_id) DO NOTHING"
    S_CHANGED_RETURNING ", "
    S_RECORD ("createCustomer", "201");

//  $1 a JSON array of updateCustomerState commands.
static const char *s_update_state_sql =
    S_CHANGE ("updateCustomerState",
              ", e.doc->>'state' AS state,"
              " e.doc->>'stateReason' AS state_reason", "", "",
              "'state', cur.state, 'state_reason', cur.state_reason,"
              " 'state_valid_from', now ()",
              "state = (nxt.c).state, state_reason = (nxt.c).state_reason,"
              " state_valid_from = (nxt.c).state_valid_from");

//  $1 request id, $2 hash: the recorded answer, and whether it is the same
//  request.
static const char *s_recorded_sql =
    "SELECT status, body, request_hash = decode ($2::text, 'hex')"
    " FROM casm.requests WHERE request_id = $1::text";

//  Why an update changed nothing: the customer's state and, for
//  updateCustomerCustomAttributes, how many pairs the update would leave.
//  $1 ref id, $2 attributes, $3 merge.
static const char *s_why_attributes_sql =
    "SELECT c.state, (SELECT count (*) FROM jsonb_object_keys ("
    S_NEW_ATTRIBUTES ("$2", "$3") "))"
    " FROM casm.customers c WHERE c.ref_id = $1::uuid";

//  $1 ref id.
static const char *s_why_state_sql =
    "SELECT c.state FROM casm.customers c WHERE c.ref_id = $1::uuid";

static const char *s_purge_sql =
    "DELETE FROM casm.requests WHERE request_id IN ("
    " SELECT request_id FROM casm.requests"
    " WHERE created_at < now () - make_interval (hours => $1::int)"
    " LIMIT $2::int)";

static const struct {
    const char *name;
    const char **sql;
} s_statements [] = {
    { "update_attributes", &s_update_attributes_sql },
    { "create_customer", &s_create_customer_sql },
    { "update_state", &s_update_state_sql },
    { "recorded", &s_recorded_sql },
    { "why_attributes", &s_why_attributes_sql },
    { "why_state", &s_why_state_sql },
    { "purge", &s_purge_sql },
};

struct casm_store_t {
    char *url;
    PGconn *connection;
    int ready;                  // connected, schema there, prepared
    int down;                   // an outage has been logged
    int64_t last_attempt;       // of a connection, ms since the epoch
};

//  How a statement went.
typedef enum {
    S_OK,                       // rows or no rows, as the statement says
    S_DUPLICATE,                // the request id is recorded already
    S_RETRY,                    // deadlock or serialization failure
    S_INVALID,                  // the data was refused: a bug upstream
    S_UNAVAILABLE               // connection lost, timeout, anything else
} s_result_t;

//  What the three operations differ in: the change statement, the
//  statement that explains an empty result and how many of the change's
//  parameters it takes from the customer reference on (none for
//  createCustomer, where the only reason is a taken externalId), the
//  operation's name and its success status.
typedef struct {
    const char *statement;
    const char *why;
    int why_count;
    int op;
    int status;
} s_operation_t;

static const s_operation_t s_update_attributes = {
    "update_attributes", "why_attributes", 3, CASM_OP_UPDATE_ATTRIBUTES, 200
};
static const s_operation_t s_create_customer = {
    "create_customer", NULL, 0, CASM_OP_CREATE, 201
};
static const s_operation_t s_update_state = {
    "update_state", "why_state", 1, CASM_OP_UPDATE_STATE, 200
};

//  One parsed command with the fields the statements need.
typedef struct {
    json_t *json;
    const char *request_id;
    const char *hash;
    const char *params [9];
    int count;
    char *attributes;           // compact JSON text of customAttributes
} s_command_t;


//  --------------------------------------------------------------------
//  Outcomes

static void
s_outcome_text (casm_outcome_t *outcome, int status, uint8_t flags,
                const char *text, size_t size)
{
    casm_outcome_clear (outcome);
    outcome->status = (uint16_t) status;
    outcome->flags = flags;
    outcome->body = malloc (size + 1);
    if (outcome->body) {
        memcpy (outcome->body, text, size);
        outcome->body [size] = 0;
        outcome->body_size = size;
    }
}

static void
s_outcome_error (casm_outcome_t *outcome, int status, const char *code,
                 const char *parameter, const char *request_id,
                 json_t *errors)
{
    casm_outcome_clear (outcome);
    outcome->status = (uint16_t) status;
    outcome->body = casm_error_body (status, code, NULL, parameter,
                                     request_id, errors,
                                     &outcome->body_size);
}

void
casm_outcome_clear (casm_outcome_t *outcome)
{
    free (outcome->body);
    free (outcome->event);
    memset (outcome, 0, sizeof *outcome);
}


//  --------------------------------------------------------------------
//  The connection

casm_store_t *
casm_store_new (const char *database_url)
{
    casm_store_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->url = strdup (database_url ? database_url : "");
    if (!self->url) {
        free (self);
        return NULL;
    }
    return self;
}

void
casm_store_destroy (casm_store_t **self_p)
{
    casm_store_t *self = *self_p;
    if (!self)
        return;
    if (self->connection)
        PQfinish (self->connection);
    free (self->url);
    free (self);
    *self_p = NULL;
}

//  Our own settings come before the caller's connection string, so that
//  the string can override them: a 2 s connect timeout, and keepalives
//  that notice a peer gone silent within about 10 s.
static PGconn *
s_connect (const char *url)
{
    const char *keywords [] = {
        "connect_timeout", "keepalives", "keepalives_idle",
        "keepalives_interval", "keepalives_count", "tcp_user_timeout",
        "application_name", "dbname", NULL
    };
    const char *values [] = {
        "2", "1", "5", "2", "2", "10000", "casm-worker", url, NULL
    };
    if (!*url)
        keywords [7] = NULL;
    return PQconnectdbParams (keywords, values, 1);
}

//  PostgreSQL's notices (the migrations' "already exists, skipping") are
//  not worth a line each: debug level.
static void
s_notice (void *argument, const char *message)
{
    casm_debug (NULL, NULL, "PostgreSQL: %.*s",
                (int) strcspn (message, "\n"), message);
}

static int
s_setup (casm_store_t *self)
{
    //  Every statement finds its rows by a unique key. A prepared plan is
    //  made once per connection, and one made while a table was still
    //  empty (a new database) would scan that table forever after, slower
    //  with every row: no sequential scans, so the index is the plan.
    //  The migrations run without the statement timeout: one may build
    //  an index on a large table, or wait for another worker's lock.
    PQsetNoticeProcessor (self->connection, s_notice, NULL);
    PGresult *result = PQexec (self->connection,
                               "SET statement_timeout = 0"
                               "; SET enable_seqscan = off");
    int ok = PQresultStatus (result) == PGRES_COMMAND_OK;
    PQclear (result);
    if (!ok || casm_migrate (self->connection) < 0)
        return -1;

    result = PQexec (self->connection, "SET statement_timeout = "
                                       XSTR (CASM_STORE_STATEMENT_MS));
    ok = PQresultStatus (result) == PGRES_COMMAND_OK;
    PQclear (result);
    if (!ok)
        return -1;

    for (size_t i = 0; i < sizeof s_statements / sizeof s_statements [0];
         i++) {
        result = PQprepare (self->connection, s_statements [i].name,
                            *s_statements [i].sql, 0, NULL);
        ok = PQresultStatus (result) == PGRES_COMMAND_OK;
        if (!ok)
            casm_error (NULL, json_pack ("{ss}", "statement",
                                         s_statements [i].name),
                        "cannot prepare a statement: %s",
                        PQerrorMessage (self->connection));
        PQclear (result);
        if (!ok)
            return -1;
    }
    return 0;
}

int
casm_store_open (casm_store_t *self)
{
    self->ready = 0;
    self->last_attempt = casm_now_ms ();
    if (self->connection)
        PQreset (self->connection);
    else
        self->connection = s_connect (self->url);

    if (!self->connection
    ||  PQstatus (self->connection) != CONNECTION_OK
    ||  s_setup (self) != 0) {
        if (!self->down) {
            char reason [256] = "out of memory";
            if (self->connection)
                snprintf (reason, sizeof reason, "%s",
                          PQerrorMessage (self->connection));
            reason [strcspn (reason, "\n")] = 0;
            casm_warn (NULL, json_pack ("{ss}", "reason", reason),
                       "PostgreSQL is not available, retrying");
            self->down = 1;
        }
        return -1;
    }

    if (self->down)
        casm_info (NULL, NULL, "PostgreSQL is available again");
    self->down = 0;
    self->ready = 1;
    return 0;
}

int
casm_store_ready (casm_store_t *self)
{
    return self->ready;
}

//  Reconnects when the connection is not ready and the last attempt is a
//  second old. Returns 0 when ready.
static int
s_ensure (casm_store_t *self)
{
    if (self->ready)
        return 0;
    if (casm_now_ms () - self->last_attempt < RECONNECT_MS)
        return -1;
    return casm_store_open (self);
}

//  Gives the connection up after a silence or a broken protocol: its
//  state is unknown, so it is closed, and the next unit reconnects.
static void
s_drop (casm_store_t *self, const char *why)
{
    casm_warn (NULL, NULL, "%s; dropping the PostgreSQL connection", why);
    PQfinish (self->connection);
    self->connection = NULL;
    self->ready = 0;
    self->down = 1;
}

//  Waits until the socket is readable (or writable too, when write is
//  set) or the deadline passes, reading what has arrived. Returns 0, or
//  -1 when the deadline passed or the connection failed.
static int
s_wait (casm_store_t *self, int write, int64_t deadline)
{
    int64_t left = deadline - casm_now_ms ();
    if (left <= 0)
        return -1;
    struct pollfd ready = {
        PQsocket (self->connection), POLLIN | (write ? POLLOUT : 0), 0
    };
    int rc = poll (&ready, 1, (int) left);
    if (rc < 0 && errno != EINTR)
        return -1;
    if (rc > 0 && (ready.revents & (POLLIN | POLLERR | POLLHUP))
    &&  !PQconsumeInput (self->connection))
        return -1;
    return 0;
}

//  Collects the result of the query just sent, waiting at most
//  CASM_STORE_WAIT_MS: PostgreSQL cancels a slow statement by itself
//  (statement_timeout), so only a silent network gets this far, and then
//  the connection is dropped, since its state is unknown. Returns the last
//  result, or NULL when there is none (the connection failed or timed
//  out).
static PGresult *
s_collect (casm_store_t *self)
{
    int64_t deadline = casm_now_ms () + CASM_STORE_WAIT_MS;
    PGresult *last = NULL;
    while (1) {
        while (PQisBusy (self->connection)) {
            if (casm_now_ms () >= deadline) {
                PQclear (last);
                s_drop (self, "PostgreSQL did not answer in time");
                return NULL;
            }
            if (s_wait (self, 0, deadline) != 0
            &&  PQstatus (self->connection) != CONNECTION_OK)
                break;
        }
        PGresult *result = PQgetResult (self->connection);
        if (!result)
            break;
        PQclear (last);
        last = result;
    }
    return last;
}

static PGresult *
s_exec (casm_store_t *self, const char *sql)
{
    if (!PQsendQuery (self->connection, sql))
        return NULL;
    return s_collect (self);
}

static PGresult *
s_exec_prepared (casm_store_t *self, const char *name, int count,
                 const char *const *params)
{
    if (!PQsendQueryPrepared (self->connection, name, count, params, NULL,
                              NULL, 0))
        return NULL;
    return s_collect (self);
}

//  After a failure: a lost connection is reset on the next unit; an open
//  transaction (there should be none) is rolled back.
static void
s_settle (casm_store_t *self)
{
    if (!self->connection)
        return;
    if (PQstatus (self->connection) != CONNECTION_OK) {
        if (!self->down) {
            casm_warn (NULL, NULL, "lost the PostgreSQL connection");
            self->down = 1;
        }
        self->ready = 0;
        return;
    }
    if (PQtransactionStatus (self->connection) != PQTRANS_IDLE) {
        PGresult *result = s_exec (self, "ROLLBACK");
        PQclear (result);
        if (PQtransactionStatus (self->connection) != PQTRANS_IDLE)
            self->ready = 0;
    }
}

int
casm_store_ping (casm_store_t *self)
{
    if (s_ensure (self) != 0)
        return -1;
    PGresult *result = s_exec (self, "SELECT 1");
    int ok = PQresultStatus (result) == PGRES_TUPLES_OK;
    PQclear (result);
    if (!ok)
        s_settle (self);
    return ok ? 0 : -1;
}

//  What a failed statement's result means, logged once here (a collision
//  on the requestId is expected and not logged). result may be NULL (no
//  answer at all).
static s_result_t
s_classify (casm_store_t *self, const char *name, PGresult *result,
            const char *request_id)
{
    const char *state = result
                        ? PQresultErrorField (result, PG_DIAG_SQLSTATE)
                        : NULL;
    const char *constraint = result
                             ? PQresultErrorField (result,
                                                   PG_DIAG_CONSTRAINT_NAME)
                             : NULL;
    s_result_t outcome = S_UNAVAILABLE;
    if (state && strcmp (state, "23505") == 0 && constraint
    &&  strcmp (constraint, "requests_pkey") == 0)
        outcome = S_DUPLICATE;
    else
    if (state && (strcmp (state, "40001") == 0
              ||  strcmp (state, "40P01") == 0))
        outcome = S_RETRY;
    else
    if (state && (strncmp (state, "22", 2) == 0
              ||  strncmp (state, "23", 2) == 0))
        outcome = S_INVALID;

    if (outcome != S_DUPLICATE) {
        char message [512];
        snprintf (message, sizeof message, "%s",
                  result && PQresultErrorMessage (result) [0]
                  ? PQresultErrorMessage (result)
                  : self->connection ? PQerrorMessage (self->connection)
                                     : "no answer in time");
        message [strcspn (message, "\n")] = 0;
        casm_log (outcome == S_RETRY ? CASM_LOG_WARN : CASM_LOG_ERROR,
                  request_id,
                  json_pack ("{ss ss}", "statement", name,
                             "sqlstate", state ? state : ""),
                  "statement failed: %s", message);
    }
    return outcome;
}

//  Runs a prepared statement; *result_p gets the result when S_OK.
static s_result_t
s_run (casm_store_t *self, const char *name, int count,
       const char *const *params, const char *request_id,
       PGresult **result_p)
{
    *result_p = NULL;
    if (!self->connection)
        return S_UNAVAILABLE;
    PGresult *result = s_exec_prepared (self, name, count, params);
    ExecStatusType status = PQresultStatus (result);
    if (status == PGRES_TUPLES_OK || status == PGRES_COMMAND_OK) {
        *result_p = result;
        return S_OK;
    }

    s_result_t outcome = s_classify (self, name, result, request_id);
    PQclear (result);
    s_settle (self);
    return outcome;
}


//  --------------------------------------------------------------------
//  Commands

static int
s_is_hex (const char *text, size_t size)
{
    if (strlen (text) != size)
        return 0;
    for (size_t i = 0; i < size; i++)
        if (!isxdigit ((unsigned char) text [i]))
            return 0;
    return 1;
}

//  A UUID as PostgreSQL's uuid type would read it from the validator:
//  8-4-4-4-12 hex digits.
static int
s_is_uuid (const char *text)
{
    if (strlen (text) != 36)
        return 0;
    for (int i = 0; i < 36; i++) {
        int dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? text [i] != '-' : !isxdigit ((unsigned char) text [i]))
            return 0;
    }
    return 1;
}

//  The string member, or NULL when absent or null; *ok is cleared when it
//  is present with another type.
static const char *
s_string (json_t *json, const char *key, int *ok)
{
    json_t *value = json_object_get (json, key);
    if (!value || json_is_null (value))
        return NULL;
    if (!json_is_string (value)) {
        *ok = 0;
        return NULL;
    }
    return json_string_value (value);
}

//  Parses the command and its requestId and requestHash, which go into
//  params 0 and 1. Returns 0, or -1 when they are missing or malformed.
static int
s_command_parse (s_command_t *command, const char *text, size_t size)
{
    memset (command, 0, sizeof *command);
    command->json = json_loadb (text, size, 0, NULL);
    if (!json_is_object (command->json))
        return -1;

    int ok = 1;
    command->request_id = s_string (command->json, "requestId", &ok);
    command->hash = s_string (command->json, "requestHash", &ok);
    if (!ok || !command->request_id || !*command->request_id
    ||  strlen (command->request_id) > CASM_REQUEST_ID_MAX
    ||  !command->hash || !s_is_hex (command->hash, 64))
        return -1;

    command->params [0] = command->request_id;
    command->params [1] = command->hash;
    command->count = 2;
    return 0;
}

static void
s_command_destroy (s_command_t *command)
{
    json_decref (command->json);
    free (command->attributes);
    memset (command, 0, sizeof *command);
}

//  The command's customAttributes as compact JSON text (NULL when absent
//  and not required). Returns 0 or -1.
static int
s_command_attributes (s_command_t *command, int required)
{
    json_t *value = json_object_get (command->json, "customAttributes");
    if (!value || json_is_null (value))
        return required ? -1 : 0;
    if (!json_is_object (value))
        return -1;
    command->attributes = json_dumps (value, JSON_COMPACT);
    return command->attributes ? 0 : -1;
}

static void
s_malformed (casm_outcome_t *outcome, const char *operation,
             const char *request_id)
{
    casm_error (request_id, json_pack ("{ss}", "operation", operation),
                "malformed command from the validator");
    s_outcome_error (outcome, 500, CASM_ERR_INTERNAL, NULL, request_id,
                     NULL);
}


//  --------------------------------------------------------------------
//  Answers

//  The success answer from a row of a change statement (outbox id,
//  transaction id, ref id, customer JSON, Business Transaction, from
//  column first on): the Business Transaction as the body, and the event
//  frame (a meta line, a newline, the customer JSON).
static void
s_committed (casm_outcome_t *outcome, PGresult *result, int row, int first,
             int status, const char *operation, const char *request_id)
{
    const char *customer = PQgetvalue (result, row, first + 3);
    size_t customer_size = (size_t) PQgetlength (result, row, first + 3);
    s_outcome_text (outcome, status, 0, PQgetvalue (result, row, first + 4),
                    (size_t) PQgetlength (result, row, first + 4));

    json_t *meta = json_object ();
    json_object_set_new (meta, "outboxId", json_integer (
        strtoll (PQgetvalue (result, row, first), NULL, 10)));
    json_object_set_new (meta, "transactionId",
                         json_string (PQgetvalue (result, row, first + 1)));
    json_object_set_new (meta, "requestId",
                         casm_log_string (request_id, strlen (request_id)));
    json_object_set_new (meta, "operation", json_string (operation));
    json_object_set_new (meta, "key",
                         json_string (PQgetvalue (result, row, first + 2)));
    char *line = json_dumps (meta, JSON_COMPACT);
    json_decref (meta);
    if (!line)
        return;

    size_t line_size = strlen (line);
    outcome->event = malloc (line_size + 1 + customer_size + 1);
    if (outcome->event) {
        memcpy (outcome->event, line, line_size);
        outcome->event [line_size] = '\n';
        memcpy (outcome->event + line_size + 1, customer, customer_size);
        outcome->event_size = line_size + 1 + customer_size;
        outcome->event [outcome->event_size] = 0;
    }
    free (line);
}

//  Answers from the recorded request when there is one: the same request
//  gets its recorded answer again, another one 422. Returns 1 when it
//  answered, 0 when nothing is recorded, -1 on a database failure.
static int
s_answer_recorded (casm_store_t *self, s_command_t *command,
                   casm_outcome_t *outcome)
{
    PGresult *result;
    if (s_run (self, "recorded", 2, command->params, command->request_id,
               &result) != S_OK)
        return -1;
    if (PQntuples (result) == 0) {
        PQclear (result);
        return 0;
    }

    if (strcmp (PQgetvalue (result, 0, 2), "t") == 0) {
        int status = atoi (PQgetvalue (result, 0, 0));
        s_outcome_text (outcome, status, CASM_FLAG_REPLAYED,
                        PQgetvalue (result, 0, 1),
                        (size_t) PQgetlength (result, 0, 1));
        casm_debug (command->request_id, NULL, "replayed a recorded answer");
    }
    else
        s_outcome_error (outcome, 422, CASM_ERR_REQUEST_ID_REUSED,
                         "requestId", command->request_id, NULL);
    PQclear (result);
    return 1;
}

//  Why an update of the customer changed nothing; returns 1 when it
//  answered, 0 when no reason was found (try again), -1 on a failure.
static int
s_answer_unchanged (casm_store_t *self, s_command_t *command,
                    const s_operation_t *operation, casm_outcome_t *outcome)
{
    int recorded = s_answer_recorded (self, command, outcome);
    if (recorded != 0)
        return recorded;

    PGresult *result;
    if (s_run (self, operation->why, operation->why_count,
               command->params + 2, command->request_id, &result) != S_OK)
        return -1;

    int answered = 1;
    if (PQntuples (result) == 0)
        s_outcome_error (outcome, 400, CASM_ERR_NOT_FOUND_ENTITY,
                         "customer", command->request_id, NULL);
    else
    if (strcmp (PQgetvalue (result, 0, 0), "DEACTIVATED") == 0)
        s_outcome_error (outcome, 400, CASM_ERR_DEACTIVATED, "customer",
                         command->request_id, NULL);
    else
    if (PQnfields (result) > 1
    &&  atoll (PQgetvalue (result, 0, 1)) > CASM_ATTRIBUTES_MAX) {
        json_t *errors = json_array ();
        casm_error_add (errors, "customAttributes", "TOO_MANY",
                        "The merge would leave more than "
                        XSTR (CASM_ATTRIBUTES_MAX) " custom attributes.");
        s_outcome_error (outcome, 400, CASM_ERR_VALIDATION, NULL,
                         command->request_id, errors);
    }
    else
        answered = 0;
    PQclear (result);
    return answered;
}

//  Runs createCustomer's statement alone, in its own transaction, and
//  answers.
static void
s_create (casm_store_t *self, s_command_t *command, casm_outcome_t *outcome)
{
    if (s_ensure (self) != 0) {
        s_outcome_error (outcome, 503, CASM_ERR_UNAVAILABLE, NULL,
                         command->request_id, NULL);
        return;
    }

    for (int attempt = 0; attempt < ATTEMPTS_MAX; attempt++) {
        PGresult *result;
        s_result_t ran = s_run (self, s_create_customer.statement,
                                command->count, command->params,
                                command->request_id, &result);
        int answered = -1;
        if (ran == S_OK && PQntuples (result) == 1) {
            s_committed (outcome, result, 0, 0, s_create_customer.status,
                         casm_op_name (CASM_OP_CREATE), command->request_id);
            answered = 1;
        }
        else
        if (ran == S_OK) {
            answered = s_answer_recorded (self, command, outcome);
            if (answered == 0) {
                s_outcome_error (outcome, 400, CASM_ERR_EXTERNAL_ID_EXISTS,
                                 "externalId", command->request_id, NULL);
                answered = 1;
            }
        }
        else
        if (ran == S_DUPLICATE)
            answered = s_answer_recorded (self, command, outcome);
        else
        if (ran == S_RETRY)
            answered = 0;
        else
        if (ran == S_INVALID) {
            s_outcome_error (outcome, 500, CASM_ERR_INTERNAL, NULL,
                             command->request_id, NULL);
            answered = 1;
        }
        PQclear (result);

        if (answered == 1)
            return;
        if (answered < 0)
            break;
    }
    s_outcome_error (outcome, 503, CASM_ERR_UNAVAILABLE, NULL,
                     command->request_id, NULL);
}


//  --------------------------------------------------------------------
//  Batches
//
//  The changes to existing customers of a batch run in ONE transaction,
//  sent at once in libpq's pipeline mode: BEGIN, a statement per round,
//  COMMIT, then a Sync, and the results are read in that order. One
//  commit (one WAL flush) and one round trip carry them all. A round is
//  one statement (S_CHANGE) for many units of one operation, each
//  customer and each requestId at most once: a unit goes into the round
//  after the last one that holds an earlier unit with its customer or its
//  requestId, so that two changes of one customer apply in their order,
//  each with its own version, and a second copy of a request finds the
//  first one's record.
//
//  A statement changes nothing for a unit rather than fail, so a unit
//  that cannot be done does not take the others down: once the COMMIT is
//  known, the units with a row are answered with it and the others are
//  explained by the same queries as a single unit's (recorded answer,
//  not found, deactivated, too many pairs). Should a statement fail all
//  the same, PostgreSQL skips the rest up to the Sync and the transaction
//  is rolled back: a deadlock or serialization failure runs the batch
//  again; data that PostgreSQL refused (a bug upstream) runs the units one
//  by one, so that only the culprit gets its 500; anything else answers
//  503 to every unit. A unit is never answered 200 without its COMMIT's
//  own result in hand.

//  A unit of work on its way through the store.
typedef struct {
    s_command_t command;
    const char *text;               // the command as the validator sent it
    size_t size;
    const s_operation_t *operation; // NULL once answered
    casm_outcome_t *outcome;
    int round;
    PGresult *result;               // its round's rows (not owned)
    int row;                        // its row there, or -1
} s_unit_t;

//  How a batch went.
typedef enum {
    B_COMMITTED,                // COMMIT confirmed: answer the units
    B_RETRY,                    // rolled back: deadlock, serialization
    B_REMOVED,                  // rolled back: the unit whose data was
                                // refused is answered, run the others
    B_SPLIT,                    // rolled back: data refused in a round of
                                // several, run the units one by one
    B_UNAVAILABLE               // rolled back or unknown: 503 for all
} s_batch_t;

//  Sends what libpq holds, reading meanwhile so that the server, which
//  answers while we send, never waits on us. Returns 0 or -1.
static int
s_flush (casm_store_t *self)
{
    int64_t deadline = casm_now_ms () + CASM_STORE_WAIT_MS;
    while (1) {
        int rc = PQflush (self->connection);
        if (rc <= 0)
            return rc;
        if (s_wait (self, 1, deadline) != 0)
            return -1;
    }
}

//  The next result of the pipeline: a query's result (then libpq's NULL
//  that ends the query is read too), or the Sync. Returns 0, or -1 when
//  the server was silent for CASM_STORE_WAIT_MS or the connection broke;
//  the connection is dropped then.
static int
s_pipeline_result (casm_store_t *self, PGresult **result_p)
{
    *result_p = NULL;
    int64_t deadline = casm_now_ms () + CASM_STORE_WAIT_MS;
    for (int end = 0; end < 2; end++) {
        while (PQisBusy (self->connection))
            if (s_wait (self, 0, deadline) != 0) {
                PQclear (*result_p);
                *result_p = NULL;
                s_drop (self, PQstatus (self->connection) == CONNECTION_OK
                              ? "PostgreSQL did not answer in time"
                              : "the PostgreSQL connection broke");
                return -1;
            }
        PGresult *result = PQgetResult (self->connection);
        if (end == 0) {
            *result_p = result;
            if (!result || PQstatus (self->connection) != CONNECTION_OK)
                break;
            if (PQresultStatus (result) == PGRES_PIPELINE_SYNC)
                return 0;
        }
        else
        if (!result)
            return 0;
        else
            PQclear (result);
    }
    PQclear (*result_p);
    *result_p = NULL;
    s_drop (self, "the PostgreSQL pipeline went out of step");
    return -1;
}

//  Puts each unit still to do in its round (see above). Returns the
//  number of rounds.
static int
s_rounds (s_unit_t *units, size_t count)
{
    int rounds = 0;
    for (size_t i = 0; i < count; i++) {
        if (!units [i].operation)
            continue;
        units [i].round = 0;
        for (size_t j = 0; j < i; j++)
            if (units [j].operation
            &&  units [j].round >= units [i].round
            &&  (strcmp (units [j].command.params [2],
                         units [i].command.params [2]) == 0
              || strcmp (units [j].command.request_id,
                         units [i].command.request_id) == 0))
                units [i].round = units [j].round + 1;
        if (units [i].round + 1 > rounds)
            rounds = units [i].round + 1;
    }
    return rounds;
}

//  Sends the statement of one round and operation: the units' commands as
//  a JSON array. Returns 1 when sent, 0 when there is no such unit, -1
//  when it could not be sent.
static int
s_send_round (casm_store_t *self, s_unit_t *units, size_t count, int round,
              const s_operation_t *operation)
{
    size_t size = 2;
    for (size_t i = 0; i < count; i++)
        if (units [i].operation == operation && units [i].round == round)
            size += units [i].size + 1;
    if (size == 2)
        return 0;

    char *array = malloc (size + 1);
    if (!array)
        return -1;
    char *at = array;
    *at++ = '[';
    for (size_t i = 0; i < count; i++)
        if (units [i].operation == operation && units [i].round == round) {
            if (at > array + 1)
                *at++ = ',';
            memcpy (at, units [i].text, units [i].size);
            at += units [i].size;
        }
    *at++ = ']';
    *at = 0;

    const char *params [1] = { array };
    int sent = PQsendQueryPrepared (self->connection, operation->statement,
                                    1, params, NULL, NULL, 0);
    free (array);
    return sent ? 1 : -1;
}

//  A round's statement failed: what that means for the batch.
static s_batch_t
s_round_failed (casm_store_t *self, s_unit_t *units, size_t count,
                int round, const s_operation_t *operation, PGresult *result)
{
    s_unit_t *member = NULL;
    size_t members = 0;
    for (size_t i = 0; i < count; i++)
        if (units [i].operation == operation && units [i].round == round) {
            member = &units [i];
            members++;
        }
    s_result_t failed = s_classify (self, operation->statement, result,
                                    members == 1
                                    ? member->command.request_id : NULL);
    if (failed == S_RETRY)
        return B_RETRY;
    if (failed == S_INVALID && members > 1)
        return B_SPLIT;
    if (failed == S_INVALID) {
        s_outcome_error (member->outcome, 500, CASM_ERR_INTERNAL, NULL,
                         member->command.request_id, NULL);
        member->operation = NULL;
        return B_REMOVED;
    }
    return B_UNAVAILABLE;
}

//  Gives each unit of the round its row of result.
static void
s_round_rows (s_unit_t *units, size_t count, int round,
              const s_operation_t *operation, PGresult *result)
{
    size_t position = 0;
    int rows = PQntuples (result);
    for (size_t i = 0; i < count; i++) {
        if (units [i].operation != operation || units [i].round != round)
            continue;
        position++;
        units [i].result = result;
        for (int row = 0; row < rows; row++)
            if ((size_t) atol (PQgetvalue (result, row, 0)) == position)
                units [i].row = row;
    }
}

//  Runs the units still to do in one transaction. *results gets the
//  rounds' results, which the caller clears (up to *result_count).
static s_batch_t
s_pipeline (casm_store_t *self, s_unit_t *units, size_t count,
            PGresult **results, int *result_count)
{
    static const s_operation_t *operations [] = {
        &s_update_attributes, &s_update_state
    };
    int rounds = s_rounds (units, count);
    PGconn *connection = self->connection;
    *result_count = 0;
    if (PQenterPipelineMode (connection) != 1
    ||  PQsetnonblocking (connection, 1) != 0) {
        s_drop (self, "cannot enter pipeline mode");
        return B_UNAVAILABLE;
    }

    //  What was sent, in order: round * 2 + operation index.
    int statements [2 * rounds + 1];
    int sent_count = 0;
    int sent = PQsendQueryParams (connection, "BEGIN", 0, NULL, NULL, NULL,
                                  NULL, 0);
    for (int round = 0; sent && round < rounds; round++)
        for (int k = 0; sent && k < 2; k++) {
            int rc = s_send_round (self, units, count, round,
                                   operations [k]);
            if (rc == 1)
                statements [sent_count++] = round * 2 + k;
            sent = rc >= 0;
        }
    sent = sent && PQsendQueryParams (connection, "COMMIT", 0, NULL, NULL,
                                      NULL, NULL, 0)
                && PQpipelineSync (connection);
    if (!sent || s_flush (self) != 0) {
        s_drop (self, "cannot send to PostgreSQL");
        return B_UNAVAILABLE;
    }

    //  BEGIN, each round, COMMIT: the first failure decides; what comes
    //  after it was skipped (PGRES_PIPELINE_ABORTED).
    s_batch_t outcome = B_COMMITTED;
    PGresult *result;
    if (s_pipeline_result (self, &result) != 0)
        return B_UNAVAILABLE;
    if (PQresultStatus (result) != PGRES_COMMAND_OK) {
        s_classify (self, "BEGIN", result, NULL);
        outcome = B_UNAVAILABLE;
    }
    PQclear (result);

    for (int i = 0; i < sent_count; i++) {
        int round = statements [i] / 2;
        const s_operation_t *operation = operations [statements [i] % 2];
        if (s_pipeline_result (self, &result) != 0)
            return B_UNAVAILABLE;
        ExecStatusType status = PQresultStatus (result);
        if (status == PGRES_TUPLES_OK) {
            results [(*result_count)++] = result;
            s_round_rows (units, count, round, operation, result);
            continue;
        }
        if (status != PGRES_PIPELINE_ABORTED && outcome == B_COMMITTED)
            outcome = s_round_failed (self, units, count, round, operation,
                                      result);
        PQclear (result);
    }

    if (s_pipeline_result (self, &result) != 0)
        return B_UNAVAILABLE;
    int committed = PQresultStatus (result) == PGRES_COMMAND_OK
                 && strcmp (PQcmdStatus (result), "COMMIT") == 0;
    if (!committed && outcome == B_COMMITTED)
        outcome = s_classify (self, "COMMIT", result, NULL) == S_RETRY
                ? B_RETRY : B_UNAVAILABLE;
    PQclear (result);

    //  The COMMIT is known from here on: a connection that breaks now
    //  takes nothing back.
    if (s_pipeline_result (self, &result) != 0)
        return outcome;
    int synced = PQresultStatus (result) == PGRES_PIPELINE_SYNC;
    PQclear (result);
    if (!synced
    ||  PQexitPipelineMode (connection) != 1
    ||  PQsetnonblocking (connection, 0) != 0) {
        s_drop (self, "cannot leave pipeline mode");
        return outcome;
    }
    if (outcome != B_COMMITTED)
        s_settle (self);
    return outcome;
}

//  After a COMMIT: answers each unit that changed its customer with its
//  row, and explains the others. Returns how many are left to try again
//  (no reason found: the customer changed in between).
static size_t
s_batch_answer (casm_store_t *self, s_unit_t *units, size_t count)
{
    size_t left = 0;
    for (size_t i = 0; i < count; i++) {
        s_unit_t *unit = &units [i];
        if (!unit->operation)
            continue;
        int answered = 1;
        if (unit->result && unit->row >= 0)
            s_committed (unit->outcome, unit->result, unit->row, 1,
                         unit->operation->status,
                         casm_op_name (unit->operation->op),
                         unit->command.request_id);
        else
        if (self->ready)
            answered = s_answer_unchanged (self, &unit->command,
                                           unit->operation, unit->outcome);
        else
            answered = -1;

        if (answered < 0)
            s_outcome_error (unit->outcome, 503, CASM_ERR_UNAVAILABLE, NULL,
                             unit->command.request_id, NULL);
        if (answered != 0)
            unit->operation = NULL;
        else
            left++;
    }
    return left;
}

static void
s_batch (casm_store_t *self, s_unit_t *units, size_t count)
{
    size_t left = 0;
    for (size_t i = 0; i < count; i++)
        left += units [i].operation != NULL;

    PGresult *stack [16];
    PGresult **results = 2 * count <= 16
                       ? stack : calloc (2 * count, sizeof *results);
    int attempts = 0;
    while (results && left > 0 && attempts < ATTEMPTS_MAX
       &&  s_ensure (self) == 0) {
        for (size_t i = 0; i < count; i++) {
            units [i].result = NULL;
            units [i].row = -1;
        }
        int result_count = 0;
        s_batch_t ran = s_pipeline (self, units, count, results,
                                    &result_count);
        if (ran == B_COMMITTED)
            left = s_batch_answer (self, units, count);
        else
        if (ran == B_REMOVED)
            left--;
        for (int i = 0; i < result_count; i++)
            PQclear (results [i]);
        if (ran == B_UNAVAILABLE)
            break;
        if (ran == B_SPLIT) {
            for (size_t i = 0; i < count; i++)
                if (units [i].operation)
                    s_batch (self, &units [i], 1);
            left = 0;
        }
        if (ran != B_REMOVED)
            attempts++;
    }
    if (results != stack)
        free (results);

    for (size_t i = 0; i < count; i++)
        if (units [i].operation) {
            s_outcome_error (units [i].outcome, 503, CASM_ERR_UNAVAILABLE,
                             NULL, units [i].command.request_id, NULL);
            units [i].operation = NULL;
        }
}


//  --------------------------------------------------------------------
//  The operations

//  Checks an updateCustomerCustomAttributes command and fills its
//  parameters. Returns 0, or -1 when it answered.
static int
s_parse_update_attributes (s_command_t *command, casm_outcome_t *outcome)
{
    int ok = 1;
    const char *ref_id = s_string (command->json, "refId", &ok);
    json_t *merge = json_object_get (command->json, "merge");
    if (s_command_attributes (command, 1) != 0
    ||  !ok || !ref_id || (merge && !json_is_boolean (merge))) {
        s_malformed (outcome, casm_op_name (CASM_OP_UPDATE_ATTRIBUTES),
                     command->request_id);
        return -1;
    }
    if (!s_is_uuid (ref_id)) {
        s_outcome_error (outcome, 400, CASM_ERR_NOT_FOUND_ENTITY, "customer",
                         command->request_id, NULL);
        return -1;
    }

    command->params [2] = ref_id;
    command->params [3] = command->attributes;
    command->params [4] = json_is_true (merge) ? "true" : "false";
    command->count = 5;
    return 0;
}

static int
s_parse_create_customer (s_command_t *command, casm_outcome_t *outcome)
{
    int ok = 1;
    const char *external_id = s_string (command->json, "externalId", &ok);
    const char *name = s_string (command->json, "customName", &ok);
    const char *segment = s_string (command->json, "customerSegment", &ok);
    const char *state = s_string (command->json, "state", &ok);
    const char *reason = s_string (command->json, "stateReason", &ok);
    json_t *test = json_object_get (command->json, "testCustomer");
    if (s_command_attributes (command, 0) != 0
    ||  !ok || !external_id
    ||  (test && !json_is_boolean (test) && !json_is_null (test))) {
        s_malformed (outcome, casm_op_name (CASM_OP_CREATE),
                     command->request_id);
        return -1;
    }

    command->params [2] = external_id;
    command->params [3] = name;
    command->params [4] = segment;
    command->params [5] = state;
    command->params [6] = json_is_boolean (test)
                          ? (json_is_true (test) ? "true" : "false") : NULL;
    command->params [7] = command->attributes;
    command->params [8] = reason;
    command->count = 9;
    return 0;
}

static int
s_parse_update_state (s_command_t *command, casm_outcome_t *outcome)
{
    int ok = 1;
    const char *ref_id = s_string (command->json, "refId", &ok);
    const char *state = s_string (command->json, "state", &ok);
    const char *reason = s_string (command->json, "stateReason", &ok);
    if (!ok || !ref_id || !state) {
        s_malformed (outcome, casm_op_name (CASM_OP_UPDATE_STATE),
                     command->request_id);
        return -1;
    }
    if (!s_is_uuid (ref_id)) {
        s_outcome_error (outcome, 400, CASM_ERR_NOT_FOUND_ENTITY, "customer",
                         command->request_id, NULL);
        return -1;
    }

    command->params [2] = ref_id;
    command->params [3] = state;
    command->params [4] = reason;
    command->count = 5;
    return 0;
}

//  Parses a unit's command for its operation. Returns the operation, or
//  NULL when the unit is answered already (malformed, no such customer
//  possible, unknown operation).
static const s_operation_t *
s_parse (int op, const char *text, size_t size, s_command_t *command,
         casm_outcome_t *outcome)
{
    const s_operation_t *operation =
        op == CASM_OP_UPDATE_ATTRIBUTES ? &s_update_attributes
      : op == CASM_OP_CREATE ? &s_create_customer
      : op == CASM_OP_UPDATE_STATE ? &s_update_state : NULL;
    if (!operation) {
        memset (command, 0, sizeof *command);
        casm_error (NULL, json_pack ("{si}", "operation", op),
                    "the worker does not handle this operation");
        s_outcome_error (outcome, 500, CASM_ERR_INTERNAL, NULL, NULL, NULL);
        return NULL;
    }
    if (s_command_parse (command, text, size) != 0) {
        s_malformed (outcome, casm_op_name (op), command->request_id);
        return NULL;
    }

    int rc = op == CASM_OP_UPDATE_ATTRIBUTES
             ? s_parse_update_attributes (command, outcome)
           : op == CASM_OP_CREATE
             ? s_parse_create_customer (command, outcome)
             : s_parse_update_state (command, outcome);
    return rc == 0 ? operation : NULL;
}

void
casm_store_execute_batch (casm_store_t *self, casm_store_unit_t *units,
                          size_t count)
{
    s_unit_t stack [64];
    s_unit_t *batch = count <= 64 ? stack : calloc (count, sizeof *batch);
    if (!batch) {
        for (size_t i = 0; i < count; i++)
            s_outcome_error (&units [i].outcome, 503, CASM_ERR_UNAVAILABLE,
                             NULL, NULL, NULL);
        return;
    }
    memset (batch, 0, count * sizeof *batch);

    //  The changes go together; each createCustomer alone, after them.
    for (size_t i = 0; i < count; i++) {
        casm_outcome_clear (&units [i].outcome);
        batch [i].outcome = &units [i].outcome;
        batch [i].text = units [i].command;
        batch [i].size = units [i].size;
        batch [i].operation = s_parse (units [i].op, units [i].command,
                                       units [i].size, &batch [i].command,
                                       batch [i].outcome);
    }
    for (size_t i = 0; i < count; i++)
        if (batch [i].operation == &s_create_customer) {
            s_create (self, &batch [i].command, batch [i].outcome);
            batch [i].operation = NULL;
        }
    s_batch (self, batch, count);

    for (size_t i = 0; i < count; i++) {
        s_command_destroy (&batch [i].command);
        if (!units [i].outcome.body)
            units [i].outcome.body = casm_error_body (
                500, CASM_ERR_INTERNAL, NULL, NULL, NULL, NULL,
                &units [i].outcome.body_size);
    }
    if (batch != stack)
        free (batch);
}

int
casm_store_execute (casm_store_t *self, int op, const char *command,
                    size_t size, casm_outcome_t *outcome)
{
    casm_store_unit_t unit = { .op = op, .command = command, .size = size };
    casm_store_execute_batch (self, &unit, 1);
    casm_outcome_clear (outcome);
    *outcome = unit.outcome;
    return outcome->status;
}

int
casm_store_update_attributes (casm_store_t *self, const char *command,
                              size_t size, casm_outcome_t *outcome)
{
    return casm_store_execute (self, CASM_OP_UPDATE_ATTRIBUTES, command,
                               size, outcome);
}

int
casm_store_create_customer (casm_store_t *self, const char *command,
                            size_t size, casm_outcome_t *outcome)
{
    return casm_store_execute (self, CASM_OP_CREATE, command, size,
                               outcome);
}

int
casm_store_update_state (casm_store_t *self, const char *command,
                         size_t size, casm_outcome_t *outcome)
{
    return casm_store_execute (self, CASM_OP_UPDATE_STATE, command, size,
                               outcome);
}

const char *
casm_store_statement (const char *name)
{
    for (size_t i = 0; i < sizeof s_statements / sizeof s_statements [0];
         i++)
        if (strcmp (s_statements [i].name, name) == 0)
            return *s_statements [i].sql;
    return NULL;
}

int
casm_store_purge_requests (casm_store_t *self, int hours, int limit)
{
    if (s_ensure (self) != 0)
        return -1;

    char hours_text [16], limit_text [16];
    snprintf (hours_text, sizeof hours_text, "%d", hours);
    snprintf (limit_text, sizeof limit_text, "%d", limit);
    const char *params [2] = { hours_text, limit_text };
    PGresult *result;
    if (s_run (self, "purge", 2, params, NULL, &result) != S_OK)
        return -1;
    int deleted = atoi (PQcmdTuples (result));
    PQclear (result);
    return deleted;
}
