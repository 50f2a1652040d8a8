/*  casm_outbox: marking rows sent, the sweep, housekeeping.

    One connection, one query at a time, all asynchronous (libpq's
    nonblocking API), so a slow or absent PostgreSQL never stalls the
    publisher's loop: live requests are answered by Kafka's pace alone.
    Each query has a deadline; a connection that misses it is dropped and
    made again, which also covers a server that vanished without closing
    the socket.                                                           */

#include "casm_outbox.h"
#include "casm_log.h"
#include "casm_metrics.h"

#include <czmq.h>
#include <libpq-fe.h>
#include <string.h>

#define CONNECT_TIMEOUT_MS 2000
#define RECONNECT_MS 1000
#define QUERY_TIMEOUT_MS 10000
#define RETRY_MS 1000           // after a failed query
#define MARK_BATCH 256          // ids per UPDATE
#define MARK_DELAY_MS 20        // longest wait to fill a batch
#define UNMARKED_MAX 100000     // ids kept while PostgreSQL is away
#define SWEEP_RECHECK_MS 100
#define PURGE_MS 60000
#define PURGE_BATCH 10000
#define WARN_INTERVAL_MS 5000

#define SQL_MARK \
    "UPDATE casm.outbox SET sent_at = now () " \
    "WHERE id = ANY ($1::bigint[]) AND sent_at IS NULL"

//  TODO(#4): a row that Kafka refuses for good (a broker whose message
//  limit is below the event's size) is released and swept again for ever,
//  and 500 such rows at the head of the order would hide every row behind
//  them. They should be set aside with their error for an operator.
#define SQL_SWEEP \
    "SELECT id, transaction_id, request_id, operation, customer_ref, " \
    "payload FROM casm.outbox " \
    "WHERE sent_at IS NULL " \
    "AND created_at < now () - make_interval (secs => $1::float8) " \
    "AND id <> ALL ($3::bigint[]) " \
    "ORDER BY id LIMIT $2::int FOR UPDATE SKIP LOCKED"

//  Both halves use the partial index of unsent rows; the count stops at a
//  million, so that a long Kafka outage does not make it expensive.
#define SQL_BACKLOG \
    "SELECT (SELECT count (*) FROM (SELECT 1 FROM casm.outbox " \
    "WHERE sent_at IS NULL LIMIT 1000000) AS unsent), " \
    "COALESCE ((SELECT extract (epoch FROM now () - created_at) " \
    "FROM casm.outbox WHERE sent_at IS NULL ORDER BY id LIMIT 1), 0)"

#define SQL_PURGE \
    "DELETE FROM casm.outbox WHERE id IN (" \
    "SELECT id FROM casm.outbox WHERE sent_at IS NOT NULL " \
    "AND sent_at < now () - make_interval (secs => $1::float8) " \
    "LIMIT $2::int)"

typedef enum {
    LINK_DOWN,
    LINK_CONNECTING,
    LINK_READY
} link_t;

typedef enum {
    OP_NONE,
    OP_MARK,
    OP_SWEEP_BEGIN,
    OP_SWEEP_SELECT,
    OP_SWEEP_END,
    OP_PURGE,
    OP_BACKLOG
} op_t;

//  A set of int64 ids: open addressing, linear probing, deletion by
//  shifting back, so there are no tombstones. Id 0 marks an empty slot
//  (outbox ids start at 1).
typedef struct {
    int64_t *slots;
    size_t size;                // a power of two
    size_t count;
} id_set_t;

struct casm_outbox_t {
    char *database_url;
    int sweep_ms;
    int sweep_age_ms;
    int retention_s;
    int backlog_ms;
    casm_outbox_row_fn *swept;
    void *arg;

    PGconn *connection;
    link_t link;
    int was_up;                 // for the down/up warnings
    PostgresPollingStatusType connect_status;
    int64_t connect_deadline;
    int64_t next_connect;

    op_t op;
    PGresult *result;           // the running query's first result
    int flushing;               // the query is not all written yet
    int64_t op_deadline;

    id_set_t claimed;
    int64_t *unmarked;          // delivered, waiting to be marked
    int unmarked_count;
    int unmarked_capacity;
    int64_t first_unmarked_at;
    int64_t batch [MARK_BATCH]; // the ids of the running UPDATE
    int batch_count;
    int64_t next_mark;

    int64_t next_sweep;
    int sweep_limit;
    int64_t next_purge;
    int64_t next_backlog;

