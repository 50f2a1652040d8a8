/*  test_validate: request validation (validator/casm_validate.h).

    The limits of DESIGN.md 2.1 are exact, so every one is tested on both
    sides of its boundary, in bytes, not characters. A failed request must
    list every problem, each under the field the client sent; a valid one
    must come out as the command body the worker expects, with a request
    hash that ignores key order and nothing else.                           */

#include "casm_validate.h"
#include "casm_customer.h"
#include "casm_msg.h"

#include <check.h>
#include <nettle/sha2.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define UUID "5b3f8d2e-8a41-4f63-9d0b-2f1f4c1f0a77"
#define OP_UPDATE CASM_OP_UPDATE_ATTRIBUTES

static casm_validate_t *
s_check (int op, const char *text)
{
    casm_validate_t *check = casm_validate_new (op, text, strlen (text));
    ck_assert_ptr_nonnull (check);
    return check;
}

//  The request text of a jansson value (consumed).
static char *
s_text (json_t *request)
{
    char *text = json_dumps (request, JSON_COMPACT);
    json_decref (request);
    ck_assert_ptr_nonnull (text);
    return text;
}

//  unit repeated count times, NUL-terminated; the caller frees.
static char *
s_repeat (const char *unit, size_t count)
{
    size_t size = strlen (unit);
    char *text = malloc (size * count + 1);
    for (size_t i = 0; i < count; i++)
        memcpy (text + i * size, unit, size);
    text [size * count] = 0;
    return text;
}

static int
s_has (casm_validate_t *check, const char *field, const char *code)
{
    size_t index;
    json_t *error;
    json_array_foreach (casm_validate_errors (check), index, error) {
        const char *f = json_string_value (json_object_get (error, "field"));
        const char *c = json_string_value (json_object_get (error, "code"));
        const char *m = json_string_value (json_object_get (error,
                                                            "message"));
        ck_assert_ptr_nonnull (m);
        if (f && c && strcmp (f, field) == 0 && strcmp (c, code) == 0)
            return 1;
    }
    return 0;
}

static size_t
s_count (casm_validate_t *check)
{
    return json_array_size (casm_validate_errors (check));
}

//  Asserts that text passes, and returns the result for more checks.
static casm_validate_t *
s_pass (int op, const char *text)
{
    casm_validate_t *check = s_check (op, text);
    if (!casm_validate_ok (check)) {
        char *errors = json_dumps (casm_validate_errors (check), 0);
        ck_abort_msg ("expected to pass: %s\nerrors: %s", text, errors);
    }
    ck_assert_uint_eq (s_count (check), 0);
    return check;
}

static void
s_pass_json (int op, json_t *request)
{
    char *text = s_text (request);
    casm_validate_t *check = s_pass (op, text);
    casm_validate_destroy (&check);
    free (text);
}

//  Asserts that text fails with (field, code) among its errors.
static void
s_fail (int op, const char *text, const char *field, const char *code)
{
    casm_validate_t *check = s_check (op, text);
    ck_assert_msg (!casm_validate_ok (check), "expected to fail: %s", text);
    ck_assert_ptr_null (casm_validate_command (check));
    ck_assert_ptr_null (casm_validate_hash (check));
    if (!s_has (check, field, code)) {
        char *errors = json_dumps (casm_validate_errors (check), 0);
        ck_abort_msg ("expected %s on \"%s\" for %.200s\nerrors: %.500s",
                      code, field, text, errors);
    }
    casm_validate_destroy (&check);
}

static void
s_fail_json (int op, json_t *request, const char *field, const char *code)
{
    char *text = s_text (request);
    s_fail (op, text, field, code);
    free (text);
}

//  A valid updateCustomerCustomAttributes request with these attributes
//  (consumed).
static json_t *
s_update (json_t *attributes)
{
    return json_pack ("{s:s, s:{s:s}, s:o}", "requestId", "r-1",
                      "customer", "refId", UUID,
                      "customAttributes", attributes);
}

//  { key: value } with key and value made of count units.
static json_t *
s_pair (const char *key_unit, size_t key_count, const char *value_unit,
        size_t value_count)
{
    char *key = s_repeat (key_unit, key_count);
    char *value = s_repeat (value_unit, value_count);
    json_t *object = json_pack ("{s:s}", key, value);
    free (key);
    free (value);
    return object;
}

//  ---------------------------------------------------------------------
//  updateCustomerCustomAttributes: the happy path and the command body

START_TEST (test_update_valid_ref_id)
{
    casm_validate_t *check = s_pass (OP_UPDATE,
        "{\"requestId\":\"r-1\",\"customer\":{\"refId\":\""
        "5B3F8D2E-8A41-4F63-9D0B-2F1F4C1F0A77\"},"
        "\"customAttributes\":{\"segmentHint\":\"gold\","
        "\"preferredChannel\":\"email\"},\"merge\":false}");

    json_t *command = casm_validate_command (check);
    ck_assert_str_eq (json_string_value (json_object_get (command,
                                                          "requestId")),
                      "r-1");
    ck_assert_str_eq (json_string_value (json_object_get (command, "refId")),
                      UUID);
    ck_assert_str_eq (casm_validate_ref_id (check), UUID);
    ck_assert_ptr_null (casm_validate_external_id (check));
    ck_assert (json_is_false (json_object_get (command, "merge")));
    json_t *attributes = json_object_get (command, "customAttributes");
    ck_assert_uint_eq (json_object_size (attributes), 2);
    ck_assert_str_eq (json_string_value (json_object_get (attributes,
                                                          "segmentHint")),
                      "gold");

    const char *hash = casm_validate_hash (check);
    ck_assert_uint_eq (strlen (hash), 64);
    ck_assert_uint_eq (strspn (hash, "0123456789abcdef"), 64);
    ck_assert_str_eq (json_string_value (json_object_get (command,
                                                          "requestHash")),
                      hash);
    ck_assert_str_eq (casm_validate_request_id (check), "r-1");
    ck_assert_uint_eq (json_object_size (command), 5);

    size_t size;
    char *text = casm_validate_command_text (check, &size);
    ck_assert_uint_eq (size, strlen (text));
    free (text);
    casm_validate_destroy (&check);
    ck_assert_ptr_null (check);
}
END_TEST

