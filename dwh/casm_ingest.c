/*  casm_ingest: a batch of Kafka messages into the warehouse in one
    transaction. See casm_ingest.h.

    The batch travels as three JSON parameters of one prepared statement:
    the valid events (with the raw value embedded as it came, already
    checked to be JSON), the dead letters (raw bytes as hex) and the last
    offset per partition. The statement's data-modifying CTEs insert the
    history, count the new transactions, move the current customers forward
    and bring their attribute rows in line, in one round trip and one
    implicit transaction. Every value that the statement casts (uuid,
    bigint, timestamptz) is checked here first, so PostgreSQL refusing a
    batch is the exception; when it happens anyway the batch is stored
    message by message and the refused one becomes a dead letter.           */

#include "casm_ingest.h"
#include "casm_log.h"
#include "casm_migrate_set.h"

#include <assert.h>
#include <jansson.h>
#include <libpq-fe.h>
#include <poll.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

//  The advisory lock of the warehouse migrations (casm's own is 7243551).
#define MIGRATION_LOCK 7243552

#define STATEMENT "casm_dwh_batch"
#define REASON_MAX 240
#define REQUEST_ID_MAX 256

//  The batch statement. $1 events, $2 dead letters, $3 partition status
//  (JSON arrays), $4 the topic. Rows are sorted where they take row locks,
//  so that two writers never deadlock (writers of different partitions
//  share no rows; during a rebalance two may briefly have the same one).
static const char s_batch_sql [] =
    "WITH batch AS MATERIALIZED ("
    " SELECT * FROM jsonb_to_recordset ($1::jsonb) AS b ("
    "  tx uuid, op text, rq text, ref uuid, ver bigint,"
    "  p integer, o bigint, ev jsonb)),"
    "history AS ("
    " INSERT INTO dwh.business_transactions"
    "  (transaction_id, operation, request_id, ref_id, version,"
    "   event_time, event, kafka_partition, kafka_offset)"
    " SELECT tx, op, rq, ref, ver, (ev ->> 'modifiedAt')::timestamptz,"
    "  ev, p, o FROM batch"
    " ON CONFLICT (transaction_id) DO NOTHING"
    " RETURNING operation, event_time, kafka_partition),"
    "metrics AS ("
    " INSERT INTO dwh.metrics_daily_partition AS m"
    "  (day, operation, kafka_partition, count)"
    " SELECT (coalesce (event_time, now ()) AT TIME ZONE 'UTC')::date,"
    "  operation, kafka_partition, count (*) FROM history"
    " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
    " ON CONFLICT (day, operation, kafka_partition)"
    " DO UPDATE SET count = m.count + EXCLUDED.count),"
    "newest AS ("
    " SELECT DISTINCT ON (ref) * FROM batch ORDER BY ref, ver DESC),"
    //  The current rows as they were before this statement (every CTE
    //  sees the same snapshot): the attribute rows hold exactly their
    //  sets, so only the difference to the new sets is written.
    "old AS ("
    " SELECT c.ref_id, c.custom_attributes FROM dwh.customers c"
    " WHERE c.ref_id = ANY (ARRAY (SELECT ref FROM newest))),"
    "moved AS ("
    " INSERT INTO dwh.customers AS c"
    "  (ref_id, external_id, custom_name, customer_segment, state,"
    "   state_reason, state_valid_from, test_customer, custom_attributes,"
    "   version, created_at, modified_at, transaction_id, ingested_at)"
    " SELECT ref, ev ->> 'externalId', ev ->> 'customName',"
    "  ev ->> 'customerSegment', ev #>> '{state,state}',"
    "  ev #>> '{state,stateReason}',"
    "  (ev #>> '{state,stateValidFrom}')::timestamptz,"
    "  CASE WHEN jsonb_typeof (ev -> 'testCustomer') = 'boolean'"
    "   THEN (ev ->> 'testCustomer')::boolean END,"
    "  CASE WHEN jsonb_typeof (ev -> 'customAttributes') = 'object'"
    "   THEN ev -> 'customAttributes' ELSE '{}'::jsonb END,"
    "  ver, (ev ->> 'createdAt')::timestamptz,"
    "  (ev ->> 'modifiedAt')::timestamptz, tx, now ()"
    " FROM newest ORDER BY ref"
    " ON CONFLICT (ref_id) DO UPDATE SET"
    "  external_id = EXCLUDED.external_id,"
    "  custom_name = EXCLUDED.custom_name,"
    "  customer_segment = EXCLUDED.customer_segment,"
    "  state = EXCLUDED.state, state_reason = EXCLUDED.state_reason,"
    "  state_valid_from = EXCLUDED.state_valid_from,"
    "  test_customer = EXCLUDED.test_customer,"
    "  custom_attributes = EXCLUDED.custom_attributes,"
    "  version = EXCLUDED.version, created_at = EXCLUDED.created_at,"
    "  modified_at = EXCLUDED.modified_at,"
    "  transaction_id = EXCLUDED.transaction_id,"
    "  ingested_at = EXCLUDED.ingested_at"
    " WHERE c.version < EXCLUDED.version"
    " RETURNING c.ref_id, c.custom_attributes),"
    "gone_keys AS ("
    " SELECT m.ref_id, k.key FROM moved m JOIN old o USING (ref_id),"
    "  jsonb_object_keys (o.custom_attributes) AS k (key)"
    " WHERE NOT m.custom_attributes ? k.key),"
    //  = ANY (ARRAY (...)) keeps the planner on the primary key, whatever
    //  it guesses of the CTE's size.
    "gone AS ("
    " DELETE FROM dwh.custom_attributes a"
    " WHERE a.ref_id = ANY (ARRAY (SELECT ref_id FROM gone_keys))"
    "  AND (a.ref_id, a.key) IN (SELECT ref_id, key FROM gone_keys)),"
    //  Pairs that are new or changed: the rows that exist are updated
    //  (a plain update costs less than an upsert that finds its row), the
    //  others inserted; the upsert stays as a safety net.
    "changed AS ("
    " SELECT m.ref_id, kv.key, kv.value #>> '{}' AS value"
    " FROM moved m LEFT JOIN old o USING (ref_id),"
    "  jsonb_each (m.custom_attributes) AS kv"
    " WHERE o.ref_id IS NULL OR NOT o.custom_attributes ? kv.key"
    "  OR o.custom_attributes -> kv.key IS DISTINCT FROM kv.value),"
    "updated AS ("
    " UPDATE dwh.custom_attributes a SET value = c.value FROM changed c"
    " WHERE a.ref_id = ANY (ARRAY (SELECT ref_id FROM changed))"
    "  AND a.ref_id = c.ref_id AND a.key = c.key"
    " RETURNING a.ref_id, a.key),"
    "attributes AS ("
    " INSERT INTO dwh.custom_attributes AS a (ref_id, key, value)"
    " SELECT c.ref_id, c.key, c.value"
    " FROM changed c LEFT JOIN updated u USING (ref_id, key)"
    " WHERE u.ref_id IS NULL ORDER BY 1, 2"
    " ON CONFLICT (ref_id, key) DO UPDATE SET value = EXCLUDED.value),"
    "status AS ("
    " INSERT INTO dwh.ingest_status AS s"
    "  (topic, kafka_partition, last_offset, last_event_time, ingested_at)"
    " SELECT $4, p, o, t, now ()"
    " FROM json_to_recordset ($3::json)"
    "  AS x (p integer, o bigint, t timestamptz) ORDER BY p"
    " ON CONFLICT (topic, kafka_partition) DO UPDATE SET"
    "  last_offset = EXCLUDED.last_offset,"
    "  last_event_time = coalesce (EXCLUDED.last_event_time,"
    "                              s.last_event_time),"
    "  ingested_at = EXCLUDED.ingested_at),"
    "dead AS ("
    " INSERT INTO dwh.dead_letters"
    "  (topic, kafka_partition, kafka_offset, key, value, headers, reason)"
    " SELECT $4, p, o, decode (k, 'hex'), decode (v, 'hex'), h, r"
    " FROM json_to_recordset ($2::json)"
    "  AS x (p integer, o bigint, k text, v text, h text, r text)"
    " ON CONFLICT (topic, kafka_partition, kafka_offset) DO NOTHING"
    " RETURNING 1)"
    "SELECT (SELECT count (*) FROM history),"
    " (SELECT count (*) FROM moved), (SELECT count (*) FROM dead)";

