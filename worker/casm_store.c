/*  casm_store: the worker's PostgreSQL side. See casm_store.h.

    Each operation is one SQL statement, so one round trip and one
    transaction (PostgreSQL runs a lone statement as its own transaction):
    a data-modifying CTE changes the customer with a conditional statement
    (the row must exist and not be DEACTIVATED, and a merge must not leave
    more than 256 pairs, all checked against the row as it is when the
    statement gets its lock, so a concurrent deactivation cannot slip
    through), builds the Business Transaction around the customer JSON that
    PostgreSQL made, records it in casm.requests and queues the event in
    casm.outbox. All of it commits or none of it does.

    When the statement changes nothing, a second statement finds out why:
    a recorded request with this requestId (a concurrent copy that
    committed first), or no such customer, or a deactivated one, or too
    many pairs. When the requests insert collides with a copy that committed
    while we waited for it (unique violation), PostgreSQL has rolled the
    whole statement back and we answer what the copy recorded. That is how
    concurrent copies of one request execute once.                        */

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

//  $1 request id, $2 hash, $3 ref id, $4 attributes, $5 merge.
static const char *s_update_attributes_sql =
    "WITH ids AS (SELECT gen_random_uuid () AS tid), "
    "changed AS ("
    " UPDATE casm.customers c SET custom_attributes = "
    S_NEW_ATTRIBUTES ("$4", "$5") ","
    " version = c.version + 1, modified_at = now ()"
    " WHERE c.ref_id = $3::uuid AND c.state <> 'DEACTIVATED'"
    " AND (SELECT count (*) FROM jsonb_object_keys ("
    S_NEW_ATTRIBUTES ("$4", "$5") ")) <= " XSTR (CASM_ATTRIBUTES_MAX)
    S_CHANGED_RETURNING ", "
    S_RECORD ("updateCustomerCustomAttributes", "200");

//  $1 request id, $2 hash, $3 external id, $4 custom name, $5 segment,
//  $6 state, $7 test customer, $8 attributes, $9 state reason.
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

//  $1 request id, $2 hash, $3 ref id, $4 state, $5 state reason.
static const char *s_update_state_sql =
    "WITH ids AS (SELECT gen_random_uuid () AS tid), "
    "changed AS ("
    " UPDATE casm.customers c SET state = $4::text,"
    " state_reason = $5::text, state_valid_from = now (),"
    " version = c.version + 1, modified_at = now ()"
    " WHERE c.ref_id = $3::uuid AND c.state <> 'DEACTIVATED'"
    S_CHANGED_RETURNING ", "
    S_RECORD ("updateCustomerState", "200");

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
    PQsetNoticeProcessor (self->connection, s_notice, NULL);
    PGresult *result = PQexec (self->connection,
                               "SET statement_timeout = "
                               XSTR (CASM_STORE_STATEMENT_MS));
    int ok = PQresultStatus (result) == PGRES_COMMAND_OK;
    PQclear (result);
    if (!ok || casm_migrate (self->connection) < 0)
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

