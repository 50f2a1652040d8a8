/*  casm-dwh: the DWH ingester (steps 6-7 of the use case).

    Reads its configuration, builds the consumer loop, runs it until SIGINT
    or SIGTERM has drained it, and tears it down. A second signal exits at
    once. The logic is in casm_dwh.c (the loop) and casm_ingest.c (a batch
    into the warehouse).                                                    */

#include "casm_config.h"
#include "casm_dwh.h"
#include "casm_ingest.h"
#include "casm_log.h"
#include "casm_metrics_http.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t s_signals = 0;

static void
s_on_signal (int signal_number)
{
    if (s_signals)
        _exit (128 + signal_number);
    s_signals = 1;
}

static const char *
s_mandatory (const char *name, const char *value, const char *example)
{
    if (!value) {
        fprintf (stderr, "casm-dwh: %s must be set (for example %s)\n",
                 name, example);
        _exit (2);
    }
    return value;
}

int
main (void)
{
    const char *instance = casm_config_str ("INSTANCE", "casm-dwh");
    casm_log_init ("casm-dwh", instance);

    struct sigaction action;
    memset (&action, 0, sizeof action);
    action.sa_handler = s_on_signal;
    sigemptyset (&action.sa_mask);
    sigaction (SIGINT, &action, NULL);
    sigaction (SIGTERM, &action, NULL);

    //  The schema is fixed: the migrations and the batch statement name it.
    const char *schema = casm_config_str ("DWH_SCHEMA", CASM_DWH_SCHEMA);
    if (strcmp (schema, CASM_DWH_SCHEMA) != 0) {
        fprintf (stderr, "casm-dwh: invalid DWH_SCHEMA=\"%s\": only \"%s\" "
                 "is supported\n", schema, CASM_DWH_SCHEMA);
        return 2;
    }

    casm_dwh_config_t config = {
        .kafka_brokers = s_mandatory ("KAFKA_BROKERS",
            casm_config_str ("KAFKA_BROKERS", NULL), "127.0.0.1:9092"),
        .kafka_topic = casm_config_str ("KAFKA_TOPIC",
                                        "ocs.business-transactions"),
        .group = casm_config_str ("DWH_GROUP", "casm-dwh"),
        .database_url = s_mandatory ("DWH_DATABASE_URL or DATABASE_URL",
            casm_config_str ("DWH_DATABASE_URL",
                             casm_config_str ("DATABASE_URL", NULL)),
            "postgresql://casm@127.0.0.1:5432/casm"),
        .instance = instance,
        .batch_max = (int) casm_config_int ("DWH_BATCH_MAX", 500, 1, 100000),
        .batch_ms = (int) casm_config_int ("DWH_BATCH_MS", 50, 1, 60000),
        .grace_ms = casm_config_int ("SHUTDOWN_GRACE_MS", 10000, 0,
                                     3600000),
        .session_timeout_ms = (int) casm_config_int (
            "DWH_SESSION_TIMEOUT_MS", 10000, 1000, 3600000),
        .queue_kbytes = (int) casm_config_int ("DWH_QUEUE_KBYTES", 8192,
                                               1024, 2097151),
        .connections = (int) casm_config_int ("DWH_DB_CONNECTIONS", 2, 1,
                                              16),
        //  For the tests only: see casm_dwh_run.
        .crash_after = (int) casm_config_int ("DWH_TEST_CRASH_AFTER_BATCHES",
                                              0, 0, 1000000),
    };

    casm_metrics_http_start ();
    casm_dwh_t *dwh = casm_dwh_new (&config);
    if (!dwh)
        return 1;
    int status = casm_dwh_run (dwh, &s_signals);
    casm_dwh_destroy (&dwh);
    casm_metrics_http_stop ();
    return status;
}
