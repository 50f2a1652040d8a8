/*  test_metrics: the metrics registry, its text format, the /metrics
    endpoint, and the stage hooks (shared/casm_metrics.h,
    shared/casm_metrics_http.h, casm_work in shared/casm_msg.h).

    The text format is checked byte for byte against Prometheus's text
    exposition format 0.0.4: HELP and TYPE lines, label escaping, a
    histogram's cumulative buckets with le, _sum and _count. The endpoint
    is driven over a real socket on a free port, with the test calling
    casm_metrics_http_serve as a process's loop would.                     */

#include "casm_log.h"
#include "casm_metrics.h"
#include "casm_metrics_http.h"
#include "casm_msg.h"

#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

//  Renders and compares with the expected text; frees the text.
static void
s_assert_render (casm_metrics_t *metrics, const char *expected)
{
    size_t size = 0;
    char *text = casm_metrics_render (metrics, &size);
    ck_assert_ptr_nonnull (text);
    ck_assert_str_eq (text, expected);
    ck_assert_uint_eq (size, strlen (expected));
    free (text);
}

//  The rendered text of the process registry; the caller frees it.
static char *
s_render_process (void)
{
    size_t size = 0;
    char *text = casm_metrics_render (NULL, &size);
    ck_assert_ptr_nonnull (text);
    return text;
}


//  --------------------------------------------------------------------
//  The registry and the text format

START_TEST (test_counter_text)
{
    casm_metrics_t *metrics = casm_metrics_new ();
    casm_series_t *counter = casm_metrics_counter (metrics,
        "casm_things_total", "Things done.", NULL);
    ck_assert_ptr_nonnull (counter);
    casm_series_add (counter, 1);
    casm_series_add (counter, 2);
    casm_series_add (counter, -5);          // ignored: counters only grow
    s_assert_render (metrics,
        "# HELP casm_things_total Things done.\n"
        "# TYPE casm_things_total counter\n"
        "casm_things_total 3\n");
    ck_assert (casm_series_value (counter) == 3);
    casm_metrics_destroy (&metrics);
    ck_assert_ptr_null (metrics);
}
END_TEST

START_TEST (test_gauge_with_labels_text)
{
    casm_metrics_t *metrics = casm_metrics_new ();
    casm_series_t *q1 = casm_metrics_gauge (metrics, "casm_depth",
        "Depth.", "queue", "Q1", NULL);
    casm_series_t *q2 = casm_metrics_gauge (metrics, "casm_depth",
        "Depth.", "queue", "Q2", NULL);
    ck_assert_ptr_nonnull (q1);
    ck_assert_ptr_nonnull (q2);
    ck_assert_ptr_ne (q1, q2);

    //  The same labels give the same series back.
    ck_assert_ptr_eq (casm_metrics_gauge (metrics, "casm_depth", "Depth.",
                                          "queue", "Q1", NULL), q1);
    casm_series_set (q1, -1.5);
    casm_series_set (q2, 7);
    casm_series_add (q2, 0.25);
    s_assert_render (metrics,
        "# HELP casm_depth Depth.\n"
        "# TYPE casm_depth gauge\n"
        "casm_depth{queue=\"Q1\"} -1.5\n"
        "casm_depth{queue=\"Q2\"} 7.25\n");
    casm_metrics_destroy (&metrics);
}
END_TEST

START_TEST (test_histogram_text)
{
    casm_metrics_t *metrics = casm_metrics_new ();
    const double bounds [] = { 0.125, 1, 2.5 };
    casm_series_t *histogram = casm_metrics_histogram (metrics,
        "casm_wait_seconds", "Waits.", bounds, 3, "stage", "worker",
        "op", "x", NULL);
    ck_assert_ptr_nonnull (histogram);
    casm_series_observe (histogram, 0.0625);
    casm_series_observe (histogram, 0.125);     // on the bound: counted in it
    casm_series_observe (histogram, 0.5);
    casm_series_observe (histogram, 4);
    s_assert_render (metrics,
        "# HELP casm_wait_seconds Waits.\n"
        "# TYPE casm_wait_seconds histogram\n"
        "casm_wait_seconds_bucket{stage=\"worker\",op=\"x\",le=\"0.125\"} 2\n"
        "casm_wait_seconds_bucket{stage=\"worker\",op=\"x\",le=\"1\"} 3\n"
        "casm_wait_seconds_bucket{stage=\"worker\",op=\"x\",le=\"2.5\"} 3\n"
        "casm_wait_seconds_bucket{stage=\"worker\",op=\"x\",le=\"+Inf\"} 4\n"
        "casm_wait_seconds_sum{stage=\"worker\",op=\"x\"} 4.6875\n"
        "casm_wait_seconds_count{stage=\"worker\",op=\"x\"} 4\n");
    ck_assert (casm_series_value (histogram) == 4);
    casm_metrics_destroy (&metrics);
}
END_TEST

