/*  casm_validate: request validation and normalisation, DESIGN.md 2.1.

    Every problem is listed, not just the first, so that a client fixes its
    request in one round, up to ERRORS_MAX of them: a 2 MiB body of tiny
    bad pairs would otherwise make a list of hundreds of thousands. The
    body is bounded by the gateway and its nesting here before jansson
    sees it, so the parse stays bounded too. See casm_validate.h.           */

#include "casm_validate.h"
#include "casm_customer.h"
#include "casm_error.h"
#include "casm_msg.h"

#include <nettle/sha2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME_BYTES_MAX 256          // customName, stateReason
#define SEGMENT_BYTES_MAX 128       // customerSegment
#define EXTERNAL_ID_BYTES_MAX 128

//  The most problems listed in one answer; the last entry then says that
//  more were left out.
#define ERRORS_MAX 64

//  Character rules for s_check_string.
#define RULE_ANY 0
#define RULE_NO_CONTROL 1           // no C0 or C1 control character
#define RULE_TOKEN 2                // only 0x21..0x7E: printable, no space

struct casm_validate_t {
    int op;
    json_t *errors;                 // array of { field, code, message }
    json_t *command;                // the command body, when valid
    char *request_id;
    char *ref_id;
    char *external_id;
    char hash [SHA256_DIGEST_SIZE * 2 + 1];
};

static const char *const s_create_states [] = {
    "INACTIVE", "ACTIVE", NULL
};
static const char *const s_all_states [] = {
    "INACTIVE", "ACTIVE", "SUSPENDED", "DEACTIVATED", NULL
};

//  Records one problem; the message is printf-formatted. Past ERRORS_MAX
//  problems, one TOO_MANY_ERRORS entry stands for the rest.
static void
s_fail (casm_validate_t *self, const char *field, const char *code,
        const char *format, ...)
{
    size_t listed = json_array_size (self->errors);
    if (listed > ERRORS_MAX)
        return;
    if (listed == ERRORS_MAX) {
        casm_error_add (self->errors, "", "TOO_MANY_ERRORS",
                        "more problems were found; fix these first");
        return;
    }

    char message [256];
    va_list args;
    va_start (args, format);
    vsnprintf (message, sizeof message, format, args);
    va_end (args);
    casm_error_add (self->errors, field, code, message);
}

//  "prefix.name", or name alone when there is no prefix; freed by the
//  caller. NULL only when memory runs out.
static char *
s_field (const char *prefix, const char *name)
{
    size_t prefix_len = prefix ? strlen (prefix) + 1 : 0;
    size_t name_len = strlen (name);
    char *field = malloc (prefix_len + name_len + 1);
    if (!field)
        return NULL;
    if (prefix) {
        memcpy (field, prefix, prefix_len - 1);
        field [prefix_len - 1] = '.';
    }
    memcpy (field + prefix_len, name, name_len + 1);
    return field;
}

static int
s_is_control (unsigned char c)
{
    return c < 0x20 || c == 0x7F;
}

//  Whether the valid UTF-8 text holds a C0 or C1 control character
//  (U+0000..U+001F, U+007F, U+0080..U+009F; the last are 0xC2 0x80-0x9F).
static int
s_has_control (const char *text, size_t length)
{
    for (size_t i = 0; i < length; i++) {
        unsigned char c = (unsigned char) text [i];
        if (s_is_control (c))
            return 1;
        if (c == 0xC2 && i + 1 < length
        &&  (unsigned char) text [i + 1] >= 0x80
        &&  (unsigned char) text [i + 1] <= 0x9F)
            return 1;
    }
    return 0;
}

//  The member, with JSON null counted as absent.
static json_t *
s_member (json_t *object, const char *name)
{
    json_t *value = json_object_get (object, name);
    return json_is_null (value) ? NULL : value;
}

