/*  test_error: the one error body of the API (shared/casm_error.h).

    Every process answers errors through casm_error_body, so its shape is
    the API's error contract (DESIGN.md 2.3): status, code and message
    always; parameter, requestId and errors only when known; and bytes from
    a request (a hostile request id or field name) never make the body
    invalid JSON.                                                           */

#include "casm_error.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

//  Parses the body, checks that size is its length and that it is one
//  compact line, and returns the object.
static json_t *
s_parse (char *text, size_t size)
{
    ck_assert_ptr_nonnull (text);
    ck_assert_uint_eq (size, strlen (text));
    ck_assert_ptr_null (strchr (text, '\n'));

    json_error_t error;
    json_t *body = json_loadb (text, size, 0, &error);
    ck_assert_msg (body != NULL, "not JSON: %s (%s)", text, error.text);
    ck_assert (json_is_object (body));
    free (text);
    return body;
}

START_TEST (test_full_shape)
{
    json_t *errors = json_array ();
    casm_error_add (errors, "customAttributes.x", "TOO_LONG",
                    "longer than 4096 bytes");
    casm_error_add (errors, "requestId", "MISSING", "is mandatory");

    size_t size = 0;
    char *text = casm_error_body (400, CASM_ERR_VALIDATION, NULL,
                                  "customAttributes", "req-1", errors,
                                  &size);
    json_t *body = s_parse (text, size);

    ck_assert_uint_eq (json_object_size (body), 6);
    ck_assert_int_eq (json_integer_value (json_object_get (body, "status")),
                      400);
    ck_assert_str_eq (json_string_value (json_object_get (body, "code")),
                      "CASM-VALIDATION");
    ck_assert_str_eq (json_string_value (json_object_get (body, "message")),
                      casm_error_message (CASM_ERR_VALIDATION));
    ck_assert_str_eq (json_string_value (json_object_get (body,
                                                          "parameter")),
                      "customAttributes");
    ck_assert_str_eq (json_string_value (json_object_get (body,
                                                          "requestId")),
                      "req-1");

    json_t *list = json_object_get (body, "errors");
    ck_assert (json_is_array (list));
    ck_assert_uint_eq (json_array_size (list), 2);
    json_t *first = json_array_get (list, 0);
    ck_assert_uint_eq (json_object_size (first), 3);
    ck_assert_str_eq (json_string_value (json_object_get (first, "field")),
                      "customAttributes.x");
    ck_assert_str_eq (json_string_value (json_object_get (first, "code")),
                      "TOO_LONG");
    ck_assert_str_eq (json_string_value (json_object_get (first,
                                                          "message")),
                      "longer than 4096 bytes");
    ck_assert_str_eq (json_string_value (json_object_get (
                          json_array_get (list, 1), "field")),
                      "requestId");
    json_decref (body);
}
END_TEST

START_TEST (test_optional_fields_left_out)
{
    size_t size = 0;
    char *text = casm_error_body (404, CASM_ERR_NOT_FOUND, NULL, NULL, NULL,
                                  NULL, &size);
    json_t *body = s_parse (text, size);
    ck_assert_uint_eq (json_object_size (body), 3);
    ck_assert_int_eq (json_integer_value (json_object_get (body, "status")),
                      404);
    ck_assert_str_eq (json_string_value (json_object_get (body, "code")),
                      "NOT-FOUND");
    ck_assert (json_is_string (json_object_get (body, "message")));
    ck_assert_ptr_null (json_object_get (body, "parameter"));
    ck_assert_ptr_null (json_object_get (body, "requestId"));
    ck_assert_ptr_null (json_object_get (body, "errors"));
    json_decref (body);

    //  An empty request id is "not known" as well.
    text = casm_error_body (500, CASM_ERR_INTERNAL, NULL, NULL, "", NULL,
                            &size);
    body = s_parse (text, size);
    ck_assert_ptr_null (json_object_get (body, "requestId"));
    ck_assert_uint_eq (json_object_size (body), 3);
    json_decref (body);
}
END_TEST

START_TEST (test_own_message)
{
    size_t size = 0;
    char *text = casm_error_body (503, CASM_ERR_UNAVAILABLE,
                                  "PostgreSQL is down.", NULL, NULL, NULL,
                                  &size);
    json_t *body = s_parse (text, size);
    ck_assert_str_eq (json_string_value (json_object_get (body, "message")),
                      "PostgreSQL is down.");
    json_decref (body);
}
END_TEST

