/*  casm_lookup: read-only PostgreSQL queries. See casm_lookup.h.

    The validator's loop is single-threaded and synchronous, so a query
    that hangs would stop the whole instance. Each query is therefore sent
    asynchronously and waited for with poll() and a deadline; a connection
    that misses it is dropped (its state is unknown), and the next request
    reconnects.

    A round trip to PostgreSQL costs the validator far more than its own
    work (two process wake-ups on a busy machine), so the loop asks for the
    look-ups of all the units it holds in one go (casm_lookup_prefetch):
    one statement that takes every unit's keys as arrays and answers a row
    per unit. Should it fail, nothing is kept and each unit queries on its
    own, so that one unit cannot take the others' answers with it. The
    answers are kept until the loop has handled those units.               */

#include "casm_lookup.h"
#include "casm_customer.h"
#include "casm_log.h"
#include "casm_msg.h"

#include <errno.h>
#include <libpq-fe.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#define CONNECT_TIMEOUT_S "2"
#define QUERY_TIMEOUT_MS 2000
#define RETRY_MIN_MS 500             // first wait between reconnections
#define RETRY_MAX_MS 4000            // and the longest, once doubled

typedef enum {
    STATEMENT_PING,
    STATEMENT_REQUEST,
    STATEMENT_CUSTOMER_BY_REF,
    STATEMENT_CUSTOMER_BY_EXTERNAL,
    STATEMENT_JSON_BY_REF,
    STATEMENT_JSON_BY_EXTERNAL,
    STATEMENT_BATCH,
    STATEMENT_COUNT
} statement_t;

static const struct {
    const char *name;
    const char *sql;
    int params;
} s_statements [STATEMENT_COUNT] = {
    //  Answers without reading a row, and fails while the schema is
    //  missing, when every other statement would fail too.
    { "ping", "SELECT 1 FROM casm.customers LIMIT 0", 0 },
    { "request",
      "SELECT request_hash = decode($2, 'hex'), status, body "
      "FROM casm.requests WHERE request_id = $1", 2 },
    { "customer_by_ref",
      "SELECT ref_id::text, state FROM casm.customers "
      "WHERE ref_id = $1::uuid", 1 },
    { "customer_by_external",
      "SELECT ref_id::text, state FROM casm.customers "
      "WHERE external_id = $1", 1 },
    { "json_by_ref",
      "SELECT " CASM_CUSTOMER_JSON_SQL " FROM casm.customers c "
      "WHERE c.ref_id = $1::uuid", 1 },
    { "json_by_external",
      "SELECT " CASM_CUSTOMER_JSON_SQL " FROM casm.customers c "
      "WHERE c.external_id = $1", 1 },
    //  The record and the customer of many requests at once: $1 to $4
    //  are arrays of request ids, hashes, refIds and externalIds (NULL
    //  where the request names its customer by refId), one row per key,
    //  n its place. Each look-up is a LATERAL subquery that cannot be
    //  pulled up (LIMIT, UNION ALL), so that the plan is an index probe
    //  per key whatever the tables held when it was made: a join planned
    //  while casm.requests was empty read the whole index per batch
    //  once it had grown, and throughput fell to a fifth.
    { "batch",
      "SELECT k.n, r.request_hash = decode (k.hash, 'hex'), r.status, "
      "r.body, c.ref_id::text, c.state "
      "FROM unnest ($1::text[], $2::text[], $3::uuid[], $4::text[]) "
      "WITH ORDINALITY AS k (request_id, hash, ref_id, external_id, n) "
      "LEFT JOIN LATERAL (SELECT r.request_hash, r.status, r.body "
      "FROM casm.requests r WHERE r.request_id = k.request_id LIMIT 1) r "
      "ON true "
      "LEFT JOIN LATERAL ("
      "SELECT c.ref_id, c.state FROM casm.customers c "
      "WHERE c.ref_id = k.ref_id "
      "UNION ALL SELECT c.ref_id, c.state FROM casm.customers c "
      "WHERE k.ref_id IS NULL AND c.external_id = k.external_id) c "
      "ON true", 4 },
};