static const char *s_operations [] = {
    "createCustomer", "updateCustomerCustomAttributes",
    "updateCustomerState", NULL
};

//  A growing byte buffer; failed is set when memory ran out.
typedef struct {
    char *data;
    size_t size;
    size_t max;
    int failed;
} s_buffer_t;

//  The last offset of one partition in the batch, and the modifiedAt of
//  the valid event there when it is one.
typedef struct {
    int32_t partition;
    int64_t offset;
    char event_time [40];
} s_partition_t;

//  A dead letter of the batch, logged once the batch is committed.
typedef struct {
    int32_t partition;
    int64_t offset;
    char reason [REASON_MAX];
} s_dead_t;

//  What the checks found in a valid event.
typedef struct {
    const char *transaction_id;         // header, 36 bytes, not terminated
    const char *operation;              // one of s_operations
    const char *request_id;             // header, not terminated
    size_t request_id_size;
    const char *ref_id;                 // from the value
    json_int_t version;
    const char *modified_at;            // NULL when absent
} s_event_t;

struct casm_ingest_t {
    char *database_url;
    char *topic;
    PGconn *connection;
    s_buffer_t events;
    s_buffer_t dead;
    s_buffer_t status;
    size_t event_count;
    size_t dead_count;
    s_partition_t *partitions;
    size_t partition_count;
    size_t partition_max;
    s_dead_t *dead_letters;             // as many as the batch has messages
    size_t dead_letter_max;
    char error [REASON_MAX];            // PostgreSQL's last refusal
    const casm_ingest_message_t *flight;   // the batch PostgreSQL has
    size_t flight_count;
    int64_t sent_at;                    // microseconds, monotonic
};