    int64_t next_warn;
    int warns_suppressed;
    int64_t next_drop_warn;
    int drops_suppressed;
};


static size_t
s_id_hash (int64_t id, size_t size)
{
    uint64_t x = (uint64_t) id * 0x9E3779B97F4A7C15ULL;
    return (size_t) (x >> 32) & (size - 1);
}


static int
s_id_set_grow (id_set_t *set)
{
    size_t size = set->size ? set->size * 2 : 1024;
    int64_t *slots = calloc (size, sizeof *slots);
    if (!slots)
        return -1;

    for (size_t i = 0; i < set->size; i++) {
        int64_t id = set->slots [i];
        if (!id)
            continue;
        size_t at = s_id_hash (id, size);
        while (slots [at])
            at = (at + 1) & (size - 1);
        slots [at] = id;
    }
    free (set->slots);
    set->slots = slots;
    set->size = size;
    return 0;
}


//  Returns 1 when added, 0 when present, -1 when memory ran out.
static int
s_id_set_add (id_set_t *set, int64_t id)
{
    if ((set->count + 1) * 2 > set->size && s_id_set_grow (set))
        return -1;

    size_t at = s_id_hash (id, set->size);
    while (set->slots [at]) {
        if (set->slots [at] == id)
            return 0;
        at = (at + 1) & (set->size - 1);
    }
    set->slots [at] = id;
    set->count++;
    return 1;
}


static void
s_id_set_remove (id_set_t *set, int64_t id)
{
    if (!set->size)
        return;

    size_t mask = set->size - 1;
    size_t at = s_id_hash (id, set->size);
    while (set->slots [at] != id) {
        if (!set->slots [at])
            return;
        at = (at + 1) & mask;
    }

    //  Shift later members of the probe run back into the hole, so that
    //  lookups never stop early at it.
    size_t hole = at;
    size_t next = (hole + 1) & mask;
    while (set->slots [next]) {
        size_t home = s_id_hash (set->slots [next], set->size);
        if (((next - home) & mask) >= ((next - hole) & mask)) {
            set->slots [hole] = set->slots [next];
            hole = next;
        }
        next = (next + 1) & mask;
    }
    set->slots [hole] = 0;
    set->count--;
}


//  A warning that may repeat every few hundred milliseconds while a
//  dependency is away is written at most every WARN_INTERVAL_MS.
static void
s_warn_limited (casm_outbox_t *self, const char *what, const char *detail)
{
    int64_t now = zclock_mono ();
    if (now < self->next_warn) {
        self->warns_suppressed++;
        return;
    }
    casm_warn (NULL, json_pack ("{s:s,s:i}", "error", detail ? detail : "",
                                "suppressed", self->warns_suppressed),
               "outbox: %s", what);
    self->warns_suppressed = 0;
    self->next_warn = now + WARN_INTERVAL_MS;
}


static void
s_on_notice (void *arg, const char *message)
{
    casm_debug (NULL, NULL, "postgres: %s", message);
}


casm_outbox_t *
casm_outbox_new (const casm_outbox_config_t *config)
{
    assert (config->database_url && config->swept);
    casm_outbox_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;

    self->database_url = strdup (config->database_url);
    self->sweep_ms = config->sweep_ms;
    self->sweep_age_ms = config->sweep_age_ms;
    self->retention_s = config->retention_s;
    self->backlog_ms = config->backlog_ms;
    self->swept = config->swept;
    self->arg = config->arg;
    self->link = LINK_DOWN;
    self->was_up = -1;

    int64_t now = zclock_mono ();
    self->next_connect = now;
    self->next_sweep = now;
    self->next_purge = now + 5000;
    self->next_backlog = now;
    if (!self->database_url || s_id_set_grow (&self->claimed)) {
        casm_outbox_destroy (&self);
        return NULL;
    }
    return self;
}


void
casm_outbox_destroy (casm_outbox_t **self_p)
{
    casm_outbox_t *self = *self_p;
    if (!self)
        return;

    PQclear (self->result);
    if (self->connection)
        PQfinish (self->connection);
    free (self->claimed.slots);
    free (self->unmarked);
    free (self->database_url);
    free (self);
    *self_p = NULL;
}


int
casm_outbox_claim (casm_outbox_t *self, int64_t id)
{
    //  Out of memory, the row is treated as someone else's: it stays
    //  unsent and a later sweep sends it.
    return s_id_set_add (&self->claimed, id) == 1 ? 0 : -1;
}