START_TEST (test_update_valid_external_id)
{
    casm_validate_t *check = s_pass (OP_UPDATE,
        "{\"requestId\":\"r-1\",\"customer\":{\"externalId\":\"CRM-1\"},"
        "\"customAttributes\":{}}");
    ck_assert_ptr_null (casm_validate_ref_id (check));
    ck_assert_str_eq (casm_validate_external_id (check), "CRM-1");

    //  merge defaults to false; refId comes from the look-up.
    json_t *command = casm_validate_command (check);
    ck_assert (json_is_false (json_object_get (command, "merge")));
    ck_assert_ptr_null (json_object_get (command, "refId"));
    casm_validate_resolve (check, UUID);
    ck_assert_str_eq (json_string_value (json_object_get (command, "refId")),
                      UUID);
    casm_validate_destroy (&check);
}
END_TEST

START_TEST (test_update_merge_nulls)
{
    const char *with_null =
        "{\"requestId\":\"r\",\"customer\":{\"refId\":\"" UUID "\"},"
        "\"customAttributes\":{\"a\":null,\"b\":\"x\"}%s}";
    char text [512];

    snprintf (text, sizeof text, with_null, ",\"merge\":true");
    casm_validate_t *check = s_pass (OP_UPDATE, text);
    json_t *attributes = json_object_get (casm_validate_command (check),
                                          "customAttributes");
    ck_assert (json_is_null (json_object_get (attributes, "a")));
    ck_assert (json_is_true (json_object_get (casm_validate_command (check),
                                              "merge")));
    casm_validate_destroy (&check);

    snprintf (text, sizeof text, with_null, ",\"merge\":false");
    s_fail (OP_UPDATE, text, "customAttributes.a", "INVALID_VALUE");
    snprintf (text, sizeof text, with_null, "");
    s_fail (OP_UPDATE, text, "customAttributes.a", "INVALID_VALUE");
}
END_TEST

//  ---------------------------------------------------------------------
//  The limits, on both sides

START_TEST (test_key_length)
{
    s_pass_json (OP_UPDATE, s_update (s_pair ("k", 128, "v", 1)));
    s_pass_json (OP_UPDATE, s_update (s_pair ("k", 1, "v", 1)));
}
END_TEST

START_TEST (test_key_length_boundary)
{
    char *key = s_repeat ("k", 129);
    char field [256];
    snprintf (field, sizeof field, "customAttributes.%s", key);
    s_fail_json (OP_UPDATE, s_update (s_pair ("k", 129, "v", 1)), field,
                 "TOO_LONG");
    free (key);

    //  Bytes, not characters: 64 two-byte characters are 128 bytes.
    s_pass_json (OP_UPDATE, s_update (s_pair ("\xc3\xa9", 64, "v", 1)));
    key = s_repeat ("\xc3\xa9", 64);
    snprintf (field, sizeof field, "customAttributes.%sk", key);
    json_t *pair = json_object ();
    char name [256];
    snprintf (name, sizeof name, "%sk", key);
    json_object_set_new (pair, name, json_string ("v"));
    s_fail_json (OP_UPDATE, s_update (pair), field, "TOO_LONG");
    free (key);

    s_fail (OP_UPDATE, "{\"requestId\":\"r\",\"customer\":{\"refId\":\""
            UUID "\"},\"customAttributes\":{\"\":\"v\"}}",
            "customAttributes.", "TOO_SHORT");
}
END_TEST

START_TEST (test_key_control_characters)
{
    s_fail (OP_UPDATE, "{\"requestId\":\"r\",\"customer\":{\"refId\":\""
            UUID "\"},\"customAttributes\":{\"a\\u0001b\":\"v\"}}",
            "customAttributes.a\001b", "INVALID_FORMAT");
    s_fail (OP_UPDATE, "{\"requestId\":\"r\",\"customer\":{\"refId\":\""
            UUID "\"},\"customAttributes\":{\"a\\tb\":\"v\"}}",
            "customAttributes.a\tb", "INVALID_FORMAT");
    s_fail (OP_UPDATE, "{\"requestId\":\"r\",\"customer\":{\"refId\":\""
            UUID "\"},\"customAttributes\":{\"a\\u007fb\":\"v\"}}",
            "customAttributes.a\177b", "INVALID_FORMAT");

    //  C1 controls too: U+0085 (NEL) is 0xC2 0x85 in UTF-8; U+00A0, the
    //  first character past them, is allowed.
    s_fail (OP_UPDATE, "{\"requestId\":\"r\",\"customer\":{\"refId\":\""
            UUID "\"},\"customAttributes\":{\"seg\\u0085ment\":\"v\"}}",
            "customAttributes.seg\xc2\x85ment", "INVALID_FORMAT");
    s_fail (OP_UPDATE, "{\"requestId\":\"r\",\"customer\":{\"refId\":\""
            UUID "\"},\"customAttributes\":{\"a\\u009fb\":\"v\"}}",
            "customAttributes.a\xc2\x9f" "b", "INVALID_FORMAT");
    casm_validate_t *check = s_pass (OP_UPDATE,
        "{\"requestId\":\"r\",\"customer\":{\"refId\":\"" UUID "\"},"
        "\"customAttributes\":{\"a\\u00a0b\":\"v\"}}");
    casm_validate_destroy (&check);

    //  Values may hold them; keys with other non-ASCII text are fine.
    s_pass_json (OP_UPDATE, s_update (json_pack ("{s:s, s:s}",
                                                 "na\xc3\xafve", "x\ty",
                                                 "k", "line\nbreak")));
}
END_TEST

START_TEST (test_value_length)
{
    s_pass_json (OP_UPDATE, s_update (s_pair ("k", 1, "v", 4096)));
    s_fail_json (OP_UPDATE, s_update (s_pair ("k", 1, "v", 4097)),
                 "customAttributes.k", "TOO_LONG");

    //  2048 two-byte characters are 4096 bytes; one more byte fails.
    s_pass_json (OP_UPDATE, s_update (s_pair ("k", 1, "\xc3\xa9", 2048)));
    char *value = s_repeat ("\xc3\xa9", 2048);
    char *longer = malloc (strlen (value) + 2);
    sprintf (longer, "%sv", value);
    s_fail_json (OP_UPDATE, s_update (json_pack ("{s:s}", "k", longer)),
                 "customAttributes.k", "TOO_LONG");
    free (value);
    free (longer);

    s_pass_json (OP_UPDATE, s_update (json_pack ("{s:s}", "k", "")));
}
END_TEST

