/*  casm-publisher: publishes committed business transactions to Kafka.

    Reads the configuration, builds the publisher, runs its loop until a
    signal has drained it, tears it down. The work is in casm_publisher,
    casm_producer and casm_outbox.                                        */

#include "casm_config.h"
#include "casm_log.h"
#include "casm_metrics_http.h"
#include "casm_publisher.h"

#include <czmq.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>

static volatile sig_atomic_t s_signals = 0;

static void
s_on_signal (int signum)
{
    if (s_signals < 2)
        s_signals++;
}


static const char *
s_mandatory (const char *name)
{
    const char *value = casm_config_str (name, NULL);
    if (!value) {
        casm_error (NULL, NULL, "%s is not set", name);
        exit (2);
    }
    return value;
}


int
main (void)
{
    const char *instance = casm_config_str ("INSTANCE", "casm-publisher");
    casm_log_init ("casm-publisher", instance);

    char client_id [128];
    snprintf (client_id, sizeof client_id, "casm-publisher-%s", instance);
    casm_publisher_config_t config = {
        .database_url = s_mandatory ("DATABASE_URL"),
        .kafka_brokers = s_mandatory ("KAFKA_BROKERS"),
        .kafka_topic = casm_config_str ("KAFKA_TOPIC",
                                        "ocs.business-transactions"),
        .client_id = client_id,
        //  1 ms: an answer waits for Kafka, and under load the producer
        //  batches anyway (docs/benchmarks.md).
        .linger_ms = casm_config_int ("KAFKA_LINGER_MS", 1, 0, 60000),
        .message_timeout_ms = casm_config_int ("KAFKA_MESSAGE_TIMEOUT_MS",
                                               300000, 1000, 2147483647),
        .credit = casm_config_int ("PUBLISHER_CREDIT", 256, 1, 100000),
        .publish_timeout_ms = casm_config_int ("PUBLISH_TIMEOUT_MS", 1000,
                                               1, 600000),
        .sweep_ms = casm_config_int ("OUTBOX_SWEEP_MS", 1000, 10, 3600000),
        .sweep_age_ms = casm_config_int ("OUTBOX_SWEEP_AGE_MS", 5000, 0,
                                         86400000),
        .sweep_batch = casm_config_int ("OUTBOX_SWEEP_BATCH", 500, 1,
                                        100000),
        .retention_s = casm_config_int ("OUTBOX_RETENTION_S", 3600, 0,
                                        100000000),
        .shutdown_grace_ms = casm_config_int ("SHUTDOWN_GRACE_MS", 10000, 0,
                                              3600000)
    };

    //  A DATABASE_URL that libpq cannot parse is a typo, not an outage.
    //  The URL itself is not logged: it may hold a password.
    char *error = NULL;
    PQconninfoOption *options = PQconninfoParse (config.database_url,
                                                 &error);
    if (!options) {
        casm_error (NULL, NULL, "invalid DATABASE_URL: %s",
                    error ? error : "out of memory");
        PQfreemem (error);
        return 2;
    }
    PQconninfoFree (options);

    //  Our own handler: the first signal drains, the second stops. The
    //  signals are blocked while librdkafka and libzmq start their
    //  threads, which inherit the mask, so they reach this thread and cut
    //  its poll short.
    zsys_handler_set (NULL);
    sigset_t signals;
    sigemptyset (&signals);
    sigaddset (&signals, SIGTERM);
    sigaddset (&signals, SIGINT);
    pthread_sigmask (SIG_BLOCK, &signals, NULL);
    signal (SIGPIPE, SIG_IGN);
    struct sigaction action = { .sa_handler = s_on_signal };
    sigemptyset (&action.sa_mask);
    sigaction (SIGTERM, &action, NULL);
    sigaction (SIGINT, &action, NULL);
    zsys_init ();

    casm_metrics_http_start ();
    casm_publisher_t *publisher = casm_publisher_new (&config);
    pthread_sigmask (SIG_UNBLOCK, &signals, NULL);
    if (!publisher)
        return 1;

    int status = casm_publisher_run (publisher, &s_signals);
    casm_publisher_destroy (&publisher);
    casm_metrics_http_stop ();
    return status;
}