void
casm_outbox_release (casm_outbox_t *self, int64_t id)
{
    s_id_set_remove (&self->claimed, id);
}


//  Keeps id for marking. Returns -1 when the bound is reached.
static int
s_unmarked_push (casm_outbox_t *self, int64_t id)
{
    if (self->unmarked_count == self->unmarked_capacity) {
        if (self->unmarked_capacity >= UNMARKED_MAX)
            return -1;
        int capacity = self->unmarked_capacity ? self->unmarked_capacity * 2
                                               : 1024;
        if (capacity > UNMARKED_MAX)
            capacity = UNMARKED_MAX;
        int64_t *grown = realloc (self->unmarked,
                                  capacity * sizeof *grown);
        if (!grown)
            return -1;
        self->unmarked = grown;
        self->unmarked_capacity = capacity;
    }
    if (self->unmarked_count == 0)
        self->first_unmarked_at = zclock_mono ();
    self->unmarked [self->unmarked_count++] = id;
    return 0;
}


void
casm_outbox_delivered (casm_outbox_t *self, int64_t id)
{
    if (s_unmarked_push (self, id) == 0)
        return;

    //  The row stays unsent: the sweep publishes it once more, and the
    //  consumers drop the duplicate by its transaction id.
    s_id_set_remove (&self->claimed, id);
    int64_t now = zclock_mono ();
    if (now < self->next_drop_warn) {
        self->drops_suppressed++;
        return;
    }
    casm_warn (NULL, json_pack ("{s:I,s:i}", "outboxId", (json_int_t) id,
                                "suppressed", self->drops_suppressed),
               "outbox: too many rows waiting to be marked sent; "
               "this one will be published again");
    self->drops_suppressed = 0;
    self->next_drop_warn = now + WARN_INTERVAL_MS;
}


int
casm_outbox_unmarked (casm_outbox_t *self)
{
    return self->unmarked_count + self->batch_count;
}


int
casm_outbox_claimed (casm_outbox_t *self)
{
    return (int) self->claimed.count;
}


int
casm_outbox_busy (casm_outbox_t *self)
{
    return self->op != OP_NONE;
}


int
casm_outbox_connected (casm_outbox_t *self)
{
    return self->link == LINK_READY;
}


//  The running UPDATE's ids go back to wait for the next one.
static void
s_batch_return (casm_outbox_t *self)
{
    for (int i = 0; i < self->batch_count; i++)
        if (s_unmarked_push (self, self->batch [i]))
            s_id_set_remove (&self->claimed, self->batch [i]);
    self->batch_count = 0;
}


static void
s_disconnect (casm_outbox_t *self, const char *why)
{
    const char *detail = self->connection
                       ? PQerrorMessage (self->connection) : NULL;
    if (self->was_up == 1)
        casm_warn (NULL, json_pack ("{s:s}", "error", detail ? detail : ""),
                   "postgres is down: %s; marking and sweeping wait", why);
    else
        s_warn_limited (self, why, detail);
    self->was_up = 0;

    if (self->op == OP_MARK)
        s_batch_return (self);
    self->op = OP_NONE;
    PQclear (self->result);
    self->result = NULL;
    self->flushing = 0;
    if (self->connection)
        PQfinish (self->connection);
    self->connection = NULL;
    self->link = LINK_DOWN;
    self->next_connect = zclock_mono () + RECONNECT_MS;
}


static void
s_connect_start (casm_outbox_t *self)
{
    //  connect_timeout bounds what libpq does on its own; our deadline
    //  bounds the whole asynchronous handshake.
    const char *keywords [] = {
        "dbname", "connect_timeout", "fallback_application_name", NULL
    };
    const char *values [] = {
        self->database_url, "2", "casm-publisher", NULL
    };
    self->connection = PQconnectStartParams (keywords, values, 1);
    if (!self->connection
    ||  PQstatus (self->connection) == CONNECTION_BAD) {
        s_disconnect (self, "cannot connect to postgres");
        return;
    }
    PQsetNoticeProcessor (self->connection, s_on_notice, NULL);
    self->link = LINK_CONNECTING;
    self->connect_status = PGRES_POLLING_WRITING;
    self->connect_deadline = zclock_mono () + CONNECT_TIMEOUT_MS;
}