static json_t *
s_pairs (int count)
{
    json_t *attributes = json_object ();
    for (int i = 0; i < count; i++) {
        char key [16];
        snprintf (key, sizeof key, "k%d", i);
        json_object_set_new (attributes, key, json_string ("v"));
    }
    return attributes;
}

START_TEST (test_pair_count)
{
    s_pass_json (OP_UPDATE, s_update (s_pairs (CASM_ATTRIBUTES_MAX)));
    s_fail_json (OP_UPDATE, s_update (s_pairs (CASM_ATTRIBUTES_MAX + 1)),
                 "customAttributes", "TOO_MANY");
    s_pass_json (OP_UPDATE, s_update (s_pairs (0)));
}
END_TEST

//  Over the pair limit the pairs are not looked at: a huge set of bad
//  pairs gets one error, not one per pair.
START_TEST (test_pair_count_alone)
{
    json_t *attributes = json_object ();
    for (int i = 0; i < 5000; i++) {
        char key [16];
        snprintf (key, sizeof key, "k%d", i);
        json_object_set_new (attributes, key, json_integer (i));
    }
    char *text = s_text (s_update (attributes));
    casm_validate_t *check = s_check (OP_UPDATE, text);
    ck_assert (s_has (check, "customAttributes", "TOO_MANY"));
    ck_assert_uint_eq (s_count (check), 1);
    casm_validate_destroy (&check);
    free (text);
}
END_TEST

//  However many problems a body holds, the answer lists a bounded number
//  of them and says that there were more.
START_TEST (test_errors_bounded)
{
    json_t *request = s_update (s_pairs (1));
    for (int i = 0; i < 20000; i++) {
        char name [16];
        snprintf (name, sizeof name, "x%d", i);
        json_object_set_new (request, name, json_true ());
    }
    char *text = s_text (request);
    casm_validate_t *check = s_check (OP_UPDATE, text);
    ck_assert_uint_eq (s_count (check), 65);
    ck_assert (s_has (check, "", "TOO_MANY_ERRORS"));
    ck_assert (!casm_validate_ok (check));
    casm_validate_destroy (&check);
    free (text);
}
END_TEST

START_TEST (test_value_types)
{
    const char *values [] = { "1", "1.5", "true", "false", "{}", "[]",
                              "{\"a\":\"b\"}", "[\"a\"]" };
    for (size_t i = 0; i < sizeof values / sizeof values [0]; i++) {
        char text [256];
        snprintf (text, sizeof text, "{\"requestId\":\"r\",\"customer\":"
                  "{\"refId\":\"" UUID "\"},\"customAttributes\":"
                  "{\"k\":%s},\"merge\":true}", values [i]);
        s_fail (OP_UPDATE, text, "customAttributes.k", "INVALID_TYPE");
    }
}
END_TEST

//  ---------------------------------------------------------------------
//  requestId

START_TEST (test_request_id)
{
    char *id = s_repeat ("a", 128);
    json_t *request = s_update (json_object ());
    json_object_set_new (request, "requestId", json_string (id));
    s_pass_json (OP_UPDATE, request);
    free (id);

    id = s_repeat ("a", 129);
    request = s_update (json_object ());
    json_object_set_new (request, "requestId", json_string (id));
    s_fail_json (OP_UPDATE, request, "requestId", "TOO_LONG");
    free (id);

    //  Printable ASCII from '!' to '~' passes; space and others fail.
    request = s_update (json_object ());
    json_object_set_new (request, "requestId",
                         json_string ("!~azAZ09-_.:{}\"\\"));
    s_pass_json (OP_UPDATE, request);

    const char *bad [] = { "a b", " a", "a\tb", "caf\xc3\xa9", "a\x7f" };
    for (size_t i = 0; i < sizeof bad / sizeof bad [0]; i++) {
        request = s_update (json_object ());
        json_object_set_new (request, "requestId", json_string (bad [i]));
        s_fail_json (OP_UPDATE, request, "requestId", "INVALID_FORMAT");
    }

    request = s_update (json_object ());
    json_object_set_new (request, "requestId", json_string (""));
    s_fail_json (OP_UPDATE, request, "requestId", "TOO_SHORT");

    request = s_update (json_object ());
    json_object_set_new (request, "requestId", json_integer (12));
    s_fail_json (OP_UPDATE, request, "requestId", "INVALID_TYPE");

    request = s_update (json_object ());
    json_object_del (request, "requestId");
    s_fail_json (OP_UPDATE, request, "requestId", "REQUIRED");

    request = s_update (json_object ());
    json_object_set_new (request, "requestId", json_null ());
    s_fail_json (OP_UPDATE, request, "requestId", "REQUIRED");
}
END_TEST

//  The requestId is known for the error body even when other fields fail,
//  and only when it is itself valid.
START_TEST (test_request_id_kept_on_errors)
{
    casm_validate_t *check = s_check (OP_UPDATE,
        "{\"requestId\":\"r-9\",\"customer\":{}}");
    ck_assert (!casm_validate_ok (check));
    ck_assert_str_eq (casm_validate_request_id (check), "r-9");
    casm_validate_destroy (&check);

    check = s_check (OP_UPDATE, "{\"requestId\":\"r 9\",\"customer\":{}}");
    ck_assert_ptr_null (casm_validate_request_id (check));
    casm_validate_destroy (&check);
}
END_TEST

//  ---------------------------------------------------------------------
//  customer