//  Reports every member of object whose name is not in known.
static void
s_check_known (casm_validate_t *self, const char *prefix, json_t *object,
               const char *const known [])
{
    const char *key;
    json_t *value;
    json_object_foreach (object, key, value) {
        int found = 0;
        for (int i = 0; known [i] && !found; i++)
            found = strcmp (key, known [i]) == 0;
        if (found)
            continue;

        char *field = s_field (prefix, key);
        if (field)
            s_fail (self, field, "UNKNOWN_FIELD", "unknown field");
        free (field);
    }
}

//  Checks a string of min..max bytes under rules. Returns 0 when it
//  passes, -1 when a problem was reported.
static int
s_check_string (casm_validate_t *self, const char *field, json_t *value,
                size_t min, size_t max, int rules)
{
    if (!json_is_string (value)) {
        s_fail (self, field, "INVALID_TYPE", "must be a string");
        return -1;
    }
    const char *text = json_string_value (value);
    size_t length = json_string_length (value);
    if (length < min) {
        s_fail (self, field, "TOO_SHORT", "must not be empty");
        return -1;
    }
    if (length > max) {
        s_fail (self, field, "TOO_LONG", "must be at most %zu bytes", max);
        return -1;
    }

    if (rules == RULE_NO_CONTROL && s_has_control (text, length)) {
        s_fail (self, field, "INVALID_FORMAT",
                "must not contain control characters");
        return -1;
    }
    for (size_t i = 0; rules == RULE_TOKEN && i < length; i++) {
        unsigned char c = (unsigned char) text [i];
        if (c < 0x21 || c > 0x7E) {
            s_fail (self, field, "INVALID_FORMAT",
                    "must be printable ASCII without spaces");
            return -1;
        }
    }
    return 0;
}

//  An optional string that may also be null: returns the value to put in
//  the command (a new reference), or NULL when a problem was reported.
static json_t *
s_optional_string (casm_validate_t *self, json_t *object, const char *name,
                   size_t max)
{
    json_t *value = s_member (object, name);
    if (!value)
        return json_null ();
    if (s_check_string (self, name, value, 0, max, RULE_ANY) != 0)
        return NULL;
    return json_incref (value);
}

static void
s_check_request_id (casm_validate_t *self, json_t *request)
{
    json_t *value = s_member (request, "requestId");
    if (!value) {
        s_fail (self, "requestId", "REQUIRED", "is required");
        return;
    }
    if (s_check_string (self, "requestId", value, 1, CASM_REQUEST_ID_MAX,
                        RULE_TOKEN) == 0)
        self->request_id = strdup (json_string_value (value));
}

int
casm_validate_uuid (const char *text, size_t size)
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

//  A refId: kept in lower case, the form PostgreSQL prints.
static void
s_check_ref_id (casm_validate_t *self, const char *field, json_t *value)
{
    if (!json_is_string (value)) {
        s_fail (self, field, "INVALID_TYPE", "must be a string");
        return;
    }
    const char *text = json_string_value (value);
    if (!casm_validate_uuid (text, json_string_length (value))) {
        s_fail (self, field, "INVALID_FORMAT",
                "must be a UUID (8-4-4-4-12 hex digits)");
        return;
    }
    free (self->ref_id);
    self->ref_id = strdup (text);
    for (char *c = self->ref_id; c && *c; c++)
        if (*c >= 'A' && *c <= 'F')
            *c = (char) (*c - 'A' + 'a');
}

static void
s_check_external_id (casm_validate_t *self, const char *field,
                     json_t *value)
{
    if (s_check_string (self, field, value, 1, EXTERNAL_ID_BYTES_MAX,
                        RULE_NO_CONTROL) != 0)
        return;
    free (self->external_id);
    self->external_id = strdup (json_string_value (value));
}