static void
s_connect_continue (casm_outbox_t *self)
{
    self->connect_status = PQconnectPoll (self->connection);
    if (self->connect_status == PGRES_POLLING_FAILED) {
        s_disconnect (self, "cannot connect to postgres");
        return;
    }
    if (self->connect_status != PGRES_POLLING_OK)
        return;

    if (PQsetnonblocking (self->connection, 1) != 0) {
        s_disconnect (self, "cannot make the connection nonblocking");
        return;
    }
    self->link = LINK_READY;
    if (self->was_up == 0)
        casm_warn (NULL, NULL, "postgres is up again");
    else
        casm_info (NULL, NULL, "connected to postgres");
    self->was_up = 1;
    self->next_warn = 0;
}


//  Sends one query with text parameters. Returns 0, or -1 when the
//  connection failed (and is dropped).
static int
s_send (casm_outbox_t *self, op_t op, const char *sql, int count,
        const char *const *values)
{
    //  The op is set first, so that a failure gives a batch back.
    self->op = op;
    self->op_deadline = zclock_mono () + QUERY_TIMEOUT_MS;
    if (!PQsendQueryParams (self->connection, sql, count, NULL, values,
                            NULL, NULL, 0)) {
        s_disconnect (self, "cannot send a query");
        return -1;
    }
    int flushed = PQflush (self->connection);
    if (flushed < 0) {
        s_disconnect (self, "cannot send a query");
        return -1;
    }
    self->flushing = flushed == 1;
    return 0;
}


static void
s_mark_start (casm_outbox_t *self)
{
    //  A PostgreSQL array literal of the ids: {1,2,3}.
    char text [MARK_BATCH * 21 + 3];
    size_t at = 0;
    text [at++] = '{';
    self->batch_count = 0;
    while (self->unmarked_count > 0 && self->batch_count < MARK_BATCH) {
        int64_t id = self->unmarked [--self->unmarked_count];
        self->batch [self->batch_count++] = id;
        at += snprintf (text + at, sizeof text - at, "%s%lld",
                        self->batch_count > 1 ? "," : "", (long long) id);
    }
    text [at++] = '}';
    text [at] = 0;
    if (self->unmarked_count > 0)
        self->first_unmarked_at = zclock_mono () - MARK_DELAY_MS;

    const char *values [] = { text };
    s_send (self, OP_MARK, SQL_MARK, 1, values);
}


static void
s_mark_done (casm_outbox_t *self, PGresult *result)
{
    if (PQresultStatus (result) != PGRES_COMMAND_OK) {
        s_warn_limited (self, "cannot mark events sent",
                        PQresultErrorMessage (result));
        s_batch_return (self);
        self->next_mark = zclock_mono () + RETRY_MS;
        return;
    }
    for (int i = 0; i < self->batch_count; i++)
        s_id_set_remove (&self->claimed, self->batch [i]);
    self->batch_count = 0;
}


static void
s_sweep_rows (casm_outbox_t *self, PGresult *result)
{
    int rows = PQntuples (result);
    for (int row = 0; row < rows; row++) {
        int64_t id = strtoll (PQgetvalue (result, row, 0), NULL, 10);
        casm_event_t event;
        if (casm_event_set (&event, id, PQgetvalue (result, row, 1),
                            PQgetvalue (result, row, 2),
                            PQgetvalue (result, row, 3),
                            PQgetvalue (result, row, 4),
                            PQgetvalue (result, row, 5),
                            (size_t) PQgetlength (result, row, 5))) {
            casm_error (PQgetvalue (result, row, 2),
                        json_pack ("{s:I}", "outboxId", (json_int_t) id),
                        "outbox: cannot publish a malformed row");
            continue;
        }
        if (casm_outbox_claim (self, id))
            continue;
        if (self->swept (self->arg, &event))
            casm_outbox_release (self, id);
    }
    if (rows > 0)
        casm_debug (NULL, json_pack ("{s:i}", "rows", rows),
                    "outbox: swept");

    //  A full batch means more rows wait: come back soon.
    if (rows >= self->sweep_limit)
        self->next_sweep = zclock_mono () + 50;
}