//  The answers of a prefetched request: found or not, or not known (the
//  query failed; the call then queries itself).
typedef struct {
    char *request_id;
    char *hash;
    int request;                    // CASM_LOOKUP_* or S_UNKNOWN
    int same;
    int status;
    char *body;
    char *ref_id;                   // the key: ref_id or external_id
    char *external_id;
    int customer;                   // CASM_LOOKUP_* or S_UNKNOWN
    char *customer_ref_id;
    char *state;
} s_kept_t;

#define S_UNKNOWN -2

struct casm_lookup_t {
    s_kept_t *kept;                 // prefetched answers
    size_t kept_count;
    char *url;
    PGconn *connection;
    int prepared [STATEMENT_COUNT];
    int up;                         // last known state, to log changes once
    int64_t next_attempt_ms;        // no reconnection before this
    int64_t retry_ms;               // wait after the next failed attempt
};

//  Logs a change of PostgreSQL's availability once, not per request.
static void
s_set_up (casm_lookup_t *self, int up, const char *why)
{
    if (up && !self->up)
        casm_info (NULL, NULL, "PostgreSQL is available");
    else
    if (!up && self->up)
        casm_warn (NULL, json_pack ("{s:s}", "reason", why ? why : ""),
                   "PostgreSQL is unavailable");
    self->up = up;
}

//  libpq's messages end with a newline; the log line should not.
static const char *
s_message (const char *text, char *buffer, size_t size)
{
    snprintf (buffer, size, "%s", text ? text : "");
    size_t length = strlen (buffer);
    while (length > 0 && (buffer [length - 1] == '\n'
                       || buffer [length - 1] == ' '))
        buffer [--length] = 0;
    return buffer;
}

static void
s_drop (casm_lookup_t *self, const char *why)
{
    char buffer [256];
    s_set_up (self, 0, s_message (why, buffer, sizeof buffer));
    PQfinish (self->connection);
    self->connection = NULL;
    memset (self->prepared, 0, sizeof self->prepared);
}

//  Waits for the outcome of the command just sent and returns its last
//  result (the caller clears it), or NULL when the connection failed or
//  the deadline passed; the connection is dropped then.
static PGresult *
s_wait (casm_lookup_t *self)
{
    PGconn *connection = self->connection;
    int64_t deadline = casm_now_ms () + QUERY_TIMEOUT_MS;
    PGresult *last = NULL;

    while (1) {
        while (PQisBusy (connection)) {
            int64_t remaining = deadline - casm_now_ms ();
            if (remaining <= 0) {
                PQclear (last);
                s_drop (self, "query timed out");
                return NULL;
            }
            struct pollfd item = { PQsocket (connection), POLLIN, 0 };
            int rc = poll (&item, 1, (int) remaining);
            if ((rc < 0 && errno != EINTR)
            ||  (rc > 0 && !PQconsumeInput (connection))) {
                PQclear (last);
                s_drop (self, PQerrorMessage (connection));
                return NULL;
            }
        }
        PGresult *result = PQgetResult (connection);
        if (!result)
            break;
        PQclear (last);
        last = result;
    }

    if (PQstatus (connection) != CONNECTION_OK) {
        PQclear (last);
        s_drop (self, PQerrorMessage (connection));
        return NULL;
    }
    return last;
}

//  Runs sql without parameters on a fresh connection's setup path.
static int
s_setup_command (casm_lookup_t *self, const char *sql)
{
    if (!PQsendQuery (self->connection, sql)) {
        s_drop (self, PQerrorMessage (self->connection));
        return -1;
    }
    PGresult *result = s_wait (self);
    if (!result)
        return -1;
    int ok = PQresultStatus (result) == PGRES_COMMAND_OK;
    if (!ok)
        s_drop (self, PQresultErrorMessage (result));
    PQclear (result);
    return ok ? 0 : -1;
}

