/*  casm_gateway: HTTP in, Q1 out, replies back. See casm_gateway.h.

    A request's life here (docs/internals.md, steps 1 and 6):

    1.  MHD calls s_access with the headers (a request without a body:
        once it is complete, see s_access). The route is found, the cheap
        checks are made (404, 405, 415, 413 by Content-Length, the
        in-flight cap), and a slot of the in-flight table is taken.
    2.  The body, if any, is appended to the slot's buffer, up to
        MAX_BODY_BYTES.
    3.  When the request is complete, it goes to Q1 as [correlation] []
        [header] [body] and the connection is suspended.
    4.  The reply comes back as [correlation] [] [header] [body]; the
        correlation names the slot, the slot names the connection, which is
        resumed. A deadline passing first resumes it with 504.
    5.  MHD calls s_access again for the resumed connection, and the answer
        is queued. MHD's completion callback gives the slot back, once the
        answer is written, so a slot is never reused under a connection.

    Answers that need no pipeline (404, 405, 415, 413, 503 at the cap,
    /health) are queued at once and hold no slot.                         */

#include "casm_gateway.h"
#include "casm_config.h"
#include "casm_error.h"
#include "casm_inflight.h"
#include "casm_log.h"
#include "casm_msg.h"
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
#define CONNECTION_MEMORY (64 * 1024)

#define JSON_TYPE "application/json; charset=utf-8"

//  Causes of 5xx answers; each is logged at most once a second.
typedef enum {
    WARN_BROKER = 0,
    WARN_CAP,
    WARN_TIMEOUT,
    WARN_REJECTED,
    WARN_REPLY,
    WARN_MEMORY,
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

    int draining;
    int64_t drain_deadline;             // grace period ends
    int64_t stop_deadline;              // last answers written, or not

    uint8_t random [4096];              // for fresh trace ids
    size_t random_left;

    struct {
        int64_t last;
        uint64_t suppressed;
    } warned [WARN_CAUSES];
};

