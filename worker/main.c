/*  casm-worker: the persistence stage.

    Takes checked commands from Q2, applies each in one PostgreSQL
    transaction with its idempotency record and its outbox event, and
    passes the Business Transaction on to the publishers on Q3. The first
    SIGINT or SIGTERM drains; a second one exits at once.                  */

#include "casm_config.h"
#include "casm_log.h"
#include "casm_worker.h"

#include <czmq.h>
#include <signal.h>
#include <unistd.h>

static volatile sig_atomic_t s_stop = 0;

static void
s_signal (int signal_number)
{
    if (s_stop)
        _exit (1);
    s_stop = 1;
}

int
main (void)
{
    casm_log_init ("casm-worker", casm_config_str ("INSTANCE", NULL));
    zsys_handler_set (NULL);
    zsys_init ();

    //  No SA_RESTART: a signal interrupts the poll, so the drain starts
    //  at once.
    struct sigaction action = { .sa_handler = s_signal };
    sigemptyset (&action.sa_mask);
    sigaction (SIGINT, &action, NULL);
    sigaction (SIGTERM, &action, NULL);

    casm_worker_t *worker = casm_worker_new ();
    if (!worker)
        return 1;
    int rc = casm_worker_run (worker, &s_stop);
    casm_worker_destroy (&worker);
    return rc;
}
