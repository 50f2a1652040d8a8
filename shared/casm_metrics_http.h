/*  casm_metrics_http: a tiny HTTP endpoint for /metrics in processes that
    have no HTTP server of their own (broker, validator, worker, publisher,
    dwh; the gateway serves /metrics on its API port).

    It answers GET (and HEAD) /metrics with the registry in Prometheus text
    format and /health with {"status":"up"}; anything else gets 404 or 405.
    Every answer closes its connection. It runs in the process's own loop:
    one descriptor (an epoll set holding the listening socket and the open
    connections) is polled with the loop's other sockets, and
    casm_metrics_http_serve does, without blocking, whatever is ready. At
    most a few connections are open at once (a new one closes the oldest
    when all are taken), each with a bounded request head and a few seconds
    for the whole exchange, so slow or idle clients cannot lock a scraper
    out and cost a little memory and nothing else.

    The process endpoint is configured by METRICS_PORT (unset: no endpoint)
    and METRICS_BIND (default 0.0.0.0).                                    */

#ifndef CASM_METRICS_HTTP_H
#define CASM_METRICS_HTTP_H

#include "casm_metrics.h"

typedef struct casm_metrics_http_t casm_metrics_http_t;

//  Listens on bind:port (port 0: a free port, see casm_metrics_http_port)
//  and serves registry (NULL: the process registry). Returns NULL, after
//  logging why, when the address cannot be resolved or bound.
casm_metrics_http_t *casm_metrics_http_new (casm_metrics_t *registry,
                                            const char *bind, int port);

//  Closes the listening socket and every connection, NULLs the pointer.
void casm_metrics_http_destroy (casm_metrics_http_t **self_p);

//  The port it listens on.
int casm_metrics_http_port (casm_metrics_http_t *self);

//  A descriptor that is readable whenever there is work to do, for the
//  loop's zmq_poll; -1 when self is NULL.
int casm_metrics_http_fd (casm_metrics_http_t *self);

//  The same descriptor as a zpoller reader (czmq polls a file handle given
//  as a pointer to it); NULL when self is NULL.
void *casm_metrics_http_reader (casm_metrics_http_t *self);

//  Accepts, reads, answers and writes what it can without blocking, and
//  closes connections that took too long. Cheap when there is nothing to
//  do (one epoll_wait), so it may be called on every turn of a loop. Does
//  nothing when self is NULL.
void casm_metrics_http_serve (casm_metrics_http_t *self);

//  Starts the process's endpoint when METRICS_PORT is set, on
//  METRICS_BIND. Exits with status 2 and a message naming the variable
//  when a value is invalid or the port cannot be bound. Returns the
//  endpoint, or NULL when METRICS_PORT is unset or empty.
casm_metrics_http_t *casm_metrics_http_start (void);

//  The process's endpoint, or NULL when there is none.
casm_metrics_http_t *casm_metrics_http_process (void);

//  Destroys the process's endpoint, if any.
void casm_metrics_http_stop (void);

#endif
