/*  casm_curve: CURVE keys and the broker's ZAP handler. See casm_curve.h.

    The ZAP handler is a REP socket bound at the address libzmq asks
    (RFC 27, ZAP 1.0), polled in the broker's own loop: no thread. Public
    keys are not secrets, so the allow-list is searched with a plain
    comparison; secret keys are only ever handed to libzmq and wiped.     */

#include "casm_curve.h"
#include "casm_config.h"
#include "casm_log.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"

//  Requests answered per call, so that a flood of handshakes cannot starve
//  the queues in the broker's loop.
#define ZAP_BATCH 64

//  Denied connections are logged at most this often.
#define DENIED_REPORT_MS 5000

#define LABEL_MAX 64
#define LINE_MAX_SIZE 1024

typedef struct {
    char label [LABEL_MAX + 1];
    uint8_t key [CASM_CURVE_KEY_SIZE];
} s_client_t;

struct casm_curve_auth_t {
    char *path;
    zsock_t *handler;
    s_client_t *clients;
    size_t count;
    int64_t denied_reported;            // when the last denial was logged
    uint64_t denied_suppressed;         // denials since, not logged
};

static void
s_die (const char *name, const char *why)
{
    fprintf (stderr, "casm: invalid %s: %s\n", name, why);
    exit (2);
}

int
casm_curve_key_decode (const char *text, uint8_t *key)
{
    if (!text || strlen (text) != CASM_CURVE_Z85_SIZE)
        return 0;

    uint8_t scratch [CASM_CURVE_KEY_SIZE];
    int valid = zmq_z85_decode (key ? key : scratch, text) != NULL;
    memset (scratch, 0, sizeof scratch);
    return valid;
}

//  Reads the secret key in secret_name and writes it into secret, and
//  checks the public key in public_name against it when that is set.
static void
s_keypair (const char *secret_name, const char *public_name,
           uint8_t *secret)
{
    const char *secret_z85 = casm_config_str (secret_name, NULL);
    if (!casm_curve_key_decode (secret_z85, secret))
        s_die (secret_name, "expected a CURVE key of 40 Z85 characters");

    const char *public_z85 = casm_config_str (public_name, NULL);
    if (!public_z85)
        return;

    char derived [CASM_CURVE_Z85_SIZE + 1];
    if (!casm_curve_key_decode (public_z85, NULL))
        s_die (public_name, "expected a CURVE key of 40 Z85 characters");
    if (zmq_curve_public (derived, secret_z85) != 0
    ||  strcmp (derived, public_z85) != 0) {
        char why [128];
        snprintf (why, sizeof why, "it is not the public key of %s",
                  secret_name);
        s_die (public_name, why);
    }
}

static int
s_curve_available (void)
{
    if (zmq_has ("curve"))
        return 1;
    casm_error (NULL, NULL, "CURVE keys are set but this libzmq was built "
                "without CURVE");
    return 0;
}

int
casm_curve_server_enabled (void)
{
    return casm_config_str ("CURVE_SERVER_SECRET", NULL) != NULL;
}

int
casm_curve_server (zsock_t *socket)
{
    if (!casm_curve_server_enabled ())
        return 0;

    if (!s_curve_available ())
        return -1;
    uint8_t secret [CASM_CURVE_KEY_SIZE];
    s_keypair ("CURVE_SERVER_SECRET", "CURVE_SERVER_PUBLIC", secret);

    void *handle = zsock_resolve (socket);
    int on = 1;
    int rc = zmq_setsockopt (handle, ZMQ_CURVE_SERVER, &on, sizeof on);
    if (rc == 0)
        rc = zmq_setsockopt (handle, ZMQ_CURVE_SECRETKEY, secret,
                             sizeof secret);
    if (rc == 0)
        rc = zmq_setsockopt (handle, ZMQ_ZAP_DOMAIN, CASM_CURVE_DOMAIN,
                             strlen (CASM_CURVE_DOMAIN));
    memset (secret, 0, sizeof secret);
    if (rc != 0) {
        casm_error (NULL, NULL, "cannot make a CURVE server socket: %s",
                    zmq_strerror (errno));
        return -1;
    }
    return 0;
}