//  Prepares what is not prepared yet. A missing schema fails here until
//  the worker has migrated; each statement is retried at the next
//  request, so none is ever prepared twice.
static int
s_prepare (casm_lookup_t *self)
{
    for (int i = 0; i < STATEMENT_COUNT; i++) {
        if (self->prepared [i])
            continue;
        if (!PQsendPrepare (self->connection, s_statements [i].name,
                            s_statements [i].sql, s_statements [i].params,
                            NULL)) {
            s_drop (self, PQerrorMessage (self->connection));
            return -1;
        }
        PGresult *result = s_wait (self);
        if (!result)
            return -1;
        if (PQresultStatus (result) != PGRES_COMMAND_OK) {
            char buffer [256];
            s_set_up (self, 0, s_message (PQresultErrorMessage (result),
                                          buffer, sizeof buffer));
            PQclear (result);
            return -1;
        }
        PQclear (result);
        self->prepared [i] = 1;
    }
    return 0;
}

//  Opens (or reopens) the connection, makes it read-only, bounds its
//  statements. Returns 0 or -1.
static int
s_connect (casm_lookup_t *self)
{
    //  Keywords are processed in order, so the URL may override the
    //  keepalives but not the connect timeout.
    const char *keywords [] = {
        "application_name", "keepalives_idle", "keepalives_interval",
        "keepalives_count", "dbname", "connect_timeout", NULL
    };
    const char *values [] = {
        "casm-validator", "5", "2", "2", self->url, CONNECT_TIMEOUT_S, NULL
    };

    if (self->connection)
        PQreset (self->connection);
    else
        self->connection = PQconnectdbParams (keywords, values, 1);
    if (!self->connection)
        return -1;
    if (PQstatus (self->connection) != CONNECTION_OK) {
        char buffer [256];
        s_set_up (self, 0, s_message (PQerrorMessage (self->connection),
                                      buffer, sizeof buffer));
        return -1;
    }

    //  Every query here is a look-up by a unique key. Its plan is made
    //  once per connection, and one made while a table was still empty (a
    //  new database) would scan the table forever after, slower with
    //  every row: no sequential scans, so the index is always the plan.
    memset (self->prepared, 0, sizeof self->prepared);
    if (s_setup_command (self, "SET default_transaction_read_only = on")
    ||  s_setup_command (self, "SET statement_timeout = 2000")
    ||  s_setup_command (self, "SET enable_seqscan = off"))
        return -1;
    return 0;
}

//  A connection with every statement prepared, or -1 (answer 503).
//  Reconnections back off, doubling up to RETRY_MAX_MS: against a host
//  that drops packets each attempt blocks the loop for the connect
//  timeout, and most of the time must stay free for answering 503.
static int
s_ready (casm_lookup_t *self)
{
    if (!self->connection || PQstatus (self->connection) != CONNECTION_OK) {
        int64_t now = casm_now_ms ();
        if (now < self->next_attempt_ms)
            return -1;
        if (s_connect (self) != 0) {
            self->next_attempt_ms = casm_now_ms () + self->retry_ms;
            self->retry_ms = self->retry_ms * 2 > RETRY_MAX_MS
                           ? RETRY_MAX_MS : self->retry_ms * 2;
            return -1;
        }
        self->retry_ms = RETRY_MIN_MS;
    }
    return s_prepare (self);
}

//  Runs a prepared statement and returns its rows (caller clears), or
//  NULL when PostgreSQL is down or the query failed.
static PGresult *
s_query (casm_lookup_t *self, statement_t statement, const char *param1,
         const char *param2)
{
    if (s_ready (self) != 0)
        return NULL;

    const char *params [2] = { param1, param2 };
    if (!PQsendQueryPrepared (self->connection, s_statements [statement].name,
                              s_statements [statement].params, params,
                              NULL, NULL, 0)) {
        s_drop (self, PQerrorMessage (self->connection));
        return NULL;
    }
    PGresult *result = s_wait (self);
    if (result && PQresultStatus (result) != PGRES_TUPLES_OK) {
        char buffer [256];
        s_set_up (self, 0, s_message (PQresultErrorMessage (result),
                                      buffer, sizeof buffer));
        PQclear (result);
        return NULL;
    }
    if (result)
        s_set_up (self, 1, NULL);
    return result;
}