//  ---------------------------------------------------------------------
//  Buffers

static void
s_put (s_buffer_t *self, const void *data, size_t size)
{
    if (self->failed)
        return;
    if (self->size + size + 1 > self->max) {
        size_t max = self->max ? self->max : 65536;
        while (self->size + size + 1 > max)
            max *= 2;
        char *data_new = realloc (self->data, max);
        if (!data_new) {
            self->failed = 1;
            return;
        }
        self->data = data_new;
        self->max = max;
    }
    memcpy (self->data + self->size, data, size);
    self->size += size;
    self->data [self->size] = 0;
}

static void
s_puts (s_buffer_t *self, const char *text)
{
    s_put (self, text, strlen (text));
}

static void
s_put_int (s_buffer_t *self, int64_t number)
{
    char text [24];
    int size = snprintf (text, sizeof text, "%" PRId64, number);
    s_put (self, text, (size_t) size);
}

//  Appends bytes as a JSON string. The bytes are valid UTF-8 (checked by
//  the caller); quotes, backslashes and control characters are escaped.
static void
s_put_json_string (s_buffer_t *self, const char *text, size_t size)
{
    s_put (self, "\"", 1);
    size_t start = 0;
    for (size_t i = 0; i < size; i++) {
        unsigned char c = (unsigned char) text [i];
        if (c != '"' && c != '\\' && c >= 0x20)
            continue;
        s_put (self, text + start, i - start);
        char escape [8];
        if (c == '"' || c == '\\')
            snprintf (escape, sizeof escape, "\\%c", c);
        else
            snprintf (escape, sizeof escape, "\\u%04x", c);
        s_puts (self, escape);
        start = i + 1;
    }
    s_put (self, text + start, size - start);
    s_put (self, "\"", 1);
}

//  Appends bytes as a JSON string of lower-case hex, or null.
static void
s_put_hex (s_buffer_t *self, const void *data, size_t size)
{
    if (!data) {
        s_puts (self, "null");
        return;
    }
    static const char digits [] = "0123456789abcdef";
    const unsigned char *bytes = data;
    char chunk [128];
    size_t used = 0;
    s_put (self, "\"", 1);
    for (size_t i = 0; i < size; i++) {
        chunk [used++] = digits [bytes [i] >> 4];
        chunk [used++] = digits [bytes [i] & 15];
        if (used == sizeof chunk) {
            s_put (self, chunk, used);
            used = 0;
        }
    }
    s_put (self, chunk, used);
    s_put (self, "\"", 1);
}

static void
s_reset (s_buffer_t *self)
{
    self->size = 0;
    self->failed = 0;
    s_put (self, "[", 1);
}


//  ---------------------------------------------------------------------
//  Checks

//  The last header of this name, or NULL.
static const casm_ingest_header_t *
s_header (const casm_ingest_message_t *message, const char *name)
{
    const casm_ingest_header_t *found = NULL;
    for (size_t i = 0; i < message->header_count; i++)
        if (strcmp (message->headers [i].name, name) == 0)
            found = &message->headers [i];
    return found;
}

//  True for the 8-4-4-4-12 hex form that PostgreSQL's uuid takes.
static int
s_uuid_valid (const char *text, size_t size)
{
    if (size != 36)
        return 0;
    for (size_t i = 0; i < size; i++) {
        char c = text [i];
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (c != '-')
                return 0;
        }
        else
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')
        ||    (c >= 'A' && c <= 'F')))
            return 0;
    }
    return 1;
}

//  Reads count digits at text; -1 when one is not a digit.
static int
s_digits (const char *text, int count)
{
    int value = 0;
    for (int i = 0; i < count; i++) {
        if (text [i] < '0' || text [i] > '9')
            return -1;
        value = value * 10 + text [i] - '0';
    }
    return value;
}