int
casm_curve_client (zsock_t *socket)
{
    const char *server_z85 = casm_config_str ("CURVE_SERVER_PUBLIC", NULL);
    const char *secret_z85 = casm_config_str ("CURVE_CLIENT_SECRET", NULL);
    if (!server_z85 && !secret_z85)
        return 0;
    if (!server_z85)
        s_die ("CURVE_SERVER_PUBLIC", "must be set with CURVE_CLIENT_SECRET");
    if (!secret_z85)
        s_die ("CURVE_CLIENT_SECRET", "must be set with CURVE_SERVER_PUBLIC");

    if (!s_curve_available ())
        return -1;
    uint8_t server [CASM_CURVE_KEY_SIZE];
    if (!casm_curve_key_decode (server_z85, server))
        s_die ("CURVE_SERVER_PUBLIC",
               "expected a CURVE key of 40 Z85 characters");
    uint8_t secret [CASM_CURVE_KEY_SIZE];
    s_keypair ("CURVE_CLIENT_SECRET", "CURVE_CLIENT_PUBLIC", secret);

    //  libzmq wants the client's public key too; it follows from the
    //  secret.
    char public_z85 [CASM_CURVE_Z85_SIZE + 1];
    uint8_t public [CASM_CURVE_KEY_SIZE];
    int rc = zmq_curve_public (public_z85, secret_z85);
    if (rc == 0 && !zmq_z85_decode (public, public_z85))
        rc = -1;

    void *handle = zsock_resolve (socket);
    if (rc == 0)
        rc = zmq_setsockopt (handle, ZMQ_CURVE_SERVERKEY, server,
                             sizeof server);
    if (rc == 0)
        rc = zmq_setsockopt (handle, ZMQ_CURVE_PUBLICKEY, public,
                             sizeof public);
    if (rc == 0)
        rc = zmq_setsockopt (handle, ZMQ_CURVE_SECRETKEY, secret,
                             sizeof secret);
    memset (secret, 0, sizeof secret);
    if (rc != 0) {
        casm_error (NULL, NULL, "cannot make a CURVE client socket: %s",
                    zmq_strerror (errno));
        return -1;
    }
    return 0;
}


//  --------------------------------------------------------------------
//  The allow-list

static int
s_label_valid (const char *label)
{
    size_t size = strlen (label);
    if (size == 0 || size > LABEL_MAX)
        return 0;
    for (const char *c = label; *c; c++)
        if (!isalnum ((unsigned char) *c) && !strchr ("._-@:", *c))
            return 0;
    return 1;
}

