/*  casm_guard: receive deadlines per connection. See casm_guard.h.

    Armed connections sit on a doubly linked list in deadline order; since
    every deadline is now + limit and the clock does not go back, appending
    keeps the order. Disarmed connections are on no list.                  */

#include "casm_guard.h"

#include <assert.h>
#include <stdlib.h>

struct casm_guard_conn_t {
    int fd;
    int armed;
    int64_t deadline;
    casm_guard_conn_t *prev;
    casm_guard_conn_t *next;
};

struct casm_guard_t {
    int64_t limit_ms;
    casm_guard_conn_t *head;            // earliest deadline
    casm_guard_conn_t *tail;
    uint32_t size;
    uint32_t armed;
};

casm_guard_t *
casm_guard_new (int64_t limit_ms)
{
    assert (limit_ms > 0);
    casm_guard_t *self = calloc (1, sizeof *self);
    if (self)
        self->limit_ms = limit_ms;
    return self;
}

void
casm_guard_destroy (casm_guard_t **self_p)
{
    casm_guard_t *self = *self_p;
    if (!self)
        return;

    //  Disarmed connections are on no list: their owner (the HTTP
    //  server's close callback) frees them; armed ones are freed here.
    casm_guard_conn_t *conn = self->head;
    while (conn) {
        casm_guard_conn_t *next = conn->next;
        free (conn);
        conn = next;
    }
    free (self);
    *self_p = NULL;
}

static void
s_unlink (casm_guard_t *self, casm_guard_conn_t *conn)
{
    if (!conn->armed)
        return;
    if (conn->prev)
        conn->prev->next = conn->next;
    else
        self->head = conn->next;
    if (conn->next)
        conn->next->prev = conn->prev;
    else
        self->tail = conn->prev;
    conn->prev = conn->next = NULL;
    conn->armed = 0;
    self->armed--;
}

void
casm_guard_arm (casm_guard_t *self, casm_guard_conn_t *conn, int64_t now)
{
    if (!conn)
        return;
    s_unlink (self, conn);
    conn->deadline = now + self->limit_ms;

    //  A clock that stood still or a caller's older "now" must not break
    //  the order: such a deadline is moved up to the tail's.
    if (self->tail && conn->deadline < self->tail->deadline)
        conn->deadline = self->tail->deadline;
    conn->prev = self->tail;
    if (self->tail)
        self->tail->next = conn;
    else
        self->head = conn;
    self->tail = conn;
    conn->armed = 1;
    self->armed++;
}

casm_guard_conn_t *
casm_guard_open (casm_guard_t *self, int fd, int64_t now)
{
    casm_guard_conn_t *conn = calloc (1, sizeof *conn);
    if (!conn)
        return NULL;
    conn->fd = fd;
    self->size++;
    casm_guard_arm (self, conn, now);
    return conn;
}

void
casm_guard_close (casm_guard_t *self, casm_guard_conn_t **conn_p)
{
    casm_guard_conn_t *conn = *conn_p;
    if (!conn)
        return;
    s_unlink (self, conn);
    self->size--;
    free (conn);
    *conn_p = NULL;
}

void
casm_guard_disarm (casm_guard_t *self, casm_guard_conn_t *conn)
{
    if (conn)
        s_unlink (self, conn);
}

int64_t
casm_guard_next_deadline (casm_guard_t *self)
{
    return self->head ? self->head->deadline : INT64_MAX;
}

int
casm_guard_expired (casm_guard_t *self, int64_t now)
{
    casm_guard_conn_t *conn = self->head;
    if (!conn || conn->deadline > now)
        return -1;
    s_unlink (self, conn);
    return conn->fd;
}

uint32_t
casm_guard_size (casm_guard_t *self)
{
    return self->size;
}

uint32_t
casm_guard_armed (casm_guard_t *self)
{
    return self->armed;
}