START_TEST (test_histogram_without_labels_text)
{
    casm_metrics_t *metrics = casm_metrics_new ();
    const double bounds [] = { 1 };
    casm_series_t *histogram = casm_metrics_histogram (metrics,
        "casm_size", "Sizes.", bounds, 1, NULL);
    casm_series_observe (histogram, 3);
    s_assert_render (metrics,
        "# HELP casm_size Sizes.\n"
        "# TYPE casm_size histogram\n"
        "casm_size_bucket{le=\"1\"} 0\n"
        "casm_size_bucket{le=\"+Inf\"} 1\n"
        "casm_size_sum 3\n"
        "casm_size_count 1\n");
    casm_metrics_destroy (&metrics);
}
END_TEST

START_TEST (test_escaping)
{
    casm_metrics_t *metrics = casm_metrics_new ();
    casm_series_t *gauge = casm_metrics_gauge (metrics, "casm_odd",
        "A \\ backslash,\na newline and \"quotes\".",
        "what", "a\"b\\c\nd", NULL);
    casm_series_set (gauge, 1);

    //  HELP escapes backslash and newline; a label value also the quote.
    s_assert_render (metrics,
        "# HELP casm_odd A \\\\ backslash,\\na newline and \"quotes\".\n"
        "# TYPE casm_odd gauge\n"
        "casm_odd{what=\"a\\\"b\\\\c\\nd\"} 1\n");
    casm_metrics_destroy (&metrics);
}
END_TEST

START_TEST (test_numbers)
{
    casm_metrics_t *metrics = casm_metrics_new ();
    const char *names [] = { "a", "b", "c", "d", "e", "f", "g" };
    double values [] = { 0.1, 1e-7, 123456789, 1e20, NAN, INFINITY,
                         -INFINITY };
    for (int i = 0; i < 7; i++)
        casm_series_set (casm_metrics_gauge (metrics, "casm_n", "N.",
                                             "v", names [i], NULL),
                         values [i]);
    s_assert_render (metrics,
        "# HELP casm_n N.\n"
        "# TYPE casm_n gauge\n"
        "casm_n{v=\"a\"} 0.1\n"
        "casm_n{v=\"b\"} 1e-07\n"
        "casm_n{v=\"c\"} 123456789\n"
        "casm_n{v=\"d\"} 1e+20\n"
        "casm_n{v=\"e\"} NaN\n"
        "casm_n{v=\"f\"} +Inf\n"
        "casm_n{v=\"g\"} -Inf\n");
    casm_metrics_destroy (&metrics);
}
END_TEST

START_TEST (test_families_in_order)
{
    casm_metrics_t *metrics = casm_metrics_new ();
    casm_metrics_counter (metrics, "casm_b_total", "B.", NULL);
    casm_metrics_gauge (metrics, "casm_a", "A.", "x", "1", NULL);
    casm_metrics_gauge (metrics, "casm_empty", "Never set.", NULL);
    s_assert_render (metrics,
        "# HELP casm_b_total B.\n"
        "# TYPE casm_b_total counter\n"
        "casm_b_total 0\n"
        "# HELP casm_a A.\n"
        "# TYPE casm_a gauge\n"
        "casm_a{x=\"1\"} 0\n"
        "# HELP casm_empty Never set.\n"
        "# TYPE casm_empty gauge\n"
        "casm_empty 0\n");
    casm_metrics_destroy (&metrics);
}
END_TEST