//  { "refId": ... } or { "externalId": ... }, exactly one. prefix names
//  the object ("customer"), or is NULL for readCustomer's flat body.
static void
s_check_reference (casm_validate_t *self, const char *prefix,
                   json_t *object)
{
    static const char *const known [] = { "refId", "externalId", NULL };
    s_check_known (self, prefix, object, known);

    json_t *ref_id = s_member (object, "refId");
    json_t *external_id = s_member (object, "externalId");
    if ((ref_id != NULL) == (external_id != NULL))
        s_fail (self, "customer", "INVALID_VALUE",
                "exactly one of refId and externalId is required");

    char *field = s_field (prefix, "refId");
    if (ref_id && field)
        s_check_ref_id (self, field, ref_id);
    free (field);
    field = s_field (prefix, "externalId");
    if (external_id && field)
        s_check_external_id (self, field, external_id);
    free (field);

    //  Both given is an error: keep neither, so nothing half-checked is
    //  ever looked up.
    if (ref_id && external_id) {
        free (self->ref_id);
        free (self->external_id);
        self->ref_id = self->external_id = NULL;
    }
}

static void
s_check_customer (casm_validate_t *self, json_t *request)
{
    json_t *customer = s_member (request, "customer");
    if (!customer)
        s_fail (self, "customer", "REQUIRED", "is required");
    else
    if (!json_is_object (customer))
        s_fail (self, "customer", "INVALID_TYPE", "must be an object");
    else
        s_check_reference (self, "customer", customer);
}

//  Checks each pair; null values are allowed only when nulls_allowed
//  (a merge, where null removes the key).
static void
s_check_attributes (casm_validate_t *self, json_t *attributes,
                    int nulls_allowed)
{
    //  Too many pairs is the one problem worth telling: the pairs are not
    //  looked at, so the work stays bounded by the limit.
    if (json_object_size (attributes) > CASM_ATTRIBUTES_MAX) {
        s_fail (self, "customAttributes", "TOO_MANY",
                "at most %d pairs are allowed", CASM_ATTRIBUTES_MAX);
        return;
    }

    const char *key;
    json_t *value;
    json_object_foreach (attributes, key, value) {
        char *field = s_field ("customAttributes", key);
        if (!field)
            return;

        //  Without JSON_ALLOW_NUL a key holds no NUL, so strlen is its
        //  length in bytes.
        size_t length = strlen (key);
        if (length == 0)
            s_fail (self, field, "TOO_SHORT", "key must not be empty");
        else
        if (length > CASM_KEY_BYTES_MAX)
            s_fail (self, field, "TOO_LONG", "key must be at most %d bytes",
                    CASM_KEY_BYTES_MAX);
        else
        if (s_has_control (key, length))
            s_fail (self, field, "INVALID_FORMAT",
                    "key must not contain control characters");

        if (json_is_null (value)) {
            if (!nulls_allowed)
                s_fail (self, field, "INVALID_VALUE",
                        "null is allowed only when merge is true");
        }
        else
        if (!json_is_string (value))
            s_fail (self, field, "INVALID_TYPE", "value must be a string");
        else
        if (json_string_length (value) > CASM_VALUE_BYTES_MAX)
            s_fail (self, field, "TOO_LONG",
                    "value must be at most %d bytes", CASM_VALUE_BYTES_MAX);
        free (field);
    }
}

//  { "state": ..., "stateReason": ... }; on success sets *state_p and
//  *reason_p (a new reference: a string or null).
static void
s_check_state (casm_validate_t *self, json_t *object,
               const char *const allowed [], const char **state_p,
               json_t **reason_p)
{
    static const char *const known [] = { "state", "stateReason", NULL };
    s_check_known (self, "state", object, known);

    json_t *state = s_member (object, "state");
    if (!state)
        s_fail (self, "state.state", "REQUIRED", "is required");
    else
    if (!json_is_string (state))
        s_fail (self, "state.state", "INVALID_TYPE", "must be a string");
    else {
        for (int i = 0; allowed [i]; i++)
            if (strcmp (json_string_value (state), allowed [i]) == 0)
                *state_p = allowed [i];
        if (!*state_p) {
            char names [128] = "";
            for (int i = 0; allowed [i]; i++) {
                strcat (names, i ? ", " : "");
                strcat (names, allowed [i]);
            }
            s_fail (self, "state.state", "INVALID_VALUE",
                    "must be one of %s", names);
        }
    }

    json_t *reason = s_member (object, "stateReason");
    if (!reason)
        *reason_p = json_null ();
    else
    if (s_check_string (self, "state.stateReason", reason, 0,
                        NAME_BYTES_MAX, RULE_ANY) == 0)
        *reason_p = json_incref (reason);
}

