/*  casm-broker: hosts the three credit-based queues Q1, Q2 and Q3.

    The broker is the one process that binds; every stage instance
    connects to it. It reads its configuration, binds the six ROUTER
    sockets, and runs one poll loop over them with a timer for expiry.
    SIGINT or SIGTERM stops it promptly: waiting work is answered 503 on
    the way out (casm_queue_destroy); a second signal exits at once.       */

#include "casm_config.h"
#include "casm_log.h"
#include "casm_proto.h"
#include "casm_queue.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#define QUEUES 3

static volatile sig_atomic_t s_stopping = 0;

static void
s_signal (int signum)
{
    if (s_stopping)
        _exit (1);
    s_stopping = 1;
}

static void
s_signals_catch (void)
{
    struct sigaction action;
    memset (&action, 0, sizeof action);
    action.sa_handler = s_signal;
    sigemptyset (&action.sa_mask);
    sigaction (SIGINT, &action, NULL);
    sigaction (SIGTERM, &action, NULL);
}

//  Polls the six sockets and ticks the queues until a signal arrives.
//  Returns 0 then, or 1 when polling fails.
static int
s_run (casm_queue_t **queues)
{
    zmq_pollitem_t items [2 * QUEUES];
    for (int i = 0; i < QUEUES; i++) {
        items [2 * i] = (zmq_pollitem_t) {
            zsock_resolve (casm_queue_frontend_socket (queues [i])),
            0, ZMQ_POLLIN, 0 };
        items [2 * i + 1] = (zmq_pollitem_t) {
            zsock_resolve (casm_queue_backend_socket (queues [i])),
            0, ZMQ_POLLIN, 0 };
    }
    int64_t next_tick = zclock_mono () + CASM_QUEUE_TICK_MS;

    while (!s_stopping) {
        int64_t wait = next_tick - zclock_mono ();
        if (wait < 0)
            wait = 0;
        int rc = zmq_poll (items, 2 * QUEUES, (long) wait);
        if (rc == -1 && errno != EINTR) {
            casm_error (NULL, NULL, "poll failed: %s", zmq_strerror (errno));
            return 1;
        }

        for (int i = 0; rc > 0 && i < QUEUES; i++) {
            if (items [2 * i + 1].revents & ZMQ_POLLIN)
                casm_queue_backend (queues [i]);
            if (items [2 * i].revents & ZMQ_POLLIN)
                casm_queue_frontend (queues [i]);
        }

        if (zclock_mono () >= next_tick) {
            for (int i = 0; i < QUEUES; i++)
                casm_queue_tick (queues [i]);
            next_tick = zclock_mono () + CASM_QUEUE_TICK_MS;
        }
    }
    return 0;
}

int
main (void)
{
    casm_log_init ("casm-broker", casm_config_str ("INSTANCE", NULL));
    zsys_handler_set (NULL);
    zsys_init ();
    s_signals_catch ();

    size_t queue_max = (size_t) casm_config_int ("QUEUE_MAX", 10000, 1,
                                                 1000000);

    casm_queue_t *queues [QUEUES] = { NULL };
    char endpoints [2 * QUEUES][256];
    int rc = 0;
    for (int i = 0; i < QUEUES; i++) {
        char *frontend = endpoints [2 * i];
        char *backend = endpoints [2 * i + 1];
        casm_config_endpoint (frontend, 256, i + 1, 0, 1);
        casm_config_endpoint (backend, 256, i + 1, 1, 1);
        queues [i] = casm_queue_new (i + 1, frontend, backend, queue_max);
        if (!queues [i]) {
            rc = 1;
            break;
        }
    }

    if (rc == 0) {
        json_t *fields = json_pack ("{s:[ssssss],s:I}", "endpoints",
            endpoints [0], endpoints [1], endpoints [2], endpoints [3],
            endpoints [4], endpoints [5], "queueMax", (json_int_t) queue_max);
        casm_info (NULL, fields, "broker started");
        rc = s_run (queues);
    }

    for (int i = 0; i < QUEUES; i++)
        casm_queue_destroy (&queues [i]);
    casm_info (NULL, NULL, "broker stopped");
    return rc;
}