START_TEST (test_customer_reference)
{
    const char *prefix = "{\"requestId\":\"r\",\"customAttributes\":{},";
    char text [512];

    snprintf (text, sizeof text, "%s\"customer\":{\"refId\":\"" UUID
              "\",\"externalId\":\"CRM-1\"}}", prefix);
    s_fail (OP_UPDATE, text, "customer", "INVALID_VALUE");

    snprintf (text, sizeof text, "%s\"customer\":{}}", prefix);
    s_fail (OP_UPDATE, text, "customer", "INVALID_VALUE");

    snprintf (text, sizeof text, "%s\"customer\":{\"refId\":null}}",
              prefix);
    s_fail (OP_UPDATE, text, "customer", "INVALID_VALUE");

    snprintf (text, sizeof text, "{\"requestId\":\"r\","
              "\"customAttributes\":{}}");
    s_fail (OP_UPDATE, text, "customer", "REQUIRED");

    snprintf (text, sizeof text, "%s\"customer\":\"CRM-1\"}", prefix);
    s_fail (OP_UPDATE, text, "customer", "INVALID_TYPE");

    snprintf (text, sizeof text, "%s\"customer\":{\"refId\":\"" UUID
              "\",\"name\":\"x\"}}", prefix);
    s_fail (OP_UPDATE, text, "customer.name", "UNKNOWN_FIELD");
}
END_TEST

START_TEST (test_customer_ref_id_format)
{
    const char *bad [] = {
        "5b3f8d2e8a414f639d0b2f1f4c1f0a77",
        "5b3f8d2e-8a41-4f63-9d0b-2f1f4c1f0a7",
        "5b3f8d2e-8a41-4f63-9d0b-2f1f4c1f0a777",
        "5b3f8d2e-8a41-4f63-9d0b_2f1f4c1f0a77",
        "5b3f8d2g-8a41-4f63-9d0b-2f1f4c1f0a77",
        "{5b3f8d2e-8a41-4f63-9d0b-2f1f4c1f0a77}",
        "",
        "' OR 1=1 --"
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad [0]; i++) {
        json_t *request = s_update (json_object ());
        json_object_set_new (request, "customer",
                             json_pack ("{s:s}", "refId", bad [i]));
        s_fail_json (OP_UPDATE, request, "customer.refId", "INVALID_FORMAT");
    }

    json_t *request = s_update (json_object ());
    json_object_set_new (request, "customer",
                         json_pack ("{s:i}", "refId", 5));
    s_fail_json (OP_UPDATE, request, "customer.refId", "INVALID_TYPE");

    ck_assert (casm_validate_uuid (UUID, 36));
    ck_assert (casm_validate_uuid ("00000000-0000-0000-0000-00000000ABCD",
                                   36));
    ck_assert (!casm_validate_uuid (UUID, 35));
}
END_TEST

START_TEST (test_customer_external_id)
{
    char *id = s_repeat ("x", 128);
    json_t *request = s_update (json_object ());
    json_object_set_new (request, "customer",
                         json_pack ("{s:s}", "externalId", id));
    s_pass_json (OP_UPDATE, request);
    free (id);

    id = s_repeat ("x", 129);
    request = s_update (json_object ());
    json_object_set_new (request, "customer",
                         json_pack ("{s:s}", "externalId", id));
    s_fail_json (OP_UPDATE, request, "customer.externalId", "TOO_LONG");
    free (id);

    request = s_update (json_object ());
    json_object_set_new (request, "customer",
                         json_pack ("{s:s}", "externalId", ""));
    s_fail_json (OP_UPDATE, request, "customer.externalId", "TOO_SHORT");

    request = s_update (json_object ());
    json_object_set_new (request, "customer",
                         json_pack ("{s:s}", "externalId", "a\nb"));
    s_fail_json (OP_UPDATE, request, "customer.externalId",
                 "INVALID_FORMAT");

    request = s_update (json_object ());
    json_object_set_new (request, "customer",
                         json_pack ("{s:b}", "externalId", 1));
    s_fail_json (OP_UPDATE, request, "customer.externalId", "INVALID_TYPE");
}
END_TEST

//  ---------------------------------------------------------------------
//  Types, unknown fields, and the list of every problem

START_TEST (test_update_types)
{
    json_t *request = s_update (json_object ());
    json_object_set_new (request, "merge", json_string ("true"));
    s_fail_json (OP_UPDATE, request, "merge", "INVALID_TYPE");

    request = s_update (json_object ());
    json_object_set_new (request, "merge", json_null ());
    s_fail_json (OP_UPDATE, request, "merge", "INVALID_TYPE");

    request = s_update (json_object ());
    json_object_set_new (request, "customAttributes", json_array ());
    s_fail_json (OP_UPDATE, request, "customAttributes", "INVALID_TYPE");

    request = s_update (json_object ());
    json_object_set_new (request, "customAttributes", json_string ("a=b"));
    s_fail_json (OP_UPDATE, request, "customAttributes", "INVALID_TYPE");

    request = s_update (json_object ());
    json_object_del (request, "customAttributes");
    s_fail_json (OP_UPDATE, request, "customAttributes", "REQUIRED");

    request = s_update (json_object ());
    json_object_set_new (request, "customAttributes", json_null ());
    s_fail_json (OP_UPDATE, request, "customAttributes", "REQUIRED");
}
END_TEST

START_TEST (test_unknown_field)
{
    json_t *request = s_update (json_object ());
    json_object_set_new (request, "customAtributes", json_object ());
    s_fail_json (OP_UPDATE, request, "customAtributes", "UNKNOWN_FIELD");
}
END_TEST

START_TEST (test_every_problem_listed)
{
    char *long_key = s_repeat ("k", 129);
    json_t *attributes = json_pack ("{s:i, s:n, s:s}", "a", 1, "b",
                                    long_key, "v");
    json_t *request = json_pack ("{s:s, s:{}, s:o, s:s, s:i}",
                                 "requestId", "r x", "customer",
                                 "customAttributes", attributes,
                                 "merge", "no", "extra", 1);
    char *text = s_text (request);
    casm_validate_t *check = s_check (OP_UPDATE, text);

    char field [256];
    snprintf (field, sizeof field, "customAttributes.%s", long_key);
    ck_assert (s_has (check, "requestId", "INVALID_FORMAT"));
    ck_assert (s_has (check, "customer", "INVALID_VALUE"));
    ck_assert (s_has (check, "customAttributes.a", "INVALID_TYPE"));
    ck_assert (s_has (check, "customAttributes.b", "INVALID_VALUE"));
    ck_assert (s_has (check, field, "TOO_LONG"));
    ck_assert (s_has (check, "merge", "INVALID_TYPE"));
    ck_assert (s_has (check, "extra", "UNKNOWN_FIELD"));
    ck_assert_uint_eq (s_count (check), 7);
    casm_validate_destroy (&check);
    free (text);
    free (long_key);
}
END_TEST

