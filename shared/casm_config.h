/*  casm_config: configuration from environment variables.

    Every process reads its settings here, with a default for each. A value
    that is set but invalid stops the process at start with a clear message
    naming the variable, the value and what was expected: a typo must never
    silently fall back to a default.                                        */

#ifndef CASM_CONFIG_H
#define CASM_CONFIG_H

#include <stddef.h>
#include <stdint.h>

//  The variable's value, or fallback when it is unset or empty. The result
//  is not owned by the caller.
const char *casm_config_str (const char *name, const char *fallback);

//  The variable as an integer in [min, max], or fallback when unset or
//  empty. Exits with status 2 and a message when it is not.
int64_t casm_config_int (const char *name, int64_t fallback,
                         int64_t min, int64_t max);

//  The variable as a boolean (1/0, true/false, yes/no, on/off).
int casm_config_bool (const char *name, int fallback);

//  The ZeroMQ endpoints of the broker's queues. Queue 1, 2 or 3; side 0 is
//  the frontend (where requests come in from upstream), side 1 the backend
//  (where the stage's instances ask for work). The broker binds
//  tcp://BROKER_BIND:port, everyone else connects to
//  tcp://BROKER_HOST:port, with port = BROKER_PORT (default 5550) +
//  2 * (queue - 1) + side. Writes into buffer and returns it.
char *casm_config_endpoint (char *buffer, size_t size, int queue, int side,
                            int bind);

#endif