//  True for an RFC 3339 date-time that PostgreSQL's timestamptz takes:
//  YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM), with real dates.
static int
s_timestamp_valid (const char *text)
{
    static const int days [] = { 31, 29, 31, 30, 31, 30, 31, 31, 30, 31,
                                 30, 31 };
    size_t size = strlen (text);
    if (size < 20 || size > 35)
        return 0;
    int year = s_digits (text, 4);
    int month = s_digits (text + 5, 2);
    int day = s_digits (text + 8, 2);
    int hour = s_digits (text + 11, 2);
    int minute = s_digits (text + 14, 2);
    int second = s_digits (text + 17, 2);
    if (text [4] != '-' || text [7] != '-' || text [13] != ':'
    ||  text [16] != ':' || (text [10] != 'T' && text [10] != 't'))
        return 0;
    if (year < 1 || month < 1 || month > 12 || day < 1
    ||  day > days [month - 1] || hour < 0 || hour > 23 || minute < 0
    ||  minute > 59 || second < 0 || second > 60)
        return 0;
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    if (month == 2 && day == 29 && !leap)
        return 0;

    const char *rest = text + 19;
    if (*rest == '.') {
        rest++;
        int fraction = 0;
        while (*rest >= '0' && *rest <= '9') {
            rest++;
            fraction++;
        }
        if (fraction < 1 || fraction > 9)
            return 0;
    }
    if ((*rest == 'Z' || *rest == 'z') && rest [1] == 0)
        return 1;
    if ((*rest == '+' || *rest == '-') && strlen (rest) == 6
    &&  rest [3] == ':') {
        int offset_hour = s_digits (rest + 1, 2);
        int offset_minute = s_digits (rest + 4, 2);
        return offset_hour >= 0 && offset_hour <= 15
               && offset_minute >= 0 && offset_minute <= 59;
    }
    return 0;
}

//  True when the bytes are valid UTF-8 without control characters.
static int
s_text_valid (const void *data, size_t size)
{
    const unsigned char *bytes = data;
    for (size_t i = 0; i < size; i++)
        if (bytes [i] < 0x20 || bytes [i] == 0x7f)
            return 0;
    json_t *string = json_stringn (data, size);
    json_decref (string);
    return string != NULL;
}

//  A timestamp field of object: absent or null is fine, else it must be a
//  valid timestamp. Returns the text (NULL when absent) through *text_p.
static int
s_timestamp_field (json_t *object, const char *name, const char **text_p)
{
    json_t *value = json_is_object (object)
                    ? json_object_get (object, name) : NULL;
    *text_p = NULL;
    if (!value || json_is_null (value))
        return 0;
    if (!json_is_string (value) || !s_timestamp_valid (json_string_value (
            value)))
        return -1;
    *text_p = json_string_value (value);
    return 0;
}

//  Checks the headers of a message. Returns NULL when they are right, else
//  the reason.
static const char *
s_check_headers (const casm_ingest_message_t *message, s_event_t *event,
                 char *reason)
{
    const casm_ingest_header_t *header = s_header (
        message, CASM_HEADER_TRANSACTION_ID);
    if (!header || !header->value)
        return "missing header " CASM_HEADER_TRANSACTION_ID;
    if (!s_uuid_valid (header->value, header->size))
        return "header " CASM_HEADER_TRANSACTION_ID " is not a UUID";
    event->transaction_id = header->value;

    header = s_header (message, CASM_HEADER_OPERATION);
    if (!header || !header->value)
        return "missing header " CASM_HEADER_OPERATION;
    for (int i = 0; s_operations [i]; i++)
        if (header->size == strlen (s_operations [i])
        &&  memcmp (header->value, s_operations [i], header->size) == 0)
            event->operation = s_operations [i];
    if (!event->operation) {
        json_t *name = casm_log_string (header->value, header->size);
        snprintf (reason, REASON_MAX, "unknown operation %.100s",
                  json_string_value (name));
        json_decref (name);
        return reason;
    }

    header = s_header (message, CASM_HEADER_REQUEST_ID);
    if (!header || !header->value || header->size == 0)
        return "missing header " CASM_HEADER_REQUEST_ID;
    if (header->size > REQUEST_ID_MAX
    ||  !s_text_valid (header->value, header->size))
        return "header " CASM_HEADER_REQUEST_ID " is not a request id";
    event->request_id = header->value;
    event->request_id_size = header->size;

    header = s_header (message, CASM_HEADER_MESSAGE_CODE);
    if (header && !(header->size == 8 && header->value
                    && memcmp (header->value, "customer", 8) == 0))
        return "header " CASM_HEADER_MESSAGE_CODE " is not customer";
    header = s_header (message, CASM_HEADER_MESSAGE_PAYLOAD);
    if (header && !(header->size == 10 && header->value
                    && memcmp (header->value, "CustomerEx", 10) == 0))
        return "header " CASM_HEADER_MESSAGE_PAYLOAD " is not CustomerEx";
    return NULL;
}