START_TEST (test_refusals)
{
    casm_metrics_t *metrics = casm_metrics_new ();
    const double bounds [] = { 1, 2 };
    const double unsorted [] = { 2, 1 };
    ck_assert_ptr_nonnull (casm_metrics_counter (metrics, "casm_x_total",
                                                 "X.", "a", "1", NULL));

    //  Another type, other label names, or too many labels.
    ck_assert_ptr_null (casm_metrics_gauge (metrics, "casm_x_total", "X.",
                                            "a", "1", NULL));
    ck_assert_ptr_null (casm_metrics_counter (metrics, "casm_x_total", "X.",
                                              "b", "1", NULL));
    ck_assert_ptr_null (casm_metrics_counter (metrics, "casm_x_total", "X.",
                                              NULL));
    ck_assert_ptr_null (casm_metrics_counter (metrics, "casm_y", "Y.",
                                              "a", "1", "b", "2", "c", "3",
                                              "d", "4", NULL));

    //  Names that Prometheus would not read.
    ck_assert_ptr_null (casm_metrics_counter (metrics, "9lives", "", NULL));
    ck_assert_ptr_null (casm_metrics_counter (metrics, "a-b", "", NULL));
    ck_assert_ptr_null (casm_metrics_counter (metrics, "", "", NULL));
    ck_assert_ptr_null (casm_metrics_counter (metrics, "ok", "",
                                              "__reserved", "1", NULL));
    ck_assert_ptr_null (casm_metrics_counter (metrics, "ok", "",
                                              "a:b", "1", NULL));
    ck_assert_ptr_null (casm_metrics_histogram (metrics, "casm_h", "",
                                                bounds, 2, "le", "1", NULL));

    //  Histogram bounds must be given the first time, and increase.
    ck_assert_ptr_null (casm_metrics_histogram (metrics, "casm_h", "", NULL,
                                                0, NULL));
    ck_assert_ptr_null (casm_metrics_histogram (metrics, "casm_h", "",
                                                unsorted, 2, NULL));
    ck_assert_ptr_nonnull (casm_metrics_histogram (metrics, "casm_h", "",
                                                   bounds, 2, NULL));
    ck_assert_ptr_nonnull (casm_metrics_histogram (metrics, "casm_h", "",
                                                   NULL, 0, NULL));

    //  Observing a series of the wrong kind, or NULL, does nothing.
    casm_series_observe (casm_metrics_counter (metrics, "casm_x_total", "X.",
                                               "a", "1", NULL), 5);
    casm_series_add (NULL, 1);
    casm_series_set (NULL, 1);
    casm_series_observe (NULL, 1);
    ck_assert (casm_series_value (NULL) == 0);
    ck_assert (casm_series_value (casm_metrics_counter (
        metrics, "casm_x_total", "X.", "a", "1", NULL)) == 0);
    casm_metrics_destroy (&metrics);
}
END_TEST

START_TEST (test_series_bounded)
{
    casm_metrics_t *metrics = casm_metrics_new ();
    char value [16];
    for (int i = 0; i < CASM_METRICS_SERIES_MAX; i++) {
        snprintf (value, sizeof value, "%d", i);
        ck_assert_ptr_nonnull (casm_metrics_counter (metrics, "casm_many",
                                                     "", "i", value, NULL));
    }
    ck_assert_ptr_null (casm_metrics_counter (metrics, "casm_many", "",
                                              "i", "one-more", NULL));

    //  Existing series are still found.
    ck_assert_ptr_nonnull (casm_metrics_counter (metrics, "casm_many", "",
                                                 "i", "7", NULL));
    casm_metrics_destroy (&metrics);
}
END_TEST

static int s_collected = 0;

static void
s_collect (void *arg)
{
    s_collected++;
    casm_series_set ((casm_series_t *) arg, 42);
}

START_TEST (test_collectors_run_at_render)
{
    casm_metrics_t *metrics = casm_metrics_new ();
    casm_series_t *gauge = casm_metrics_gauge (metrics, "casm_read", "R.",
                                               NULL);
    ck_assert_int_eq (casm_metrics_on_collect (metrics, s_collect, gauge), 0);
    s_assert_render (metrics,
        "# HELP casm_read R.\n"
        "# TYPE casm_read gauge\n"
        "casm_read 42\n");
    ck_assert_int_eq (s_collected, 1);
    casm_metrics_destroy (&metrics);
}
END_TEST


