/*  casm-broker: hosts the three credit-based queues Q1, Q2 and Q3.

    The broker is the one process that binds; every stage instance
    connects to it. It reads its configuration, binds the six ROUTER
    sockets, and runs one poll loop over them with a timer for expiry.
    SIGINT or SIGTERM stops it promptly: waiting work is answered 503 on
    the way out (casm_queue_destroy); a second signal exits at once.
    With CURVE configured (shared/casm_curve.h) its ZAP handler is polled
    in the same loop, and SIGHUP re-reads the allow-list of client keys.   */

#include "casm_config.h"
#include "casm_curve.h"
#include "casm_log.h"
#include "casm_metrics_http.h"
#include "casm_proto.h"
#include "casm_queue.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#define QUEUES 3

static volatile sig_atomic_t s_stopping = 0;
static volatile sig_atomic_t s_reload = 0;

static void
s_signal (int signum)
{
    if (s_stopping)
        _exit (1);
    s_stopping = 1;
}

static void
s_hangup (int signum)
{
    s_reload = 1;
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
    action.sa_handler = s_hangup;
    sigaction (SIGHUP, &action, NULL);
}

//  Before each scrape: every queue's counters as they stand now.
static void
s_metrics_collect (void *arg)
{
    static const char *names [QUEUES] = { "Q1", "Q2", "Q3" };
    casm_queue_t **queues = arg;
    for (int i = 0; i < QUEUES; i++) {
        casm_queue_stats_t stats;
        casm_queue_stats (queues [i], &stats);
        casm_metrics_queue (names [i], &(casm_metrics_queue_t) {
            .waiting = stats.waiting, .credit = stats.credit,
            .instances = stats.instances, .accepting = stats.accepting,
            .dispatched = stats.dispatched, .replies = stats.replies,
            .rejected = stats.rejected, .expired = stats.expired,
            .undeliverable = stats.undeliverable,
            .malformed = stats.malformed });
    }
}

//  Polls the six sockets (and the ZAP handler, when there is one) and
//  ticks the queues until a signal arrives. Returns 0 then, or 1 when
//  polling fails.
static int
s_run (casm_queue_t **queues, casm_curve_auth_t *auth)
{
    zmq_pollitem_t items [2 * QUEUES + 2];
    for (int i = 0; i < QUEUES; i++) {
        items [2 * i] = (zmq_pollitem_t) {
            zsock_resolve (casm_queue_frontend_socket (queues [i])),
            0, ZMQ_POLLIN, 0 };
        items [2 * i + 1] = (zmq_pollitem_t) {
            zsock_resolve (casm_queue_backend_socket (queues [i])),
            0, ZMQ_POLLIN, 0 };
    }
    int polled = 2 * QUEUES;
    if (auth)
        items [polled++] = (zmq_pollitem_t) {
            zsock_resolve (casm_curve_auth_socket (auth)), 0, ZMQ_POLLIN, 0 };
    casm_metrics_http_t *metrics = casm_metrics_http_process ();
    if (metrics)
        items [polled++] = (zmq_pollitem_t) {
            NULL, casm_metrics_http_fd (metrics), ZMQ_POLLIN, 0 };
    int64_t next_tick = zclock_mono () + CASM_QUEUE_TICK_MS;

    while (!s_stopping) {
        int64_t wait = next_tick - zclock_mono ();
        if (wait < 0)
            wait = 0;
        int rc = zmq_poll (items, polled, (long) wait);
        if (rc == -1 && errno != EINTR) {
            casm_error (NULL, NULL, "poll failed: %s", zmq_strerror (errno));
            return 1;
        }

        casm_metrics_http_serve (metrics);
        if (auth && s_reload) {
            s_reload = 0;
            casm_curve_auth_reload (auth);
        }
        if (auth && rc > 0 && (items [2 * QUEUES].revents & ZMQ_POLLIN))
            casm_curve_auth_handle (auth);
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
    casm_metrics_http_start ();

    //  The ZAP handler first: no CURVE connection may find it missing.
    casm_curve_auth_t *auth = NULL;
    if (casm_curve_server_enabled ()) {
        auth = casm_curve_auth_new (casm_config_str ("CURVE_CLIENTS_FILE",
                                                     NULL));
        if (!auth)
            return 2;
    }

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
        casm_metrics_on_collect (NULL, s_metrics_collect, queues);
        rc = s_run (queues, auth);
    }

    for (int i = 0; i < QUEUES; i++)
        casm_queue_destroy (&queues [i]);
    casm_curve_auth_destroy (&auth);
    casm_metrics_http_stop ();
    casm_info (NULL, NULL, "broker stopped");
    return rc;
}
