/*  casm-worker: the persistence stage.

    Takes checked commands from Q2, applies each in one PostgreSQL
    transaction with its idempotency record and its outbox event, and
    passes the Business Transaction on to the publishers on Q3. The first
    SIGINT or SIGTERM drains; a second one exits at once.

    `casm-worker --statement NAME` prints the SQL of one of the worker's
    prepared statements and exits: the benchmark (bench/run.sh) runs the
    very same statement under pgbench. `casm-worker --migrate-only`
    applies the schema migrations and exits 0, or 1 when it cannot: the
    one-shot migration of compose.yaml.                                     */

#include "casm_config.h"
#include "casm_log.h"
#include "casm_metrics_http.h"
#include "casm_store.h"
#include "casm_worker.h"

#include <czmq.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t s_stop = 0;

static void
s_signal (int signal_number)
{
    if (s_stop)
        _exit (1);
    s_stop = 1;
}

//  Connecting the store applies the migrations and prepares the
//  statements, so success also says the schema is one the worker can use.
static int
s_migrate_only (void)
{
    casm_log_init ("casm-worker", casm_config_str ("INSTANCE", NULL));
    casm_store_t *store =
        casm_store_new (casm_config_str ("DATABASE_URL", NULL));
    int rc = store && casm_store_open (store) == 0 ? 0 : 1;
    if (rc == 0)
        casm_info (NULL, NULL, "schema migrated");
    else
        casm_error (NULL, NULL, "the schema could not be migrated");
    casm_store_destroy (&store);
    return rc;
}

int
main (int argc, char *argv [])
{
    if (argc == 3 && strcmp (argv [1], "--statement") == 0) {
        const char *sql = casm_store_statement (argv [2]);
        if (!sql) {
            fprintf (stderr, "casm-worker: no statement '%s'\n", argv [2]);
            return 2;
        }
        printf ("%s\n", sql);
        return 0;
    }
    if (argc == 2 && strcmp (argv [1], "--migrate-only") == 0)
        return s_migrate_only ();
    if (argc > 1) {
        fprintf (stderr,
                 "usage: casm-worker [--statement NAME | --migrate-only]\n");
        return 2;
    }

    casm_log_init ("casm-worker", casm_config_str ("INSTANCE", NULL));
    zsys_handler_set (NULL);
    zsys_init ();

    //  No SA_RESTART: a signal interrupts the poll, so the drain starts
    //  at once.
    struct sigaction action = { .sa_handler = s_signal };
    sigemptyset (&action.sa_mask);
    sigaction (SIGINT, &action, NULL);
    sigaction (SIGTERM, &action, NULL);

    casm_metrics_http_start ();
    casm_worker_t *worker = casm_worker_new ();
    if (!worker)
        return 1;
    int rc = casm_worker_run (worker, &s_stop);
    casm_worker_destroy (&worker);
    casm_metrics_http_stop ();
    return rc;
}
