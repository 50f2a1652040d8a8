/*  test_route: the gateway's routes and request checks (gateway/casm_route).

    The route table is the REST contract of DESIGN.md 2: a wrong entry is a
    404 or 405 where the API promises an answer. The media type check
    decides 415, the trace id check decides whether a client's
    X-Request-Id is echoed, and the read body is the only JSON the gateway
    writes from client input, so each is tested at its edges.              */

#include "casm_msg.h"
#include "casm_route.h"

#include <check.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

START_TEST (test_operations)
{
    struct {
        const char *method;
        const char *path;
        int op;
        int has_body;
    } cases [] = {
        { "PUT", "/v1/casm/customers/update-custom-attributes",
          CASM_OP_UPDATE_ATTRIBUTES, 1 },
        { "POST", "/v1/casm/customers/create", CASM_OP_CREATE, 1 },
        { "PUT", "/v1/casm/customers/update-state", CASM_OP_UPDATE_STATE, 1 },
        { "GET", "/v1/casm/customers/read", CASM_OP_READ, 0 },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases [0]; i++) {
        casm_route_t route;
        ck_assert_int_eq (casm_route_find (cases [i].method, cases [i].path,
                                           &route), CASM_ROUTE_FOUND);
        ck_assert_int_eq (route.kind, CASM_ROUTE_OPERATION);
        ck_assert_int_eq (route.op, cases [i].op);
        ck_assert_int_eq (route.has_body, cases [i].has_body);
        ck_assert_str_eq (route.allow, cases [i].method);
    }
}
END_TEST

START_TEST (test_operational)
{
    casm_route_t route;
    ck_assert_int_eq (casm_route_find ("GET", "/health", &route),
                      CASM_ROUTE_FOUND);
    ck_assert_int_eq (route.kind, CASM_ROUTE_HEALTH);
    ck_assert_int_eq (route.has_body, 0);

    ck_assert_int_eq (casm_route_find ("GET", "/ready", &route),
                      CASM_ROUTE_FOUND);
    ck_assert_int_eq (route.kind, CASM_ROUTE_READY);
    ck_assert_int_eq (route.op, CASM_OP_PING);
}
END_TEST

START_TEST (test_wrong_method)
{
    casm_route_t route;
    ck_assert_int_eq (casm_route_find ("GET",
                                       "/v1/casm/customers/create", &route),
                      CASM_ROUTE_BAD_METHOD);
    ck_assert_str_eq (route.allow, "POST");

    ck_assert_int_eq (casm_route_find ("POST", "/health", &route),
                      CASM_ROUTE_BAD_METHOD);
    ck_assert_str_eq (route.allow, "GET");

    //  HEAD is not served, and methods are case-sensitive.
    ck_assert_int_eq (casm_route_find ("HEAD", "/health", &route),
                      CASM_ROUTE_BAD_METHOD);
    ck_assert_int_eq (casm_route_find ("put",
                      "/v1/casm/customers/update-state", &route),
                      CASM_ROUTE_BAD_METHOD);
    ck_assert_str_eq (route.allow, "PUT");
}
END_TEST

START_TEST (test_unknown_path)
{
    const char *paths [] = {
        "/", "", "/v1/casm/customers", "/v1/casm/customers/",
        "/v1/casm/customers/read/", "/health/", "/HEALTH",
        "/v1/casm/customers/update-custom-attributesx",
        "/v1/casm/customers/create?x=1",
    };
    for (size_t i = 0; i < sizeof paths / sizeof paths [0]; i++) {
        casm_route_t route;
        ck_assert_int_eq (casm_route_find ("GET", paths [i], &route),
                          CASM_ROUTE_NOT_FOUND);
    }
    casm_route_t route;
    ck_assert_int_eq (casm_route_find (NULL, "/health", &route),
                      CASM_ROUTE_NOT_FOUND);
    ck_assert_int_eq (casm_route_find ("GET", NULL, &route),
                      CASM_ROUTE_NOT_FOUND);
}
END_TEST

START_TEST (test_json_media_type)
{
    const char *json [] = {
        "application/json", "APPLICATION/JSON", "Application/Json",
        "application/json; charset=utf-8", "application/json;charset=UTF-8",
        "  application/json", "application/json ;charset=utf-8",
        "application/json\t",
    };
    for (size_t i = 0; i < sizeof json / sizeof json [0]; i++)
        ck_assert_msg (casm_route_is_json (json [i]), "%s", json [i]);

    const char *other [] = {
        "", "text/plain", "application/jsonx", "application/json-patch+json",
        "application/xml", "application/", "json", "application/jso",
        "text/json",
    };
    for (size_t i = 0; i < sizeof other / sizeof other [0]; i++)
        ck_assert_msg (!casm_route_is_json (other [i]), "%s", other [i]);
    ck_assert (!casm_route_is_json (NULL));
}
END_TEST

