/*  casm_bundle: several messages carried in one ZeroMQ message.

    Every message between casm's processes costs the sender and the
    receiver a wake-up and a few system calls, whatever its size. A stage
    that has several messages for the same peer in one turn of its loop
    (the replies of a worker's batch, the units the broker has for one
    instance) sends them as one bundle:

        [empty] [index] [frames of unit 1] [frames of unit 2] ...

    The first frame is empty, which no plain casm message starts with: an
    envelope has an identity before its empty delimiter, and a command to
    the broker is one byte. The index has one byte per unit, that unit's
    count of frames (1 to 255). A ROUTER puts the peer's identity in front
    of the whole bundle; the receiver gives it to each unit.

    One unit goes out as a plain message, so a peer that sends one message
    at a time is never asked to read a bundle. A bundle holds its units in
    order, and a receiver handles them in that order.                      */

#ifndef CASM_BUNDLE_H
#define CASM_BUNDLE_H

#include <czmq.h>

//  At most this many units go in one ZeroMQ message; more make several.
#define CASM_BUNDLE_UNITS_MAX 256

//  At most this many frames in one unit (its index byte).
#define CASM_BUNDLE_FRAMES_MAX 255

typedef struct casm_bundle_t casm_bundle_t;

//  An empty bundle. NULL when out of memory.
casm_bundle_t *casm_bundle_new (void);

//  Destroys the bundle and the units still in it, NULLs the pointer.
void casm_bundle_destroy (casm_bundle_t **self_p);

//  Units in the bundle now.
size_t casm_bundle_size (casm_bundle_t *self);

//  Appends a unit; takes ownership of *msg_p and NULLs it. Returns 0, or
//  -1 when the unit has no frames or more than CASM_BUNDLE_FRAMES_MAX, or
//  memory ran out (the unit is destroyed then).
int casm_bundle_append (casm_bundle_t *self, zmsg_t **msg_p);

//  Takes the first unit out, or returns NULL when the bundle is empty.
zmsg_t *casm_bundle_pop (casm_bundle_t *self);

//  The first unit, still in the bundle, or NULL.
zmsg_t *casm_bundle_first (casm_bundle_t *self);

//  Sends every unit on socket without blocking: one as a plain message,
//  several as bundles of at most CASM_BUNDLE_UNITS_MAX. routing, when not
//  NULL, goes first in each message (a ROUTER's peer identity) and stays
//  the caller's. Units sent leave the bundle. Returns 0, or -1 with errno
//  set when the socket refused a message: its units and those after it
//  are still in the bundle, in order, for the caller to handle.
int casm_bundle_send (casm_bundle_t *self, void *socket, zframe_t *routing);

//  Appends the units of a received message: those of a bundle, or the
//  message itself when it is not one. prefix, when not NULL, is copied in
//  front of each unit (the identity a ROUTER read before the bundle) and
//  stays the caller's. Takes ownership of *msg_p and NULLs it. Returns the
//  count of units appended, or -1 when a bundle is malformed (its index
//  does not match its frames, or a unit with the prefix would have more
//  than CASM_BUNDLE_FRAMES_MAX frames); nothing of it is appended then.
int casm_bundle_unpack (casm_bundle_t *self, zmsg_t **msg_p,
                        zframe_t *prefix);

//  True when the message is a bundle (its first frame is empty).
bool casm_bundle_is (zmsg_t *msg);

#endif
