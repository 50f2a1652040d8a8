/*  casm-kafka: a local Kafka-protocol broker for development and tests.

    No Kafka broker ships in Debian, so `make up` and the test suites run
    against the mock cluster that librdkafka itself provides (rdkafka_mock.h).
    It speaks the real wire protocol (metadata, produce, fetch, consumer
    groups, offset commits) on 127.0.0.1, with ephemeral ports chosen by the
    kernel. This program creates such a cluster, creates the casm topic, tells
    its caller where to connect (one `KAFKA_BROKERS=...` line on stdout and,
    optionally, a bootstrap file written atomically), and then waits for
    signals: SIGUSR1 takes every broker down and SIGUSR2 brings them back, so
    that tests can simulate a Kafka outage; SIGTERM or SIGINT stop it cleanly.

    Signals are blocked in every thread and taken synchronously with
    sigtimedwait() in the main loop, so librdkafka is never called from a
    signal handler. All data lives in memory and is lost on exit.

    Environment: KAFKA_MOCK_BROKERS (1), KAFKA_TOPIC
    (ocs.business-transactions), KAFKA_PARTITIONS (3).
*/

#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#define PROCESS_NAME "casm-kafka"
#define DEFAULT_TOPIC "ocs.business-transactions"
#define DEFAULT_BROKERS 1
#define DEFAULT_PARTITIONS 3
#define MAX_BROKERS 16
#define MAX_PARTITIONS 1024


//  Writes `text` to `out` as the inside of a JSON string: quotes,
//  backslashes and control characters are escaped, other bytes pass as is.

static void
s_json_escape (FILE *out, const char *text)
{
    const unsigned char *cursor = (const unsigned char *) text;

    for (; *cursor; cursor++) {
        if (*cursor == '"' || *cursor == '\\')
            fprintf (out, "\\%c", *cursor);
        else
        if (*cursor == '\n')
            fputs ("\\n", out);
        else
        if (*cursor < 0x20)
            fprintf (out, "\\u%04x", *cursor);
        else
            fputc (*cursor, out);
    }
}


//  Logs one JSON object on one line to stderr, in the shape every casm
//  process uses. Safe to call from librdkafka's threads: the line is built
//  in memory and written with a single call.

static void
s_log (const char *level, const char *format, ...)
{
    char message [1024];
    va_list args;
    va_start (args, format);
    vsnprintf (message, sizeof message, format, args);
    va_end (args);

    struct timespec now;
    clock_gettime (CLOCK_REALTIME, &now);
    struct tm utc;
    gmtime_r (&now.tv_sec, &utc);
    char stamp [32];
    strftime (stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &utc);

    char *line = NULL;
    size_t line_size = 0;
    FILE *out = open_memstream (&line, &line_size);
    if (!out)
        return;
    fprintf (out, "{\"time\":\"%s.%03ldZ\",\"level\":\"%s\","
             "\"process\":\"" PROCESS_NAME "\",\"message\":\"",
             stamp, now.tv_nsec / 1000000L, level);
    s_json_escape (out, message);
    fputs ("\"}\n", out);
    fclose (out);

    fputs (line, stderr);
    fflush (stderr);
    free (line);
}


//  Routes librdkafka's own log lines (syslog levels) into our JSON log, so
//  that stderr stays one JSON object per line.

static void
s_rdkafka_log (const rd_kafka_t *rk, int level, const char *facility,
               const char *text)
{
    (void) rk;

    //  The hosting handle has no bootstrap servers on purpose.
    if (strcmp (facility, "CONFWARN") == 0
    &&  strstr (text, "bootstrap.servers"))
        return;

    const char *name = level <= 3? "error": level <= 4? "warning":
                       level <= 6? "info": "debug";
    s_log (name, "librdkafka %s: %s", facility, text);
}


//  Reads a positive integer from the environment variable `name`, or
//  returns `fallback` if it is unset or empty. Returns -1 after logging if
//  the value is not an integer in [1, max].

static int
s_env_int (const char *name, int fallback, int max)
{
    const char *value = getenv (name);
    if (!value || !*value)
        return fallback;

    char *end = NULL;
    errno = 0;
    long number = strtol (value, &end, 10);
    if (errno || *end || number < 1 || number > max) {
        s_log ("error", "invalid %s='%s': expected an integer in 1..%d",
               name, value, max);
        return -1;
    }
    return (int) number;
}


//  Writes `text` and a newline to `path` atomically: readers see either no
//  file or the whole line, never a partial one. Returns 0 or -1.

static int
s_write_file_atomic (const char *path, const char *text)
{
    char temp_path [PATH_MAX];
    int length = snprintf (temp_path, sizeof temp_path, "%s.tmp", path);
    if (length < 0 || (size_t) length >= sizeof temp_path) {
        s_log ("error", "bootstrap file path too long: %s", path);
        return -1;
    }

    FILE *file = fopen (temp_path, "w");
    if (!file) {
        s_log ("error", "cannot create %s: %s", temp_path, strerror (errno));
        return -1;
    }
    int failed = fprintf (file, "%s\n", text) < 0;
    failed |= fclose (file) != 0;
    if (failed || rename (temp_path, path) != 0) {
        s_log ("error", "cannot write %s: %s", path, strerror (errno));
        remove (temp_path);
        return -1;
    }
    return 0;
}


//  Sets every broker of the cluster down or up. Broker ids run from 1 to
//  `broker_count`, as rd_kafka_mock_cluster_new() numbers them.