//  --------------------------------------------------------------------
//  The catalogue and the stage hooks

START_TEST (test_process_registry_and_catalogue)
{
    casm_metrics_request ("readCustomer", 200, 0.003);
    casm_metrics_request ("readCustomer", 200, 0.004);
    casm_metrics_request ("readCustomer", 404, 0.002);
    casm_metrics_queue ("Q1", &(casm_metrics_queue_t) {
        .waiting = 3, .credit = 16, .instances = 1, .dispatched = 9 });
    casm_metrics_kafka_delivery (1);

    char *text = s_render_process ();
    ck_assert_ptr_nonnull (strstr (text,
        "\n# TYPE process_start_time_seconds gauge\n"));
    ck_assert_ptr_nonnull (strstr (text,
        "\ncasm_http_requests_total{operation=\"readCustomer\","
        "status=\"200\"} 2\n"));
    ck_assert_ptr_nonnull (strstr (text,
        "\ncasm_http_requests_total{operation=\"readCustomer\","
        "status=\"404\"} 1\n"));
    ck_assert_ptr_nonnull (strstr (text,
        "\ncasm_http_request_duration_seconds_bucket{"
        "operation=\"readCustomer\",le=\"0.0025\"} 1\n"));
    ck_assert_ptr_nonnull (strstr (text,
        "\ncasm_http_request_duration_seconds_count{"
        "operation=\"readCustomer\"} 3\n"));
    ck_assert_ptr_nonnull (strstr (text,
        "\ncasm_queue_waiting{queue=\"Q1\"} 3\n"));
    ck_assert_ptr_nonnull (strstr (text,
        "\ncasm_queue_credit{queue=\"Q1\"} 16\n"));
    ck_assert_ptr_nonnull (strstr (text,
        "\n# TYPE casm_queue_dispatched_total counter\n"
        "casm_queue_dispatched_total{queue=\"Q1\"} 9\n"));
    ck_assert_ptr_nonnull (strstr (text,
        "\ncasm_kafka_delivery_errors_total 1\n"));
    free (text);

    //  The process registry outlives a destroy.
    casm_metrics_t *process = casm_metrics_process ();
    casm_metrics_destroy (&process);
    ck_assert_ptr_null (process);
    ck_assert_ptr_nonnull (casm_metrics_process ());
}
END_TEST

//  A unit as a stage receives it: [identity] [] [header] [body].
static casm_work_t *
s_unit (const char *stage, const char *request_id)
{
    casm_header_t header;
    memset (&header, 0, sizeof header);
    header.version = CASM_MSG_VERSION;
    header.kind = CASM_KIND_REQUEST;
    header.op = CASM_OP_READ;
    snprintf (header.request_id, sizeof header.request_id, "%s",
              request_id);
    snprintf (header.trace_id, sizeof header.trace_id, "trace-of-%s",
              request_id);

    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, "gateway");
    zmsg_addmem (msg, "", 0);
    zframe_t *frame = casm_header_encode (&header);
    zmsg_append (msg, &frame);
    zmsg_addstr (msg, "{}");
    casm_work_t *work = casm_work_take (&msg);
    ck_assert_ptr_nonnull (work);
    work->stage = stage;
    work->received_us = casm_metrics_now_us ();
    return work;
}