//  ---------------------------------------------------------------------
//  The body as a whole: JSON, UTF-8, depth

START_TEST (test_malformed_json)
{
    const char *bad [] = {
        "{", "{\"requestId\":}", "{\"a\":1,}", "{'a':1}", "{} {}",
        "   ", "{\"a\":\"\\u0000\"}", "{\"a\":\"unterminated}"
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad [0]; i++)
        s_fail (OP_UPDATE, bad [i], "", "MALFORMED_JSON");

    //  The NUL inside the body counts: it is not the end of the text.
    casm_validate_t *check = casm_validate_new (OP_UPDATE, "{}\0{}", 5);
    ck_assert (s_has (check, "", "MALFORMED_JSON"));
    casm_validate_destroy (&check);

    //  The message says where.
    check = s_check (OP_UPDATE, "{\n\"a\": tru}");
    json_t *error = json_array_get (casm_validate_errors (check), 0);
    const char *message = json_string_value (json_object_get (error,
                                                              "message"));
    ck_assert_ptr_nonnull (strstr (message, "line 2"));
    ck_assert_ptr_nonnull (strstr (message, "column"));
    ck_assert_uint_eq (s_count (check), 1);
    casm_validate_destroy (&check);
}
END_TEST

START_TEST (test_empty_body)
{
    casm_validate_t *check = casm_validate_new (OP_UPDATE, NULL, 0);
    ck_assert (!casm_validate_ok (check));
    ck_assert (s_has (check, "", "MALFORMED_JSON"));
    casm_validate_destroy (&check);
    s_fail (CASM_OP_CREATE, "", "", "MALFORMED_JSON");
}
END_TEST

START_TEST (test_duplicate_key)
{
    s_fail (OP_UPDATE, "{\"requestId\":\"r\",\"requestId\":\"s\","
            "\"customer\":{\"refId\":\"" UUID "\"},"
            "\"customAttributes\":{}}", "", "MALFORMED_JSON");
    s_fail (OP_UPDATE, "{\"requestId\":\"r\",\"customer\":{\"refId\":\""
            UUID "\"},\"customAttributes\":{\"a\":\"1\",\"a\":\"2\"}}",
            "", "MALFORMED_JSON");
}
END_TEST

START_TEST (test_invalid_utf8)
{
    //  A bare continuation byte in a key, an overlong form and a cut
    //  sequence in values, a lone surrogate's encoding.
    s_fail (OP_UPDATE, "{\"requestId\":\"r\",\"customer\":{\"refId\":\""
            UUID "\"},\"customAttributes\":{\"k\x80\":\"v\"}}",
            "", "INVALID_UTF8");
    s_fail (OP_UPDATE, "{\"requestId\":\"r\",\"customer\":{\"refId\":\""
            UUID "\"},\"customAttributes\":{\"k\":\"\xc0\xaf\"}}",
            "", "INVALID_UTF8");
    s_fail (OP_UPDATE, "{\"requestId\":\"r\",\"customer\":{\"refId\":\""
            UUID "\"},\"customAttributes\":{\"k\":\"a\xc3\"}}",
            "", "INVALID_UTF8");
    s_fail (OP_UPDATE, "{\"requestId\":\"r\",\"customer\":{\"refId\":\""
            UUID "\"},\"customAttributes\":{\"k\":\"\xed\xa0\x80\"}}",
            "", "INVALID_UTF8");

    //  The error body must itself be valid JSON text.
    casm_validate_t *check = s_check (OP_UPDATE, "{\"k\xff\":1}");
    char *errors = json_dumps (casm_validate_errors (check), 0);
    ck_assert_ptr_nonnull (errors);
    free (errors);
    casm_validate_destroy (&check);
}
END_TEST

//  A value nested depth levels deep, inside customAttributes (which is
//  itself at depth 2).
static char *
s_nested (int depth)
{
    char *open = s_repeat ("[", depth - 2);
    char *close = s_repeat ("]", depth - 2);
    size_t size = 2 * depth + 256;
    char *text = malloc (size);
    snprintf (text, size, "{\"requestId\":\"r\",\"customer\":{\"refId\":\""
              UUID "\"},\"customAttributes\":{\"k\":%s%s}}", open, close);
    free (open);
    free (close);
    return text;
}

START_TEST (test_depth)
{
    //  32 levels reach the parser: the value's type is the only problem.
    char *text = s_nested (CASM_JSON_DEPTH_MAX);
    ck_assert_int_eq (casm_validate_depth (text, strlen (text),
                                           CASM_JSON_DEPTH_MAX),
                      CASM_JSON_DEPTH_MAX);
    s_fail (OP_UPDATE, text, "customAttributes.k", "INVALID_TYPE");
    casm_validate_t *check = s_check (OP_UPDATE, text);
    ck_assert (!s_has (check, "", "TOO_DEEP"));
    casm_validate_destroy (&check);
    free (text);

    text = s_nested (CASM_JSON_DEPTH_MAX + 1);
    check = s_check (OP_UPDATE, text);
    ck_assert (s_has (check, "", "TOO_DEEP"));
    ck_assert_uint_eq (s_count (check), 1);
    casm_validate_destroy (&check);
    free (text);

    //  A deep bomb is refused without being parsed.
    text = s_repeat ("[", 1000000);
    s_fail (OP_UPDATE, text, "", "TOO_DEEP");
    free (text);
}
END_TEST