static void
s_set_brokers (rd_kafka_mock_cluster_t *cluster, int broker_count, int up)
{
    int broker_id;
    for (broker_id = 1; broker_id <= broker_count; broker_id++) {
        rd_kafka_resp_err_t rc = up
            ? rd_kafka_mock_broker_set_up (cluster, broker_id)
            : rd_kafka_mock_broker_set_down (cluster, broker_id);
        if (rc)
            s_log ("error", "cannot set broker %d %s: %s", broker_id,
                   up? "up": "down", rd_kafka_err2str (rc));
    }
    s_log ("info", "%d broker(s) %s", broker_count,
           up? "up: accepting connections":
               "down: connections closed and refused");
}


static void
s_usage (FILE *out)
{
    fprintf (out,
        "usage: " PROCESS_NAME " [--bootstrap-file PATH]\n"
        "Runs librdkafka's mock Kafka cluster on 127.0.0.1 and prints\n"
        "KAFKA_BROKERS=<bootstrap servers> on stdout.\n"
        "Environment: KAFKA_MOCK_BROKERS (1), KAFKA_TOPIC\n"
        "(" DEFAULT_TOPIC "), KAFKA_PARTITIONS (3).\n"
        "Signals: SIGUSR1 brokers down, SIGUSR2 brokers up,\n"
        "SIGTERM/SIGINT stop.\n");
}


int
main (int argc, char *argv [])
{
    const char *bootstrap_file = NULL;
    int argn;
    for (argn = 1; argn < argc; argn++) {
        if (strcmp (argv [argn], "--bootstrap-file") == 0
        &&  argn + 1 < argc)
            bootstrap_file = argv [++argn];
        else
        if (strcmp (argv [argn], "--help") == 0
        ||  strcmp (argv [argn], "-h") == 0) {
            s_usage (stdout);
            return 0;
        }
        else {
            s_usage (stderr);
            return 2;
        }
    }

    const char *topic = getenv ("KAFKA_TOPIC");
    if (!topic || !*topic)
        topic = DEFAULT_TOPIC;
    int broker_count = s_env_int ("KAFKA_MOCK_BROKERS", DEFAULT_BROKERS,
                                  MAX_BROKERS);
    int partition_count = s_env_int ("KAFKA_PARTITIONS", DEFAULT_PARTITIONS,
                                     MAX_PARTITIONS);
    if (broker_count < 0 || partition_count < 0)
        return 1;

    //  Block the signals we wait for before librdkafka starts its threads,
    //  so that they inherit the mask and only sigtimedwait() receives them.
    sigset_t signals;
    sigemptyset (&signals);
    sigaddset (&signals, SIGTERM);
    sigaddset (&signals, SIGINT);
    sigaddset (&signals, SIGHUP);
    sigaddset (&signals, SIGUSR1);
    sigaddset (&signals, SIGUSR2);
    pthread_sigmask (SIG_BLOCK, &signals, NULL);
    signal (SIGPIPE, SIG_IGN);

    //  The handle only hosts the cluster (it owns the mock threads); it
    //  never connects anywhere itself.
    char errstr [512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new ();
    rd_kafka_conf_set_log_cb (conf, s_rdkafka_log);
    if (rd_kafka_conf_set (conf, "client.id", PROCESS_NAME,
                           errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
        s_log ("error", "cannot configure librdkafka: %s", errstr);
        rd_kafka_conf_destroy (conf);
        return 1;
    }
    rd_kafka_t *handle = rd_kafka_new (RD_KAFKA_PRODUCER, conf,
                                       errstr, sizeof errstr);
    if (!handle) {
        s_log ("error", "cannot create librdkafka handle: %s", errstr);
        return 1;
    }

    rd_kafka_mock_cluster_t *cluster =
        rd_kafka_mock_cluster_new (handle, broker_count);
    if (!cluster) {
        s_log ("error", "cannot create mock cluster of %d broker(s)",
               broker_count);
        rd_kafka_destroy (handle);
        return 1;
    }

    rd_kafka_resp_err_t rc = rd_kafka_mock_topic_create (
        cluster, topic, partition_count, 1);
    if (rc) {
        s_log ("error", "cannot create topic %s: %s",
               topic, rd_kafka_err2str (rc));
        rd_kafka_mock_cluster_destroy (cluster);
        rd_kafka_destroy (handle);
        return 1;
    }

    const char *bootstraps = rd_kafka_mock_cluster_bootstraps (cluster);
    if (bootstrap_file
    &&  s_write_file_atomic (bootstrap_file, bootstraps) != 0) {
        rd_kafka_mock_cluster_destroy (cluster);
        rd_kafka_destroy (handle);
        return 1;
    }
    printf ("KAFKA_BROKERS=%s\n", bootstraps);
    fflush (stdout);
    s_log ("info", "started librdkafka %s mock cluster: %d broker(s) at %s, "
           "topic %s with %d partition(s)", rd_kafka_version_str (),
           broker_count, bootstraps, topic, partition_count);

    //  The wait times out every second only to serve librdkafka's queue.
    int exit_code = 0;
    while (1) {
        struct timespec timeout = { 1, 0 };
        int signum = sigtimedwait (&signals, NULL, &timeout);
        rd_kafka_poll (handle, 0);
        if (signum == SIGUSR1)
            s_set_brokers (cluster, broker_count, 0);
        else
        if (signum == SIGUSR2)
            s_set_brokers (cluster, broker_count, 1);
        else
        if (signum > 0) {
            s_log ("info", "stopping on signal %d", signum);
            break;
        }
        else
        if (errno != EAGAIN && errno != EINTR) {
            s_log ("error", "sigtimedwait failed: %s", strerror (errno));
            exit_code = 1;
            break;
        }
    }

    //  A bootstrap file must not outlive the cluster it points to.
    if (bootstrap_file)
        remove (bootstrap_file);
    rd_kafka_mock_cluster_destroy (cluster);
    rd_kafka_destroy (handle);
    s_log ("info", "stopped");
    return exit_code;
}
