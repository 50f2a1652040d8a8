/*  casm_inflight: the gateway's table of in-flight HTTP requests.

    One table, allocated once, holds every request the gateway has taken
    between its headers and its answer; its size is the in-flight cap. Each
    request has a correlation key, its slot index and a generation, that
    travels down the pipeline and brings the reply back to it. A reply
    whose key names a slot that has been reused since (a reply arriving
    after its request was answered 504) matches nothing and is dropped.

    Requests that wait for the pipeline are kept in a list in deadline
    order, so that the next deadline and the expired requests are found
    without a scan. Each slot keeps its body buffer from one request to the
    next, so that a steady load allocates nothing here.                    */

#ifndef CASM_INFLIGHT_H
#define CASM_INFLIGHT_H

#include "casm_msg.h"

#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

//  Size of the correlation frame: slot index and generation, big-endian.
#define CASM_CORRELATION_SIZE 8

typedef enum {
    CASM_REQUEST_FREE = 0,
    CASM_REQUEST_RECEIVING,             // headers read, body arriving
    CASM_REQUEST_WAITING,               // in the pipeline, connection suspended
    CASM_REQUEST_ANSWERED               // answer ready, connection resumed
} casm_request_state_t;

typedef struct casm_request_t casm_request_t;

struct casm_request_t {
    //  The table's: read them, do not write them.
    uint32_t index;
    uint32_t generation;
    casm_request_state_t state;
    int64_t deadline;                   // while waiting, in the caller's clock
    casm_request_t *prev;               // the deadline list
    casm_request_t *next;

    //  The caller's: cleared by casm_inflight_take.
    void *connection;                   // the suspended HTTP connection
    int route;                          // casm_route_kind_t
    int op;                             // casm_op_t
    int has_body;
    char trace_id [CASM_TRACE_ID_MAX + 1];
    int64_t started_us;                 // arrival, for the latency metric
    uint16_t status;                    // the answer's HTTP status
    uint8_t flags;                      // the reply's CASM_FLAG_*
    const char *error_code;             // answer with this error, not reply
    const char *down;                   // readiness: what is down, or NULL
    zmq_msg_t reply;                    // the reply body, when has_reply
    int has_reply;

    //  The request body; the buffer outlives the request.
    char *body;
    size_t body_size;
    size_t body_capacity;
    int overflow;                       // the body passed the limit
    size_t dropped;                     // bytes refused since then
};

typedef struct casm_inflight_t casm_inflight_t;

//  A table of capacity requests (at least 1). NULL when memory runs out.
casm_inflight_t *casm_inflight_new (uint32_t capacity);

//  Frees the table and every body buffer, NULLs the pointer.
void casm_inflight_destroy (casm_inflight_t **self_p);

//  Takes a free slot for a new request, in state RECEIVING with the
//  caller's fields cleared. NULL when every slot is in use.
casm_request_t *casm_inflight_take (casm_inflight_t *self);

//  Gives the slot back: takes it off the deadline list, closes the reply,
//  and shrinks a body buffer that grew large. The request's correlation
//  key is dead from now on.
void casm_inflight_release (casm_inflight_t *self, casm_request_t *request);

//  Slots in use, and the capacity.
uint32_t casm_inflight_used (casm_inflight_t *self);
uint32_t casm_inflight_capacity (casm_inflight_t *self);

//  Writes the request's correlation key (CASM_CORRELATION_SIZE bytes).
void casm_inflight_correlation (casm_request_t *request, uint8_t *key);

//  The waiting request that this correlation key names, or NULL when the
//  key is malformed, unknown, stale, or its request is not waiting.
casm_request_t *casm_inflight_find (casm_inflight_t *self, const void *key,
                                    size_t size);

//  Marks the request WAITING until deadline and puts it on the list.
void casm_inflight_wait (casm_inflight_t *self, casm_request_t *request,
                         int64_t deadline);

//  Marks a waiting request ANSWERED and takes it off the list.
void casm_inflight_answer (casm_inflight_t *self, casm_request_t *request);

//  The earliest deadline of a waiting request, or INT64_MAX when none.
int64_t casm_inflight_next_deadline (casm_inflight_t *self);

//  The waiting request with the earliest deadline if that deadline is at
//  or before now, else NULL.
casm_request_t *casm_inflight_expired (casm_inflight_t *self, int64_t now);

//  The waiting request with the earliest deadline, or NULL.
casm_request_t *casm_inflight_first (casm_inflight_t *self);

//  Requests now waiting for the pipeline.
uint32_t casm_inflight_waiting (casm_inflight_t *self);

//  Appends body bytes, never holding more than limit bytes. Returns 0, or
//  -1 when the body would pass the limit (the request is then marked
//  overflow, and these and later bytes are only counted in dropped), or
//  -2 when memory runs out.
int casm_request_append (casm_request_t *request, const char *data,
                         size_t size, size_t limit);

#endif
