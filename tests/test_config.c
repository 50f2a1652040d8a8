/*  test_config: configuration from the environment (shared/casm_config.h).

    The rule under test is that a value that is set but invalid stops the
    process with status 2 instead of falling back to a default, and that
    the broker's six endpoints come out of BROKER_PORT as docs/internals.md
    lays them out. Each test runs in its own forked process (check's fork
    mode), so setenv in one never leaks into another, and the tests that
    expect an exit use tcase_add_exit_test.                                 */

#include "casm_config.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

static void
s_clean_environment (void)
{
    unsetenv ("CASM_TEST_INT");
    unsetenv ("CASM_TEST_BOOL");
    unsetenv ("CASM_TEST_STR");
    unsetenv ("BROKER_PORT");
    unsetenv ("BROKER_HOST");
    unsetenv ("BROKER_BIND");
}

START_TEST (test_int_unset_or_empty)
{
    ck_assert_int_eq (casm_config_int ("CASM_TEST_INT", 42, 1, 100), 42);
    setenv ("CASM_TEST_INT", "", 1);
    ck_assert_int_eq (casm_config_int ("CASM_TEST_INT", 42, 1, 100), 42);
}
END_TEST

START_TEST (test_int_bounds_inclusive)
{
    setenv ("CASM_TEST_INT", "1", 1);
    ck_assert_int_eq (casm_config_int ("CASM_TEST_INT", 42, 1, 100), 1);
    setenv ("CASM_TEST_INT", "100", 1);
    ck_assert_int_eq (casm_config_int ("CASM_TEST_INT", 42, 1, 100), 100);
    setenv ("CASM_TEST_INT", "-5", 1);
    ck_assert_int_eq (casm_config_int ("CASM_TEST_INT", 0, -5, 5), -5);
    setenv ("CASM_TEST_INT", "9223372036854775807", 1);
    ck_assert_int_eq (casm_config_int ("CASM_TEST_INT", 0, 0, INT64_MAX),
                      INT64_MAX);
}
END_TEST

//  Each of these must exit with status 2.
START_TEST (test_int_below_min)
{
    setenv ("CASM_TEST_INT", "0", 1);
    casm_config_int ("CASM_TEST_INT", 42, 1, 100);
}
END_TEST

START_TEST (test_int_above_max)
{
    setenv ("CASM_TEST_INT", "101", 1);
    casm_config_int ("CASM_TEST_INT", 42, 1, 100);
}
END_TEST

START_TEST (test_int_not_a_number)
{
    setenv ("CASM_TEST_INT", "ten", 1);
    casm_config_int ("CASM_TEST_INT", 42, 1, 100);
}
END_TEST

START_TEST (test_int_trailing_garbage)
{
    setenv ("CASM_TEST_INT", "10ms", 1);
    casm_config_int ("CASM_TEST_INT", 42, 1, 100);
}
END_TEST

START_TEST (test_int_overflow)
{
    setenv ("CASM_TEST_INT", "99999999999999999999999", 1);
    casm_config_int ("CASM_TEST_INT", 42, 0, INT64_MAX);
}
END_TEST

START_TEST (test_bool_values)
{
    const char *yes [] = { "1", "true", "TRUE", "yes", "On" };
    const char *no [] = { "0", "false", "False", "no", "OFF" };
    for (int i = 0; i < 5; i++) {
        setenv ("CASM_TEST_BOOL", yes [i], 1);
        ck_assert_int_eq (casm_config_bool ("CASM_TEST_BOOL", 0), 1);
        setenv ("CASM_TEST_BOOL", no [i], 1);
        ck_assert_int_eq (casm_config_bool ("CASM_TEST_BOOL", 1), 0);
    }
    unsetenv ("CASM_TEST_BOOL");
    ck_assert_int_eq (casm_config_bool ("CASM_TEST_BOOL", 1), 1);
    setenv ("CASM_TEST_BOOL", "", 1);
    ck_assert_int_eq (casm_config_bool ("CASM_TEST_BOOL", 0), 0);
}
END_TEST

START_TEST (test_bool_invalid)
{
    setenv ("CASM_TEST_BOOL", "maybe", 1);
    casm_config_bool ("CASM_TEST_BOOL", 0);
}
END_TEST

START_TEST (test_str)
{
    ck_assert_str_eq (casm_config_str ("CASM_TEST_STR", "dflt"), "dflt");
    ck_assert_ptr_null (casm_config_str ("CASM_TEST_STR", NULL));
    setenv ("CASM_TEST_STR", "", 1);
    ck_assert_str_eq (casm_config_str ("CASM_TEST_STR", "dflt"), "dflt");
    setenv ("CASM_TEST_STR", "value", 1);
    ck_assert_str_eq (casm_config_str ("CASM_TEST_STR", "dflt"), "value");
}
END_TEST

