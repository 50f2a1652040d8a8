/*  casm_validator: the validator stage's event loop.

    Takes work from Q1 (as a credit-holding stage instance), checks each
    request (casm_validate), answers at once what ends here (invalid
    requests, idempotent replays, business-rule failures, readCustomer,
    a PING when PostgreSQL is down), and forwards the rest as commands to
    Q2 on its own DEALER. What comes back on that DEALER is a reply, relayed
    to Q1 as it is. See docs/internals.md.                                  */

#ifndef CASM_VALIDATOR_H
#define CASM_VALIDATOR_H

#include <signal.h>
#include <stdint.h>

typedef struct casm_validator_t casm_validator_t;

//  A validator on the database at database_url with credit slots on Q1,
//  connected to the broker. grace_ms bounds the drain after a stop.
//  Returns NULL when the sockets cannot be set up (logged).
casm_validator_t *casm_validator_new (const char *database_url, int credit,
                                      int64_t grace_ms);

//  Closes everything and NULLs the caller's pointer.
void casm_validator_destroy (casm_validator_t **self_p);

//  Runs the loop until *signals becomes non-zero (a signal handler counts
//  there), then drains: takes no more work, keeps relaying replies until
//  every forwarded request has its reply or the grace period is over.
//  Returns the process exit status (0).
int casm_validator_run (casm_validator_t *self,
                        volatile sig_atomic_t *signals);

#endif