START_TEST (test_units_counted_once)
{
    //  Answered 200, answered 404, forwarded, dropped unanswered.
    casm_work_t *work = s_unit ("validator", "r-1");
    casm_header_t header = work->header;
    header.kind = CASM_KIND_REPLY;
    header.status = 200;
    zmsg_t *msg = casm_work_message (work, NULL, &header, "{}", 2, NULL, 0);
    zmsg_destroy (&msg);
    casm_work_destroy (&work);          // already counted: not "dropped"

    work = s_unit ("validator", "r-2");
    header = work->header;
    header.kind = CASM_KIND_REPLY;
    header.status = 404;
    msg = casm_work_message (work, NULL, &header, "{}", 2, NULL, 0);
    zmsg_destroy (&msg);
    casm_work_destroy (&work);

    work = s_unit ("validator", "r-3");
    msg = casm_work_message (work, NULL, &work->header, "{}", 2, NULL, 0);
    zmsg_destroy (&msg);
    casm_work_destroy (&work);

    work = s_unit ("validator", "r-4");
    casm_work_destroy (&work);

    //  A work no stage received is not a unit.
    work = s_unit ("validator", "r-5");
    work->stage = NULL;
    work->received_us = 0;
    casm_work_destroy (&work);

    char *text = s_render_process ();
    const char *expected [] = {
        "casm_stage_units_total{stage=\"validator\",outcome=\"forwarded\"} 1\n",
        "casm_stage_units_total{stage=\"validator\",outcome=\"ok\"} 1\n",
        "casm_stage_units_total{stage=\"validator\",outcome=\"client_error\"} 1\n",
        "casm_stage_units_total{stage=\"validator\",outcome=\"server_error\"} 0\n",
        "casm_stage_units_total{stage=\"validator\",outcome=\"dropped\"} 1\n",
        "casm_stage_duration_seconds_count{stage=\"validator\"} 4\n",
    };
    for (size_t i = 0; i < sizeof expected / sizeof expected [0]; i++)
        ck_assert_msg (strstr (text, expected [i]), "missing %s in\n%s",
                       expected [i], text);
    free (text);
}
END_TEST

START_TEST (test_batch_and_outbox_and_dwh)
{
    casm_metrics_batch ("worker", 1);
    casm_metrics_batch ("worker", 5);
    casm_metrics_outbox (12, 3.5);
    casm_metrics_dwh_batch (11, 10, 1, 2);
    casm_metrics_dwh_batch (5, 5, 0, 0.5);
    casm_metrics_dwh_lag (0.25);

    char *text = s_render_process ();
    const char *expected [] = {
        "casm_batch_size_bucket{stage=\"worker\",le=\"1\"} 1\n",
        "casm_batch_size_bucket{stage=\"worker\",le=\"8\"} 2\n",
        "casm_batch_size_sum{stage=\"worker\"} 6\n",
        "casm_outbox_backlog 12\n",
        "casm_outbox_oldest_age_seconds 3.5\n",
        "casm_dwh_events_ingested_total 15\n",
        "casm_dwh_dead_letters_total 1\n",
        "casm_dwh_lag_seconds 0.25\n",
        "casm_batch_size_count{stage=\"dwh\"} 2\n",
        "casm_batch_size_sum{stage=\"dwh\"} 16\n",
    };
    for (size_t i = 0; i < sizeof expected / sizeof expected [0]; i++)
        ck_assert_msg (strstr (text, expected [i]), "missing %s in\n%s",
                       expected [i], text);
    free (text);
}
END_TEST


//  --------------------------------------------------------------------
//  Logs: a request id brings its trace id along

//  Runs fn with stderr going to a temporary file; returns what it wrote.
static char *
s_capture_stderr (void (*fn) (void))
{
    char path [] = "/tmp/test_metrics_XXXXXX";
    int fd = mkstemp (path);
    ck_assert_int_ge (fd, 0);
    unlink (path);
    fflush (stderr);
    int saved = dup (2);
    dup2 (fd, 2);
    fn ();
    fflush (stderr);
    dup2 (saved, 2);
    close (saved);

    off_t size = lseek (fd, 0, SEEK_END);
    char *text = calloc (1, (size_t) size + 1);
    ck_assert_int_eq (pread (fd, text, (size_t) size, 0), size);
    close (fd);
    return text;
}

static void
s_log_lines (void)
{
    casm_log_init ("casm-test", "test-1");
    casm_log_trace ("req-a", "trace-a");
    casm_log_trace ("req-b", "trace-b");
    casm_warn ("req-a", NULL, "about a");
    casm_warn ("req-c", NULL, "about c");
    casm_warn (NULL, NULL, "about nothing");
}