//  Checks the value of a message, which *root_p then holds (the caller
//  frees it). Returns NULL when it is a customer, else the reason.
static const char *
s_check_value (const casm_ingest_message_t *message, s_event_t *event,
               json_t **root_p, char *reason)
{
    if (!message->value || message->value_size == 0)
        return "no value";
    json_error_t error;
    json_t *root = json_loadb (message->value, message->value_size, 0,
                               &error);
    *root_p = root;
    if (!root) {
        snprintf (reason, REASON_MAX, "value is not JSON: %.120s "
                  "(at byte %d)", error.text, error.position);
        return reason;
    }
    if (!json_is_object (root))
        return "value is not a JSON object";

    json_t *ref_id = json_object_get (root, "refId");
    if (!json_is_string (ref_id))
        return "missing refId";
    if (!s_uuid_valid (json_string_value (ref_id),
                       json_string_length (ref_id)))
        return "refId is not a UUID";
    event->ref_id = json_string_value (ref_id);

    json_t *version = json_object_get (root, "version");
    if (!json_is_integer (version))
        return "missing version";
    if (json_integer_value (version) < 1)
        return "version is not a positive integer";
    event->version = json_integer_value (version);

    json_t *attributes = json_object_get (root, "customAttributes");
    if (attributes && !json_is_null (attributes)
    &&  !json_is_object (attributes))
        return "customAttributes is not an object";
    json_t *test = json_object_get (root, "testCustomer");
    if (test && !json_is_null (test) && !json_is_boolean (test))
        return "testCustomer is not a boolean";

    const char *ignored;
    if (s_timestamp_field (root, "createdAt", &ignored) != 0)
        return "createdAt is not an RFC 3339 timestamp";
    if (s_timestamp_field (json_object_get (root, "state"),
                           "stateValidFrom", &ignored) != 0)
        return "state.stateValidFrom is not an RFC 3339 timestamp";
    if (s_timestamp_field (root, "modifiedAt", &event->modified_at) != 0)
        return "modifiedAt is not an RFC 3339 timestamp";
    return NULL;
}


//  ---------------------------------------------------------------------
//  Building a batch

static void
s_batch_reset (casm_ingest_t *self)
{
    s_reset (&self->events);
    s_reset (&self->dead);
    s_reset (&self->status);
    self->event_count = 0;
    self->dead_count = 0;
    self->partition_count = 0;
}

//  Remembers the partition's offset (the batch holds each partition's
//  messages in offset order, so the last one seen is the highest).
static void
s_note_partition (casm_ingest_t *self, int32_t partition, int64_t offset,
                  const char *event_time)
{
    s_partition_t *entry = NULL;
    for (size_t i = 0; i < self->partition_count; i++)
        if (self->partitions [i].partition == partition)
            entry = &self->partitions [i];
    if (!entry) {
        if (self->partition_count == self->partition_max) {
            size_t max = self->partition_max ? 2 * self->partition_max : 16;
            s_partition_t *grown = realloc (self->partitions,
                                            max * sizeof *grown);
            if (!grown) {
                self->status.failed = 1;
                return;
            }
            self->partitions = grown;
            self->partition_max = max;
        }
        entry = &self->partitions [self->partition_count++];
        entry->partition = partition;
        entry->offset = -1;
    }
    if (offset < entry->offset)
        return;
    entry->offset = offset;
    snprintf (entry->event_time, sizeof entry->event_time, "%s",
              event_time ? event_time : "");
}

static void
s_add_event (casm_ingest_t *self, const casm_ingest_message_t *message,
             const s_event_t *event)
{
    s_buffer_t *out = &self->events;
    if (self->event_count++)
        s_put (out, ",", 1);
    s_puts (out, "{\"tx\":\"");
    s_put (out, event->transaction_id, 36);
    s_puts (out, "\",\"op\":\"");
    s_puts (out, event->operation);
    s_puts (out, "\",\"rq\":");
    s_put_json_string (out, event->request_id, event->request_id_size);
    s_puts (out, ",\"ref\":\"");
    s_puts (out, event->ref_id);
    s_puts (out, "\",\"ver\":");
    s_put_int (out, event->version);
    s_puts (out, ",\"p\":");
    s_put_int (out, message->partition);
    s_puts (out, ",\"o\":");
    s_put_int (out, message->offset);
    //  The value is JSON already (jansson parsed it): it goes in as is.
    s_puts (out, ",\"ev\":");
    s_put (out, message->value, message->value_size);
    s_puts (out, "}");
    s_note_partition (self, message->partition, message->offset,
                      event->modified_at);
}

//  The headers as JSON text: [[name, value], ...], with bytes that are not
//  UTF-8 shown as '?'.
static char *
s_headers_text (const casm_ingest_message_t *message)
{
    json_t *list = json_array ();
    for (size_t i = 0; i < message->header_count; i++) {
        const casm_ingest_header_t *header = &message->headers [i];
        json_t *pair = json_array ();
        json_array_append_new (pair, casm_log_string (
            header->name, strlen (header->name)));
        json_array_append_new (pair, header->value
            ? casm_log_string (header->value, header->size) : json_null ());
        json_array_append_new (list, pair);
    }
    char *text = json_dumps (list, JSON_COMPACT);
    json_decref (list);
    return text;
}