static void
s_update_attributes (casm_validate_t *self, json_t *request)
{
    static const char *const known [] = {
        "requestId", "customer", "customAttributes", "merge", NULL
    };
    s_check_known (self, NULL, request, known);
    s_check_request_id (self, request);
    s_check_customer (self, request);

    json_t *merge = json_object_get (request, "merge");
    if (merge && !json_is_boolean (merge))
        s_fail (self, "merge", "INVALID_TYPE", "must be a boolean");

    json_t *attributes = s_member (request, "customAttributes");
    if (!attributes)
        s_fail (self, "customAttributes", "REQUIRED", "is required");
    else
    if (!json_is_object (attributes))
        s_fail (self, "customAttributes", "INVALID_TYPE",
                "must be an object");
    else
        s_check_attributes (self, attributes, json_is_true (merge));

    if (json_array_size (self->errors) > 0)
        return;
    self->command = json_pack ("{s:s, s:s, s:O, s:b}",
                               "requestId", self->request_id,
                               "requestHash", self->hash,
                               "customAttributes", attributes,
                               "merge", json_is_true (merge));
    if (self->ref_id)
        casm_validate_resolve (self, self->ref_id);
}

static void
s_create (casm_validate_t *self, json_t *request)
{
    static const char *const known [] = {
        "requestId", "externalId", "customName", "customerSegment",
        "customAttributes", "testCustomer", "state", NULL
    };
    s_check_known (self, NULL, request, known);
    s_check_request_id (self, request);

    json_t *external_id = s_member (request, "externalId");
    if (!external_id)
        s_fail (self, "externalId", "REQUIRED", "is required");
    else
        s_check_external_id (self, "externalId", external_id);

    json_t *name = s_optional_string (self, request, "customName",
                                      NAME_BYTES_MAX);
    json_t *segment = s_optional_string (self, request, "customerSegment",
                                         SEGMENT_BYTES_MAX);

    //  Optional, but null is not a set of attributes.
    json_t *attributes = json_object_get (request, "customAttributes");
    if (!attributes)
        attributes = json_object ();
    else
    if (!json_is_object (attributes)) {
        s_fail (self, "customAttributes", "INVALID_TYPE",
                "must be an object");
        attributes = NULL;
    }
    else {
        json_incref (attributes);
        s_check_attributes (self, attributes, 0);
    }

    json_t *test = json_object_get (request, "testCustomer");
    if (test && !json_is_boolean (test))
        s_fail (self, "testCustomer", "INVALID_TYPE", "must be a boolean");

    const char *state = NULL;
    json_t *reason = NULL;
    json_t *state_object = json_object_get (request, "state");
    if (!state_object) {
        state = "ACTIVE";
        reason = json_null ();
    }
    else
    if (!json_is_object (state_object))
        s_fail (self, "state", "INVALID_TYPE", "must be an object");
    else
        s_check_state (self, state_object, s_create_states, &state,
                       &reason);

    if (json_array_size (self->errors) == 0)
        self->command = json_pack (
            "{s:s, s:s, s:s, s:O, s:O, s:O, s:b, s:s, s:O}",
            "requestId", self->request_id,
            "requestHash", self->hash,
            "externalId", self->external_id,
            "customName", name,
            "customerSegment", segment,
            "customAttributes", attributes,
            "testCustomer", json_is_true (test),
            "state", state,
            "stateReason", reason);

    json_decref (name);
    json_decref (segment);
    json_decref (attributes);
    json_decref (reason);
}

