/*  casm_curve: ZeroMQ CURVE between the broker and every other process.

    Off unless configured. The broker is the CURVE server: with
    CURVE_SERVER_SECRET set (Z85, 40 characters) every one of its sockets
    encrypts, and a client may only connect when its public key is on the
    allow-list CURVE_CLIENTS_FILE, checked by the broker's own ZAP handler
    (casm_curve_auth). Every other process is a client: with
    CURVE_SERVER_PUBLIC set it needs CURVE_CLIENT_SECRET, and then
    encrypts every socket it connects to the broker. A public key given
    beside its secret (CURVE_SERVER_PUBLIC to the broker,
    CURVE_CLIENT_PUBLIC to a client) must match it; it can be left out, as
    it follows from the secret.

    The allow-list has one client per line, "LABEL Z85PUBLICKEY"; a line
    whose first non-blank character is '#' is a comment. The broker re-reads
    it on SIGHUP; a file that does not parse leaves the old list in force.
    ZAP is asked only when a connection is made: a key taken off the list
    keeps the connection it has until that drops. And libzmq does not
    retry a connection that ZAP refused: a process whose key was missing
    from the list must be restarted once the list has it.

    Invalid configuration stops the process with status 2 and a message
    that names the variable, never its value: secrets stay out of logs.    */

#ifndef CASM_CURVE_H
#define CASM_CURVE_H

#include <czmq.h>
#include <stdint.h>

//  Length of a CURVE key in Z85 text, and in binary.
#define CASM_CURVE_Z85_SIZE 40
#define CASM_CURVE_KEY_SIZE 32

//  The ZAP domain of casm's sockets.
#define CASM_CURVE_DOMAIN "casm"

//  True when text is a CURVE key in Z85 (40 characters); the binary key
//  goes into key when it is not NULL.
int casm_curve_key_decode (const char *text, uint8_t *key);

//  True when this process is configured as the CURVE server
//  (CURVE_SERVER_SECRET is set).
int casm_curve_server_enabled (void);

//  Makes socket, before it binds, a CURVE server with CURVE_SERVER_SECRET,
//  when that is set. Returns 0 (also when CURVE is off), or -1 after
//  logging why libzmq refused. Exits with status 2 on invalid keys.
int casm_curve_server (zsock_t *socket);

//  Makes socket, before it connects, a CURVE client of the broker when
//  CURVE_SERVER_PUBLIC is set. Returns 0 (also when CURVE is off), or -1
//  after logging why libzmq refused. Exits with status 2 on invalid or
//  incomplete keys.
int casm_curve_client (zsock_t *socket);

//  The broker's ZAP handler: answers libzmq's authentication requests
//  from the allow-list.
typedef struct casm_curve_auth_t casm_curve_auth_t;

//  Reads the allow-list at path and binds the ZAP handler; do this before
//  any CURVE server socket binds. Returns NULL, after logging why, when
//  path is NULL, unreadable or invalid, or the handler cannot bind.
casm_curve_auth_t *casm_curve_auth_new (const char *path);

//  Unbinds the handler, frees the list, NULLs the pointer.
void casm_curve_auth_destroy (casm_curve_auth_t **self_p);

//  The socket to poll; call casm_curve_auth_handle when it is readable.
zsock_t *casm_curve_auth_socket (casm_curve_auth_t *self);

//  Answers the authentication requests waiting; never blocks.
void casm_curve_auth_handle (casm_curve_auth_t *self);

//  Re-reads the allow-list. Returns 0, or -1 when the file does not parse
//  (logged; the old list stays in force).
int casm_curve_auth_reload (casm_curve_auth_t *self);

//  Clients on the list now.
size_t casm_curve_auth_size (casm_curve_auth_t *self);

#endif
