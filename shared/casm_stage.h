/*  casm_stage: a stage instance's link to its queue in the broker.

    Holds the DEALER connected to the queue's backend and the instance's
    credit: how many units of work it can take at once. The instance
    announces its free slots, receives work only against them, gives a slot
    back when a unit is finished, and sends a heartbeat so that the broker
    notices when it vanishes.

    What the instance sends the broker in one turn of its loop (replies,
    relayed replies, the slots given back) waits in an outbox and leaves
    in one message, a bundle (casm_bundle.h), when the loop calls
    casm_stage_flush: the loop must call it before it waits again. Bundles
    the broker sends are taken apart here; casm_stage_recv gives their
    units one at a time, and casm_stage_waiting says when units are held
    that no poll would announce.                                           */

#ifndef CASM_STAGE_H
#define CASM_STAGE_H

#include "casm_msg.h"

typedef struct casm_stage_t casm_stage_t;

//  Connects to the backend of queue (1, 2 or 3) with this many slots and
//  announces them. Returns NULL on failure.
casm_stage_t *casm_stage_new (int queue, int capacity);

//  Says goodbye to the broker, closes the socket, NULLs the pointer.
void casm_stage_destroy (casm_stage_t **self_p);

//  The DEALER to poll for work.
zsock_t *casm_stage_socket (casm_stage_t *self);

//  Receives one unit of work (takes a slot), without blocking. Returns
//  NULL when there was none, or the message was not work (it is then
//  dropped, and the slot is given back).
casm_work_t *casm_stage_recv (casm_stage_t *self);

//  True when casm_stage_recv has a unit to give: held from a bundle, or
//  waiting on the socket.
int casm_stage_readable (casm_stage_t *self);

//  True when units of a bundle are held here. The socket does not poll
//  readable for them: the loop must not wait while this is true.
int casm_stage_waiting (casm_stage_t *self);

//  Gives n slots back; the broker hears of it at the next flush.
void casm_stage_release (casm_stage_t *self, int n);

//  Queues a message for the broker's backend (a command frame first);
//  takes ownership of *msg_p. Returns 0 or -1.
int casm_stage_send (casm_stage_t *self, zmsg_t **msg_p);

//  Queues the reply to a unit of work and gives its slot back.
int casm_stage_reply (casm_stage_t *self, casm_work_t **work_p,
                      uint16_t status, uint8_t flags, const char *body,
                      size_t body_size);

//  Queues a reply that came from the next queue, to go back to this queue
//  as it is (no slot changes hands). Takes ownership of *msg_p.
int casm_stage_relay (casm_stage_t *self, zmsg_t **msg_p);

//  Sends what is queued, the slots given back last, in one message.
//  Returns 0, or -1 when the broker took nothing (no connection, or its
//  pipe is full): the messages are dropped then, and a warning logged at
//  most once a second.
int casm_stage_flush (casm_stage_t *self);

//  Sends a heartbeat when one is due (flushing first); call it at least
//  every second.
void casm_stage_tick (casm_stage_t *self);

//  Stops asking for work: the broker sends no more.
void casm_stage_drain (casm_stage_t *self);

//  Slots free now, and slots in use.
int casm_stage_free (casm_stage_t *self);
int casm_stage_busy (casm_stage_t *self);

//  Sets the options every casm socket gets: heartbeats, bounded high-water
//  marks, no linger, non-blocking sends.
void casm_socket_tune (zsock_t *socket);

#endif