START_TEST (test_log_carries_trace_id)
{
    char *text = s_capture_stderr (s_log_lines);
    char *a = strstr (text, "about a");
    char *c = strstr (text, "about c");
    char *nothing = strstr (text, "about nothing");
    ck_assert_ptr_nonnull (a);
    ck_assert_ptr_nonnull (c);
    ck_assert_ptr_nonnull (nothing);

    //  One line each; only the paired request gets a traceId.
    char *line_a = strstr (text, "\"requestId\":\"req-a\"");
    ck_assert_ptr_nonnull (line_a);
    ck_assert_ptr_nonnull (strstr (text, "\"traceId\":\"trace-a\""));
    ck_assert_ptr_null (strstr (text, "trace-b"));
    char *line_c = strstr (text, "\"requestId\":\"req-c\"");
    ck_assert_ptr_nonnull (line_c);
    ck_assert_ptr_null (strstr (line_c, "traceId"));
    ck_assert_ptr_nonnull (strstr (text, "\"process\":\"casm-test\""));
    ck_assert_ptr_nonnull (strstr (text, "\"instance\":\"test-1\""));
    free (text);
}
END_TEST

static void
s_log_many (void)
{
    casm_log_init ("casm-test", NULL);
    char id [32];
    casm_log_trace ("oldest", "trace-oldest");
    for (int i = 0; i < CASM_LOG_TRACES; i++) {
        snprintf (id, sizeof id, "r-%d", i);
        casm_log_trace (id, "t");
    }
    casm_warn ("oldest", NULL, "forgotten by now");
    casm_log_trace ("r-5", "t");
    casm_warn ("r-5", NULL, "still known");
}

START_TEST (test_log_traces_bounded)
{
    char *text = s_capture_stderr (s_log_many);
    ck_assert_ptr_null (strstr (text, "trace-oldest"));
    char *known = strstr (text, "\"requestId\":\"r-5\"");
    ck_assert_ptr_nonnull (known);
    ck_assert_ptr_nonnull (strstr (known, "\"traceId\":\"t\""));
    free (text);
}
END_TEST


//  --------------------------------------------------------------------
//  The endpoint