//  Parses the allow-list at path into a new array. Returns 0, or -1 after
//  logging the first problem (by line number: the lines hold no secret,
//  but their text is the operator's to read, not the log's).
static int
s_list_read (const char *path, s_client_t **clients_p, size_t *count_p)
{
    FILE *file = fopen (path, "r");
    if (!file) {
        casm_error (NULL, json_pack ("{s:s}", "file", path),
                    "cannot read CURVE_CLIENTS_FILE: %s", strerror (errno));
        return -1;
    }

    s_client_t *clients = NULL;
    size_t count = 0, capacity = 0;
    char line [LINE_MAX_SIZE + 2];
    const char *problem = NULL;
    int number = 0;
    while (!problem && fgets (line, sizeof line, file)) {
        number++;
        size_t size = strlen (line);
        if (size > LINE_MAX_SIZE) {
            problem = "line too long";
            break;
        }

        char label [LINE_MAX_SIZE + 1], key [LINE_MAX_SIZE + 1];
        char rest [2];
        int fields = sscanf (line, "%1024s %1024s %1s", label, key, rest);
        if (fields <= 0 || label [0] == '#')
            continue;
        if (fields != 2)
            problem = "expected \"LABEL Z85PUBLICKEY\"";
        else
        if (!s_label_valid (label))
            problem = "the label must be 1 to 64 letters, digits or ._-@:";
        else
        if (count == capacity) {
            capacity = capacity ? 2 * capacity : 16;
            s_client_t *grown = realloc (clients, capacity * sizeof *grown);
            if (!grown)
                problem = "out of memory";
            else
                clients = grown;
        }
        if (problem)
            break;
        if (!casm_curve_key_decode (key, clients [count].key)) {
            problem = "the key is not a CURVE key of 40 Z85 characters";
            break;
        }
        //  s_label_valid kept it to LABEL_MAX; the precision says so to
        //  the compiler too.
        snprintf (clients [count].label, sizeof clients [count].label,
                  "%.*s", LABEL_MAX, label);
        count++;
    }
    if (!problem && ferror (file))
        problem = "read error";
    fclose (file);

    if (!problem && count == 0)
        problem = "no client keys";
    if (problem) {
        casm_error (NULL, json_pack ("{s:s, s:i}", "file", path,
                                     "line", number),
                    "invalid CURVE_CLIENTS_FILE: %s", problem);
        free (clients);
        return -1;
    }
    *clients_p = clients;
    *count_p = count;
    return 0;
}

casm_curve_auth_t *
casm_curve_auth_new (const char *path)
{
    if (!path) {
        casm_error (NULL, NULL, "CURVE_SERVER_SECRET is set: "
                    "CURVE_CLIENTS_FILE must name the allow-list of client "
                    "keys");
        return NULL;
    }
    casm_curve_auth_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->path = strdup (path);
    if (!self->path
    ||  s_list_read (path, &self->clients, &self->count) != 0) {
        casm_curve_auth_destroy (&self);
        return NULL;
    }

    self->handler = zsock_new (ZMQ_REP);
    if (!self->handler || zsock_bind (self->handler, ZAP_ENDPOINT) != 0) {
        casm_error (NULL, NULL, "cannot bind the ZAP handler: %s",
                    zmq_strerror (errno));
        casm_curve_auth_destroy (&self);
        return NULL;
    }
    zsock_set_rcvtimeo (self->handler, 0);
    zsock_set_sndtimeo (self->handler, 0);
    zsock_set_linger (self->handler, 0);

    casm_info (NULL, json_pack ("{s:s, s:I}", "file", path, "clients",
                                (json_int_t) self->count),
               "CURVE on: clients must be on the allow-list");
    return self;
}

void
casm_curve_auth_destroy (casm_curve_auth_t **self_p)
{
    casm_curve_auth_t *self = *self_p;
    if (!self)
        return;
    zsock_destroy (&self->handler);
    if (self->clients)
        memset (self->clients, 0, self->count * sizeof *self->clients);
    free (self->clients);
    free (self->path);
    free (self);
    *self_p = NULL;
}

zsock_t *
casm_curve_auth_socket (casm_curve_auth_t *self)
{
    return self->handler;
}

size_t
casm_curve_auth_size (casm_curve_auth_t *self)
{
    return self->count;
}

int
casm_curve_auth_reload (casm_curve_auth_t *self)
{
    s_client_t *clients = NULL;
    size_t count = 0;
    if (s_list_read (self->path, &clients, &count) != 0) {
        casm_error (NULL, json_pack ("{s:I}", "clients",
                                     (json_int_t) self->count),
                    "kept the CURVE allow-list in force");
        return -1;
    }
    free (self->clients);
    self->clients = clients;
    self->count = count;
    casm_info (NULL, json_pack ("{s:s, s:I}", "file", self->path, "clients",
                                (json_int_t) count),
               "CURVE allow-list reloaded");
    return 0;
}