//  The claimed ids as a PostgreSQL array literal, {1,2,3}: the sweep
//  leaves out the rows this process is publishing already, or it would
//  fetch them again and again while Kafka is slow, and a batch full of
//  them would hide the rows behind. The caller frees it; NULL when memory
//  runs out.
static char *
s_claimed_text (casm_outbox_t *self)
{
    id_set_t *set = &self->claimed;
    char *text = malloc (set->count * 21 + 3);
    if (!text)
        return NULL;

    size_t at = 0;
    text [at++] = '{';
    for (size_t i = 0; i < set->size; i++)
        if (set->slots [i])
            at += (size_t) sprintf (text + at, at > 1 ? ",%lld" : "%lld",
                                    (long long) set->slots [i]);
    text [at++] = '}';
    text [at] = 0;
    return text;
}


static void
s_sweep_start (casm_outbox_t *self, int limit)
{
    self->sweep_limit = limit;
    self->next_sweep = zclock_mono () + self->sweep_ms;
    s_send (self, OP_SWEEP_BEGIN, "BEGIN", 0, NULL);
}


//  The next step of the sweep's transaction, after step op ended with
//  result.
static void
s_sweep_next (casm_outbox_t *self, op_t op, PGresult *result)
{
    ExecStatusType status = PQresultStatus (result);
    if (op == OP_SWEEP_BEGIN) {
        if (status != PGRES_COMMAND_OK) {
            s_warn_limited (self, "cannot begin the sweep",
                            PQresultErrorMessage (result));
            return;
        }
        char age [32], limit [16];
        snprintf (age, sizeof age, "%.3f", self->sweep_age_ms / 1000.0);
        snprintf (limit, sizeof limit, "%d", self->sweep_limit);
        char *claimed = s_claimed_text (self);
        if (!claimed) {
            s_send (self, OP_SWEEP_END, "ROLLBACK", 0, NULL);
            return;
        }
        const char *values [] = { age, limit, claimed };
        s_send (self, OP_SWEEP_SELECT, SQL_SWEEP, 3, values);
        free (claimed);
    }
    else
    if (op == OP_SWEEP_SELECT) {
        //  The rows are queued in librdkafka before the commit, and the
        //  commit follows at once: no lock waits for Kafka.
        if (status == PGRES_TUPLES_OK)
            s_sweep_rows (self, result);
        else
            s_warn_limited (self, "cannot sweep",
                            PQresultErrorMessage (result));
        s_send (self, OP_SWEEP_END,
                status == PGRES_TUPLES_OK ? "COMMIT" : "ROLLBACK", 0, NULL);
    }
    else
    if (status != PGRES_COMMAND_OK)
        s_warn_limited (self, "cannot end the sweep",
                        PQresultErrorMessage (result));
}


static void
s_purge_start (casm_outbox_t *self)
{
    char age [32], limit [16];
    snprintf (age, sizeof age, "%d", self->retention_s);
    snprintf (limit, sizeof limit, "%d", PURGE_BATCH);
    const char *values [] = { age, limit };
    self->next_purge = zclock_mono () + PURGE_MS;
    s_send (self, OP_PURGE, SQL_PURGE, 2, values);
}


static void
s_purge_done (casm_outbox_t *self, PGresult *result)
{
    if (PQresultStatus (result) != PGRES_COMMAND_OK) {
        s_warn_limited (self, "cannot delete old rows",
                        PQresultErrorMessage (result));
        return;
    }
    int deleted = atoi (PQcmdTuples (result));
    if (deleted > 0)
        casm_debug (NULL, json_pack ("{s:i}", "rows", deleted),
                    "outbox: deleted sent rows");
    if (deleted >= PURGE_BATCH)
        self->next_purge = zclock_mono () + 1000;
}


static void
s_backlog_start (casm_outbox_t *self)
{
    self->next_backlog = zclock_mono () + self->backlog_ms;
    s_send (self, OP_BACKLOG, SQL_BACKLOG, 0, NULL);
}


static void
s_backlog_done (casm_outbox_t *self, PGresult *result)
{
    if (PQresultStatus (result) != PGRES_TUPLES_OK
    ||  PQntuples (result) != 1) {
        s_warn_limited (self, "cannot measure the backlog",
                        PQresultErrorMessage (result));
        return;
    }
    casm_metrics_outbox (strtod (PQgetvalue (result, 0, 0), NULL),
                         strtod (PQgetvalue (result, 0, 1), NULL));
}


