/*  casm_proto: how stage instances and the broker talk.

    Each queue (Q1 validators, Q2 workers, Q3 publishers) is two ROUTER
    sockets in the broker: the frontend, where upstream DEALERs send
    requests and get replies, and the backend, where the stage's instances
    connect with a DEALER. On the backend every message from an instance
    starts with a one-byte command frame:

        "C" [n]          n more free slots (decimal text): credit
        "H" [free] [received]
                         heartbeat, with the instance's free slots now and
                         the count of units it has received (modulo
                         CASM_COUNT_MOD); the broker sets the credit to
                         free minus what it sent that was not received
                         yet, which repairs a lost "C"; an instance the
                         broker does not know (a restarted broker) is
                         registered with credit = free, and its received
                         count becomes the broker's count of units sent
        "R" [envelope] [header] [body]
                         a reply, passed to the frontend as it is
        "D"              draining: send me no more work

    Messages from the broker to an instance are work: the envelope, header
    and body of casm_msg.h, with no command frame. The broker sends an
    instance at most as many as it has credit for.

    Either side may send several of these messages as one bundle
    (casm_bundle.h); each unit of it counts as the message it holds.       */

#ifndef CASM_PROTO_H
#define CASM_PROTO_H

#define CASM_CMD_CREDIT "C"
#define CASM_CMD_HEARTBEAT "H"
#define CASM_CMD_REPLY "R"
#define CASM_CMD_DRAIN "D"

//  Unit counters in heartbeats wrap at this value.
#define CASM_COUNT_MOD 1000000

#define CASM_QUEUE_VALIDATOR 1
#define CASM_QUEUE_WORKER 2
#define CASM_QUEUE_PUBLISHER 3

//  How often instances send heartbeats, and how long the broker waits
//  without hearing from one before forgetting it and its credit.
#define CASM_HEARTBEAT_MS 1000
#define CASM_PEER_EXPIRY_MS 3500

#endif
