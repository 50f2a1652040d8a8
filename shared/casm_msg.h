/*  casm_msg: the internal message format, version 1.

    A message on the ZeroMQ chain is a routing envelope followed by the
    message proper:

        [identity ...] [empty] [header] [body] [event]?

    The envelope is every frame up to and including the first empty frame;
    each ROUTER on the way adds an identity. Stages treat the envelope as
    opaque and send it back unchanged with the reply, so replies retrace the
    chain hop by hop.

    The header frame is binary, big-endian, versioned:

        offset  size  field
        0       1     version (CASM_MSG_VERSION)
        1       1     kind: 1 request, 2 reply
        2       1     operation (casm_op_t)
        3       1     flags (CASM_FLAG_*)
        4       2     status: HTTP status of a reply, 0 in a request
        6       8     deadline: milliseconds since the epoch
        14      1     n = length of the request id (0..128)
        15      n     request id (the client's requestId, once known)
        15+n    1     m = length of the trace id (0..64)
        16+n    m     trace id (X-Request-Id, or made by the gateway)

    The body frame is JSON text: the client's request on the way in, the
    HTTP response body on the way back. Between worker and publisher a third
    frame, the event, carries the outbox row to publish (casm_event JSON).

    A receiver that finds a version it does not know answers with an error
    reply and never guesses.

    Several messages for the same peer may travel as one ZeroMQ message, a
    bundle (casm_bundle.h), whose first frame is empty: no message above
    starts with an empty frame.                                              */

#ifndef CASM_MSG_H
#define CASM_MSG_H

#include <czmq.h>
#include <stdint.h>

#define CASM_MSG_VERSION 1
#define CASM_REQUEST_ID_MAX 128
#define CASM_TRACE_ID_MAX 64

typedef enum {
    CASM_KIND_REQUEST = 1,
    CASM_KIND_REPLY = 2
} casm_kind_t;

typedef enum {
    CASM_OP_NONE = 0,
    CASM_OP_UPDATE_ATTRIBUTES = 1,      // updateCustomerCustomAttributes
    CASM_OP_CREATE = 2,                 // createCustomer
    CASM_OP_UPDATE_STATE = 3,           // updateCustomerState
    CASM_OP_READ = 4,                   // readCustomer
    CASM_OP_PING = 5                    // readiness probe through the chain
} casm_op_t;

//  The reply is a recorded outcome played again (Idempotent-Replayed).
#define CASM_FLAG_REPLAYED 0x01
//  The broker could not queue the request; the body is the original body.
#define CASM_FLAG_REJECTED 0x02

typedef struct {
    uint8_t version;
    uint8_t kind;
    uint8_t op;
    uint8_t flags;
    uint16_t status;
    int64_t deadline_ms;
    char request_id [CASM_REQUEST_ID_MAX + 1];
    char trace_id [CASM_TRACE_ID_MAX + 1];
} casm_header_t;

//  The operation's name as the API spells it, or "unknown".
const char *casm_op_name (int op);

//  Milliseconds since the epoch, from the real-time clock.
int64_t casm_now_ms (void);

//  A new header frame from this header. Request and trace ids longer than
//  their maximum are cut.
zframe_t *casm_header_encode (const casm_header_t *header);

//  Decodes a header frame. Returns 0, or -1 when the frame is malformed,
//  or -2 when its version is not CASM_MSG_VERSION (header->version is then
//  set, the rest is not).
int casm_header_decode (zframe_t *frame, casm_header_t *header);

//  One message taken apart: the envelope, the header, the body and the
//  optional event frame. Owns its frames.
typedef struct {
    zmsg_t *envelope;           // identities and the empty delimiter
    casm_header_t header;
    zframe_t *body;             // never NULL after casm_work_take
    zframe_t *event;            // NULL unless present

    //  Set by casm_stage_recv for a unit a stage instance received: its
    //  stage and arrival (casm_metrics_now_us). The unit's first answer
    //  or forward (casm_work_message), or its destruction unanswered,
    //  counts it in the stage's metrics and logs it at debug level with
    //  its request id and trace id. 0 when not counted, or counted.
    const char *stage;
    int64_t received_us;
} casm_work_t;

//  Takes a received message apart; takes ownership of *msg_p and sets it
//  to NULL. Returns NULL when the message has no envelope delimiter or no
//  header (nothing can be answered then), and logs why. A header of an
//  unknown version gives a work whose header.version says so: answer it
//  with casm_work_answer and status 500.
casm_work_t *casm_work_take (zmsg_t **msg_p);

//  Destroys the work and NULLs the caller's pointer.
void casm_work_destroy (casm_work_t **self_p);

//  The body as a pointer and size (not NUL-terminated).
const char *casm_work_body (casm_work_t *self, size_t *size);

//  Builds a message from the work's envelope with a new header and body;
//  the envelope moves into the message (the work keeps an empty one).
//  prefix, when not NULL, is sent as a first frame (a stage instance's
//  CASM_CMD_REPLY). body is copied. event may be NULL.
zmsg_t *casm_work_message (casm_work_t *self, const char *prefix,
                           const casm_header_t *header,
                           const char *body, size_t body_size,
                           const char *event, size_t event_size);

//  Sends the message and destroys it whether or not it could be sent (a
//  full or peerless socket with ZMQ_SNDTIMEO 0 refuses at once). Returns 0
//  or -1.
int casm_msg_send (zmsg_t **msg_p, void *socket);

//  The reply to the work as a message: the envelope (after prefix, when
//  not NULL), a reply header with this status and flags (other fields from
//  the request), and the body, copied. Destroys the work and NULLs the
//  pointer.
zmsg_t *casm_work_answer (casm_work_t **self_p, const char *prefix,
                          uint16_t status, uint8_t flags, const char *body,
                          size_t body_size);

//  The work for the next queue as a message: unchanged but for the body
//  (and event, which may be NULL), with the envelope kept, so that the
//  reply comes back to the sender. body and event are copied. Destroys
//  the work and NULLs the pointer.
zmsg_t *casm_work_onward (casm_work_t **self_p, const char *body,
                          size_t body_size, const char *event,
                          size_t event_size);

#endif
