/*  casm_msg: the internal message format. See casm_msg.h for the layout. */

#include "casm_msg.h"
#include "casm_log.h"
#include "casm_metrics.h"

#include <string.h>
#include <time.h>

#define HEADER_FIXED 14

const char *
casm_op_name (int op)
{
    switch (op) {
        case CASM_OP_UPDATE_ATTRIBUTES: return "updateCustomerCustomAttributes";
        case CASM_OP_CREATE:            return "createCustomer";
        case CASM_OP_UPDATE_STATE:      return "updateCustomerState";
        case CASM_OP_READ:              return "readCustomer";
        case CASM_OP_PING:              return "ping";
        default:                        return "unknown";
    }
}

int64_t
casm_now_ms (void)
{
    struct timespec now;
    clock_gettime (CLOCK_REALTIME, &now);
    return (int64_t) now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

zframe_t *
casm_header_encode (const casm_header_t *header)
{
    size_t request_len = strnlen (header->request_id, CASM_REQUEST_ID_MAX);
    size_t trace_len = strnlen (header->trace_id, CASM_TRACE_ID_MAX);
    byte data [HEADER_FIXED + 2 + CASM_REQUEST_ID_MAX + CASM_TRACE_ID_MAX];

    data [0] = CASM_MSG_VERSION;
    data [1] = header->kind;
    data [2] = header->op;
    data [3] = header->flags;
    data [4] = (byte) (header->status >> 8);
    data [5] = (byte) header->status;
    uint64_t deadline = (uint64_t) header->deadline_ms;
    for (int i = 0; i < 8; i++)
        data [6 + i] = (byte) (deadline >> (56 - 8 * i));

    size_t at = HEADER_FIXED;
    data [at++] = (byte) request_len;
    memcpy (data + at, header->request_id, request_len);
    at += request_len;
    data [at++] = (byte) trace_len;
    memcpy (data + at, header->trace_id, trace_len);
    at += trace_len;

    return zframe_new (data, at);
}

int
casm_header_decode (zframe_t *frame, casm_header_t *header)
{
    memset (header, 0, sizeof *header);
    if (!frame || zframe_size (frame) < 1)
        return -1;

    const byte *data = zframe_data (frame);
    size_t size = zframe_size (frame);
    header->version = data [0];
    if (header->version != CASM_MSG_VERSION)
        return -2;
    if (size < HEADER_FIXED + 2)
        return -1;

    header->kind = data [1];
    header->op = data [2];
    header->flags = data [3];
    header->status = (uint16_t) ((data [4] << 8) | data [5]);
    uint64_t deadline = 0;
    for (int i = 0; i < 8; i++)
        deadline = (deadline << 8) | data [6 + i];
    header->deadline_ms = (int64_t) deadline;

    size_t at = HEADER_FIXED;
    size_t request_len = data [at++];
    if (request_len > CASM_REQUEST_ID_MAX || at + request_len + 1 > size)
        return -1;
    memcpy (header->request_id, data + at, request_len);
    at += request_len;

    size_t trace_len = data [at++];
    if (trace_len > CASM_TRACE_ID_MAX || at + trace_len != size)
        return -1;
    memcpy (header->trace_id, data + at, trace_len);
    return 0;
}

casm_work_t *
casm_work_take (zmsg_t **msg_p)
{
    zmsg_t *msg = *msg_p;
    *msg_p = NULL;
    if (!msg)
        return NULL;

    //  Move frames into the envelope up to and including the delimiter.
    zmsg_t *envelope = zmsg_new ();
    int delimited = 0;
    zframe_t *frame;
    while ((frame = zmsg_pop (msg))) {
        int empty = zframe_size (frame) == 0;
        zmsg_append (envelope, &frame);
        if (empty) {
            delimited = 1;
            break;
        }
    }
    zframe_t *header = zmsg_pop (msg);
    if (!delimited || !header) {
        casm_warn (NULL, NULL, "dropped a message without %s",
                   delimited ? "header" : "envelope delimiter");
        zframe_destroy (&header);
        zmsg_destroy (&envelope);
        zmsg_destroy (&msg);
        return NULL;
    }

    casm_work_t *self = calloc (1, sizeof *self);
    if (!self) {
        zframe_destroy (&header);
        zmsg_destroy (&envelope);
        zmsg_destroy (&msg);
        return NULL;
    }
    self->envelope = envelope;
    int rc = casm_header_decode (header, &self->header);
    zframe_destroy (&header);
    if (rc == -1) {
        casm_warn (NULL, NULL, "received a malformed message header");
        self->header.version = 0;
    }
    self->body = zmsg_pop (msg);
    if (!self->body)
        self->body = zframe_new (NULL, 0);
    self->event = zmsg_pop (msg);
    zmsg_destroy (&msg);
    return self;
}

//  The unit is done at this stage: counted in the stage's metrics and,
//  at debug level, logged with both ids, so that a grep for either finds
//  every stage a request went through. outcome NULL: by the status.
static void
s_unit_done (casm_work_t *self, const casm_header_t *header,
             const char *outcome)
{
    double seconds = (casm_metrics_now_us () - self->received_us) / 1e6;
    self->received_us = 0;
    if (!outcome)
        outcome = header->kind == CASM_KIND_REQUEST ? "forwarded"
                : header->status < 400 ? "ok"
                : header->status < 500 ? "client_error" : "server_error";
    casm_metrics_unit (self->stage, outcome, seconds);

    if (!casm_log_enabled (CASM_LOG_DEBUG))
        return;
    json_t *fields = json_pack ("{s:s,s:s,s:s,s:i,s:f}",
        "stage", self->stage, "operation", casm_op_name (header->op),
        "outcome", outcome, "status", header->status,
        "ms", seconds * 1000);
    if (fields && header->trace_id [0])
        json_object_set_new (fields, "traceId",
                             casm_log_string (header->trace_id,
                                              strlen (header->trace_id)));
    casm_debug (header->request_id, fields, "%s: unit %s", self->stage,
                outcome);
}

void
casm_work_destroy (casm_work_t **self_p)
{
    casm_work_t *self = *self_p;
    if (!self)
        return;
    if (self->received_us)
        s_unit_done (self, &self->header, "dropped");
    zmsg_destroy (&self->envelope);
    zframe_destroy (&self->body);
    zframe_destroy (&self->event);
    free (self);
    *self_p = NULL;
}

const char *
casm_work_body (casm_work_t *self, size_t *size)
{
    *size = zframe_size (self->body);
    return (const char *) zframe_data (self->body);
}

zmsg_t *
casm_work_message (casm_work_t *self, const char *prefix,
                   const casm_header_t *header, const char *body,
                   size_t body_size, const char *event, size_t event_size)
{
    if (self->received_us)
        s_unit_done (self, header, NULL);

    zmsg_t *msg = self->envelope;
    self->envelope = zmsg_new ();
    if (prefix)
        zmsg_pushstr (msg, prefix);

    zframe_t *frame = casm_header_encode (header);
    zmsg_append (msg, &frame);
    zmsg_addmem (msg, body, body_size);
    if (event)
        zmsg_addmem (msg, event, event_size);
    return msg;
}

int
casm_msg_send (zmsg_t **msg_p, void *socket)
{
    int rc = zmsg_send (msg_p, socket);
    if (rc != 0)
        zmsg_destroy (msg_p);
    return rc;
}

zmsg_t *
casm_work_answer (casm_work_t **self_p, const char *prefix, uint16_t status,
                  uint8_t flags, const char *body, size_t body_size)
{
    casm_work_t *self = *self_p;
    casm_header_t header = self->header;
    header.version = CASM_MSG_VERSION;
    header.kind = CASM_KIND_REPLY;
    header.status = status;
    header.flags = flags;

    zmsg_t *msg = casm_work_message (self, prefix, &header, body, body_size,
                                     NULL, 0);
    casm_work_destroy (self_p);
    return msg;
}

zmsg_t *
casm_work_onward (casm_work_t **self_p, const char *body, size_t body_size,
                  const char *event, size_t event_size)
{
    casm_work_t *self = *self_p;
    zmsg_t *msg = casm_work_message (self, NULL, &self->header, body,
                                     body_size, event, event_size);
    casm_work_destroy (self_p);
    return msg;
}
