/*  casm_bundle: several messages in one. See casm_bundle.h.

    The units are a ring of message pointers that grows by doubling; a
    stage's loop empties it every turn, so it stays at the size of the
    largest turn. Sends use ZFRAME_REUSE, which lends each frame's buffer
    to libzmq instead of giving it away: a message the socket refuses is
    still whole here.                                                       */

#include "casm_bundle.h"
#include "casm_log.h"

#include <errno.h>

struct casm_bundle_t {
    zmsg_t **units;
    size_t capacity;            // slots in units, a power of two
    size_t head;                // slot of the first unit
    size_t size;                // units held
};

casm_bundle_t *
casm_bundle_new (void)
{
    casm_bundle_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->capacity = 16;
    self->units = calloc (self->capacity, sizeof *self->units);
    if (!self->units) {
        free (self);
        return NULL;
    }
    return self;
}

void
casm_bundle_destroy (casm_bundle_t **self_p)
{
    casm_bundle_t *self = *self_p;
    if (!self)
        return;
    zmsg_t *msg;
    while ((msg = casm_bundle_pop (self)))
        zmsg_destroy (&msg);
    free (self->units);
    free (self);
    *self_p = NULL;
}

size_t
casm_bundle_size (casm_bundle_t *self)
{
    return self->size;
}

//  Doubles the ring, keeping the order. Returns 0 or -1.
static int
s_grow (casm_bundle_t *self)
{
    size_t capacity = self->capacity * 2;
    zmsg_t **units = calloc (capacity, sizeof *units);
    if (!units)
        return -1;
    for (size_t i = 0; i < self->size; i++)
        units [i] = self->units [(self->head + i) & (self->capacity - 1)];
    free (self->units);
    self->units = units;
    self->capacity = capacity;
    self->head = 0;
    return 0;
}

int
casm_bundle_append (casm_bundle_t *self, zmsg_t **msg_p)
{
    zmsg_t *msg = *msg_p;
    *msg_p = NULL;
    if (!msg)
        return -1;
    if (zmsg_size (msg) == 0 || zmsg_size (msg) > CASM_BUNDLE_FRAMES_MAX
    ||  (self->size == self->capacity && s_grow (self) != 0)) {
        zmsg_destroy (&msg);
        return -1;
    }
    self->units [(self->head + self->size) & (self->capacity - 1)] = msg;
    self->size++;
    return 0;
}

zmsg_t *
casm_bundle_first (casm_bundle_t *self)
{
    return self->size ? self->units [self->head] : NULL;
}

zmsg_t *
casm_bundle_pop (casm_bundle_t *self)
{
    if (self->size == 0)
        return NULL;
    zmsg_t *msg = self->units [self->head];
    self->units [self->head] = NULL;
    self->head = (self->head + 1) & (self->capacity - 1);
    self->size--;
    return msg;
}

bool
casm_bundle_is (zmsg_t *msg)
{
    zframe_t *first = zmsg_first (msg);
    return first && zframe_size (first) == 0;
}


//  --------------------------------------------------------------------
//  Sending

//  Sends one frame without giving it away. more says frames follow.
static int
s_frame_send (zframe_t *frame, void *socket, bool more)
{
    zframe_t *lent = frame;
    return zframe_send (&lent, socket, ZFRAME_REUSE | ZFRAME_DONTWAIT
                                       | (more ? ZFRAME_MORE : 0));
}