//  The running query has all its results: act on them. The sweep's
//  handler may send the next query of its transaction, so the op is
//  cleared first.
static void
s_op_done (casm_outbox_t *self)
{
    op_t op = self->op;
    PGresult *result = self->result;
    self->result = NULL;
    self->op = OP_NONE;
    if (!result) {
        s_disconnect (self, "query ended without a result");
        return;
    }

    if (op == OP_MARK)
        s_mark_done (self, result);
    else
    if (op == OP_PURGE)
        s_purge_done (self, result);
    else
    if (op == OP_BACKLOG)
        s_backlog_done (self, result);
    else
        s_sweep_next (self, op, result);
    PQclear (result);
}


void
casm_outbox_serve (casm_outbox_t *self)
{
    if (self->link == LINK_CONNECTING) {
        s_connect_continue (self);
        return;
    }
    if (self->link != LINK_READY || self->op == OP_NONE)
        return;

    if (self->flushing) {
        int flushed = PQflush (self->connection);
        if (flushed < 0) {
            s_disconnect (self, "cannot send a query");
            return;
        }
        self->flushing = flushed == 1;
    }
    if (!PQconsumeInput (self->connection)) {
        s_disconnect (self, "lost the postgres connection");
        return;
    }
    while (self->op != OP_NONE && !PQisBusy (self->connection)) {
        PGresult *result = PQgetResult (self->connection);
        if (result) {
            if (self->result)
                PQclear (result);
            else
                self->result = result;
            continue;
        }
        s_op_done (self);
    }
}


void
casm_outbox_tick (casm_outbox_t *self, int sweep_limit)
{
    int64_t now = zclock_mono ();
    if (self->link == LINK_DOWN) {
        if (now >= self->next_connect)
            s_connect_start (self);
        return;
    }
    if (self->link == LINK_CONNECTING) {
        if (now >= self->connect_deadline)
            s_disconnect (self, "postgres did not answer in time");
        return;
    }
    if (self->op != OP_NONE) {
        if (now >= self->op_deadline)
            s_disconnect (self, "postgres did not answer in time");
        else
        if (PQstatus (self->connection) == CONNECTION_BAD)
            s_disconnect (self, "lost the postgres connection");
        return;
    }

    //  A sweep that cannot send now (too much of the last one is still
    //  in flight, or a drain) is skipped and looked at again shortly.
    if (sweep_limit <= 0 && now >= self->next_sweep)
        self->next_sweep = now + SWEEP_RECHECK_MS;

    //  Marking first: it frees memory and keeps the sweep from sending
    //  delivered rows again.
    if (self->unmarked_count > 0 && now >= self->next_mark
    &&  (self->unmarked_count >= MARK_BATCH
    ||   now - self->first_unmarked_at >= MARK_DELAY_MS))
        s_mark_start (self);
    else
    if (sweep_limit > 0 && now >= self->next_sweep)
        s_sweep_start (self, sweep_limit);
    else
    if (now >= self->next_purge)
        s_purge_start (self);
    else
    if (self->backlog_ms && now >= self->next_backlog)
        s_backlog_start (self);
}


int
casm_outbox_socket (casm_outbox_t *self, short *events)
{
    *events = 0;
    if (self->link == LINK_CONNECTING)
        *events = self->connect_status == PGRES_POLLING_READING
                ? ZMQ_POLLIN : ZMQ_POLLOUT;
    else
    if (self->link == LINK_READY && self->op != OP_NONE)
        *events = ZMQ_POLLIN | (self->flushing ? ZMQ_POLLOUT : 0);
    if (!*events)
        return -1;
    return PQsocket (self->connection);
}


int
casm_outbox_wait_ms (casm_outbox_t *self, int max_ms)
{
    int64_t now = zclock_mono ();
    int64_t due = now + max_ms;
    if (self->link == LINK_DOWN)
        due = self->next_connect;
    else
    if (self->link == LINK_CONNECTING)
        due = self->connect_deadline;
    else
    if (self->op != OP_NONE)
        due = self->op_deadline;
    else {
        if (self->unmarked_count > 0) {
            int64_t mark = self->unmarked_count >= MARK_BATCH
                         ? now : self->first_unmarked_at + MARK_DELAY_MS;
            if (mark < self->next_mark)
                mark = self->next_mark;
            if (mark < due)
                due = mark;
        }
        if (self->next_sweep < due)
            due = self->next_sweep;
        if (self->next_purge < due)
            due = self->next_purge;
        if (self->backlog_ms && self->next_backlog < due)
            due = self->next_backlog;
    }
    if (due > now + max_ms)
        due = now + max_ms;
    return due > now ? (int) (due - now) : 0;
}