casm_lookup_t *
casm_lookup_new (const char *url)
{
    casm_lookup_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->url = strdup (url);
    if (!self->url) {
        free (self);
        return NULL;
    }

    //  Start up even when PostgreSQL is down: requests get 503 until it
    //  is back (s_set_up logs the reason once, and the return).
    self->up = 1;
    self->retry_ms = RETRY_MIN_MS;
    if (casm_lookup_ping (self) != CASM_LOOKUP_FOUND)
        casm_warn (NULL, NULL, "starting without PostgreSQL; requests "
                   "get 503 until it is reachable and migrated");
    return self;
}

void
casm_lookup_destroy (casm_lookup_t **self_p)
{
    casm_lookup_t *self = *self_p;
    if (!self)
        return;
    casm_lookup_forget (self);
    PQfinish (self->connection);
    free (self->url);
    free (self);
    *self_p = NULL;
}

int
casm_lookup_ping (casm_lookup_t *self)
{
    PGresult *result = s_query (self, STATEMENT_PING, NULL, NULL);
    if (!result)
        return CASM_LOOKUP_DOWN;
    PQclear (result);
    return CASM_LOOKUP_FOUND;
}

//  The kept answers of this request id and hash, or NULL.
static s_kept_t *
s_kept_request (casm_lookup_t *self, const char *request_id,
                const char *hash)
{
    for (size_t i = 0; i < self->kept_count; i++) {
        s_kept_t *kept = &self->kept [i];
        if (kept->request != S_UNKNOWN
        &&  strcmp (kept->request_id, request_id) == 0
        &&  strcmp (kept->hash, hash) == 0)
            return kept;
    }
    return NULL;
}

//  The kept answers of this customer reference, or NULL.
static s_kept_t *
s_kept_customer (casm_lookup_t *self, const char *ref_id,
                 const char *external_id)
{
    for (size_t i = 0; i < self->kept_count; i++) {
        s_kept_t *kept = &self->kept [i];
        if (kept->customer == S_UNKNOWN)
            continue;
        if (ref_id ? kept->ref_id && strcmp (kept->ref_id, ref_id) == 0
                   : !kept->ref_id && external_id && kept->external_id
                     && strcmp (kept->external_id, external_id) == 0)
            return kept;
    }
    return NULL;
}

int
casm_lookup_request (casm_lookup_t *self, const char *request_id,
                     const char *hash, int *same, int *status, char **body)
{
    s_kept_t *kept = s_kept_request (self, request_id, hash);
    if (kept && kept->request == CASM_LOOKUP_NONE)
        return CASM_LOOKUP_NONE;
    if (kept) {
        *same = kept->same;
        *status = kept->status;
        *body = strdup (kept->body);
        return *body ? CASM_LOOKUP_FOUND : CASM_LOOKUP_DOWN;
    }

    PGresult *result = s_query (self, STATEMENT_REQUEST, request_id, hash);
    if (!result)
        return CASM_LOOKUP_DOWN;
    if (PQntuples (result) == 0) {
        PQclear (result);
        return CASM_LOOKUP_NONE;
    }

    *same = strcmp (PQgetvalue (result, 0, 0), "t") == 0;
    *status = atoi (PQgetvalue (result, 0, 1));
    *body = strdup (PQgetvalue (result, 0, 2));
    PQclear (result);
    return *body ? CASM_LOOKUP_FOUND : CASM_LOOKUP_DOWN;
}