//  Collects the result of the query just sent, waiting at most
//  CASM_STORE_WAIT_MS: PostgreSQL cancels a slow statement by itself
//  (statement_timeout), so only a silent network gets this far, and then
//  the connection is dropped, since its state is unknown. Returns the last
//  result, or NULL when there is none (the connection failed or timed
//  out).
static PGresult *
s_collect (casm_store_t *self)
{
    PGconn *connection = self->connection;
    int64_t deadline = casm_now_ms () + CASM_STORE_WAIT_MS;
    PGresult *last = NULL;
    while (1) {
        while (PQisBusy (connection)) {
            int64_t left = deadline - casm_now_ms ();
            if (left <= 0) {
                casm_warn (NULL, NULL, "PostgreSQL did not answer in time; "
                           "dropping the connection");
                PQclear (last);
                PQfinish (self->connection);
                self->connection = NULL;
                self->ready = 0;
                self->down = 1;
                return NULL;
            }
            struct pollfd ready = { PQsocket (connection), POLLIN, 0 };
            if (poll (&ready, 1, (int) left) < 0 && errno != EINTR)
                break;
            if (!PQconsumeInput (connection))
                break;
        }
        PGresult *result = PQgetResult (connection);
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

//  Runs a prepared statement; *result_p gets the result when S_OK.
static s_result_t
s_run (casm_store_t *self, const char *name, int count,
       const char *const *params, const char *request_id,
       PGresult **result_p)
{
    *result_p = NULL;
    PGresult *result = s_exec_prepared (self, name, count, params);
    ExecStatusType status = PQresultStatus (result);
    if (status == PGRES_TUPLES_OK || status == PGRES_COMMAND_OK) {
        *result_p = result;
        return S_OK;
    }

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
                  self->connection ? PQerrorMessage (self->connection)
                                   : "no answer in time");
        message [strcspn (message, "\n")] = 0;
        casm_log (outcome == S_RETRY ? CASM_LOG_WARN : CASM_LOG_ERROR,
                  request_id,
                  json_pack ("{ss ss}", "statement", name,
                             "sqlstate", state ? state : ""),
                  "statement failed: %s", message);
    }
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

//  The success answer from the change statement's one row: the Business
//  Transaction as the body, and the event frame (a meta line, a newline,
//  the customer JSON).
static void
s_committed (casm_outcome_t *outcome, PGresult *result, int status,
             const char *operation, const char *request_id)
{
    const char *customer = PQgetvalue (result, 0, 3);
    size_t customer_size = (size_t) PQgetlength (result, 0, 3);
    s_outcome_text (outcome, status, 0, PQgetvalue (result, 0, 4),
                    (size_t) PQgetlength (result, 0, 4));

    json_t *meta = json_object ();
    json_object_set_new (meta, "outboxId", json_integer (
        strtoll (PQgetvalue (result, 0, 0), NULL, 10)));
    json_object_set_new (meta, "transactionId",
                         json_string (PQgetvalue (result, 0, 1)));
    json_object_set_new (meta, "requestId",
                         casm_log_string (request_id, strlen (request_id)));
    json_object_set_new (meta, "operation", json_string (operation));
    json_object_set_new (meta, "key", json_string (PQgetvalue (result, 0,
                                                               2)));
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

//  Runs the operation's change statement and answers.
static int
s_change (casm_store_t *self, const s_operation_t *operation,
          s_command_t *command, casm_outcome_t *outcome)
{
    if (s_ensure (self) != 0) {
        s_outcome_error (outcome, 503, CASM_ERR_UNAVAILABLE, NULL,
                         command->request_id, NULL);
        return outcome->status;
    }

    for (int attempt = 0; attempt < ATTEMPTS_MAX; attempt++) {
        PGresult *result;
        s_result_t ran = s_run (self, operation->statement, command->count,
                                command->params, command->request_id,
                                &result);
        int answered = -1;
        if (ran == S_OK && PQntuples (result) == 1) {
            s_committed (outcome, result, operation->status,
                         casm_op_name (operation->op), command->request_id);
            answered = 1;
        }
        else
        if (ran == S_OK && operation->why)
            answered = s_answer_unchanged (self, command, operation,
                                           outcome);
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
            return outcome->status;
        if (answered < 0)
            break;
    }
    s_outcome_error (outcome, 503, CASM_ERR_UNAVAILABLE, NULL,
                     command->request_id, NULL);
    return outcome->status;
}


//  --------------------------------------------------------------------
//  The operations

int
casm_store_update_attributes (casm_store_t *self, const char *text,
                              size_t size, casm_outcome_t *outcome)
{
    const char *operation = casm_op_name (CASM_OP_UPDATE_ATTRIBUTES);
    s_command_t command;
    int ok = 1;
    if (s_command_parse (&command, text, size) != 0
    ||  s_command_attributes (&command, 1) != 0) {
        s_malformed (outcome, operation, command.request_id);
        s_command_destroy (&command);
        return outcome->status;
    }
    const char *ref_id = s_string (command.json, "refId", &ok);
    json_t *merge = json_object_get (command.json, "merge");
    if (!ok || !ref_id || (merge && !json_is_boolean (merge))) {
        s_malformed (outcome, operation, command.request_id);
        s_command_destroy (&command);
        return outcome->status;
    }
    if (!s_is_uuid (ref_id)) {
        s_outcome_error (outcome, 400, CASM_ERR_NOT_FOUND_ENTITY, "customer",
                         command.request_id, NULL);
        s_command_destroy (&command);
        return outcome->status;
    }

    command.params [2] = ref_id;
    command.params [3] = command.attributes;
    command.params [4] = json_is_true (merge) ? "true" : "false";
    command.count = 5;
    s_change (self, &s_update_attributes, &command, outcome);
    s_command_destroy (&command);
    return outcome->status;
}

int
casm_store_create_customer (casm_store_t *self, const char *text,
                            size_t size, casm_outcome_t *outcome)
{
    const char *operation = casm_op_name (CASM_OP_CREATE);
    s_command_t command;
    int ok = 1;
    if (s_command_parse (&command, text, size) != 0
    ||  s_command_attributes (&command, 0) != 0) {
        s_malformed (outcome, operation, command.request_id);
        s_command_destroy (&command);
        return outcome->status;
    }
    const char *external_id = s_string (command.json, "externalId", &ok);
    const char *name = s_string (command.json, "customName", &ok);
    const char *segment = s_string (command.json, "customerSegment", &ok);
    const char *state = s_string (command.json, "state", &ok);
    const char *reason = s_string (command.json, "stateReason", &ok);
    json_t *test = json_object_get (command.json, "testCustomer");
    if (!ok || !external_id
    ||  (test && !json_is_boolean (test) && !json_is_null (test))) {
        s_malformed (outcome, operation, command.request_id);
        s_command_destroy (&command);
        return outcome->status;
    }

    command.params [2] = external_id;
    command.params [3] = name;
    command.params [4] = segment;
    command.params [5] = state;
    command.params [6] = json_is_boolean (test)
                         ? (json_is_true (test) ? "true" : "false") : NULL;
    command.params [7] = command.attributes;
    command.params [8] = reason;
    command.count = 9;
    s_change (self, &s_create_customer, &command, outcome);
    s_command_destroy (&command);
    return outcome->status;
}

int
casm_store_update_state (casm_store_t *self, const char *text, size_t size,
                         casm_outcome_t *outcome)
{
    const char *operation = casm_op_name (CASM_OP_UPDATE_STATE);
    s_command_t command;
    int ok = 1;
    if (s_command_parse (&command, text, size) != 0) {
        s_malformed (outcome, operation, command.request_id);
        s_command_destroy (&command);
        return outcome->status;
    }
    const char *ref_id = s_string (command.json, "refId", &ok);
    const char *state = s_string (command.json, "state", &ok);
    const char *reason = s_string (command.json, "stateReason", &ok);
    if (!ok || !ref_id || !state) {
        s_malformed (outcome, operation, command.request_id);
        s_command_destroy (&command);
        return outcome->status;
    }
    if (!s_is_uuid (ref_id)) {
        s_outcome_error (outcome, 400, CASM_ERR_NOT_FOUND_ENTITY, "customer",
                         command.request_id, NULL);
        s_command_destroy (&command);
        return outcome->status;
    }

    command.params [2] = ref_id;
    command.params [3] = state;
    command.params [4] = reason;
    command.count = 5;
    s_change (self, &s_update_state, &command, outcome);
    s_command_destroy (&command);
    return outcome->status;
}

int
casm_store_execute (casm_store_t *self, int op, const char *command,
                    size_t size, casm_outcome_t *outcome)
{
    switch (op) {
        case CASM_OP_UPDATE_ATTRIBUTES:
            return casm_store_update_attributes (self, command, size,
                                                 outcome);
        case CASM_OP_CREATE:
            return casm_store_create_customer (self, command, size,
                                               outcome);
        case CASM_OP_UPDATE_STATE:
            return casm_store_update_state (self, command, size, outcome);
        default:
            casm_error (NULL, json_pack ("{si}", "operation", op),
                        "the worker does not handle this operation");
            s_outcome_error (outcome, 500, CASM_ERR_INTERNAL, NULL, NULL,
                             NULL);
            return outcome->status;
    }
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
