/*  casm_auth: the gateway's API keys.

    API_KEYS_FILE names a file of accepted keys, one per line as
    "LABEL SHA256HEX": a label that names the key's holder in the logs, and
    the lower- or upper-case hex SHA-256 of the key itself, so that the file
    holds no secret. A line whose first non-blank character is '#' is a
    comment; blank lines are ignored. A label may appear more than once, so
    that one client can hold an old and a new key while it rotates.

    A request presents its key as "Authorization: Bearer <key>". The check
    hashes the key and compares the digest with every entry, without
    stopping at a match, so that its time does not tell how close a guess
    came or which entry matched. Keys are never logged; labels may be.

    TODO(#7): a key grants every operation; there are no per-key
    permissions or rate limits.                                            */

#ifndef CASM_AUTH_H
#define CASM_AUTH_H

#include <stddef.h>

//  The longest key accepted, in characters.
#define CASM_AUTH_KEY_MAX 512

typedef struct casm_auth_t casm_auth_t;

//  Reads the key file at path. Returns NULL, after logging why (the file's
//  name and a line number, never a line's text), when it cannot be read,
//  has a malformed line, or holds no key.
casm_auth_t *casm_auth_new (const char *path);

//  Frees the keys, NULLs the pointer.
void casm_auth_destroy (casm_auth_t **self_p);

//  Re-reads the file. Returns 0, or -1 when it cannot be read or does not
//  parse: the keys in force stay, and the error is logged.
int casm_auth_reload (casm_auth_t *self);

//  Keys in force.
size_t casm_auth_size (casm_auth_t *self);

//  Checks an Authorization header value of size bytes (NULL when the
//  header is missing). Returns the label of the key it carries, owned by
//  the table and valid until the next reload, or NULL when the header is
//  missing, malformed or carries no accepted key.
const char *casm_auth_check (casm_auth_t *self, const char *value,
                             size_t size);

#endif