//  Sends the first count units as one message. Returns 0 or -1 with errno
//  set; on -1 nothing went out, unless the socket failed in the middle of
//  the message, which a ZeroMQ socket does not do (it takes or refuses a
//  message whole on its first frame).
static int
s_send_chunk (casm_bundle_t *self, size_t count, void *socket,
              zframe_t *routing)
{
    //  A bundle's first two frames are made before anything is sent, so
    //  that running out of memory cannot leave a message half sent.
    zframe_t *empty = NULL, *index = NULL;
    if (count > 1) {
        byte counts [CASM_BUNDLE_UNITS_MAX];
        for (size_t i = 0; i < count; i++)
            counts [i] = (byte) zmsg_size (
                self->units [(self->head + i) & (self->capacity - 1)]);
        empty = zframe_new (NULL, 0);
        index = zframe_new (counts, count);
        if (!empty || !index) {
            zframe_destroy (&empty);
            zframe_destroy (&index);
            errno = ENOMEM;
            return -1;
        }
    }
    bool started = false;           // a frame has gone out
    int rc = 0;
    if (routing && (rc = s_frame_send (routing, socket, true)) == 0)
        started = true;
    if (rc == 0 && empty && (rc = s_frame_send (empty, socket, true)) == 0) {
        started = true;
        rc = s_frame_send (index, socket, true);
    }
    zframe_destroy (&empty);
    zframe_destroy (&index);
    if (rc != 0)
        goto failed;
    for (size_t i = 0; i < count; i++) {
        zmsg_t *unit = self->units [(self->head + i) & (self->capacity - 1)];
        zframe_t *frame = zmsg_first (unit);
        while (frame) {
            zframe_t *next = zmsg_next (unit);
            bool more = next || i + 1 < count;
            if (s_frame_send (frame, socket, more) != 0)
                goto failed;
            started = true;
            frame = next;
        }
    }
    return 0;

failed:
    if (!started)
        return -1;
    casm_error (NULL, NULL, "a message was cut short: %s",
                zmq_strerror (errno));
    return 0;
}

int
casm_bundle_send (casm_bundle_t *self, void *socket, zframe_t *routing)
{
    while (self->size > 0) {
        size_t count = self->size < CASM_BUNDLE_UNITS_MAX
                     ? self->size : CASM_BUNDLE_UNITS_MAX;
        if (s_send_chunk (self, count, socket, routing) != 0)
            return -1;
        for (size_t i = 0; i < count; i++) {
            zmsg_t *unit = casm_bundle_pop (self);
            zmsg_destroy (&unit);
        }
    }
    return 0;
}


//  --------------------------------------------------------------------
//  Receiving

//  Appends msg with a copy of prefix in front, when there is one.
static int
s_append_unit (casm_bundle_t *self, zmsg_t **msg_p, zframe_t *prefix)
{
    if (prefix) {
        zframe_t *copy = zframe_dup (prefix);
        if (!copy) {
            zmsg_destroy (msg_p);
            return -1;
        }
        zmsg_prepend (*msg_p, &copy);
    }
    return casm_bundle_append (self, msg_p);
}

int
casm_bundle_unpack (casm_bundle_t *self, zmsg_t **msg_p, zframe_t *prefix)
{
    zmsg_t *msg = *msg_p;
    *msg_p = NULL;
    if (!msg)
        return -1;
    if (!casm_bundle_is (msg))
        return s_append_unit (self, &msg, prefix) == 0 ? 1 : -1;

    //  [empty] [index] [frames ...]: the index must account for every
    //  frame, each unit having at least one, and room for the prefix.
    zframe_t *empty = zmsg_pop (msg);
    zframe_t *index = zmsg_pop (msg);
    zframe_destroy (&empty);
    size_t units = index ? zframe_size (index) : 0;
    const byte *counts = index ? zframe_data (index) : NULL;
    size_t frames = 0;
    size_t room = CASM_BUNDLE_FRAMES_MAX - (prefix ? 1 : 0);
    for (size_t i = 0; i < units; i++) {
        if (counts [i] == 0 || counts [i] > room)
            units = 0;
        frames += counts [i];
    }
    if (units == 0 || frames != zmsg_size (msg)) {
        zframe_destroy (&index);
        zmsg_destroy (&msg);
        return -1;
    }

    int appended = 0;
    for (size_t i = 0; i < units; i++) {
        zmsg_t *unit = zmsg_new ();
        for (byte k = 0; k < counts [i]; k++) {
            zframe_t *frame = zmsg_pop (msg);
            if (unit)
                zmsg_append (unit, &frame);
            else
                zframe_destroy (&frame);
        }
        if (unit && s_append_unit (self, &unit, prefix) == 0)
            appended++;
    }
    zframe_destroy (&index);
    zmsg_destroy (&msg);
    return appended;
}