//  Signals reach the loop through a pipe, so a signal that arrives just
//  before zmq_poll still wakes it.
static int s_signal_pipe [2] = { -1, -1 };
static volatile sig_atomic_t s_signals = 0;


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
} answer_extra_t;

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
                             JSON_TYPE);
    MHD_add_response_header (response, "X-Request-Id", trace_id);
    if (status == MHD_HTTP_SERVICE_UNAVAILABLE)
        MHD_add_response_header (response, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    if (extra && extra->allow)
        MHD_add_response_header (response, MHD_HTTP_HEADER_ALLOW,
                                 extra->allow);
    if (extra && extra->replayed)
        MHD_add_response_header (response, "Idempotent-Replayed", "true");

    //  A draining gateway sends its keep-alive clients elsewhere.
    if (self->draining)
        MHD_add_response_header (response, MHD_HTTP_HEADER_CONNECTION,
                                 "close");

    enum MHD_Result rc = MHD_queue_response (connection, status, response);
    MHD_destroy_response (response);
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

//  Sends a request to Q1 as [correlation] [] [header] [body]. Returns 0,
//  or -1 when the DEALER refuses (no broker connected, or its queue full).
static int
s_pipeline_send (casm_gateway_t *self, casm_request_t *request,
                 const char *body, size_t size, int64_t timeout_ms)
{
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

    //  ZMQ_IMMEDIATE and a zero send timeout make the first frame fail at
    //  once when no broker is connected; once it is accepted, the rest of
    //  the message is too (multipart messages are atomic).
    uint8_t key [CASM_CORRELATION_SIZE];
    casm_inflight_correlation (request, key);
    int rc = zmq_send (self->pipeline, key, sizeof key,
                       ZMQ_SNDMORE | ZMQ_DONTWAIT);
    if (rc != -1)
        rc = zmq_send (self->pipeline, "", 0, ZMQ_SNDMORE);
    if (rc != -1)
        rc = zmq_send (self->pipeline, zframe_data (frame),
                       zframe_size (frame), ZMQ_SNDMORE);
    if (rc != -1)
        rc = zmq_send (self->pipeline, body, size, 0);
    zframe_destroy (&frame);
    return rc == -1 ? -1 : 0;
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

//  Reads the replies that have arrived, a batch at a time.
static void
s_pipeline_recv (casm_gateway_t *self)
{
    for (int received = 0; received < RECV_BATCH; received++) {
        zmq_msg_t frames [4];
        zmq_msg_init (&frames [0]);
        if (zmq_msg_recv (&frames [0], self->pipeline, ZMQ_DONTWAIT) == -1) {
            zmq_msg_close (&frames [0]);
            return;
        }

        //  Read the whole message; frames past the fourth are dropped.
        int count = 1;
        int more = zmq_msg_more (&frames [0]);
        while (more) {
            zmq_msg_t extra;
            zmq_msg_t *frame = count < 4 ? &frames [count] : &extra;
            zmq_msg_init (frame);
            if (zmq_msg_recv (frame, self->pipeline, 0) == -1) {
                zmq_msg_close (frame);
                break;
            }
            more = zmq_msg_more (frame);
            if (count < 4)
                count++;
            else
                zmq_msg_close (frame);
        }

        s_pipeline_reply (self, frames, count);
        for (int i = 0; i < count; i++)
            zmq_msg_close (&frames [i]);
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

static enum MHD_Result
s_request_begin (casm_gateway_t *self, struct MHD_Connection *connection,
                 const char *url, const char *method, void **con_cls,
                 int complete)
{
    char trace_id [CASM_TRACE_ID_MAX + 1];
    s_trace_id (self, connection, trace_id);

    casm_route_t route;
    int found = casm_route_find (method, url, &route);
    if (found == CASM_ROUTE_NOT_FOUND)
        return s_respond_error (self, connection, MHD_HTTP_NOT_FOUND,
                                CASM_ERR_NOT_FOUND, trace_id, NULL);
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
        s_warn (self, WARN_BROKER, request->trace_id,
                "cannot send to the broker at %s: %s", self->endpoint,
                zmq_strerror (errno));
        s_request_fail (request, 503, CASM_ERR_UNAVAILABLE, "broker");
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

static enum MHD_Result
s_access (void *cls, struct MHD_Connection *connection, const char *url,
          const char *method, const char *version, const char *upload_data,
          size_t *upload_data_size, void **con_cls)
{
    casm_gateway_t *self = cls;
    casm_request_t *request = *con_cls;
    (void) version;

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
    (void) connection;
    (void) toe;

    if (request && request != &s_bodiless)
        casm_inflight_release (self->inflight, request);
    *con_cls = NULL;
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

    //  The pipeline first: a request must never find it missing.
    casm_config_endpoint (self->endpoint, sizeof self->endpoint, 1, 0, 0);
    self->dealer = zsock_new (ZMQ_DEALER);
    if (self->dealer) {
        casm_socket_tune (self->dealer);
        zsock_set_immediate (self->dealer, 1);
    }
    if (!self->dealer
    ||  zsock_connect (self->dealer, "%s", self->endpoint) != 0) {
        casm_error (NULL, NULL, "cannot connect to the broker at %s",
                    self->endpoint);
        casm_gateway_destroy (&self);
        return NULL;
    }
    self->pipeline = zsock_resolve (self->dealer);

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
    self->daemon = MHD_start_daemon (
        flags, (uint16_t) config->port, NULL, NULL, s_access, self,
        MHD_OPTION_EXTERNAL_LOGGER, s_mhd_log, self,
        MHD_OPTION_LISTEN_SOCKET, (MHD_socket) self->listen_fd,
        MHD_OPTION_CONNECTION_LIMIT, config->max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, config->idle_timeout_s,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t) CONNECTION_MEMORY,
        MHD_OPTION_NOTIFY_COMPLETED, s_completed, self,
        MHD_OPTION_END);
    if (!self->daemon) {
        casm_error (NULL, NULL, "cannot start the HTTP server on %s:%d",
                    config->bind, config->port);
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
    casm_info (NULL, fields, "listening on http://%s:%d", config->bind,
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
            s_drain (self);
        if (items [1].revents & ZMQ_POLLIN)
            s_pipeline_recv (self);
        s_pipeline_expire (self);

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
        //  connections resumed above.
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

    //  MHD must not be stopped with suspended connections.
    if (self->daemon) {
        s_pipeline_abandon (self);
        MHD_run (self->daemon);
        MHD_stop_daemon (self->daemon);
        casm_info (NULL, NULL, "stopped");
    }
    if (self->listen_fd != -1)
        close (self->listen_fd);
    zsock_destroy (&self->dealer);
    casm_inflight_destroy (&self->inflight);
    free (self);
    *self_p = NULL;
}