static void
s_update_state (casm_validate_t *self, json_t *request)
{
    static const char *const known [] = {
        "requestId", "customer", "state", NULL
    };
    s_check_known (self, NULL, request, known);
    s_check_request_id (self, request);
    s_check_customer (self, request);

    const char *state = NULL;
    json_t *reason = NULL;
    json_t *state_object = s_member (request, "state");
    if (!state_object)
        s_fail (self, "state", "REQUIRED", "is required");
    else
    if (!json_is_object (state_object))
        s_fail (self, "state", "INVALID_TYPE", "must be an object");
    else
        s_check_state (self, state_object, s_all_states, &state, &reason);

    if (json_array_size (self->errors) == 0) {
        self->command = json_pack ("{s:s, s:s, s:s, s:O}",
                                   "requestId", self->request_id,
                                   "requestHash", self->hash,
                                   "state", state,
                                   "stateReason", reason);
        if (self->ref_id)
            casm_validate_resolve (self, self->ref_id);
    }
    json_decref (reason);
}

//  readCustomer's body is made by the gateway from the query string.
static void
s_read (casm_validate_t *self, json_t *request)
{
    s_check_reference (self, NULL, request);
    if (json_array_size (self->errors) > 0)
        return;
    self->command = self->ref_id
        ? json_pack ("{s:s}", "refId", self->ref_id)
        : json_pack ("{s:s}", "externalId", self->external_id);
}

//  jansson's error text, with anything but printable ASCII replaced: it
//  may quote the bytes that broke the parse.
static void
s_fail_parse (casm_validate_t *self, const json_error_t *error)
{
    char text [JSON_ERROR_TEXT_LENGTH];
    size_t i;
    for (i = 0; i < sizeof text - 1 && error->text [i]; i++) {
        unsigned char c = (unsigned char) error->text [i];
        text [i] = c >= 0x20 && c < 0x7F ? (char) c : '?';
    }
    text [i] = 0;

    if (json_error_code (error) == json_error_invalid_utf8)
        s_fail (self, "", "INVALID_UTF8",
                "invalid UTF-8 at line %d, column %d", error->line,
                error->column);
    else
        s_fail (self, "", "MALFORMED_JSON", "%s at line %d, column %d",
                text, error->line, error->column);
}

//  SHA-256 of the operation name, a newline and the request dumped
//  compact with sorted keys: equal requests hash alike whatever the order
//  of their keys. Returns 0, or -1 when memory runs out.
static int
s_hash (casm_validate_t *self, json_t *request)
{
    char *text = json_dumps (request, JSON_COMPACT | JSON_SORT_KEYS);
    if (!text)
        return -1;

    const char *name = casm_op_name (self->op);
    struct sha256_ctx context;
    sha256_init (&context);
    sha256_update (&context, strlen (name), (const uint8_t *) name);
    sha256_update (&context, 1, (const uint8_t *) "\n");
    sha256_update (&context, strlen (text), (const uint8_t *) text);
    free (text);

    uint8_t digest [SHA256_DIGEST_SIZE];
    sha256_digest (&context, sizeof digest, digest);
    static const char hex [] = "0123456789abcdef";
    for (size_t i = 0; i < sizeof digest; i++) {
        self->hash [2 * i] = hex [digest [i] >> 4];
        self->hash [2 * i + 1] = hex [digest [i] & 15];
    }
    self->hash [2 * sizeof digest] = 0;
    return 0;
}

int
casm_validate_depth (const char *text, size_t size, int limit)
{
    int depth = 0;
    int deepest = 0;
    int in_string = 0;
    for (size_t i = 0; i < size; i++) {
        char c = text [i];
        if (in_string) {
            if (c == '\\')
                i++;                // the escaped byte cannot end it
            else
            if (c == '"')
                in_string = 0;
        }
        else
        if (c == '"')
            in_string = 1;
        else
        if (c == '[' || c == '{') {
            if (++depth > deepest)
                deepest = depth;
            if (deepest > limit)
                return limit + 1;
        }
        else
        if ((c == ']' || c == '}') && depth > 0)
            depth--;
    }
    return deepest;
}