static void
s_add_dead (casm_ingest_t *self, const casm_ingest_message_t *message,
            const char *reason)
{
    s_buffer_t *out = &self->dead;
    if (self->dead_count)
        s_put (out, ",", 1);
    s_dead_t *dead = &self->dead_letters [self->dead_count++];
    dead->partition = message->partition;
    dead->offset = message->offset;
    json_t *safe = casm_log_string (reason, strlen (reason));
    snprintf (dead->reason, sizeof dead->reason, "%s",
              json_string_value (safe));
    json_decref (safe);

    char *headers = s_headers_text (message);
    s_puts (out, "{\"p\":");
    s_put_int (out, message->partition);
    s_puts (out, ",\"o\":");
    s_put_int (out, message->offset);
    s_puts (out, ",\"k\":");
    s_put_hex (out, message->key, message->key_size);
    s_puts (out, ",\"v\":");
    s_put_hex (out, message->value, message->value_size);
    s_puts (out, ",\"h\":");
    s_put_json_string (out, headers ? headers : "[]",
                       strlen (headers ? headers : "[]"));
    s_puts (out, ",\"r\":");
    s_put_json_string (out, dead->reason, strlen (dead->reason));
    s_puts (out, "}");
    free (headers);
    s_note_partition (self, message->partition, message->offset, NULL);
}

//  Adds one message: an event when it passes the checks, else a dead
//  letter. refused, when not NULL, makes it a dead letter with that reason.
static void
s_add (casm_ingest_t *self, const casm_ingest_message_t *message,
       const char *refused)
{
    if (refused) {
        s_add_dead (self, message, refused);
        return;
    }
    s_event_t event;
    memset (&event, 0, sizeof event);
    char reason [REASON_MAX];
    json_t *root = NULL;
    const char *problem = s_check_headers (message, &event, reason);
    if (!problem)
        problem = s_check_value (message, &event, &root, reason);
    if (problem)
        s_add_dead (self, message, problem);
    else
        s_add_event (self, message, &event);
    json_decref (root);
}

static void
s_batch_close (casm_ingest_t *self)
{
    s_put (&self->events, "]", 1);
    s_put (&self->dead, "]", 1);
    for (size_t i = 0; i < self->partition_count; i++) {
        s_partition_t *entry = &self->partitions [i];
        s_puts (&self->status, i ? ",{\"p\":" : "{\"p\":");
        s_put_int (&self->status, entry->partition);
        s_puts (&self->status, ",\"o\":");
        s_put_int (&self->status, entry->offset);
        s_puts (&self->status, ",\"t\":");
        if (*entry->event_time)
            s_put_json_string (&self->status, entry->event_time,
                               strlen (entry->event_time));
        else
            s_puts (&self->status, "null");
        s_puts (&self->status, "}");
    }
    s_put (&self->status, "]", 1);
}


//  ---------------------------------------------------------------------
//  The database

static int64_t
s_clock_us (void)
{
    struct timespec now;
    clock_gettime (CLOCK_MONOTONIC, &now);
    return (int64_t) now.tv_sec * 1000000 + now.tv_nsec / 1000;
}

static void
s_disconnect (casm_ingest_t *self)
{
    if (self->connection)
        PQfinish (self->connection);
    self->connection = NULL;
}

//  PostgreSQL's notices ("schema already exists, skipping") as debug
//  lines, instead of libpq's plain text on stderr.
static void
s_on_notice (void *unused, const char *message)
{
    size_t size = strlen (message);
    while (size && message [size - 1] == '\n')
        size--;
    casm_debug (NULL, json_pack ("{so}", "notice",
                                 casm_log_string (message, size)),
                "postgresql notice");
}

casm_ingest_t *
casm_ingest_new (const char *database_url, const char *topic)
{
    casm_ingest_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->database_url = strdup (database_url);
    self->topic = strdup (topic);
    if (!self->database_url || !self->topic)
        casm_ingest_destroy (&self);
    return self;
}

void
casm_ingest_destroy (casm_ingest_t **self_p)
{
    casm_ingest_t *self = *self_p;
    if (!self)
        return;
    s_disconnect (self);
    free (self->database_url);
    free (self->topic);
    free (self->events.data);
    free (self->dead.data);
    free (self->status.data);
    free (self->partitions);
    free (self->dead_letters);
    free (self);
    *self_p = NULL;
}