static int
s_connect (int port)
{
    int fd = socket (AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge (fd, 0);
    struct sockaddr_in address = { .sin_family = AF_INET,
                                   .sin_port = htons ((uint16_t) port) };
    address.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    ck_assert_int_eq (connect (fd, (struct sockaddr *) &address,
                               sizeof address), 0);
    fcntl (fd, F_SETFL, O_NONBLOCK);
    return fd;
}

//  Sends request and serves until the server closes the connection (at
//  most 5 s); returns everything received.
static char *
s_exchange (casm_metrics_http_t *http, int fd, const char *request)
{
    if (request)
        ck_assert_int_eq (send (fd, request, strlen (request), 0),
                          (ssize_t) strlen (request));
    size_t size = 0, capacity = 65536;
    char *answer = calloc (1, capacity);
    int64_t deadline = casm_metrics_now_us () + 5000000;
    while (casm_metrics_now_us () < deadline) {
        struct pollfd item = { casm_metrics_http_fd (http), POLLIN, 0 };
        poll (&item, 1, 10);
        casm_metrics_http_serve (http);
        ssize_t got = recv (fd, answer + size, capacity - size - 1, 0);
        if (got == 0)
            break;
        if (got > 0) {
            size += (size_t) got;
            if (size + 1 == capacity) {
                capacity *= 2;
                answer = realloc (answer, capacity);
            }
            answer [size] = 0;
        }
    }
    close (fd);
    return answer;
}

static casm_metrics_http_t *
s_endpoint (casm_metrics_t *metrics)
{
    casm_metrics_http_t *http = casm_metrics_http_new (metrics, "127.0.0.1",
                                                       0);
    ck_assert_ptr_nonnull (http);
    ck_assert_int_gt (casm_metrics_http_port (http), 0);
    return http;
}

START_TEST (test_http_metrics)
{
    casm_metrics_t *metrics = casm_metrics_new ();
    casm_series_add (casm_metrics_counter (metrics, "casm_hits_total",
                                           "Hits.", NULL), 5);
    casm_metrics_http_t *http = s_endpoint (metrics);
    int port = casm_metrics_http_port (http);

    char *answer = s_exchange (http, s_connect (port),
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n");
    const char *body =
        "# HELP casm_hits_total Hits.\n"
        "# TYPE casm_hits_total counter\n"
        "casm_hits_total 5\n";
    ck_assert_msg (strncmp (answer, "HTTP/1.1 200 OK\r\n", 17) == 0, "%s",
                   answer);
    ck_assert_ptr_nonnull (strstr (answer, "\r\nContent-Type: text/plain; "
                                   "version=0.0.4; charset=utf-8\r\n"));
    char length [64];
    snprintf (length, sizeof length, "\r\nContent-Length: %zu\r\n",
              strlen (body));
    ck_assert_ptr_nonnull (strstr (answer, length));
    char *separator = strstr (answer, "\r\n\r\n");
    ck_assert_ptr_nonnull (separator);
    ck_assert_str_eq (separator + 4, body);
    free (answer);

    //  HEAD: the head alone. A query string is ignored.
    answer = s_exchange (http, s_connect (port),
                         "HEAD /metrics?x=1 HTTP/1.0\r\n\r\n");
    ck_assert (strncmp (answer, "HTTP/1.1 200 OK\r\n", 17) == 0);
    ck_assert_str_eq (strstr (answer, "\r\n\r\n"), "\r\n\r\n");
    free (answer);

    casm_metrics_http_destroy (&http);
    ck_assert_ptr_null (http);
    casm_metrics_destroy (&metrics);
}
END_TEST

START_TEST (test_http_other_requests)
{
    casm_metrics_t *metrics = casm_metrics_new ();
    casm_metrics_http_t *http = s_endpoint (metrics);
    int port = casm_metrics_http_port (http);

    char *answer = s_exchange (http, s_connect (port),
                               "GET /health HTTP/1.1\r\n\r\n");
    ck_assert (strncmp (answer, "HTTP/1.1 200 OK\r\n", 17) == 0);
    ck_assert_str_eq (strstr (answer, "\r\n\r\n") + 4, "{\"status\":\"up\"}");
    free (answer);

    answer = s_exchange (http, s_connect (port),
                         "GET /secret HTTP/1.1\r\n\r\n");
    ck_assert (strncmp (answer, "HTTP/1.1 404 ", 13) == 0);
    free (answer);

    answer = s_exchange (http, s_connect (port),
                         "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    ck_assert (strncmp (answer, "HTTP/1.1 405 ", 13) == 0);
    ck_assert_ptr_nonnull (strstr (answer, "\r\nAllow: GET, HEAD\r\n"));
    free (answer);

    answer = s_exchange (http, s_connect (port), "nonsense\r\n\r\n");
    ck_assert (strncmp (answer, "HTTP/1.1 400 ", 13) == 0);
    free (answer);

    //  A head that never ends within the bound.
    char *huge = malloc (8192);
    memcpy (huge, "GET /metrics HTTP/1.1\r\nX: ", 26);
    memset (huge + 26, 'a', 8192 - 27);
    huge [8191] = 0;
    int fd = s_connect (port);
    fcntl (fd, F_SETFL, 0);
    ck_assert_int_eq (send (fd, huge, 6000, 0), 6000);
    fcntl (fd, F_SETFL, O_NONBLOCK);
    answer = s_exchange (http, fd, NULL);
    ck_assert_msg (strncmp (answer, "HTTP/1.1 431 ", 13) == 0, "%s", answer);
    free (answer);
    free (huge);

    casm_metrics_http_destroy (&http);
    casm_metrics_destroy (&metrics);
}
END_TEST

START_TEST (test_http_idle_clients_cannot_lock_out)
{
    casm_metrics_t *metrics = casm_metrics_new ();
    casm_metrics_http_t *http = s_endpoint (metrics);
    int port = casm_metrics_http_port (http);

    //  Twice as many idle clients as there are slots, then a scrape.
    int idle [16];
    for (int i = 0; i < 16; i++) {
        idle [i] = s_connect (port);
        send (idle [i], "GET /met", 8, 0);
        casm_metrics_http_serve (http);
    }
    char *answer = s_exchange (http, s_connect (port),
                               "GET /metrics HTTP/1.1\r\n\r\n");
    ck_assert (strncmp (answer, "HTTP/1.1 200 OK\r\n", 17) == 0);
    free (answer);
    for (int i = 0; i < 16; i++)
        close (idle [i]);
    casm_metrics_http_destroy (&http);
    casm_metrics_destroy (&metrics);
}
END_TEST

START_TEST (test_http_start_unset)
{
    unsetenv ("METRICS_PORT");
    ck_assert_ptr_null (casm_metrics_http_start ());
    setenv ("METRICS_PORT", "", 1);
    ck_assert_ptr_null (casm_metrics_http_start ());
    ck_assert_ptr_null (casm_metrics_http_process ());
    ck_assert_int_eq (casm_metrics_http_fd (NULL), -1);
    ck_assert_ptr_null (casm_metrics_http_reader (NULL));
    casm_metrics_http_serve (NULL);
    casm_metrics_http_stop ();
}
END_TEST

START_TEST (test_http_start_serves_process_registry)
{
    //  A free port: bind one, note it, let it go.
    casm_metrics_http_t *probe = s_endpoint (NULL);
    char port [16];
    snprintf (port, sizeof port, "%d", casm_metrics_http_port (probe));
    casm_metrics_http_destroy (&probe);

    setenv ("METRICS_PORT", port, 1);
    setenv ("METRICS_BIND", "127.0.0.1", 1);
    casm_metrics_http_t *http = casm_metrics_http_start ();
    ck_assert_ptr_nonnull (http);
    ck_assert_ptr_eq (casm_metrics_http_process (), http);
    ck_assert_int_eq (casm_metrics_http_port (http), atoi (port));
    ck_assert_ptr_eq (casm_metrics_http_reader (http),
                      (void *) casm_metrics_http_reader (http));

    char *answer = s_exchange (http, s_connect (atoi (port)),
                               "GET /metrics HTTP/1.1\r\n\r\n");
    ck_assert_ptr_nonnull (strstr (answer, "process_start_time_seconds "));
    free (answer);
    casm_metrics_http_stop ();
    ck_assert_ptr_null (casm_metrics_http_process ());
}
END_TEST

//  These must exit with status 2.
START_TEST (test_http_start_invalid_port)
{
    setenv ("METRICS_PORT", "http", 1);
    casm_metrics_http_start ();
}
END_TEST

//  File-scope, so that LeakSanitizer still finds it when the start exits.
static casm_metrics_http_t *s_taken;

START_TEST (test_http_start_port_taken)
{
    s_taken = s_endpoint (NULL);
    char port [16];
    snprintf (port, sizeof port, "%d", casm_metrics_http_port (s_taken));
    setenv ("METRICS_PORT", port, 1);
    setenv ("METRICS_BIND", "127.0.0.1", 1);
    casm_metrics_http_start ();
}
END_TEST

int
main (void)
{
    Suite *suite = suite_create ("casm_metrics");

    TCase *format = tcase_create ("format");
    tcase_add_test (format, test_counter_text);
    tcase_add_test (format, test_gauge_with_labels_text);
    tcase_add_test (format, test_histogram_text);
    tcase_add_test (format, test_histogram_without_labels_text);
    tcase_add_test (format, test_escaping);
    tcase_add_test (format, test_numbers);
    tcase_add_test (format, test_families_in_order);
    tcase_add_test (format, test_refusals);
    tcase_add_test (format, test_series_bounded);
    tcase_add_test (format, test_collectors_run_at_render);
    suite_add_tcase (suite, format);

    TCase *catalogue = tcase_create ("catalogue");
    tcase_add_test (catalogue, test_process_registry_and_catalogue);
    tcase_add_test (catalogue, test_units_counted_once);
    tcase_add_test (catalogue, test_batch_and_outbox_and_dwh);
    tcase_add_test (catalogue, test_log_carries_trace_id);
    tcase_add_test (catalogue, test_log_traces_bounded);
    suite_add_tcase (suite, catalogue);

    TCase *http = tcase_create ("http");
    tcase_add_test (http, test_http_metrics);
    tcase_add_test (http, test_http_other_requests);
    tcase_add_test (http, test_http_idle_clients_cannot_lock_out);
    tcase_add_test (http, test_http_start_unset);
    tcase_add_test (http, test_http_start_serves_process_registry);
    tcase_add_exit_test (http, test_http_start_invalid_port, 2);
    tcase_add_exit_test (http, test_http_start_port_taken, 2);
    suite_add_tcase (suite, http);

    SRunner *runner = srunner_create (suite);
    srunner_run_all (runner, CK_NORMAL);
    int failed = srunner_ntests_failed (runner);
    srunner_free (runner);
    return failed ? 1 : 0;
}