START_TEST (test_depth_ignores_strings)
{
    //  Brackets inside strings, even after escaped quotes, are text.
    char *brackets = s_repeat ("[{", 50);
    json_t *request = s_update (json_pack ("{s:s, s:s}", brackets, "v",
                                           "k", brackets));
    s_pass_json (OP_UPDATE, request);
    free (brackets);

    const char *text = "[\"\\\"[[[[\", [\"\\\\\", [[]]]]";
    ck_assert_int_eq (casm_validate_depth (text, strlen (text), 32), 4);
    ck_assert_int_eq (casm_validate_depth ("[[[", 3, 2), 3);
    ck_assert_int_eq (casm_validate_depth ("]]][", 4, 2), 1);
    ck_assert_int_eq (casm_validate_depth ("\"[[[", 4, 2), 0);
}
END_TEST

START_TEST (test_top_level_not_object)
{
    const char *bad [] = { "[]", "\"text\"", "42", "null", "true" };
    for (size_t i = 0; i < sizeof bad / sizeof bad [0]; i++)
        s_fail (OP_UPDATE, bad [i], "", "INVALID_TYPE");
}
END_TEST

//  ---------------------------------------------------------------------
//  createCustomer

START_TEST (test_create_defaults)
{
    casm_validate_t *check = s_pass (CASM_OP_CREATE,
        "{\"requestId\":\"c-1\",\"externalId\":\"CRM-1\"}");
    json_t *command = casm_validate_command (check);
    ck_assert_str_eq (casm_validate_external_id (check), "CRM-1");
    ck_assert_ptr_null (casm_validate_ref_id (check));
    ck_assert_str_eq (json_string_value (json_object_get (command,
                                                          "externalId")),
                      "CRM-1");
    ck_assert (json_is_null (json_object_get (command, "customName")));
    ck_assert (json_is_null (json_object_get (command, "customerSegment")));
    ck_assert_uint_eq (json_object_size (json_object_get (command,
                       "customAttributes")), 0);
    ck_assert (json_is_false (json_object_get (command, "testCustomer")));
    ck_assert_str_eq (json_string_value (json_object_get (command, "state")),
                      "ACTIVE");
    ck_assert (json_is_null (json_object_get (command, "stateReason")));
    ck_assert_uint_eq (strlen (json_string_value (
                           json_object_get (command, "requestHash"))), 64);
    casm_validate_destroy (&check);
}
END_TEST

START_TEST (test_create_full)
{
    casm_validate_t *check = s_pass (CASM_OP_CREATE,
        "{\"requestId\":\"c-1\",\"externalId\":\"CRM-1\","
        "\"customName\":\"Ann\",\"customerSegment\":null,"
        "\"customAttributes\":{\"a\":\"b\"},\"testCustomer\":true,"
        "\"state\":{\"state\":\"INACTIVE\",\"stateReason\":\"new\"}}");
    json_t *command = casm_validate_command (check);
    ck_assert_str_eq (json_string_value (json_object_get (command,
                                                          "customName")),
                      "Ann");
    ck_assert (json_is_true (json_object_get (command, "testCustomer")));
    ck_assert_str_eq (json_string_value (json_object_get (command, "state")),
                      "INACTIVE");
    ck_assert_str_eq (json_string_value (json_object_get (command,
                                                          "stateReason")),
                      "new");
    casm_validate_destroy (&check);

    check = s_pass (CASM_OP_CREATE, "{\"requestId\":\"c\","
                    "\"externalId\":\"x\",\"state\":{\"state\":\"ACTIVE\","
                    "\"stateReason\":null}}");
    casm_validate_destroy (&check);
}
END_TEST

START_TEST (test_create_rules)
{
    const char *create = "{\"requestId\":\"c\",";

    char text [1024];
    snprintf (text, sizeof text, "{\"requestId\":\"c\"}");
    s_fail (CASM_OP_CREATE, text, "externalId", "REQUIRED");

    const char *states [] = { "SUSPENDED", "DEACTIVATED", "active", "" };
    for (size_t i = 0; i < sizeof states / sizeof states [0]; i++) {
        snprintf (text, sizeof text, "%s\"externalId\":\"x\",\"state\":"
                  "{\"state\":\"%s\"}}", create, states [i]);
        s_fail (CASM_OP_CREATE, text, "state.state", "INVALID_VALUE");
    }

    snprintf (text, sizeof text, "%s\"externalId\":\"x\",\"state\":{}}",
              create);
    s_fail (CASM_OP_CREATE, text, "state.state", "REQUIRED");
    snprintf (text, sizeof text, "%s\"externalId\":\"x\",\"state\":"
              "\"ACTIVE\"}", create);
    s_fail (CASM_OP_CREATE, text, "state", "INVALID_TYPE");
    snprintf (text, sizeof text, "%s\"externalId\":\"x\",\"state\":"
              "{\"state\":\"ACTIVE\",\"since\":1}}", create);
    s_fail (CASM_OP_CREATE, text, "state.since", "UNKNOWN_FIELD");
    snprintf (text, sizeof text, "%s\"externalId\":\"x\",\"testCustomer\":"
              "\"yes\"}", create);
    s_fail (CASM_OP_CREATE, text, "testCustomer", "INVALID_TYPE");
    snprintf (text, sizeof text, "%s\"externalId\":\"x\","
              "\"customAttributes\":{\"a\":null}}", create);
    s_fail (CASM_OP_CREATE, text, "customAttributes.a", "INVALID_VALUE");
    snprintf (text, sizeof text, "%s\"externalId\":\"x\","
              "\"customAttributes\":null}", create);
    s_fail (CASM_OP_CREATE, text, "customAttributes", "INVALID_TYPE");
    snprintf (text, sizeof text, "%s\"externalId\":\"x\",\"refId\":\""
              UUID "\"}", create);
    s_fail (CASM_OP_CREATE, text, "refId", "UNKNOWN_FIELD");
    snprintf (text, sizeof text, "%s\"externalId\":\"x\",\"customName\":"
              "7}", create);
    s_fail (CASM_OP_CREATE, text, "customName", "INVALID_TYPE");
    snprintf (text, sizeof text, "%s\"externalId\":\"x\\u0000\"}", create);
    s_fail (CASM_OP_CREATE, text, "", "MALFORMED_JSON");
    snprintf (text, sizeof text, "%s\"externalId\":\"x\\u001f\"}", create);
    s_fail (CASM_OP_CREATE, text, "externalId", "INVALID_FORMAT");
}
END_TEST