int
casm_ingest_connect (casm_ingest_t *self)
{
    if (self->connection)
        return 0;

    //  Later keywords override what the URL says: bounded connection
    //  time, dead peers noticed within seconds, text in UTF-8.
    const char *keywords [] = {
        "dbname", "connect_timeout", "application_name", "client_encoding",
        "keepalives_idle", "keepalives_interval", "keepalives_count", NULL
    };
    const char *values [] = {
        self->database_url, "5", "casm-dwh", "UTF8", "10", "3", "3", NULL
    };
    self->connection = PQconnectdbParams (keywords, values, 1);
    if (PQstatus (self->connection) != CONNECTION_OK) {
        casm_warn (NULL, NULL, "cannot connect to the warehouse database: "
                   "%s", PQerrorMessage (self->connection));
        s_disconnect (self);
        return -1;
    }
    PQsetNoticeProcessor (self->connection, s_on_notice, NULL);

    //  The batch statement is planned once, when the tables may still be
    //  empty; without sequential scans that plan stays on the primary
    //  keys however large the tables grow.
    PGresult *result = PQexec (self->connection,
                               "SET statement_timeout = '60s'; "
                               "SET plan_cache_mode = force_generic_plan; "
                               "SET enable_seqscan = off");
    PQclear (result);
    int applied = casm_migrate_set (self->connection, casm_dwh_migrations,
                                    CASM_DWH_SCHEMA, MIGRATION_LOCK);
    if (applied < 0) {
        int reachable = PQstatus (self->connection) == CONNECTION_OK;
        s_disconnect (self);
        return reachable ? -2 : -1;
    }

    result = PQprepare (self->connection, STATEMENT, s_batch_sql, 4, NULL);
    int ok = PQresultStatus (result) == PGRES_COMMAND_OK;
    if (!ok) {
        casm_error (NULL, NULL, "cannot prepare the batch statement: %s",
                    PQerrorMessage (self->connection));
        int reachable = PQstatus (self->connection) == CONNECTION_OK;
        PQclear (result);
        s_disconnect (self);
        return reachable ? -2 : -1;
    }
    PQclear (result);
    casm_info (NULL, json_pack ("{ss}", "schema", CASM_DWH_SCHEMA),
               "connected to the warehouse database");
    return 0;
}

//  True for the errors that come from the data of the batch (a value the
//  checks let through), not from the state of the database.
static int
s_data_error (const char *state)
{
    return state && (strncmp (state, "22", 2) == 0
                     || strncmp (state, "23", 2) == 0
                     || strncmp (state, "54", 2) == 0);
}

//  Builds the statement's parameters for these messages and sends them.
//  refused, when not NULL, makes every message a dead letter with that
//  reason. Returns 0, or -1 when out of memory or when the connection
//  failed (it is then closed, so that the next try starts clean).
static int
s_send (casm_ingest_t *self, const casm_ingest_message_t *messages,
        size_t count, const char *refused)
{
    s_batch_reset (self);
    for (size_t i = 0; i < count; i++)
        s_add (self, &messages [i], refused);
    s_batch_close (self);
    if (self->events.failed || self->dead.failed || self->status.failed) {
        casm_error (NULL, NULL, "out of memory building a batch");
        return -1;
    }

    const char *params [4] = { self->events.data, self->dead.data,
                               self->status.data, self->topic };
    self->sent_at = s_clock_us ();
    if (!PQsendQueryPrepared (self->connection, STATEMENT, 4, params, NULL,
                              NULL, 0)) {
        casm_warn (NULL, NULL, "sending a batch failed: %s",
                   PQerrorMessage (self->connection));
        s_disconnect (self);
        return -1;
    }
    return 0;
}

//  Reads the answer to the batch sent last, waiting for it if need be.
//  Returns 0 when the batch is committed, -1 when the database failed (the
//  connection is closed), -2 when PostgreSQL refused the data (the reason
//  is in self->error).
static int
s_finish (casm_ingest_t *self, casm_ingest_stats_t *stats)
{
    PGresult *result = PQgetResult (self->connection);
    PGresult *extra;
    while ((extra = PQgetResult (self->connection)))
        PQclear (extra);
    stats->database_us += s_clock_us () - self->sent_at;

    if (PQresultStatus (result) != PGRES_TUPLES_OK) {
        const char *state = PQresultErrorField (result, PG_DIAG_SQLSTATE);
        const char *message = PQresultErrorField (result,
                                                  PG_DIAG_MESSAGE_PRIMARY);
        snprintf (self->error, sizeof self->error, "%s",
                  message ? message : PQerrorMessage (self->connection));
        int refusal = PQstatus (self->connection) == CONNECTION_OK
                      && s_data_error (state);
        if (!refusal) {
            casm_warn (NULL, json_pack ("{ss}", "sqlstate",
                                        state ? state : ""),
                       "storing a batch failed: %s", self->error);
            s_disconnect (self);
        }
        PQclear (result);
        return refusal ? -2 : -1;
    }

    stats->events += self->event_count;
    stats->stored += strtoull (PQgetvalue (result, 0, 0), NULL, 10);
    stats->moved += strtoull (PQgetvalue (result, 0, 1), NULL, 10);
    stats->dead += self->dead_count;
    PQclear (result);

    for (size_t i = 0; i < self->dead_count; i++)
        casm_warn (NULL, json_pack ("{sisIss}",
                   "partition", (int) self->dead_letters [i].partition,
                   "offset", (json_int_t) self->dead_letters [i].offset,
                   "reason", self->dead_letters [i].reason),
                   "malformed message stored as a dead letter");
    return 0;
}