int
casm_lookup_customer (casm_lookup_t *self, const char *ref_id,
                      const char *external_id, char **ref_id_p,
                      char **state_p)
{
    s_kept_t *kept = s_kept_customer (self, ref_id, external_id);
    if (kept && kept->customer == CASM_LOOKUP_NONE)
        return CASM_LOOKUP_NONE;
    if (kept) {
        if (ref_id_p)
            *ref_id_p = strdup (kept->customer_ref_id);
        if (state_p)
            *state_p = strdup (kept->state);
        return CASM_LOOKUP_FOUND;
    }

    PGresult *result = ref_id
        ? s_query (self, STATEMENT_CUSTOMER_BY_REF, ref_id, NULL)
        : s_query (self, STATEMENT_CUSTOMER_BY_EXTERNAL, external_id, NULL);
    if (!result)
        return CASM_LOOKUP_DOWN;
    if (PQntuples (result) == 0) {
        PQclear (result);
        return CASM_LOOKUP_NONE;
    }

    if (ref_id_p)
        *ref_id_p = strdup (PQgetvalue (result, 0, 0));
    if (state_p)
        *state_p = strdup (PQgetvalue (result, 0, 1));
    PQclear (result);
    return CASM_LOOKUP_FOUND;
}

int
casm_lookup_customer_json (casm_lookup_t *self, const char *ref_id,
                           const char *external_id, char **json)
{
    PGresult *result = ref_id
        ? s_query (self, STATEMENT_JSON_BY_REF, ref_id, NULL)
        : s_query (self, STATEMENT_JSON_BY_EXTERNAL, external_id, NULL);
    if (!result)
        return CASM_LOOKUP_DOWN;
    if (PQntuples (result) == 0) {
        PQclear (result);
        return CASM_LOOKUP_NONE;
    }

    *json = strdup (PQgetvalue (result, 0, 0));
    PQclear (result);
    return *json ? CASM_LOOKUP_FOUND : CASM_LOOKUP_DOWN;
}


//  --------------------------------------------------------------------
//  Prefetching

void
casm_lookup_forget (casm_lookup_t *self)
{
    for (size_t i = 0; i < self->kept_count; i++) {
        s_kept_t *kept = &self->kept [i];
        free (kept->request_id);
        free (kept->hash);
        free (kept->body);
        free (kept->ref_id);
        free (kept->external_id);
        free (kept->customer_ref_id);
        free (kept->state);
    }
    free (self->kept);
    self->kept = NULL;
    self->kept_count = 0;
}

static char *
s_copy (const char *text)
{
    return text ? strdup (text) : NULL;
}

//  Appends text to an array literal being built in *array (*size bytes
//  so far, *room allocated) as one element: NULL, or quoted with its
//  quotes and backslashes escaped. Returns 0, or -1 when out of memory.
static int
s_array_add (char **array, size_t *size, size_t *room, const char *text)
{
    size_t length = text ? strlen (text) : 0;
    size_t need = *size + 2 * length + 8;
    if (need > *room) {
        size_t grown = *room * 2 > need ? *room * 2 : need;
        char *bigger = realloc (*array, grown);
        if (!bigger)
            return -1;
        *array = bigger;
        *room = grown;
    }
    char *at = *array + *size;
    if (*size > 1)
        *at++ = ',';
    if (!text) {
        memcpy (at, "NULL", 4);
        at += 4;
    }
    else {
        *at++ = '"';
        for (const char *c = text; *c; c++) {
            if (*c == '"' || *c == '\\')
                *at++ = '\\';
            *at++ = *c;
        }
        *at++ = '"';
    }
    *at = 0;
    *size = (size_t) (at - *array);
    return 0;
}

//  The keys' fields as four array literals, one per column of
//  STATEMENT_BATCH. Returns 0, or -1 (arrays freed) when out of memory.
static int
s_key_arrays (const casm_lookup_key_t *keys, size_t count, char *arrays [4])
{
    size_t sizes [4], rooms [4];
    int ok = 1;
    for (int column = 0; column < 4; column++) {
        rooms [column] = 64 + count * 48;
        arrays [column] = malloc (rooms [column]);
        ok = ok && arrays [column];
        if (arrays [column])
            strcpy (arrays [column], "{");
        sizes [column] = 1;
    }
    for (size_t i = 0; ok && i < count; i++) {
        const char *fields [4] = {
            keys [i].request_id, keys [i].hash, keys [i].ref_id,
            keys [i].ref_id ? NULL : keys [i].external_id
        };
        for (int column = 0; ok && column < 4; column++)
            ok = s_array_add (&arrays [column], &sizes [column],
                              &rooms [column], fields [column]) == 0;
    }
    for (int column = 0; ok && column < 4; column++) {
        //  s_array_add always leaves room for the closing brace.
        strcpy (arrays [column] + sizes [column], "}");
    }
    if (!ok)
        for (int column = 0; column < 4; column++) {
            free (arrays [column]);
            arrays [column] = NULL;
        }
    return ok ? 0 : -1;
}