//  A createCustomer request with one field set to count units.
static json_t *
s_create_with (const char *field, const char *unit, size_t count)
{
    char *value = s_repeat (unit, count);
    json_t *request = json_pack ("{s:s, s:s}", "requestId", "c",
                                 "externalId", "x");
    if (strcmp (field, "stateReason") == 0)
        json_object_set_new (request, "state",
                             json_pack ("{s:s, s:s}", "state", "ACTIVE",
                                        "stateReason", value));
    else
        json_object_set_new (request, field, json_string (value));
    free (value);
    return request;
}

START_TEST (test_create_lengths)
{
    s_pass_json (CASM_OP_CREATE, s_create_with ("customName", "n", 256));
    s_fail_json (CASM_OP_CREATE, s_create_with ("customName", "n", 257),
                 "customName", "TOO_LONG");
    s_pass_json (CASM_OP_CREATE, s_create_with ("customerSegment", "s",
                                                128));
    s_fail_json (CASM_OP_CREATE, s_create_with ("customerSegment", "s",
                                                129),
                 "customerSegment", "TOO_LONG");
    s_pass_json (CASM_OP_CREATE, s_create_with ("externalId", "e", 128));
    s_fail_json (CASM_OP_CREATE, s_create_with ("externalId", "e", 129),
                 "externalId", "TOO_LONG");
    s_pass_json (CASM_OP_CREATE, s_create_with ("stateReason", "r", 256));
    s_fail_json (CASM_OP_CREATE, s_create_with ("stateReason", "r", 257),
                 "state.stateReason", "TOO_LONG");

    //  The attribute limits are those of the update.
    json_t *request = s_create_with ("customName", "n", 1);
    json_object_set_new (request, "customAttributes",
                         s_pairs (CASM_ATTRIBUTES_MAX + 1));
    s_fail_json (CASM_OP_CREATE, request, "customAttributes", "TOO_MANY");
    request = s_create_with ("customName", "n", 1);
    json_object_set_new (request, "customAttributes",
                         s_pair ("k", 1, "v", 4097));
    s_fail_json (CASM_OP_CREATE, request, "customAttributes.k", "TOO_LONG");
}
END_TEST

//  ---------------------------------------------------------------------
//  updateCustomerState

START_TEST (test_update_state)
{
    const char *states [] = { "INACTIVE", "ACTIVE", "SUSPENDED",
                              "DEACTIVATED" };
    for (size_t i = 0; i < 4; i++) {
        char text [512];
        snprintf (text, sizeof text, "{\"requestId\":\"s\",\"customer\":"
                  "{\"refId\":\"" UUID "\"},\"state\":{\"state\":\"%s\","
                  "\"stateReason\":\"why\"}}", states [i]);
        casm_validate_t *check = s_pass (CASM_OP_UPDATE_STATE, text);
        json_t *command = casm_validate_command (check);
        ck_assert_str_eq (json_string_value (json_object_get (command,
                                                              "state")),
                          states [i]);
        ck_assert_str_eq (json_string_value (json_object_get (command,
                                                         "stateReason")),
                          "why");
        ck_assert_str_eq (json_string_value (json_object_get (command,
                                                              "refId")),
                          UUID);
        ck_assert_uint_eq (json_object_size (command), 5);
        casm_validate_destroy (&check);
    }

    casm_validate_t *check = s_pass (CASM_OP_UPDATE_STATE,
        "{\"requestId\":\"s\",\"customer\":{\"externalId\":\"x\"},"
        "\"state\":{\"state\":\"SUSPENDED\"}}");
    ck_assert (json_is_null (json_object_get (casm_validate_command (check),
                                              "stateReason")));
    ck_assert_str_eq (casm_validate_external_id (check), "x");
    casm_validate_destroy (&check);

    const char *prefix = "{\"requestId\":\"s\",\"customer\":{\"refId\":\""
                         UUID "\"}";
    char text [512];
    snprintf (text, sizeof text, "%s,\"state\":{\"state\":\"CLOSED\"}}",
              prefix);
    s_fail (CASM_OP_UPDATE_STATE, text, "state.state", "INVALID_VALUE");
    snprintf (text, sizeof text, "%s}", prefix);
    s_fail (CASM_OP_UPDATE_STATE, text, "state", "REQUIRED");
    snprintf (text, sizeof text, "%s,\"state\":\"ACTIVE\"}", prefix);
    s_fail (CASM_OP_UPDATE_STATE, text, "state", "INVALID_TYPE");
    snprintf (text, sizeof text, "%s,\"state\":{\"state\":1}}", prefix);
    s_fail (CASM_OP_UPDATE_STATE, text, "state.state", "INVALID_TYPE");
    snprintf (text, sizeof text, "%s,\"state\":{\"state\":\"ACTIVE\","
              "\"stateReason\":false}}", prefix);
    s_fail (CASM_OP_UPDATE_STATE, text, "state.stateReason",
            "INVALID_TYPE");
    snprintf (text, sizeof text, "%s,\"state\":{\"state\":\"ACTIVE\"},"
              "\"customAttributes\":{}}", prefix);
    s_fail (CASM_OP_UPDATE_STATE, text, "customAttributes",
            "UNKNOWN_FIELD");
    s_fail (CASM_OP_UPDATE_STATE, "{\"requestId\":\"s\",\"state\":"
            "{\"state\":\"ACTIVE\"}}", "customer", "REQUIRED");
    s_fail (CASM_OP_UPDATE_STATE, "{\"customer\":{\"externalId\":\"x\"},"
            "\"state\":{\"state\":\"ACTIVE\"}}", "requestId", "REQUIRED");
}
END_TEST

//  ---------------------------------------------------------------------
//  readCustomer