casm_validate_t *
casm_validate_new (int op, const char *body, size_t size)
{
    casm_validate_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->op = op;
    self->errors = json_array ();
    if (!self->errors) {
        free (self);
        return NULL;
    }

    if (size == 0) {
        s_fail (self, "", "MALFORMED_JSON", "the body is empty");
        return self;
    }

    //  Bound the nesting before the parser recurses into it.
    if (casm_validate_depth (body, size, CASM_JSON_DEPTH_MAX)
        > CASM_JSON_DEPTH_MAX) {
        s_fail (self, "", "TOO_DEEP", "JSON nested deeper than %d levels",
                CASM_JSON_DEPTH_MAX);
        return self;
    }

    json_error_t error;
    json_t *request = json_loadb (body, size,
                                  JSON_REJECT_DUPLICATES | JSON_DECODE_ANY,
                                  &error);
    if (!request) {
        s_fail_parse (self, &error);
        return self;
    }
    if (!json_is_object (request)) {
        s_fail (self, "", "INVALID_TYPE", "the body must be a JSON object");
        json_decref (request);
        return self;
    }

    if (s_hash (self, request) != 0) {
        json_decref (request);
        casm_validate_destroy (&self);
        return NULL;
    }

    switch (op) {
        case CASM_OP_UPDATE_ATTRIBUTES: s_update_attributes (self, request);
                                        break;
        case CASM_OP_CREATE:            s_create (self, request);
                                        break;
        case CASM_OP_UPDATE_STATE:      s_update_state (self, request);
                                        break;
        case CASM_OP_READ:              s_read (self, request);
                                        break;
        default:
            s_fail (self, "", "INVALID_VALUE", "unknown operation %d", op);
    }
    json_decref (request);

    //  A failed request keeps its requestId (for the error body) and
    //  nothing else.
    if (json_array_size (self->errors) > 0 || !self->command) {
        if (json_array_size (self->errors) == 0) {
            casm_validate_destroy (&self);
            return NULL;            // json_pack ran out of memory
        }
        json_decref (self->command);
        self->command = NULL;
        free (self->ref_id);
        free (self->external_id);
        self->ref_id = self->external_id = NULL;
        self->hash [0] = 0;
    }
    return self;
}

void
casm_validate_destroy (casm_validate_t **self_p)
{
    casm_validate_t *self = *self_p;
    if (!self)
        return;
    json_decref (self->errors);
    json_decref (self->command);
    free (self->request_id);
    free (self->ref_id);
    free (self->external_id);
    free (self);
    *self_p = NULL;
}

int
casm_validate_ok (casm_validate_t *self)
{
    return self->command != NULL;
}

json_t *
casm_validate_errors (casm_validate_t *self)
{
    return self->errors;
}

json_t *
casm_validate_command (casm_validate_t *self)
{
    return self->command;
}

char *
casm_validate_command_text (casm_validate_t *self, size_t *size)
{
    *size = 0;
    if (!self->command)
        return NULL;
    char *text = json_dumps (self->command, JSON_COMPACT);
    if (text)
        *size = strlen (text);
    return text;
}

const char *
casm_validate_request_id (casm_validate_t *self)
{
    return self->request_id;
}

const char *
casm_validate_hash (casm_validate_t *self)
{
    return self->command ? self->hash : NULL;
}

const char *
casm_validate_ref_id (casm_validate_t *self)
{
    return self->ref_id;
}

const char *
casm_validate_external_id (casm_validate_t *self)
{
    return self->external_id;
}

void
casm_validate_resolve (casm_validate_t *self, const char *ref_id)
{
    if (self->command)
        json_object_set_new (self->command, "refId", json_string (ref_id));
}