START_TEST (test_standard_messages)
{
    const char *codes [] = {
        CASM_ERR_VALIDATION, CASM_ERR_NOT_FOUND_ENTITY, CASM_ERR_DEACTIVATED,
        CASM_ERR_EXTERNAL_ID_EXISTS, CASM_ERR_REQUEST_ID_REUSED,
        CASM_ERR_UNAUTHORIZED, CASM_ERR_NOT_FOUND, CASM_ERR_METHOD,
        CASM_ERR_TOO_LARGE, CASM_ERR_MEDIA_TYPE, CASM_ERR_UNAVAILABLE,
        CASM_ERR_TIMEOUT, CASM_ERR_INTERNAL
    };
    const char *fallback = casm_error_message ("NO-SUCH-CODE");
    ck_assert_ptr_nonnull (fallback);
    for (size_t i = 0; i < sizeof codes / sizeof codes [0]; i++) {
        const char *message = casm_error_message (codes [i]);
        ck_assert_ptr_nonnull (message);
        ck_assert_msg (strlen (message) > 0, "%s has no message", codes [i]);
        ck_assert_msg (strcmp (message, fallback) != 0,
                       "%s has no message of its own", codes [i]);
    }
    ck_assert_str_eq (casm_error_message (CASM_ERR_DEACTIVATED),
                      "Entity is deactivated.");
}
END_TEST

START_TEST (test_invalid_utf8_request_id)
{
    //  Invalid UTF-8 and a quote: still valid JSON, still a string.
    const char *hostile = "ab\xff\xfe\"c\xc3";
    size_t size = 0;
    char *text = casm_error_body (400, CASM_ERR_VALIDATION, NULL, "requestId",
                                  hostile, NULL, &size);
    json_t *body = s_parse (text, size);
    const char *echoed = json_string_value (json_object_get (body,
                                                             "requestId"));
    ck_assert_ptr_nonnull (echoed);
    ck_assert_uint_eq (strlen (echoed), strlen (hostile));
    ck_assert (strncmp (echoed, "ab", 2) == 0);
    ck_assert_ptr_nonnull (strchr (echoed, '"'));
    ck_assert_ptr_null (strchr (echoed, '\xff'));
    json_decref (body);
}
END_TEST

START_TEST (test_invalid_utf8_field)
{
    json_t *errors = json_array ();
    casm_error_add (errors, "customAttributes.\xc0\xaf", "INVALID_UTF8",
                    "not valid UTF-8");
    size_t size = 0;
    char *text = casm_error_body (400, CASM_ERR_VALIDATION, NULL, NULL, NULL,
                                  errors, &size);
    json_t *body = s_parse (text, size);
    json_t *first = json_array_get (json_object_get (body, "errors"), 0);
    const char *field = json_string_value (json_object_get (first, "field"));
    ck_assert_ptr_nonnull (field);
    ck_assert (strncmp (field, "customAttributes.", 17) == 0);
    json_decref (body);
}
END_TEST

START_TEST (test_valid_utf8_kept)
{
    const char *name = "kunde-\xc3\xa4\xe2\x82\xac";
    size_t size = 0;
    char *text = casm_error_body (422, CASM_ERR_REQUEST_ID_REUSED, NULL,
                                  NULL, name, NULL, &size);
    json_t *body = s_parse (text, size);
    ck_assert_str_eq (json_string_value (json_object_get (body,
                                                          "requestId")),
                      name);
    json_decref (body);
}
END_TEST

int
main (void)
{
    Suite *suite = suite_create ("casm_error");
    TCase *body = tcase_create ("body");
    tcase_add_test (body, test_full_shape);
    tcase_add_test (body, test_optional_fields_left_out);
    tcase_add_test (body, test_own_message);
    tcase_add_test (body, test_standard_messages);
    tcase_add_test (body, test_invalid_utf8_request_id);
    tcase_add_test (body, test_invalid_utf8_field);
    tcase_add_test (body, test_valid_utf8_kept);
    suite_add_tcase (suite, body);

    SRunner *runner = srunner_create (suite);
    srunner_run_all (runner, CK_NORMAL);
    int failed = srunner_ntests_failed (runner);
    srunner_free (runner);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