//  Stores these messages and waits for the answer: 0, -1 or -2 as
//  s_finish.
static int
s_store (casm_ingest_t *self, const casm_ingest_message_t *messages,
         size_t count, const char *refused, casm_ingest_stats_t *stats)
{
    if (s_send (self, messages, count, refused) != 0)
        return -1;
    return s_finish (self, stats);
}

//  The batch that PostgreSQL refused, message by message: each one that it
//  refuses alone becomes a dead letter with PostgreSQL's reason.
static int
s_store_each (casm_ingest_t *self, const casm_ingest_message_t *messages,
              size_t count, casm_ingest_stats_t *stats)
{
    casm_warn (NULL, json_pack ("{sIss}", "messages", (json_int_t) count,
                                "error", self->error),
               "PostgreSQL refused a batch: storing it message by message");
    for (size_t i = 0; i < count; i++) {
        int rc = s_store (self, &messages [i], 1, NULL, stats);
        if (rc == -2) {
            char reason [REASON_MAX];
            snprintf (reason, sizeof reason, "refused by PostgreSQL: %.200s",
                      self->error);
            rc = s_store (self, &messages [i], 1, reason, stats);
        }
        if (rc == -2) {
            //  Not even the raw bytes are taken: a dead letter cannot be
            //  kept, and holding the consumer forever is worse.
            casm_error (NULL, json_pack ("{sisIss}",
                        "partition", (int) messages [i].partition,
                        "offset", (json_int_t) messages [i].offset,
                        "error", self->error),
                        "message refused even as a dead letter: skipped");
            rc = 0;
        }
        if (rc != 0)
            return -1;
    }
    return 0;
}

//  Room for a dead letter per message of the batch.
static int
s_reserve (casm_ingest_t *self, size_t count)
{
    if (count <= self->dead_letter_max)
        return 0;
    s_dead_t *grown = realloc (self->dead_letters, count * sizeof *grown);
    if (!grown) {
        casm_error (NULL, NULL, "out of memory building a batch");
        return -1;
    }
    self->dead_letters = grown;
    self->dead_letter_max = count;
    return 0;
}

int
casm_ingest_send (casm_ingest_t *self,
                  const casm_ingest_message_t *messages, size_t count)
{
    assert (!self->flight);
    if (count == 0)
        return -1;
    if (casm_ingest_connect (self) != 0 || s_reserve (self, count) != 0)
        return -1;
    if (s_send (self, messages, count, NULL) != 0)
        return -1;
    self->flight = messages;
    self->flight_count = count;
    return 0;
}

int
casm_ingest_socket (casm_ingest_t *self)
{
    return self->flight && self->connection ? PQsocket (self->connection)
                                            : -1;
}

int
casm_ingest_poll (casm_ingest_t *self, casm_ingest_stats_t *stats)
{
    assert (self->flight);
    memset (stats, 0, sizeof *stats);
    if (!PQconsumeInput (self->connection)) {
        casm_warn (NULL, NULL, "lost the warehouse database: %s",
                   PQerrorMessage (self->connection));
        s_disconnect (self);
        self->flight = NULL;
        return -1;
    }
    if (PQisBusy (self->connection))
        return 1;

    const casm_ingest_message_t *messages = self->flight;
    self->flight = NULL;
    int rc = s_finish (self, stats);
    if (rc == -2) {
        memset (stats, 0, sizeof *stats);
        rc = s_store_each (self, messages, self->flight_count, stats);
    }
    return rc;
}

int
casm_ingest_batch (casm_ingest_t *self,
                   const casm_ingest_message_t *messages, size_t count,
                   casm_ingest_stats_t *stats)
{
    casm_ingest_stats_t ignored;
    if (!stats)
        stats = &ignored;
    memset (stats, 0, sizeof *stats);
    if (count == 0)
        return 0;
    if (casm_ingest_send (self, messages, count) != 0)
        return -1;

    int rc;
    while ((rc = casm_ingest_poll (self, stats)) == 1) {
        struct pollfd ready = { casm_ingest_socket (self), POLLIN, 0 };
        poll (&ready, 1, 1000);
    }
    return rc;
}