//  Keeps what row of the batch's result says of its key.
static void
s_keep_row (s_kept_t *kept, const casm_lookup_key_t *key, PGresult *result,
            int row)
{
    kept->request_id = s_copy (key->request_id);
    kept->hash = s_copy (key->hash);
    kept->ref_id = s_copy (key->ref_id);
    kept->external_id = s_copy (key->external_id);
    if (!kept->request_id || !kept->hash)
        return;
    if (PQgetisnull (result, row, 2))
        kept->request = CASM_LOOKUP_NONE;
    else {
        kept->same = strcmp (PQgetvalue (result, row, 1), "t") == 0;
        kept->status = atoi (PQgetvalue (result, row, 2));
        kept->body = s_copy (PQgetvalue (result, row, 3));
        kept->request = kept->body ? CASM_LOOKUP_FOUND : S_UNKNOWN;
    }
    if (PQgetisnull (result, row, 4))
        kept->customer = CASM_LOOKUP_NONE;
    else {
        kept->customer_ref_id = s_copy (PQgetvalue (result, row, 4));
        kept->state = s_copy (PQgetvalue (result, row, 5));
        kept->customer = kept->customer_ref_id && kept->state
                       ? CASM_LOOKUP_FOUND : S_UNKNOWN;
    }
}

void
casm_lookup_prefetch (casm_lookup_t *self, const casm_lookup_key_t *keys,
                      size_t count)
{
    casm_lookup_forget (self);
    if (count == 0 || s_ready (self) != 0)
        return;
    char *arrays [4];
    if (s_key_arrays (keys, count, arrays) != 0)
        return;
    self->kept = calloc (count, sizeof *self->kept);
    if (!self->kept) {
        for (int column = 0; column < 4; column++)
            free (arrays [column]);
        return;
    }
    self->kept_count = count;
    for (size_t i = 0; i < count; i++)
        self->kept [i].request = self->kept [i].customer = S_UNKNOWN;

    //  One statement for all the keys. Should it fail, every answer stays
    //  unknown and each call queries for itself.
    const char *params [4] = { arrays [0], arrays [1], arrays [2],
                               arrays [3] };
    int sent = PQsendQueryPrepared (self->connection,
                                    s_statements [STATEMENT_BATCH].name, 4,
                                    params, NULL, NULL, 0);
    for (int column = 0; column < 4; column++)
        free (arrays [column]);
    if (!sent) {
        casm_lookup_forget (self);
        s_drop (self, PQerrorMessage (self->connection));
        return;
    }
    PGresult *result = s_wait (self);
    if (!result) {
        casm_lookup_forget (self);
        return;
    }
    if (PQresultStatus (result) == PGRES_TUPLES_OK)
        for (int row = 0; row < PQntuples (result); row++) {
            long n = atol (PQgetvalue (result, row, 0));
            if (n >= 1 && (size_t) n <= count
            &&  !self->kept [n - 1].request_id)
                s_keep_row (&self->kept [n - 1], &keys [n - 1], result, row);
        }
    else {
        //  The keys were checked before they came here, so this is a bug
        //  or a schema out of step: say so, or the validator would go on
        //  at a query per unit with nothing to show why.
        char buffer [256];
        casm_warn (NULL, json_pack ("{s:I, s:s}", "keys", (json_int_t) count,
                   "reason", s_message (PQresultErrorMessage (result),
                                        buffer, sizeof buffer)),
                   "the batch look-up failed; each unit queries alone");
    }
    PQclear (result);
}