START_TEST (test_read)
{
    casm_validate_t *check = s_pass (CASM_OP_READ,
        "{\"refId\":\"5B3F8D2E-8A41-4F63-9D0B-2F1F4C1F0A77\"}");
    ck_assert_str_eq (casm_validate_ref_id (check), UUID);
    ck_assert_ptr_null (casm_validate_external_id (check));
    casm_validate_destroy (&check);

    check = s_pass (CASM_OP_READ, "{\"externalId\":\"CRM 1\"}");
    ck_assert_str_eq (casm_validate_external_id (check), "CRM 1");
    ck_assert_ptr_null (casm_validate_ref_id (check));
    casm_validate_destroy (&check);

    s_fail (CASM_OP_READ, "{\"refId\":\"" UUID "\",\"externalId\":\"x\"}",
            "customer", "INVALID_VALUE");
    s_fail (CASM_OP_READ, "{}", "customer", "INVALID_VALUE");
    s_fail (CASM_OP_READ, "{\"refId\":\"nope\"}", "refId", "INVALID_FORMAT");
    s_fail (CASM_OP_READ, "{\"externalId\":\"\"}", "externalId",
            "TOO_SHORT");
    s_fail (CASM_OP_READ, "{\"refId\":\"" UUID "\",\"x\":\"1\"}", "x",
            "UNKNOWN_FIELD");

    //  What the gateway makes of a query value that is not UTF-8.
    s_fail (CASM_OP_READ, "{\"externalId\":\"CRM\\u001a001\"}",
            "externalId", "INVALID_FORMAT");
}
END_TEST

START_TEST (test_unknown_operation)
{
    s_fail (CASM_OP_PING, "{}", "", "INVALID_VALUE");
    s_fail (99, "{}", "", "INVALID_VALUE");
}
END_TEST

//  ---------------------------------------------------------------------
//  The request hash

static char *
s_hash_of (int op, const char *text)
{
    casm_validate_t *check = s_pass (op, text);
    char *hash = strdup (casm_validate_hash (check));
    casm_validate_destroy (&check);
    return hash;
}

START_TEST (test_hash)
{
    char *a = s_hash_of (OP_UPDATE,
        "{\"requestId\":\"r\",\"customer\":{\"refId\":\"" UUID "\"},"
        "\"customAttributes\":{\"x\":\"1\",\"y\":\"2\"},\"merge\":true}");
    char *b = s_hash_of (OP_UPDATE,
        " { \"merge\" : true, \"customAttributes\":{\"y\":\"2\","
        "\"x\":\"1\"},\n\"customer\":{\"refId\":\"" UUID "\"},"
        "\"requestId\":\"r\"}");
    char *c = s_hash_of (OP_UPDATE,
        "{\"requestId\":\"r\",\"customer\":{\"refId\":\"" UUID "\"},"
        "\"customAttributes\":{\"x\":\"1\",\"y\":\"3\"},\"merge\":true}");
    ck_assert_str_eq (a, b);
    ck_assert_str_ne (a, c);

    //  The documented formula: SHA-256 of name, newline, sorted compact.
    const char *canonical =
        "updateCustomerCustomAttributes\n"
        "{\"customAttributes\":{\"x\":\"1\",\"y\":\"2\"},"
        "\"customer\":{\"refId\":\"" UUID "\"},\"merge\":true,"
        "\"requestId\":\"r\"}";
    struct sha256_ctx context;
    uint8_t digest [SHA256_DIGEST_SIZE];
    sha256_init (&context);
    sha256_update (&context, strlen (canonical), (const uint8_t *) canonical);
    sha256_digest (&context, sizeof digest, digest);
    char expected [65];
    for (int i = 0; i < SHA256_DIGEST_SIZE; i++)
        sprintf (expected + 2 * i, "%02x", digest [i]);
    ck_assert_str_eq (a, expected);

    //  The operation is part of it.
    char *d = s_hash_of (CASM_OP_CREATE,
                         "{\"requestId\":\"r\",\"externalId\":\"x\"}");
    char *e = s_hash_of (CASM_OP_CREATE,
                         "{\"externalId\":\"x\",\"requestId\":\"r\"}");
    ck_assert_str_eq (d, e);
    ck_assert_str_ne (a, d);
    free (a);
    free (b);
    free (c);
    free (d);
    free (e);
}
END_TEST

static Suite *
s_suite (void)
{
    Suite *suite = suite_create ("validate");
    TCase *tc = tcase_create ("validate");
    tcase_set_timeout (tc, 20);
    tcase_add_test (tc, test_update_valid_ref_id);
    tcase_add_test (tc, test_update_valid_external_id);
    tcase_add_test (tc, test_update_merge_nulls);
    tcase_add_test (tc, test_key_length);
    tcase_add_test (tc, test_key_length_boundary);
    tcase_add_test (tc, test_key_control_characters);
    tcase_add_test (tc, test_value_length);
    tcase_add_test (tc, test_pair_count);
    tcase_add_test (tc, test_pair_count_alone);
    tcase_add_test (tc, test_errors_bounded);
    tcase_add_test (tc, test_value_types);
    tcase_add_test (tc, test_request_id);
    tcase_add_test (tc, test_request_id_kept_on_errors);
    tcase_add_test (tc, test_customer_reference);
    tcase_add_test (tc, test_customer_ref_id_format);
    tcase_add_test (tc, test_customer_external_id);
    tcase_add_test (tc, test_update_types);
    tcase_add_test (tc, test_unknown_field);
    tcase_add_test (tc, test_every_problem_listed);
    tcase_add_test (tc, test_malformed_json);
    tcase_add_test (tc, test_empty_body);
    tcase_add_test (tc, test_duplicate_key);
    tcase_add_test (tc, test_invalid_utf8);
    tcase_add_test (tc, test_depth);
    tcase_add_test (tc, test_depth_ignores_strings);
    tcase_add_test (tc, test_top_level_not_object);
    tcase_add_test (tc, test_create_defaults);
    tcase_add_test (tc, test_create_full);
    tcase_add_test (tc, test_create_rules);
    tcase_add_test (tc, test_create_lengths);
    tcase_add_test (tc, test_update_state);
    tcase_add_test (tc, test_read);
    tcase_add_test (tc, test_unknown_operation);
    tcase_add_test (tc, test_hash);
    suite_add_tcase (suite, tc);
    return suite;
}

int
main (void)
{
    SRunner *runner = srunner_create (s_suite ());
    srunner_run_all (runner, CK_NORMAL);
    int failed = srunner_ntests_failed (runner);
    srunner_free (runner);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