START_TEST (test_trace_id)
{
    char longest [CASM_TRACE_ID_MAX + 2];
    memset (longest, 'a', CASM_TRACE_ID_MAX);
    longest [CASM_TRACE_ID_MAX] = 0;
    ck_assert (casm_route_trace_id_valid (longest));
    ck_assert (casm_route_trace_id_valid ("x"));
    ck_assert (casm_route_trace_id_valid ("5b3f8d2e-8a41-4f63-9d0b-2f1f"));
    ck_assert (casm_route_trace_id_valid ("!~{}\"\\"));

    //  One too long, empty, spaces, control and non-ASCII bytes.
    longest [CASM_TRACE_ID_MAX] = 'a';
    longest [CASM_TRACE_ID_MAX + 1] = 0;
    ck_assert (!casm_route_trace_id_valid (longest));
    ck_assert (!casm_route_trace_id_valid (""));
    ck_assert (!casm_route_trace_id_valid (NULL));
    ck_assert (!casm_route_trace_id_valid ("a b"));
    ck_assert (!casm_route_trace_id_valid ("a\tb"));
    ck_assert (!casm_route_trace_id_valid ("a\x7f"));
    ck_assert (!casm_route_trace_id_valid ("caf\xc3\xa9"));
}
END_TEST

//  The read body parsed back, with its key count checked.
static json_t *
s_read_body (const char *ref_id, size_t ref_id_size,
             const char *external_id, size_t external_id_size,
             size_t keys)
{
    size_t size = 0;
    char *text = casm_route_read_body (ref_id, ref_id_size, external_id,
                                       external_id_size, &size);
    ck_assert_ptr_nonnull (text);
    ck_assert_uint_eq (size, strlen (text));
    json_t *body = json_loads (text, 0, NULL);
    free (text);
    ck_assert (json_is_object (body));
    ck_assert_uint_eq (json_object_size (body), keys);
    return body;
}

START_TEST (test_read_body)
{
    json_t *body = s_read_body ("R1", 2, NULL, 0, 1);
    ck_assert_str_eq (json_string_value (json_object_get (body, "refId")),
                      "R1");
    json_decref (body);

    body = s_read_body (NULL, 0, "CRM-1", 5, 1);
    ck_assert_str_eq (json_string_value (json_object_get (body,
                                                          "externalId")),
                      "CRM-1");
    json_decref (body);

    //  Both, and neither: the validator decides, the gateway passes on.
    body = s_read_body ("R1", 2, "CRM-1", 5, 2);
    json_decref (body);
    body = s_read_body (NULL, 0, NULL, 0, 0);
    json_decref (body);

    //  A parameter without a value is an empty string.
    body = s_read_body ("", 0, NULL, 0, 1);
    ck_assert_str_eq (json_string_value (json_object_get (body, "refId")),
                      "");
    json_decref (body);
}
END_TEST

START_TEST (test_read_body_escaped)
{
    //  Quotes, backslashes and control characters cannot break out.
    const char *hostile = "a\"},\"refId\":\"b\\\n";
    json_t *body = s_read_body (NULL, 0, hostile, strlen (hostile), 1);
    ck_assert_str_eq (json_string_value (json_object_get (body,
                                                          "externalId")),
                      hostile);
    json_decref (body);

    //  Bytes that are not UTF-8, and a NUL, become 0x1A, a control
    //  character the validator refuses ('?' would look up "x??y").
    body = s_read_body ("x\xff\0y", 4, NULL, 0, 1);
    ck_assert_str_eq (json_string_value (json_object_get (body, "refId")),
                      "x\x1a\x1ay");
    json_decref (body);

    //  A NUL alone too (found by fuzz_http: it came out as \u0000, which
    //  the validator cannot parse).
    body = s_read_body (NULL, 0, "a\0b", 3, 1);
    ck_assert_str_eq (json_string_value (json_object_get (body,
                                                          "externalId")),
                      "a\x1a" "b");
    json_decref (body);

    //  Valid UTF-8 passes.
    body = s_read_body ("caf\xc3\xa9", 5, NULL, 0, 1);
    ck_assert_str_eq (json_string_value (json_object_get (body, "refId")),
                      "caf\xc3\xa9");
    json_decref (body);
}
END_TEST

int
main (void)
{
    Suite *suite = suite_create ("casm_route");

    TCase *routes = tcase_create ("routes");
    tcase_add_test (routes, test_operations);
    tcase_add_test (routes, test_operational);
    tcase_add_test (routes, test_wrong_method);
    tcase_add_test (routes, test_unknown_path);
    suite_add_tcase (suite, routes);

    TCase *checks = tcase_create ("checks");
    tcase_add_test (checks, test_json_media_type);
    tcase_add_test (checks, test_trace_id);
    tcase_add_test (checks, test_read_body);
    tcase_add_test (checks, test_read_body_escaped);
    suite_add_tcase (suite, checks);

    SRunner *runner = srunner_create (suite);
    srunner_run_all (runner, CK_NORMAL);
    int failed = srunner_ntests_failed (runner);
    srunner_free (runner);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
