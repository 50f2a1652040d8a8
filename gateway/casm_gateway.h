/*  casm_gateway: the HTTP front door of the pipeline.

    Turns HTTP requests into messages on queue Q1 and answers each request
    with the reply that comes back. One thread runs everything: the
    libmicrohttpd daemon in external-epoll mode and the Q1 DEALER are polled
    together in one zmq_poll loop. A request that needs the pipeline holds a
    slot of the in-flight table (casm_inflight) and its connection is
    suspended until the reply, or its deadline, resumes it.

    SIGINT or SIGTERM drains: the listening socket is closed, the requests
    in flight are answered as their replies come, for at most
    SHUTDOWN_GRACE_MS; what is left then is answered 503, and run returns.
    A second signal exits at once.

    With API_KEYS_FILE set, the API's operations need a key (casm_auth) and
    SIGHUP re-reads the file. With TLS_CERT_FILE and TLS_KEY_FILE set, it
    speaks HTTPS only. Each connection must deliver a whole request within
    HTTP_RECEIVE_TIMEOUT_S (casm_guard), so slow clients cannot hold
    connections; HTTP_MAX_CONNECTIONS_PER_IP bounds what one address holds. */

#ifndef CASM_GATEWAY_H
#define CASM_GATEWAY_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *bind;                   // HTTP_BIND (0.0.0.0)
    int port;                           // HTTP_PORT (8080)
    unsigned max_connections;           // HTTP_MAX_CONNECTIONS (1024)
    unsigned idle_timeout_s;            // HTTP_IDLE_TIMEOUT_S (30)
    size_t max_body;                    // MAX_BODY_BYTES (2 MiB)
    uint32_t max_inflight;              // MAX_INFLIGHT (1024)
    int64_t request_timeout_ms;         // REQUEST_TIMEOUT_MS (5000)
    int64_t grace_ms;                   // SHUTDOWN_GRACE_MS (10000)
    unsigned max_connections_per_ip;    // HTTP_MAX_CONNECTIONS_PER_IP (0: any)
    unsigned receive_timeout_s;         // HTTP_RECEIVE_TIMEOUT_S (30)
    const char *api_keys_file;          // API_KEYS_FILE (NULL: no keys)
    const char *tls_cert_file;          // TLS_CERT_FILE (NULL: plain HTTP)
    const char *tls_key_file;           // TLS_KEY_FILE
} casm_gateway_config_t;

typedef struct casm_gateway_t casm_gateway_t;

//  Reads the configuration from the environment; exits with status 2 and
//  a message naming the variable when a value is invalid.
void casm_gateway_config_load (casm_gateway_config_t *config);

//  Listens on HTTP_BIND:HTTP_PORT, connects to Q1, and catches SIGINT and
//  SIGTERM. Returns NULL, after logging why, when it cannot start (the
//  port cannot be bound, ...).
casm_gateway_t *casm_gateway_new (const casm_gateway_config_t *config);

//  Serves until a signal has drained the gateway. Returns 0 then, or 1
//  when the loop failed.
int casm_gateway_run (casm_gateway_t *self);

//  Answers what is still in flight 503, stops the HTTP daemon, closes the
//  socket, NULLs the pointer.
void casm_gateway_destroy (casm_gateway_t **self_p);

#endif