START_TEST (test_endpoints_default)
{
    char buffer [256];
    const char *expected [3][2] = {
        { "tcp://127.0.0.1:5550", "tcp://127.0.0.1:5551" },
        { "tcp://127.0.0.1:5552", "tcp://127.0.0.1:5553" },
        { "tcp://127.0.0.1:5554", "tcp://127.0.0.1:5555" },
    };
    for (int queue = 1; queue <= 3; queue++)
        for (int side = 0; side <= 1; side++) {
            ck_assert_str_eq (casm_config_endpoint (buffer, sizeof buffer,
                                                    queue, side, 0),
                              expected [queue - 1][side]);
            ck_assert_str_eq (casm_config_endpoint (buffer, sizeof buffer,
                                                    queue, side, 1),
                              expected [queue - 1][side]);
        }
}
END_TEST

START_TEST (test_endpoints_configured)
{
    setenv ("BROKER_PORT", "7000", 1);
    setenv ("BROKER_HOST", "broker.example", 1);
    setenv ("BROKER_BIND", "0.0.0.0", 1);
    char buffer [256];
    ck_assert_str_eq (casm_config_endpoint (buffer, sizeof buffer, 1, 0, 0),
                      "tcp://broker.example:7000");
    ck_assert_str_eq (casm_config_endpoint (buffer, sizeof buffer, 2, 1, 0),
                      "tcp://broker.example:7003");
    ck_assert_str_eq (casm_config_endpoint (buffer, sizeof buffer, 3, 1, 1),
                      "tcp://0.0.0.0:7005");
    ck_assert_str_eq (casm_config_endpoint (buffer, sizeof buffer, 3, 0, 1),
                      "tcp://0.0.0.0:7004");
}
END_TEST

START_TEST (test_endpoints_highest_port)
{
    //  The last of the six ports must still be a port.
    setenv ("BROKER_PORT", "65529", 1);
    char buffer [256];
    ck_assert_str_eq (casm_config_endpoint (buffer, sizeof buffer, 3, 1, 0),
                      "tcp://127.0.0.1:65534");
}
END_TEST

START_TEST (test_endpoints_port_too_high)
{
    setenv ("BROKER_PORT", "65531", 1);
    char buffer [256];
    casm_config_endpoint (buffer, sizeof buffer, 1, 0, 0);
}
END_TEST

START_TEST (test_endpoints_port_zero)
{
    setenv ("BROKER_PORT", "0", 1);
    char buffer [256];
    casm_config_endpoint (buffer, sizeof buffer, 1, 0, 1);
}
END_TEST

START_TEST (test_endpoints_port_garbage)
{
    setenv ("BROKER_PORT", "55 50", 1);
    char buffer [256];
    casm_config_endpoint (buffer, sizeof buffer, 1, 0, 1);
}
END_TEST

int
main (void)
{
    Suite *suite = suite_create ("casm_config");

    TCase *values = tcase_create ("values");
    tcase_add_checked_fixture (values, s_clean_environment, NULL);
    tcase_add_test (values, test_int_unset_or_empty);
    tcase_add_test (values, test_int_bounds_inclusive);
    tcase_add_exit_test (values, test_int_below_min, 2);
    tcase_add_exit_test (values, test_int_above_max, 2);
    tcase_add_exit_test (values, test_int_not_a_number, 2);
    tcase_add_exit_test (values, test_int_trailing_garbage, 2);
    tcase_add_exit_test (values, test_int_overflow, 2);
    tcase_add_test (values, test_bool_values);
    tcase_add_exit_test (values, test_bool_invalid, 2);
    tcase_add_test (values, test_str);
    suite_add_tcase (suite, values);

    TCase *endpoints = tcase_create ("endpoints");
    tcase_add_checked_fixture (endpoints, s_clean_environment, NULL);
    tcase_add_test (endpoints, test_endpoints_default);
    tcase_add_test (endpoints, test_endpoints_configured);
    tcase_add_test (endpoints, test_endpoints_highest_port);
    tcase_add_exit_test (endpoints, test_endpoints_port_too_high, 2);
    tcase_add_exit_test (endpoints, test_endpoints_port_zero, 2);
    tcase_add_exit_test (endpoints, test_endpoints_port_garbage, 2);
    suite_add_tcase (suite, endpoints);

    SRunner *runner = srunner_create (suite);
    srunner_run_all (runner, CK_NORMAL);
    int failed = srunner_ntests_failed (runner);
    srunner_free (runner);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
