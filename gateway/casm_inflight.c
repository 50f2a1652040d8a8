/*  casm_inflight: the table of in-flight requests. See casm_inflight.h.  */

#include "casm_inflight.h"

#include <stdlib.h>
#include <string.h>

//  A body buffer larger than this is freed when its request ends, so that
//  one large request does not pin its memory in the slot for good.
#define BODY_KEEP_MAX 65536
#define BODY_MIN 4096

struct casm_inflight_t {
    casm_request_t *slots;
    uint32_t capacity;
    uint32_t used;
    uint32_t waiting;
    uint32_t *free_list;                // stack of free slot indexes
    uint32_t free_count;
    casm_request_t *first;              // deadline list, earliest first
    casm_request_t *last;
};

casm_inflight_t *
casm_inflight_new (uint32_t capacity)
{
    if (capacity == 0)
        return NULL;
    casm_inflight_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;

    self->slots = calloc (capacity, sizeof *self->slots);
    self->free_list = calloc (capacity, sizeof *self->free_list);
    if (!self->slots || !self->free_list) {
        free (self->slots);
        free (self->free_list);
        free (self);
        return NULL;
    }

    //  Stack the slots so that the lowest indexes are used first.
    self->capacity = capacity;
    for (uint32_t i = 0; i < capacity; i++) {
        self->slots [i].index = i;
        self->free_list [i] = capacity - 1 - i;
    }
    self->free_count = capacity;
    return self;
}

void
casm_inflight_destroy (casm_inflight_t **self_p)
{
    casm_inflight_t *self = *self_p;
    if (!self)
        return;

    for (uint32_t i = 0; i < self->capacity; i++) {
        if (self->slots [i].has_reply)
            zmq_msg_close (&self->slots [i].reply);
        free (self->slots [i].body);
    }
    free (self->slots);
    free (self->free_list);
    free (self);
    *self_p = NULL;
}

static void
s_unlink (casm_inflight_t *self, casm_request_t *request)
{
    if (request->prev)
        request->prev->next = request->next;
    else
        self->first = request->next;
    if (request->next)
        request->next->prev = request->prev;
    else
        self->last = request->prev;

    request->prev = NULL;
    request->next = NULL;
    self->waiting--;
}

casm_request_t *
casm_inflight_take (casm_inflight_t *self)
{
    if (self->free_count == 0)
        return NULL;
    casm_request_t *request =
        &self->slots [self->free_list [--self->free_count]];
    self->used++;

    //  Keep the body buffer; clear everything else the caller owns.
    request->generation++;
    request->state = CASM_REQUEST_RECEIVING;
    request->deadline = 0;
    request->connection = NULL;
    request->route = 0;
    request->op = 0;
    request->has_body = 0;
    request->trace_id [0] = 0;
    request->status = 0;
    request->flags = 0;
    request->error_code = NULL;
    request->has_reply = 0;
    request->down = NULL;
    request->body_size = 0;
    request->overflow = 0;
    request->dropped = 0;
    return request;
}

void
casm_inflight_release (casm_inflight_t *self, casm_request_t *request)
{
    if (request->state == CASM_REQUEST_FREE)
        return;
    if (request->state == CASM_REQUEST_WAITING)
        s_unlink (self, request);

    if (request->has_reply) {
        zmq_msg_close (&request->reply);
        request->has_reply = 0;
    }
    if (request->body_capacity > BODY_KEEP_MAX) {
        free (request->body);
        request->body = NULL;
        request->body_capacity = 0;
    }
    request->body_size = 0;
    request->connection = NULL;

    //  A new generation now, so that a late reply finds nothing even
    //  before the slot is taken again.
    request->generation++;
    request->state = CASM_REQUEST_FREE;
    self->free_list [self->free_count++] = request->index;
    self->used--;
}

uint32_t
casm_inflight_used (casm_inflight_t *self)
{
    return self->used;
}

uint32_t
casm_inflight_capacity (casm_inflight_t *self)
{
    return self->capacity;
}

static void
s_put_u32 (uint8_t *data, uint32_t value)
{
    data [0] = (uint8_t) (value >> 24);
    data [1] = (uint8_t) (value >> 16);
    data [2] = (uint8_t) (value >> 8);
    data [3] = (uint8_t) value;
}

static uint32_t
s_get_u32 (const uint8_t *data)
{
    return ((uint32_t) data [0] << 24) | ((uint32_t) data [1] << 16)
         | ((uint32_t) data [2] << 8) | (uint32_t) data [3];
}

void
casm_inflight_correlation (casm_request_t *request, uint8_t *key)
{
    s_put_u32 (key, request->index);
    s_put_u32 (key + 4, request->generation);
}

casm_request_t *
casm_inflight_find (casm_inflight_t *self, const void *key, size_t size)
{
    if (!key || size != CASM_CORRELATION_SIZE)
        return NULL;

    uint32_t index = s_get_u32 (key);
    uint32_t generation = s_get_u32 ((const uint8_t *) key + 4);
    if (index >= self->capacity)
        return NULL;

    casm_request_t *request = &self->slots [index];
    if (request->generation != generation
    ||  request->state != CASM_REQUEST_WAITING)
        return NULL;
    return request;
}

void
casm_inflight_wait (casm_inflight_t *self, casm_request_t *request,
                    int64_t deadline)
{
    if (request->state == CASM_REQUEST_WAITING)
        s_unlink (self, request);
    request->state = CASM_REQUEST_WAITING;
    request->deadline = deadline;

    //  Deadlines mostly come in order (one timeout for all operations), so
    //  the place is found at or near the end of the list.
    casm_request_t *after = self->last;
    while (after && after->deadline > deadline)
        after = after->prev;

    request->prev = after;
    request->next = after ? after->next : self->first;
    if (request->next)
        request->next->prev = request;
    else
        self->last = request;
    if (after)
        after->next = request;
    else
        self->first = request;
    self->waiting++;
}

void
casm_inflight_answer (casm_inflight_t *self, casm_request_t *request)
{
    if (request->state == CASM_REQUEST_WAITING)
        s_unlink (self, request);
    request->state = CASM_REQUEST_ANSWERED;
}

int64_t
casm_inflight_next_deadline (casm_inflight_t *self)
{
    return self->first ? self->first->deadline : INT64_MAX;
}

casm_request_t *
casm_inflight_expired (casm_inflight_t *self, int64_t now)
{
    if (self->first && self->first->deadline <= now)
        return self->first;
    return NULL;
}

casm_request_t *
casm_inflight_first (casm_inflight_t *self)
{
    return self->first;
}

uint32_t
casm_inflight_waiting (casm_inflight_t *self)
{
    return self->waiting;
}

int
casm_request_append (casm_request_t *request, const char *data,
                     size_t size, size_t limit)
{
    if (request->overflow || request->body_size > limit
    ||  size > limit - request->body_size) {
        request->overflow = 1;
        request->dropped += size;
        return -1;
    }

    size_t needed = request->body_size + size;
    if (needed > request->body_capacity) {
        size_t capacity = request->body_capacity ? request->body_capacity
                                                 : BODY_MIN;
        while (capacity < needed)
            capacity *= 2;
        if (capacity > limit)
            capacity = limit;

        char *body = realloc (request->body, capacity);
        if (!body)
            return -2;
        request->body = body;
        request->body_capacity = capacity;
    }

    memcpy (request->body + request->body_size, data, size);
    request->body_size += size;
    return 0;
}
