/*  casm_gateway: HTTP in, Q1 out, replies back. See casm_gateway.h.

    A request's life here (docs/internals.md, steps 1 and 6):

    1.  MHD calls s_access with the headers (a request without a body:
        once it is complete, see s_access). The route is found, the cheap
        checks are made (404, 405, 415, 413 by Content-Length, the
        in-flight cap), and a slot of the in-flight table is taken.
    2.  The body, if any, is appended to the slot's buffer, up to
        MAX_BODY_BYTES.
    3.  When the request is complete, it goes to Q1 as [correlation] []
        [header] [body] and the connection is suspended. The requests of
        one turn of the loop leave together, as one bundle
        (casm_bundle.h), once MHD_run is done (s_pipeline_flush).
    4.  The reply comes back as [correlation] [] [header] [body]; the
        correlation names the slot, the slot names the connection, which is
        resumed. A deadline passing first resumes it with 504.
    5.  MHD calls s_access again for the resumed connection, and the answer
        is queued. MHD's completion callback gives the slot back, once the
        answer is written, so a slot is never reused under a connection.

    Answers that need no pipeline (404, 405, 415, 413, 503 at the cap,
    /health, /openapi.yaml) are queued at once and hold no slot.          */

#include "casm_gateway.h"
#include "casm_auth.h"
#include "casm_bundle.h"
#include "casm_config.h"
#include "casm_curve.h"
#include "casm_error.h"
#include "casm_guard.h"
#include "casm_inflight.h"
#include "casm_log.h"
#include "casm_metrics.h"
#include "casm_msg.h"
#include "casm_openapi.h"
#include "casm_route.h"
#include "casm_stage.h"

#include <microhttpd.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

//  The readiness probe's own deadline: a probe must answer quickly.
#define READY_TIMEOUT_MS 2000

//  Replies read from Q1 in one go before HTTP gets its turn again.
#define RECV_BATCH 256

//  After the grace period, how long the 503 answers get to be written.
#define FLUSH_MS 1000

//  MHD's per-connection memory: request headers and the read buffer.
//  Headers that do not fit are refused by MHD (431).
#define CONNECTION_MEMORY (64 * 1024)

//  HTTPS: TLS 1.2 and 1.3 only, GnuTLS's normal cipher choice otherwise.
#define TLS_PRIORITIES "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"

//  The largest certificate or key file read.
#define PEM_MAX (1024 * 1024)

#define JSON_TYPE "application/json; charset=utf-8"
#define OPENAPI_TYPE "application/yaml"

//  Causes of 5xx answers; each is logged at most once a second.
typedef enum {
    WARN_BROKER = 0,
    WARN_CAP,
    WARN_TIMEOUT,
    WARN_REJECTED,
    WARN_REPLY,
    WARN_MEMORY,
    WARN_AUTH,                          // 401s: no valid API key
    WARN_CAUSES
} warn_cause_t;

struct casm_gateway_t {
    casm_gateway_config_t config;
    char endpoint [256];                // Q1 frontend
    int listen_fd;                      // ours until MHD takes it
    struct MHD_Daemon *daemon;
    int epoll_fd;                       // MHD's, polled with the DEALER
    zsock_t *dealer;
    void *pipeline;                     // the DEALER's libzmq handle
    casm_inflight_t *inflight;
    casm_auth_t *auth;                  // API keys, or NULL: none needed
    casm_guard_t *guard;                // receive deadlines
    char *tls_cert;                     // PEM text, while MHD runs
    char *tls_key;

    //  Requests made this turn, not sent yet: their frames, ready to go.
    struct {
        casm_request_t *request;
        zmq_msg_t frames [4];           // [correlation] [] [header] [body]
    } outgoing [CASM_BUNDLE_UNITS_MAX];
    size_t outgoing_count;

    int draining;
    int64_t drain_deadline;             // grace period ends
    int64_t stop_deadline;              // last answers written, or not

    uint8_t random [4096];              // for fresh trace ids
    size_t random_left;

    //  The request this call of s_access answers, for the metrics:
    //  its operation and its arrival (casm_metrics_now_us).
    const char *answering;
    int64_t answering_since;

    struct {
        int64_t last;
        uint64_t suppressed;
    } warned [WARN_CAUSES];
};

//  Signals reach the loop through a pipe, so a signal that arrives just
//  before zmq_poll still wakes it.
static int s_signal_pipe [2] = { -1, -1 };
static volatile sig_atomic_t s_signals = 0;
static volatile sig_atomic_t s_hangups = 0;


