/*  casm_stage: a stage instance's link to its queue in the broker.

    Holds the DEALER connected to the queue's backend and the instance's
    credit: how many units of work it can take at once. The instance
    announces its free slots, receives work only against them, gives a slot
    back when a unit is finished, and sends a heartbeat so that the broker
    notices when it vanishes.                                              */

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

//  Receives one unit of work (takes a slot). Returns NULL when the message
//  was not work (it is then dropped, and the slot is given back).
casm_work_t *casm_stage_recv (casm_stage_t *self);

//  Gives n slots back and tells the broker.
void casm_stage_release (casm_stage_t *self, int n);

//  Replies to a unit of work and gives its slot back.
int casm_stage_reply (casm_stage_t *self, casm_work_t **work_p,
                      uint16_t status, uint8_t flags, const char *body,
                      size_t body_size);

//  Passes a reply that came from the next queue back to this queue, as it
//  is (no slot changes hands). Takes ownership of *msg_p.
int casm_stage_relay (casm_stage_t *self, zmsg_t **msg_p);

//  Sends a heartbeat when one is due; call it at least every second.
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
