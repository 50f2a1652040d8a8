/*  casm-validator: checks requests from Q1 and sends commands to Q2.

    Reads its configuration, builds the loop, runs it until SIGINT or
    SIGTERM has drained it, and tears it down. A second signal exits at
    once. The logic is in casm_validator.c.                                 */

#include "casm_validator.h"
#include "casm_config.h"
#include "casm_log.h"
#include "casm_metrics_http.h"

#include <czmq.h>
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

int
main (void)
{
    casm_log_init ("casm-validator", casm_config_str ("INSTANCE", NULL));

    //  czmq's own handler would only set zsys_interrupted; ours drains.
    zsys_handler_set (NULL);
    zsys_init ();
    struct sigaction action;
    memset (&action, 0, sizeof action);
    action.sa_handler = s_on_signal;
    sigemptyset (&action.sa_mask);
    sigaction (SIGINT, &action, NULL);
    sigaction (SIGTERM, &action, NULL);

    const char *database_url = casm_config_str ("DATABASE_URL", NULL);
    if (!database_url) {
        fprintf (stderr, "casm-validator: DATABASE_URL must be set (for "
                 "example postgresql://casm@127.0.0.1:5432/casm)\n");
        return 2;
    }
    int credit = (int) casm_config_int ("VALIDATOR_CREDIT", 16, 1, 10000);
    int64_t grace_ms = casm_config_int ("SHUTDOWN_GRACE_MS", 10000, 0,
                                        3600000);
    casm_metrics_http_start ();

    casm_validator_t *validator = casm_validator_new (database_url, credit,
                                                      grace_ms);
    if (!validator)
        return 1;
    int status = casm_validator_run (validator, &s_signals);
    casm_validator_destroy (&validator);
    casm_metrics_http_stop ();
    return status;
}