static int64_t
s_now (void)
{
    struct timespec now;
    clock_gettime (CLOCK_MONOTONIC, &now);
    return (int64_t) now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

static void
s_warn (casm_gateway_t *self, warn_cause_t cause, const char *trace_id,
        const char *format, ...)
    __attribute__ ((format (printf, 4, 5)));

//  Warns about a cause of 5xx answers, once a second at most per cause, so
//  that a dependency that is down cannot flood the log.
static void
s_warn (casm_gateway_t *self, warn_cause_t cause, const char *trace_id,
        const char *format, ...)
{
    int64_t now = s_now ();
    if (self->warned [cause].last
    &&  now - self->warned [cause].last < 1000) {
        self->warned [cause].suppressed++;
        return;
    }

    char message [512];
    va_list args;
    va_start (args, format);
    vsnprintf (message, sizeof message, format, args);
    va_end (args);

    json_t *fields = json_object ();
    if (trace_id && *trace_id)
        json_object_set_new (fields, "traceId",
                             casm_log_string (trace_id, strlen (trace_id)));
    if (self->warned [cause].suppressed)
        json_object_set_new (fields, "suppressed",
                             json_integer ((json_int_t)
                                           self->warned [cause].suppressed));
    casm_warn (NULL, fields, "%s", message);

    self->warned [cause].last = now;
    self->warned [cause].suppressed = 0;
}

static void
s_signal (int signum)
{
    (void) signum;
    if (s_signals++ > 0)
        _exit (1);

    int saved = errno;
    ssize_t rc = write (s_signal_pipe [1], "s", 1);
    (void) rc;
    errno = saved;
}

//  SIGHUP: the loop re-reads the API keys (not here: it allocates).
static void
s_hangup (int signum)
{
    (void) signum;
    s_hangups = 1;

    int saved = errno;
    ssize_t rc = write (s_signal_pipe [1], "h", 1);
    (void) rc;
    errno = saved;
}

static int
s_signals_catch (void)
{
    if (s_signal_pipe [0] == -1) {
        if (pipe (s_signal_pipe) != 0)
            return -1;
        for (int i = 0; i < 2; i++) {
            fcntl (s_signal_pipe [i], F_SETFL, O_NONBLOCK);
            fcntl (s_signal_pipe [i], F_SETFD, FD_CLOEXEC);
        }
    }

    struct sigaction action;
    memset (&action, 0, sizeof action);
    action.sa_handler = s_signal;
    sigemptyset (&action.sa_mask);
    sigaction (SIGINT, &action, NULL);
    sigaction (SIGTERM, &action, NULL);
    action.sa_handler = s_hangup;
    sigaction (SIGHUP, &action, NULL);

    //  MHD sends with MSG_NOSIGNAL; this is for anything else.
    signal (SIGPIPE, SIG_IGN);
    return 0;
}

void
casm_gateway_config_load (casm_gateway_config_t *config)
{
    config->bind = casm_config_str ("HTTP_BIND", "0.0.0.0");
    config->port = (int) casm_config_int ("HTTP_PORT", 8080, 1, 65535);
    config->max_connections = (unsigned)
        casm_config_int ("HTTP_MAX_CONNECTIONS", 1024, 1, 1000000);
    config->idle_timeout_s = (unsigned)
        casm_config_int ("HTTP_IDLE_TIMEOUT_S", 30, 0, 86400);
    config->max_body = (size_t)
        casm_config_int ("MAX_BODY_BYTES", 2097152, 1, 1073741824);
    config->max_inflight = (uint32_t)
        casm_config_int ("MAX_INFLIGHT", 1024, 1, 1000000);
    config->request_timeout_ms =
        casm_config_int ("REQUEST_TIMEOUT_MS", 5000, 1, 3600000);
    config->grace_ms =
        casm_config_int ("SHUTDOWN_GRACE_MS", 10000, 0, 3600000);
    config->max_connections_per_ip = (unsigned)
        casm_config_int ("HTTP_MAX_CONNECTIONS_PER_IP", 0, 0, 1000000);
    config->receive_timeout_s = (unsigned)
        casm_config_int ("HTTP_RECEIVE_TIMEOUT_S", 30, 1, 86400);
    config->api_keys_file = casm_config_str ("API_KEYS_FILE", NULL);
    config->tls_cert_file = casm_config_str ("TLS_CERT_FILE", NULL);
    config->tls_key_file = casm_config_str ("TLS_KEY_FILE", NULL);
    if (!config->tls_cert_file != !config->tls_key_file) {
        fprintf (stderr, "casm: invalid %s: TLS_CERT_FILE and TLS_KEY_FILE "
                 "must be set together\n", config->tls_cert_file
                 ? "TLS_KEY_FILE" : "TLS_CERT_FILE");
        exit (2);
    }
}

//  A fresh trace id: 32 hex digits from the kernel's random source, read
//  in blocks so that a request costs no system call.
static void
s_trace_id_new (casm_gateway_t *self, char *trace_id)
{
    static const char hex [] = "0123456789abcdef";
    if (self->random_left < 16) {
        ssize_t got = getrandom (self->random, sizeof self->random, 0);
        if (got < 16) {
            //  Never expected on Linux; a unique id still beats none.
            static uint64_t counter = 0;
            snprintf (trace_id, CASM_TRACE_ID_MAX + 1, "%016llx%016llx",
                      (unsigned long long) casm_now_ms (),
                      (unsigned long long) ++counter);
            return;
        }
        self->random_left = (size_t) got;
    }

    const uint8_t *bytes = self->random + self->random_left - 16;
    for (int i = 0; i < 16; i++) {
        trace_id [2 * i] = hex [bytes [i] >> 4];
        trace_id [2 * i + 1] = hex [bytes [i] & 15];
    }
    trace_id [32] = 0;
    self->random_left -= 16;
}

//  The client's X-Request-Id when it is usable, else a fresh id.
static void
s_trace_id (casm_gateway_t *self, struct MHD_Connection *connection,
            char *trace_id)
{
    const char *given = MHD_lookup_connection_value (connection,
                                                     MHD_HEADER_KIND,
                                                     "X-Request-Id");
    if (casm_route_trace_id_valid (given))
        snprintf (trace_id, CASM_TRACE_ID_MAX + 1, "%s", given);
    else
        s_trace_id_new (self, trace_id);
}


//  --------------------------------------------------------------------
//  Answers

typedef struct {
    const char *allow;                  // 405: the allowed method
    int replayed;                       // Idempotent-Replayed: true
    const char *type;                   // Content-Type, when not JSON
    const char *challenge;              // 401: WWW-Authenticate
} answer_extra_t;

//  The operation label of a route for the metrics: bounded, never a path.
static const char *
s_operation (int kind, int op)
{
    switch (kind) {
        case CASM_ROUTE_OPERATION: return casm_op_name (op);
        case CASM_ROUTE_HEALTH:    return "health";
        case CASM_ROUTE_READY:     return "ready";
        case CASM_ROUTE_METRICS:   return "metrics";
        case CASM_ROUTE_OPENAPI:   return "openapi";
        default:                   return "other";
    }
}

//  An answer was queued: count it, and at debug level log it.
static void
s_answered (casm_gateway_t *self, unsigned status, const char *trace_id)
{
    double seconds = (casm_metrics_now_us () - self->answering_since) / 1e6;
    const char *operation = self->answering ? self->answering : "unknown";
    casm_metrics_request (operation, status, seconds);
    casm_debug (NULL, json_pack ("{s:s, s:s, s:i, s:f}", "traceId", trace_id,
                                 "operation", operation, "status",
                                 (int) status, "ms", seconds * 1000),
                "answered");
}

//  Queues an answer. body is used as mode says (MHD_RESPMEM_MUST_FREE
//  hands it over, even on failure).
static enum MHD_Result
s_respond (casm_gateway_t *self, struct MHD_Connection *connection,
           unsigned status, const char *body, size_t size,
           enum MHD_ResponseMemoryMode mode, const char *trace_id,
           const answer_extra_t *extra)
{
    struct MHD_Response *response =
        MHD_create_response_from_buffer (size, (void *) body, mode);
    if (!response) {
        if (mode == MHD_RESPMEM_MUST_FREE)
            free ((void *) body);
        s_warn (self, WARN_MEMORY, trace_id, "cannot build a response");
        return MHD_NO;
    }

    MHD_add_response_header (response, MHD_HTTP_HEADER_CONTENT_TYPE,
                             extra && extra->type ? extra->type : JSON_TYPE);
    MHD_add_response_header (response, "X-Request-Id", trace_id);
    if (status == MHD_HTTP_SERVICE_UNAVAILABLE)
        MHD_add_response_header (response, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    if (extra && extra->allow)
        MHD_add_response_header (response, MHD_HTTP_HEADER_ALLOW,
                                 extra->allow);
    if (extra && extra->replayed)
        MHD_add_response_header (response, "Idempotent-Replayed", "true");
    if (extra && extra->challenge)
        MHD_add_response_header (response, MHD_HTTP_HEADER_WWW_AUTHENTICATE,
                                 extra->challenge);

    //  A draining gateway sends its keep-alive clients elsewhere.
    if (self->draining)
        MHD_add_response_header (response, MHD_HTTP_HEADER_CONNECTION,
                                 "close");

    enum MHD_Result rc = MHD_queue_response (connection, status, response);
    MHD_destroy_response (response);
    if (rc == MHD_YES)
        s_answered (self, status, trace_id);
    return rc;
}

static enum MHD_Result
s_respond_error (casm_gateway_t *self, struct MHD_Connection *connection,
                 unsigned status, const char *code, const char *trace_id,
                 const answer_extra_t *extra)
{
    //  The client's requestId is not known here: the body leaves it out.
    size_t size = 0;
    char *body = casm_error_body ((int) status, code, NULL, NULL, NULL, NULL,
                                  &size);
    if (!body)
        return s_respond (self, connection, status, "{}", 2,
                          MHD_RESPMEM_PERSISTENT, trace_id, extra);
    return s_respond (self, connection, status, body, size,
                      MHD_RESPMEM_MUST_FREE, trace_id, extra);
}

//  The readiness answer: the fields the stages reported, what is down,
//  and the verdict.
static enum MHD_Result
s_respond_ready (casm_gateway_t *self, casm_request_t *request)
{
    json_t *answer = json_object ();
    json_object_set_new (answer, "status", json_string ("not-ready"));

    //  The gateway answers, so it is up; a reply came back through the
    //  broker, so that is up too.
    json_object_set_new (answer, "gateway", json_string ("up"));
    if (request->has_reply)
        json_object_set_new (answer, "broker", json_string ("up"));

    if (request->has_reply) {
        json_t *fields = json_loadb (zmq_msg_data (&request->reply),
                                     zmq_msg_size (&request->reply), 0,
                                     NULL);
        if (json_is_object (fields))
            json_object_update (answer, fields);
        json_decref (fields);
    }
    if (request->down)
        json_object_set_new (answer, request->down, json_string ("down"));

    //  A probe the broker rejected stopped at the first stage that had no
    //  instance to take it (each stage adds itself to what it forwards).
    if (request->has_reply && (request->flags & CASM_FLAG_REJECTED)) {
        static const char *stages [] = { "validator", "worker", "publisher" };
        for (int i = 0; i < 3; i++)
            if (!json_object_get (answer, stages [i])) {
                json_object_set_new (answer, stages [i],
                                     json_string ("down"));
                break;
            }
    }

    int ready = !request->error_code && !request->down
             && request->status == MHD_HTTP_OK;
    json_object_set_new (answer, "status",
                         json_string (ready ? "ready" : "not-ready"));

    char *body = json_dumps (answer, JSON_COMPACT);
    json_decref (answer);
    if (!body)
        return MHD_NO;
    unsigned status = ready ? MHD_HTTP_OK : MHD_HTTP_SERVICE_UNAVAILABLE;
    return s_respond (self, request->connection, status, body, strlen (body),
                      MHD_RESPMEM_MUST_FREE, request->trace_id, NULL);
}

//  GET /metrics: the process registry in Prometheus text format.
static enum MHD_Result
s_respond_metrics (casm_gateway_t *self, struct MHD_Connection *connection,
                   const char *trace_id)
{
    size_t size = 0;
    char *text = casm_metrics_render (NULL, &size);
    if (!text)
        return s_respond_error (self, connection,
                                MHD_HTTP_INTERNAL_SERVER_ERROR,
                                CASM_ERR_INTERNAL, trace_id, NULL);
    answer_extra_t extra = { .type = CASM_METRICS_CONTENT_TYPE };
    return s_respond (self, connection, MHD_HTTP_OK, text, size,
                      MHD_RESPMEM_MUST_FREE, trace_id, &extra);
}

//  Answers a request whose outcome is known: the pipeline's reply, or an
//  error the gateway decided on.
static enum MHD_Result
s_respond_request (casm_gateway_t *self, casm_request_t *request)
{
    if (request->route == CASM_ROUTE_READY)
        return s_respond_ready (self, request);
    if (request->error_code)
        return s_respond_error (self, request->connection, request->status,
                                request->error_code, request->trace_id,
                                NULL);

    answer_extra_t extra = {
        .replayed = (request->flags & CASM_FLAG_REPLAYED) != 0
    };
    return s_respond (self, request->connection, request->status,
                      zmq_msg_data (&request->reply),
                      zmq_msg_size (&request->reply),
                      MHD_RESPMEM_MUST_COPY, request->trace_id, &extra);
}

//  Sets the gateway's own outcome for a request.
static void
s_request_fail (casm_request_t *request, uint16_t status, const char *code,
                const char *down)
{
    request->status = status;
    request->error_code = code;
    request->down = down;
}


//  --------------------------------------------------------------------
//  The pipeline side

static size_t s_pipeline_flush (casm_gateway_t *self);
static void s_request_resume (casm_gateway_t *self,
                              casm_request_t *request);

//  Queues a request for Q1 as [correlation] [] [header] [body]; the turn's
//  requests leave together (s_pipeline_flush), and a full queue leaves
//  first. Returns 0, or -1 when out of memory.
static int
s_pipeline_send (casm_gateway_t *self, casm_request_t *request,
                 const char *body, size_t size, int64_t timeout_ms)
{
    if (self->outgoing_count == CASM_BUNDLE_UNITS_MAX)
        s_pipeline_flush (self);
    casm_header_t header;
    memset (&header, 0, sizeof header);
    header.version = CASM_MSG_VERSION;
    header.kind = CASM_KIND_REQUEST;
    header.op = (uint8_t) request->op;
    header.deadline_ms = casm_now_ms () + timeout_ms;
    memcpy (header.trace_id, request->trace_id, sizeof header.trace_id);

    zframe_t *frame = casm_header_encode (&header);
    if (!frame)
        return -1;
    uint8_t key [CASM_CORRELATION_SIZE];
    casm_inflight_correlation (request, key);

    zmq_msg_t *frames = self->outgoing [self->outgoing_count].frames;
    const void *data [4] = { key, "", zframe_data (frame), body };
    size_t sizes [4] = { sizeof key, 0, zframe_size (frame), size };
    int made = 0;
    while (made < 4 && zmq_msg_init_size (&frames [made], sizes [made]) == 0) {
        if (sizes [made])
            memcpy (zmq_msg_data (&frames [made]), data [made], sizes [made]);
        made++;
    }
    zframe_destroy (&frame);
    if (made < 4) {
        while (made > 0)
            zmq_msg_close (&frames [--made]);
        return -1;
    }
    self->outgoing [self->outgoing_count++].request = request;
    return 0;
}

//  Sends the queued requests: one as a plain message, several as a bundle.
//  ZMQ_IMMEDIATE and a zero send timeout make the first frame fail at once
//  when no broker is connected; once it is accepted, the rest of the
//  message is too (multipart messages are atomic). Refused, every queued
//  request is answered 503: its connection was suspended, so it resumes.
//  Returns how many were answered so.
static size_t
s_pipeline_flush (casm_gateway_t *self)
{
    size_t count = self->outgoing_count;
    if (count == 0)
        return 0;

    int rc = 0;
    if (count > 1) {
        uint8_t index [CASM_BUNDLE_UNITS_MAX];
        memset (index, 4, count);
        rc = zmq_send (self->pipeline, "", 0, ZMQ_SNDMORE | ZMQ_DONTWAIT);
        if (rc != -1)
            rc = zmq_send (self->pipeline, index, count, ZMQ_SNDMORE);
    }
    for (size_t i = 0; rc != -1 && i < count; i++) {
        zmq_msg_t *frames = self->outgoing [i].frames;
        for (int k = 0; rc != -1 && k < 4; k++) {
            int flags = k < 3 || i + 1 < count ? ZMQ_SNDMORE : 0;
            if (count == 1 && k == 0)
                flags |= ZMQ_DONTWAIT;
            rc = zmq_msg_send (&frames [k], self->pipeline, flags);
        }
    }
    self->outgoing_count = 0;
    if (rc != -1)
        return 0;

    int error = errno;
    for (size_t i = 0; i < count; i++) {
        casm_request_t *request = self->outgoing [i].request;
        for (int k = 0; k < 4; k++)
            zmq_msg_close (&self->outgoing [i].frames [k]);
        s_warn (self, WARN_BROKER, request->trace_id,
                "cannot send to the broker at %s: %s", self->endpoint,
                zmq_strerror (error));
        s_request_fail (request, 503, CASM_ERR_UNAVAILABLE, "broker");
        s_request_resume (self, request);
    }
    return count;
}

//  Wakes the request's connection: MHD calls s_access for it again on its
//  next run, and the answer is queued there.
static void
s_request_resume (casm_gateway_t *self, casm_request_t *request)
{
    casm_inflight_answer (self->inflight, request);
    MHD_resume_connection (request->connection);
}

//  Takes one reply apart and resumes the request it answers. frames are
//  [correlation] [] [header] [body]; what does not fit is refused.
static void
s_pipeline_reply (casm_gateway_t *self, zmq_msg_t *frames, int count)
{
    casm_request_t *request =
        casm_inflight_find (self->inflight, zmq_msg_data (&frames [0]),
                            zmq_msg_size (&frames [0]));
    if (!request) {
        //  Expected for replies that come after their request's 504.
        casm_debug (NULL, NULL, "dropped a late or unknown reply");
        return;
    }

    casm_header_t header;
    int rc = -1;
    if (count >= 4 && zmq_msg_size (&frames [1]) == 0) {
        zframe_t *frame = zframe_new (zmq_msg_data (&frames [2]),
                                      zmq_msg_size (&frames [2]));
        rc = frame ? casm_header_decode (frame, &header) : -1;
        zframe_destroy (&frame);
    }

    if (rc == -2) {
        s_warn (self, WARN_REPLY, request->trace_id,
                "reply of unknown message version %d", header.version);
        s_request_fail (request, 500, CASM_ERR_INTERNAL, "pipeline");
    }
    else
    if (rc != 0 || header.kind != CASM_KIND_REPLY
    ||  header.status < 100 || header.status > 599) {
        s_warn (self, WARN_REPLY, request->trace_id,
                "malformed reply from the pipeline");
        s_request_fail (request, 500, CASM_ERR_INTERNAL, "pipeline");
    }
    else {
        request->status = header.status;
        request->flags = header.flags;
        casm_debug (header.request_id, json_pack ("{s:s, s:s, s:i}",
                    "traceId", request->trace_id, "operation",
                    casm_op_name (header.op), "status", header.status),
                    "reply from the pipeline");
        zmq_msg_init (&request->reply);
        zmq_msg_move (&request->reply, &frames [3]);
        request->has_reply = 1;

        //  The broker could not queue it: the body is our own request
        //  echoed, not an answer.
        if (header.flags & CASM_FLAG_REJECTED) {
            s_warn (self, WARN_REJECTED, request->trace_id,
                    "the pipeline rejected a request (no instance or "
                    "queue full)");
            s_request_fail (request, 503, CASM_ERR_UNAVAILABLE,
                            "pipeline");
        }
    }
    s_request_resume (self, request);
}

//  Reads the next frame of a message into frame, or closes it and returns
//  -1 when the message has no more.
static int
s_frame_next (casm_gateway_t *self, zmq_msg_t *frame, int *more)
{
    zmq_msg_init (frame);
    if (!*more || zmq_msg_recv (frame, self->pipeline, 0) == -1) {
        zmq_msg_close (frame);
        *more = 0;
        return -1;
    }
    *more = zmq_msg_more (frame);
    return 0;
}

//  Reads a unit of count frames (the whole rest of the message when count
//  is 0) and hands it to s_pipeline_reply; frames past the fourth are
//  dropped. first, when not NULL, is its first frame, already read.
static void
s_unit_read (casm_gateway_t *self, zmq_msg_t *first, size_t count,
             int *more)
{
    zmq_msg_t frames [4];
    size_t kept = 0;
    size_t read = 0;
    if (first) {
        zmq_msg_init (&frames [0]);
        zmq_msg_move (&frames [0], first);
        kept = read = 1;
    }
    while (*more && (count == 0 || read < count)) {
        zmq_msg_t extra;
        zmq_msg_t *frame = kept < 4 ? &frames [kept] : &extra;
        if (s_frame_next (self, frame, more) != 0)
            break;
        read++;
        if (kept < 4)
            kept++;
        else
            zmq_msg_close (frame);
    }
    if (kept > 0 && (count == 0 || read == count))
        s_pipeline_reply (self, frames, (int) kept);
    else
        s_warn (self, WARN_REPLY, NULL, "malformed bundle from the pipeline");
    for (size_t i = 0; i < kept; i++)
        zmq_msg_close (&frames [i]);
}

//  Reads the replies that have arrived, a batch of messages at a time. A
//  message is one reply, or a bundle of them (casm_bundle.h): an empty
//  frame, an index of frame counts, then the replies' frames.
static void
s_pipeline_recv (casm_gateway_t *self)
{
    for (int received = 0; received < RECV_BATCH; received++) {
        zmq_msg_t first;
        zmq_msg_init (&first);
        if (zmq_msg_recv (&first, self->pipeline, ZMQ_DONTWAIT) == -1) {
            zmq_msg_close (&first);
            return;
        }
        int more = zmq_msg_more (&first);
        if (zmq_msg_size (&first) > 0 || !more) {
            s_unit_read (self, &first, 0, &more);
            continue;
        }
        zmq_msg_close (&first);

        zmq_msg_t index;
        if (s_frame_next (self, &index, &more) != 0)
            continue;
        const uint8_t *counts = zmq_msg_data (&index);
        size_t units = zmq_msg_size (&index);
        for (size_t i = 0; i < units && more && counts [i] > 0; i++)
            s_unit_read (self, NULL, counts [i], &more);
        zmq_msg_close (&index);

        //  What the index did not account for is dropped.
        zmq_msg_t rest;
        if (more)
            s_warn (self, WARN_REPLY, NULL,
                    "malformed bundle from the pipeline");
        while (s_frame_next (self, &rest, &more) == 0)
            zmq_msg_close (&rest);
    }
}

//  Answers the requests whose deadline has passed.
static void
s_pipeline_expire (casm_gateway_t *self)
{
    int64_t now = s_now ();
    casm_request_t *request;
    while ((request = casm_inflight_expired (self->inflight, now))) {
        s_warn (self, WARN_TIMEOUT, request->trace_id,
                "no reply from the pipeline before the deadline");
        if (request->route == CASM_ROUTE_READY)
            s_request_fail (request, 503, CASM_ERR_UNAVAILABLE, "pipeline");
        else
            s_request_fail (request, 504, CASM_ERR_TIMEOUT, NULL);
        s_request_resume (self, request);
    }
}

//  Answers every waiting request 503: the gateway stops waiting.
static void
s_pipeline_abandon (casm_gateway_t *self)
{
    casm_request_t *request;
    while ((request = casm_inflight_first (self->inflight))) {
        s_request_fail (request, 503, CASM_ERR_UNAVAILABLE, "gateway");
        s_request_resume (self, request);
    }
}


//  --------------------------------------------------------------------
//  The HTTP side

//  Routes a request, makes the checks that need no body, and takes a slot
//  for it; complete says that the whole request has been received.
static enum MHD_Result s_request_dispatch (casm_gateway_t *self,
                                           casm_request_t *request);

//  The client's address as text, for the log.
static void
s_client_address (struct MHD_Connection *connection, char *address,
                  size_t size)
{
    snprintf (address, size, "unknown");
    const union MHD_ConnectionInfo *info = MHD_get_connection_info (
        connection, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!info || !info->client_addr)
        return;
    socklen_t length = info->client_addr->sa_family == AF_INET6
                     ? sizeof (struct sockaddr_in6)
                     : sizeof (struct sockaddr_in);
    if (getnameinfo (info->client_addr, length, address, (socklen_t) size,
                     NULL, 0, NI_NUMERICHOST) != 0)
        snprintf (address, size, "unknown");
}

//  True when the request carries an accepted API key. The key's label is
//  logged with the request (at debug level); the key never is, and a
//  refusal says nothing about why.
static int
s_authenticate (casm_gateway_t *self, struct MHD_Connection *connection,
                int op, const char *trace_id)
{
    const char *value = NULL;
    size_t size = 0;
    if (MHD_lookup_connection_value_n (
            connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION,
            strlen (MHD_HTTP_HEADER_AUTHORIZATION), &value, &size) != MHD_YES)
        value = NULL;

    const char *label = casm_auth_check (self->auth, value, size);
    if (!label) {
        char address [NI_MAXHOST];
        s_client_address (connection, address, sizeof address);
        s_warn (self, WARN_AUTH, trace_id, "refused a request without a "
                "valid API key from %s", address);
        return 0;
    }
    casm_debug (NULL, json_pack ("{s:s, s:s, s:s}", "traceId", trace_id,
                                 "apiKey", label, "operation",
                                 casm_op_name (op)),
                "request authenticated");
    return 1;
}

static enum MHD_Result
s_request_begin (casm_gateway_t *self, struct MHD_Connection *connection,
                 const char *url, const char *method, void **con_cls,
                 int complete)
{
    char trace_id [CASM_TRACE_ID_MAX + 1];
    s_trace_id (self, connection, trace_id);

    casm_route_t route;
    int found = casm_route_find (method, url, &route);
    self->answering = found == CASM_ROUTE_NOT_FOUND
                    ? "unknown" : s_operation (route.kind, route.op);
    self->answering_since = casm_metrics_now_us ();
    if (found == CASM_ROUTE_NOT_FOUND)
        return s_respond_error (self, connection, MHD_HTTP_NOT_FOUND,
                                CASM_ERR_NOT_FOUND, trace_id, NULL);

    //  The API's operations need a key; /health, /ready and the like do
    //  not, so that probes and scrapers need no secret.
    if (route.kind == CASM_ROUTE_OPERATION && self->auth
    &&  !s_authenticate (self, connection, route.op, trace_id)) {
        answer_extra_t extra = { .challenge = "Bearer realm=\"casm\"" };
        return s_respond_error (self, connection, MHD_HTTP_UNAUTHORIZED,
                                CASM_ERR_UNAUTHORIZED, trace_id, &extra);
    }
    if (found == CASM_ROUTE_BAD_METHOD) {
        answer_extra_t extra = { .allow = route.allow };
        return s_respond_error (self, connection,
                                MHD_HTTP_METHOD_NOT_ALLOWED,
                                CASM_ERR_METHOD, trace_id, &extra);
    }
    static const char up [] = "{\"status\":\"up\"}";
    static const char draining [] =
        "{\"status\":\"not-ready\",\"gateway\":\"draining\"}";
    if (route.kind == CASM_ROUTE_HEALTH)
        return s_respond (self, connection, MHD_HTTP_OK, up, sizeof up - 1,
                          MHD_RESPMEM_PERSISTENT, trace_id, NULL);
    if (route.kind == CASM_ROUTE_OPENAPI) {
        answer_extra_t extra = { .type = OPENAPI_TYPE };
        return s_respond (self, connection, MHD_HTTP_OK, casm_openapi_yaml,
                          casm_openapi_yaml_size, MHD_RESPMEM_PERSISTENT,
                          trace_id, &extra);
    }
    if (route.kind == CASM_ROUTE_METRICS)
        return s_respond_metrics (self, connection, trace_id);

    if (self->draining) {
        if (route.kind == CASM_ROUTE_READY)
            return s_respond (self, connection, MHD_HTTP_SERVICE_UNAVAILABLE,
                              draining, sizeof draining - 1,
                              MHD_RESPMEM_PERSISTENT, trace_id, NULL);
        return s_respond_error (self, connection,
                                MHD_HTTP_SERVICE_UNAVAILABLE,
                                CASM_ERR_UNAVAILABLE, trace_id, NULL);
    }

    if (route.has_body) {
        const char *type = MHD_lookup_connection_value (
            connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
        if (!casm_route_is_json (type))
            return s_respond_error (self, connection,
                                    MHD_HTTP_UNSUPPORTED_MEDIA_TYPE,
                                    CASM_ERR_MEDIA_TYPE, trace_id, NULL);
    }

    //  Refuse an announced oversize body before reading any of it. MHD
    //  has already refused a malformed Content-Length.
    const char *length = MHD_lookup_connection_value (
        connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (length) {
        errno = 0;
        unsigned long long announced = strtoull (length, NULL, 10);
        if (errno == ERANGE || announced > self->config.max_body)
            return s_respond_error (self, connection,
                                    MHD_HTTP_CONTENT_TOO_LARGE,
                                    CASM_ERR_TOO_LARGE, trace_id, NULL);
    }

    casm_request_t *request = casm_inflight_take (self->inflight);
    if (!request) {
        s_warn (self, WARN_CAP, trace_id,
                "in-flight cap reached (MAX_INFLIGHT=%u)",
                (unsigned) self->config.max_inflight);
        return s_respond_error (self, connection,
                                MHD_HTTP_SERVICE_UNAVAILABLE,
                                CASM_ERR_UNAVAILABLE, trace_id, NULL);
    }
    request->connection = connection;
    request->route = route.kind;
    request->op = route.op;
    request->has_body = route.has_body;
    request->started_us = self->answering_since;
    memcpy (request->trace_id, trace_id, sizeof request->trace_id);
    *con_cls = request;
    return complete ? s_request_dispatch (self, request) : MHD_YES;
}

//  A piece of the body. MHD allows no answer while it hands over body
//  data, so an oversize chunked body is counted but not kept, and
//  answered 413 when it ends. A client that goes on sending far past the
//  limit is disconnected instead, so that it cannot hold a connection
//  forever.
static enum MHD_Result
s_request_body (casm_gateway_t *self, casm_request_t *request,
                const char *data, size_t *size)
{
    size_t given = *size;
    *size = 0;

    int rc = casm_request_append (request, data, given,
                                  self->config.max_body);
    if (rc == -2) {
        s_warn (self, WARN_MEMORY, request->trace_id,
                "out of memory for a request body");
        return MHD_NO;
    }
    if (rc == -1 && request->dropped > self->config.max_body) {
        casm_debug (NULL, NULL, "closed a connection that sent a body far "
                    "over MAX_BODY_BYTES");
        return MHD_NO;
    }
    return MHD_YES;
}

//  The request is complete: send it down the pipeline and suspend the
//  connection until its answer.
static enum MHD_Result
s_request_dispatch (casm_gateway_t *self, casm_request_t *request)
{
    struct MHD_Connection *connection = request->connection;
    if (request->overflow)
        return s_respond_error (self, connection, MHD_HTTP_CONTENT_TOO_LARGE,
                                CASM_ERR_TOO_LARGE, request->trace_id,
                                NULL);
    if (self->draining) {
        s_request_fail (request, 503, CASM_ERR_UNAVAILABLE, "gateway");
        return s_respond_request (self, request);
    }

    //  The body on the wire: the client's for the operations that take
    //  one, the query string made JSON for readCustomer, and "{}" for the
    //  readiness probe. A body sent with a GET is ignored.
    const char *body = request->body;
    size_t size = request->body_size;
    char *made = NULL;
    if (request->route == CASM_ROUTE_READY) {
        body = "{}";
        size = 2;
    }
    else
    if (!request->has_body) {
        const char *ref_id = NULL, *external_id = NULL;
        size_t ref_id_size = 0, external_id_size = 0;
        if (MHD_lookup_connection_value_n (connection, MHD_GET_ARGUMENT_KIND,
                                           "refId", 5, &ref_id,
                                           &ref_id_size) == MHD_YES
        &&  !ref_id)
            ref_id = "";
        if (MHD_lookup_connection_value_n (connection, MHD_GET_ARGUMENT_KIND,
                                           "externalId", 10, &external_id,
                                           &external_id_size) == MHD_YES
        &&  !external_id)
            external_id = "";

        made = casm_route_read_body (ref_id, ref_id_size, external_id,
                                     external_id_size, &size);
        if (!made) {
            s_warn (self, WARN_MEMORY, request->trace_id,
                    "out of memory for a read request");
            s_request_fail (request, 500, CASM_ERR_INTERNAL, NULL);
            return s_respond_request (self, request);
        }
        body = made;
    }
    else
    if (!body)
        body = "";

    int64_t timeout = request->route == CASM_ROUTE_READY
                    ? READY_TIMEOUT_MS : self->config.request_timeout_ms;
    int rc = s_pipeline_send (self, request, body, size, timeout);
    free (made);
    if (rc != 0) {
        s_warn (self, WARN_MEMORY, request->trace_id,
                "out of memory for a request to the broker");
        s_request_fail (request, 500, CASM_ERR_INTERNAL, NULL);
        return s_respond_request (self, request);
    }

    casm_inflight_wait (self->inflight, request, s_now () + timeout);
    MHD_suspend_connection (connection);
    return MHD_YES;
}

//  Marks a request without a body between its first and second call.
static casm_request_t s_bodiless;

static int
s_request_has_body (struct MHD_Connection *connection)
{
    const char *length = MHD_lookup_connection_value (
        connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    const char *encoding = MHD_lookup_connection_value (
        connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING);
    return encoding || (length && strspn (length, "0") != strlen (length));
}

//  The guard's record of a connection (casm_guard), or NULL.
static casm_guard_conn_t *
s_guard_conn (struct MHD_Connection *connection)
{
    const union MHD_ConnectionInfo *info = MHD_get_connection_info (
        connection, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return info ? (casm_guard_conn_t *) info->socket_context : NULL;
}

static enum MHD_Result
s_access (void *cls, struct MHD_Connection *connection, const char *url,
          const char *method, const char *version, const char *upload_data,
          size_t *upload_data_size, void **con_cls)
{
    casm_gateway_t *self = cls;
    casm_request_t *request = *con_cls;
    (void) version;

    //  A call after the first without body data: the whole request has
    //  arrived, and its receive deadline no longer applies.
    if (request && !*upload_data_size)
        casm_guard_disarm (self->guard, s_guard_conn (connection));

    //  MHD closes the connection after any answer queued on a request's
    //  first call, as the body is then left unread. A request without a
    //  body is therefore only looked at on its second call, when it is
    //  complete, so that keep-alive connections stay open.
    if (!request) {
        if (s_request_has_body (connection))
            return s_request_begin (self, connection, url, method, con_cls,
                                    0);
        *con_cls = &s_bodiless;
        return MHD_YES;
    }
    if (request != &s_bodiless) {
        self->answering = s_operation (request->route, request->op);
        self->answering_since = request->started_us;
    }
    if (request == &s_bodiless) {
        if (*upload_data_size) {
            *upload_data_size = 0;      // never expected: no body announced
            return MHD_YES;
        }
        *con_cls = NULL;
        return s_request_begin (self, connection, url, method, con_cls, 1);
    }
    if (*upload_data_size)
        return s_request_body (self, request, upload_data, upload_data_size);

    switch (request->state) {
        case CASM_REQUEST_RECEIVING:
            return s_request_dispatch (self, request);
        case CASM_REQUEST_ANSWERED:
            return s_respond_request (self, request);
        default:
            //  Not expected: a waiting request's connection is suspended.
            return MHD_YES;
    }
}

static void
s_completed (void *cls, struct MHD_Connection *connection, void **con_cls,
             enum MHD_RequestTerminationCode toe)
{
    casm_gateway_t *self = cls;
    casm_request_t *request = *con_cls;

    if (request && request != &s_bodiless)
        casm_inflight_release (self->inflight, request);
    *con_cls = NULL;

    //  Answered: a kept-alive connection has its time for the next one.
    if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK)
        casm_guard_arm (self->guard, s_guard_conn (connection), s_now ());
}

//  Each connection is watched by the guard from its opening to its end.
static void
s_connection (void *cls, struct MHD_Connection *connection,
              void **socket_context, enum MHD_ConnectionNotificationCode code)
{
    casm_gateway_t *self = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *info = MHD_get_connection_info (
            connection, MHD_CONNECTION_INFO_CONNECTION_FD);
        *socket_context = info
            ? casm_guard_open (self->guard, info->connect_fd, s_now ())
            : NULL;
    }
    else
    if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        casm_guard_conn_t *conn = *socket_context;
        casm_guard_close (self->guard, &conn);
        *socket_context = NULL;
    }
}

//  Closes the connections that did not deliver a request in time. The
//  socket is only shut down: MHD owns the descriptor, sees the end of
//  the stream and cleans up as for any client that went away.
static void
s_guard_expire (casm_gateway_t *self)
{
    int64_t now = s_now ();
    int fd;
    while ((fd = casm_guard_expired (self->guard, now)) != -1) {
        casm_debug (NULL, NULL, "closed a connection that delivered no "
                    "whole request within HTTP_RECEIVE_TIMEOUT_S");
        shutdown (fd, SHUT_RDWR);
    }
}

static void
s_mhd_log (void *cls, const char *format, va_list args)
{
    (void) cls;
    if (!casm_log_enabled (CASM_LOG_DEBUG))
        return;

    //  MHD's messages end in a newline, and most are about one client.
    char message [512];
    vsnprintf (message, sizeof message, format, args);
    size_t size = strlen (message);
    while (size && (message [size - 1] == '\n' || message [size - 1] == '\r'))
        message [--size] = 0;
    casm_debug (NULL, NULL, "libmicrohttpd: %s", message);
}


//  --------------------------------------------------------------------
//  Life cycle

//  The whole of a PEM file, NUL-terminated, for MHD; NULL after logging
//  why when it cannot be read. variable names the setting in the log.
static char *
s_pem_read (const char *path, const char *variable)
{
    FILE *file = fopen (path, "r");
    char *text = file ? malloc (PEM_MAX + 1) : NULL;
    size_t size = text ? fread (text, 1, PEM_MAX + 1, file) : 0;
    const char *problem = !file ? strerror (errno)
                        : !text ? "out of memory"
                        : ferror (file) ? "read error"
                        : size == 0 ? "the file is empty"
                        : size > PEM_MAX ? "the file is larger than 1 MiB"
                        : NULL;
    if (file)
        fclose (file);
    if (problem) {
        casm_error (NULL, json_pack ("{s:s}", "file", path),
                    "cannot read %s: %s", variable, problem);
        free (text);
        return NULL;
    }
    text [size] = 0;
    return text;
}

//  Before each scrape: the requests in flight now.
static void
s_metrics_collect (void *arg)
{
    casm_gateway_t *self = arg;
    casm_metrics_inflight (casm_inflight_used (self->inflight),
                           casm_inflight_capacity (self->inflight));
}

//  Binds and listens ourselves rather than through MHD, so that a port
//  that cannot be bound gets a message that says why.
static int
s_listen (const casm_gateway_config_t *config, int *family)
{
    char port [16];
    snprintf (port, sizeof port, "%d", config->port);
    struct addrinfo hints;
    memset (&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;

    struct addrinfo *found = NULL;
    int rc = getaddrinfo (config->bind, port, &hints, &found);
    if (rc != 0) {
        casm_error (NULL, NULL, "cannot resolve HTTP_BIND=%s: %s",
                    config->bind, gai_strerror (rc));
        return -1;
    }

    int fd = socket (found->ai_family,
                     found->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                     found->ai_protocol);
    int on = 1;
    if (fd == -1
    ||  setsockopt (fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) != 0
    ||  bind (fd, found->ai_addr, found->ai_addrlen) != 0
    ||  listen (fd, SOMAXCONN) != 0) {
        casm_error (NULL, NULL, "cannot listen on %s:%d: %s", config->bind,
                    config->port, strerror (errno));
        if (fd != -1)
            close (fd);
        freeaddrinfo (found);
        return -1;
    }
    *family = found->ai_family;
    freeaddrinfo (found);
    return fd;
}

casm_gateway_t *
casm_gateway_new (const casm_gateway_config_t *config)
{
    casm_gateway_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->config = *config;
    self->listen_fd = -1;

    self->inflight = casm_inflight_new (config->max_inflight);
    if (!self->inflight || s_signals_catch () != 0) {
        casm_error (NULL, NULL, "cannot set up the gateway: %s",
                    strerror (errno));
        casm_gateway_destroy (&self);
        return NULL;
    }
    casm_metrics_on_collect (NULL, s_metrics_collect, self);

    //  The pipeline first: a request must never find it missing.
    casm_config_endpoint (self->endpoint, sizeof self->endpoint, 1, 0, 0);
    self->dealer = zsock_new (ZMQ_DEALER);
    if (self->dealer) {
        casm_socket_tune (self->dealer);
        zsock_set_immediate (self->dealer, 1);
    }
    if (!self->dealer
    ||  casm_curve_client (self->dealer) != 0
    ||  zsock_connect (self->dealer, "%s", self->endpoint) != 0) {
        casm_error (NULL, NULL, "cannot connect to the broker at %s",
                    self->endpoint);
        casm_gateway_destroy (&self);
        return NULL;
    }
    self->pipeline = zsock_resolve (self->dealer);

    //  The keys and the guard before the daemon: no request may find them
    //  missing.
    if (config->api_keys_file) {
        self->auth = casm_auth_new (config->api_keys_file);
        if (!self->auth) {
            casm_gateway_destroy (&self);
            return NULL;
        }
    }
    self->guard = casm_guard_new ((int64_t) config->receive_timeout_s * 1000);
    if (!self->guard) {
        casm_gateway_destroy (&self);
        return NULL;
    }

    //  HTTPS: MHD reads the PEM text when it starts; it stays ours, and is
    //  kept until the daemon stops. TODO(#7): read at start only, so a new
    //  certificate needs a restart; SIGHUP re-reads the API keys alone.
    struct MHD_OptionItem tls [4] = { { MHD_OPTION_END, 0, NULL } };
    if (config->tls_cert_file) {
        if (MHD_is_feature_supported (MHD_FEATURE_TLS) != MHD_YES) {
            casm_error (NULL, NULL, "TLS_CERT_FILE is set but this "
                        "libmicrohttpd was built without TLS");
            casm_gateway_destroy (&self);
            return NULL;
        }
        self->tls_cert = s_pem_read (config->tls_cert_file, "TLS_CERT_FILE");
        self->tls_key = s_pem_read (config->tls_key_file, "TLS_KEY_FILE");
        if (!self->tls_cert || !self->tls_key) {
            casm_gateway_destroy (&self);
            return NULL;
        }
        tls [0] = (struct MHD_OptionItem) {
            MHD_OPTION_HTTPS_MEM_CERT, 0, self->tls_cert };
        tls [1] = (struct MHD_OptionItem) {
            MHD_OPTION_HTTPS_MEM_KEY, 0, self->tls_key };
        tls [2] = (struct MHD_OptionItem) {
            MHD_OPTION_HTTPS_PRIORITIES, 0, (void *) TLS_PRIORITIES };
    }

    int family = AF_INET;
    self->listen_fd = s_listen (config, &family);
    if (self->listen_fd == -1) {
        casm_gateway_destroy (&self);
        return NULL;
    }

    //  MHD_USE_TURBO was measured (wrk against a fake broker) and gave
    //  nothing measurable, so its "potentially unsafe" shortcuts stay off.
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME
                   | MHD_USE_ERROR_LOG;
    if (family == AF_INET6)
        flags |= MHD_USE_IPv6;
    if (self->tls_cert)
        flags |= MHD_USE_TLS;
    self->daemon = MHD_start_daemon (
        flags, (uint16_t) config->port, NULL, NULL, s_access, self,
        MHD_OPTION_EXTERNAL_LOGGER, s_mhd_log, self,
        MHD_OPTION_LISTEN_SOCKET, (MHD_socket) self->listen_fd,
        MHD_OPTION_CONNECTION_LIMIT, config->max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, config->idle_timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t) CONNECTION_MEMORY,
        MHD_OPTION_NOTIFY_COMPLETED, s_completed, self,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, config->max_connections_per_ip,
        MHD_OPTION_NOTIFY_CONNECTION, s_connection, self,
        MHD_OPTION_ARRAY, tls,
        MHD_OPTION_END);
    if (!self->daemon) {
        casm_error (NULL, NULL, "cannot start the HTTP server on %s:%d%s",
                    config->bind, config->port, self->tls_cert
                    ? " (are TLS_CERT_FILE and TLS_KEY_FILE a PEM "
                      "certificate and its private key?)" : "");
        casm_gateway_destroy (&self);
        return NULL;
    }
    self->listen_fd = -1;               // MHD's now

    const union MHD_DaemonInfo *info =
        MHD_get_daemon_info (self->daemon, MHD_DAEMON_INFO_EPOLL_FD);
    self->epoll_fd = info ? info->epoll_fd : -1;
    if (self->epoll_fd == -1) {
        casm_error (NULL, NULL, "libmicrohttpd has no epoll descriptor");
        casm_gateway_destroy (&self);
        return NULL;
    }

    json_t *fields = json_pack ("{s:s, s:i, s:s, s:i, s:I, s:I}",
        "bind", config->bind, "port", config->port,
        "pipeline", self->endpoint,
        "maxInflight", (int) config->max_inflight,
        "requestTimeoutMs", (json_int_t) config->request_timeout_ms,
        "maxBodyBytes", (json_int_t) config->max_body);
    if (fields) {
        json_object_set_new (fields, "tls", json_boolean (self->tls_cert));
        json_object_set_new (fields, "apiKeys", json_integer (self->auth
            ? (json_int_t) casm_auth_size (self->auth) : 0));
        json_object_set_new (fields, "maxConnectionsPerIp", json_integer (
            (json_int_t) config->max_connections_per_ip));
        json_object_set_new (fields, "receiveTimeoutS", json_integer (
            (json_int_t) config->receive_timeout_s));
    }
    casm_info (NULL, fields, "listening on %s://%s:%d",
               self->tls_cert ? "https" : "http", config->bind,
               config->port);
    return self;
}

//  Stops taking work: new connections are refused, new requests on open
//  connections get 503, and the requests in flight have until the grace
//  period ends.
static void
s_drain (casm_gateway_t *self)
{
    char byte;
    while (read (s_signal_pipe [0], &byte, 1) == 1)
        ;
    if (self->draining)
        return;

    self->draining = 1;
    self->drain_deadline = s_now () + self->config.grace_ms;
    self->stop_deadline = INT64_MAX;
    MHD_socket listen_fd = MHD_quiesce_daemon (self->daemon);
    if (listen_fd != MHD_INVALID_SOCKET)
        close (listen_fd);

    json_t *fields = json_pack ("{s:i, s:I}",
        "inflight", (int) casm_inflight_used (self->inflight),
        "graceMs", (json_int_t) self->config.grace_ms);
    casm_info (NULL, fields, "draining");
}

//  How long zmq_poll may wait: no longer than MHD allows, nor past the
//  next request deadline, nor past the drain's deadlines.
static long
s_poll_timeout (casm_gateway_t *self)
{
    int64_t now = s_now ();
    int64_t until = casm_inflight_next_deadline (self->inflight);
    int64_t receive = casm_guard_next_deadline (self->guard);
    if (receive < until)
        until = receive;
    if (self->draining) {
        if (self->drain_deadline < until)
            until = self->drain_deadline;
        if (self->stop_deadline < until)
            until = self->stop_deadline;
    }

    int64_t timeout = -1;
    MHD_UNSIGNED_LONG_LONG mhd_timeout;
    if (MHD_get_timeout (self->daemon, &mhd_timeout) == MHD_YES)
        timeout = mhd_timeout > INT_MAX ? INT_MAX : (int64_t) mhd_timeout;
    if (until != INT64_MAX) {
        int64_t wait = until > now ? until - now : 0;
        if (timeout == -1 || wait < timeout)
            timeout = wait;
    }
    return (long) timeout;
}

//  The signal pipe is readable: SIGHUP re-reads the API keys (a file that
//  does not parse keeps the keys in force), SIGINT and SIGTERM drain.
static void
s_signals_handle (casm_gateway_t *self)
{
    char byte;
    while (read (s_signal_pipe [0], &byte, 1) == 1)
        ;
    if (s_hangups) {
        s_hangups = 0;
        if (self->auth)
            casm_auth_reload (self->auth);
        else
            casm_info (NULL, NULL, "SIGHUP: no API_KEYS_FILE to re-read");
    }
    if (s_signals)
        s_drain (self);
}

int
casm_gateway_run (casm_gateway_t *self)
{
    zmq_pollitem_t items [] = {
        { NULL, s_signal_pipe [0], ZMQ_POLLIN, 0 },
        { self->pipeline, 0, ZMQ_POLLIN, 0 },
        { NULL, self->epoll_fd, ZMQ_POLLIN, 0 },
    };

    while (1) {
        if (zmq_poll (items, 3, s_poll_timeout (self)) == -1
        &&  errno != EINTR) {
            casm_error (NULL, NULL, "poll failed: %s", zmq_strerror (errno));
            return 1;
        }
        if (items [0].revents & ZMQ_POLLIN)
            s_signals_handle (self);
        if (items [1].revents & ZMQ_POLLIN)
            s_pipeline_recv (self);
        s_pipeline_expire (self);
        s_guard_expire (self);

        if (self->draining && s_now () >= self->drain_deadline
        &&  self->stop_deadline == INT64_MAX) {
            if (casm_inflight_waiting (self->inflight))
                casm_warn (NULL, json_pack ("{s:i}", "abandoned",
                           (int) casm_inflight_waiting (self->inflight)),
                           "grace period over: answering what is left 503");
            s_pipeline_abandon (self);
            self->stop_deadline = s_now () + FLUSH_MS;
        }

        //  Always, as MHD requires after a poll; it also answers the
        //  connections resumed above. The requests it made leave now; the
        //  ones the broker refused are answered by another run, which may
        //  read new requests: those leave too before the loop waits.
        MHD_run (self->daemon);
        while (s_pipeline_flush (self) > 0)
            MHD_run (self->daemon);

        //  Drained: every request answered (its slot is only given back
        //  once the answer is written), or no more time to write them.
        if (self->draining
        &&  (casm_inflight_used (self->inflight) == 0
        ||   s_now () >= self->stop_deadline))
            break;
    }
    return 0;
}

void
casm_gateway_destroy (casm_gateway_t **self_p)
{
    casm_gateway_t *self = *self_p;
    if (!self)
        return;

    //  MHD must not be stopped with suspended connections. Draining, the
    //  last run answers new requests at once instead of queueing them.
    if (self->daemon) {
        self->draining = 1;
        s_pipeline_abandon (self);
        MHD_run (self->daemon);
        MHD_stop_daemon (self->daemon);
        casm_info (NULL, NULL, "stopped");
    }
    if (self->listen_fd != -1)
        close (self->listen_fd);
    casm_metrics_off_collect (NULL, s_metrics_collect, self);
    zsock_destroy (&self->dealer);
    casm_inflight_destroy (&self->inflight);
    casm_guard_destroy (&self->guard);
    casm_auth_destroy (&self->auth);
    if (self->tls_key)
        explicit_bzero (self->tls_key, strlen (self->tls_key));
    free (self->tls_key);
    free (self->tls_cert);
    free (self);
    *self_p = NULL;
}