//  The label of an allowed client key, or NULL.
static const char *
s_client_find (casm_curve_auth_t *self, const uint8_t *key)
{
    for (size_t i = 0; i < self->count; i++)
        if (memcmp (self->clients [i].key, key, CASM_CURVE_KEY_SIZE) == 0)
            return self->clients [i].label;
    return NULL;
}

static void
s_denied (casm_curve_auth_t *self, zframe_t *address, zframe_t *key)
{
    int64_t now = zclock_mono ();
    if (self->denied_reported
    &&  now - self->denied_reported < DENIED_REPORT_MS) {
        self->denied_suppressed++;
        return;
    }

    json_t *fields = json_object ();
    json_object_set_new (fields, "address",
                         casm_log_string ((char *) zframe_data (address),
                                          zframe_size (address)));
    if (key && zframe_size (key) == CASM_CURVE_KEY_SIZE) {
        char z85 [CASM_CURVE_Z85_SIZE + 1];
        zmq_z85_encode (z85, zframe_data (key), CASM_CURVE_KEY_SIZE);
        json_object_set_new (fields, "publicKey", json_string (z85));
    }
    if (self->denied_suppressed)
        json_object_set_new (fields, "suppressed", json_integer (
                             (json_int_t) self->denied_suppressed));
    casm_warn (NULL, fields, "refused a connection: its CURVE key is not "
               "on the allow-list");
    self->denied_reported = now;
    self->denied_suppressed = 0;
}

//  Answers one ZAP request:
//    [version] [request id] [domain] [address] [identity] [mechanism]
//    [credentials...]
//  with [version] [request id] [status] [text] [user id] [metadata].
static void
s_answer (casm_curve_auth_t *self, zmsg_t *request)
{
    zframe_t *version = zmsg_pop (request);
    zframe_t *request_id = zmsg_pop (request);
    zframe_t *domain = zmsg_pop (request);
    zframe_t *address = zmsg_pop (request);
    zframe_t *identity = zmsg_pop (request);
    zframe_t *mechanism = zmsg_pop (request);
    zframe_t *key = zmsg_pop (request);

    const char *label = NULL;
    if (version && zframe_streq (version, "1.0") && address && mechanism
    &&  zframe_streq (mechanism, "CURVE") && key
    &&  zframe_size (key) == CASM_CURVE_KEY_SIZE)
        label = s_client_find (self, zframe_data (key));

    if (label)
        casm_debug (NULL, json_pack ("{s:s, s:o}", "client", label,
                    "address", casm_log_string (
                        (char *) zframe_data (address),
                        zframe_size (address))),
                    "CURVE client allowed");
    else
    if (address)
        s_denied (self, address, key);

    zmsg_t *reply = zmsg_new ();
    zmsg_addstr (reply, "1.0");
    if (request_id)
        zmsg_addmem (reply, zframe_data (request_id),
                     zframe_size (request_id));
    else
        zmsg_addmem (reply, NULL, 0);
    zmsg_addstr (reply, label ? "200" : "400");
    zmsg_addstr (reply, label ? "OK" : "key not allowed");
    zmsg_addstr (reply, label ? label : "");
    zmsg_addmem (reply, NULL, 0);
    if (zmsg_send (&reply, self->handler) != 0) {
        zmsg_destroy (&reply);
        casm_error (NULL, NULL, "cannot answer a ZAP request: %s",
                    zmq_strerror (errno));
    }

    zframe_destroy (&version);
    zframe_destroy (&request_id);
    zframe_destroy (&domain);
    zframe_destroy (&address);
    zframe_destroy (&identity);
    zframe_destroy (&mechanism);
    zframe_destroy (&key);
}

void
casm_curve_auth_handle (casm_curve_auth_t *self)
{
    for (int i = 0; i < ZAP_BATCH; i++) {
        zmsg_t *request = zmsg_recv (self->handler);
        if (!request)
            return;
        s_answer (self, request);
        zmsg_destroy (&request);
    }
}
