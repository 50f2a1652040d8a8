/*  casm_auth: API keys. See casm_auth.h.

    The table holds digests, never keys. A check costs one SHA-256 of the
    presented key plus one constant-time comparison per entry; nettle's
    memeql_sec compares without branching on the bytes, and the loop visits
    every entry whatever it finds, picking the match with a mask instead of
    a branch.                                                              */

#include "casm_auth.h"
#include "casm_log.h"

#include <nettle/memops.h>
#include <nettle/sha2.h>

#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define LABEL_MAX 64
#define LINE_MAX_SIZE 1024

typedef struct {
    char label [LABEL_MAX + 1];
    uint8_t digest [SHA256_DIGEST_SIZE];
} s_key_t;

struct casm_auth_t {
    char *path;
    s_key_t *keys;
    size_t count;
};

static int
s_hex_value (int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower (c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

//  Decodes 64 hex digits into digest; returns 0, or -1 when they are not.
static int
s_digest_decode (const char *hex, uint8_t *digest)
{
    if (strlen (hex) != 2 * SHA256_DIGEST_SIZE)
        return -1;
    for (size_t i = 0; i < SHA256_DIGEST_SIZE; i++) {
        int high = s_hex_value ((unsigned char) hex [2 * i]);
        int low = s_hex_value ((unsigned char) hex [2 * i + 1]);
        if (high < 0 || low < 0)
            return -1;
        digest [i] = (uint8_t) (high << 4 | low);
    }
    return 0;
}

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

//  Parses the key file into a new array. Returns 0, or -1 after logging
//  the first problem by line number.
static int
s_keys_read (const char *path, s_key_t **keys_p, size_t *count_p)
{
    FILE *file = fopen (path, "r");
    if (!file) {
        casm_error (NULL, json_pack ("{s:s}", "file", path),
                    "cannot read API_KEYS_FILE: %s", strerror (errno));
        return -1;
    }

    s_key_t *keys = NULL;
    size_t count = 0, capacity = 0;
    char line [LINE_MAX_SIZE + 2];
    const char *problem = NULL;
    int number = 0;
    while (fgets (line, sizeof line, file)) {
        number++;
        if (strlen (line) > LINE_MAX_SIZE) {
            problem = "line too long";
            break;
        }

        char label [LINE_MAX_SIZE + 1], hex [LINE_MAX_SIZE + 1];
        char rest [2];
        int fields = sscanf (line, "%1024s %1024s %1s", label, hex, rest);
        if (fields <= 0 || label [0] == '#')
            continue;
        if (fields != 2) {
            problem = "expected \"LABEL SHA256HEX\"";
            break;
        }
        if (!s_label_valid (label)) {
            problem = "the label must be 1 to 64 letters, digits or ._-@:";
            break;
        }
        if (count == capacity) {
            capacity = capacity ? 2 * capacity : 16;
            s_key_t *grown = realloc (keys, capacity * sizeof *grown);
            if (!grown) {
                problem = "out of memory";
                break;
            }
            keys = grown;
        }
        if (s_digest_decode (hex, keys [count].digest) != 0) {
            problem = "the hash must be 64 hex digits (SHA-256 of the key)";
            break;
        }
        //  s_label_valid kept it to LABEL_MAX; the precision says so to
        //  the compiler too.
        snprintf (keys [count].label, sizeof keys [count].label, "%.*s",
                  LABEL_MAX, label);
        count++;
    }
    if (!problem && ferror (file))
        problem = "read error";
    fclose (file);

    if (!problem && count == 0)
        problem = "no keys";
    if (problem) {
        casm_error (NULL, json_pack ("{s:s, s:i}", "file", path,
                                     "line", number),
                    "invalid API_KEYS_FILE: %s", problem);
        free (keys);
        return -1;
    }
    *keys_p = keys;
    *count_p = count;
    return 0;
}

casm_auth_t *
casm_auth_new (const char *path)
{
    casm_auth_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->path = path ? strdup (path) : NULL;
    if (!self->path || s_keys_read (path, &self->keys, &self->count) != 0) {
        casm_auth_destroy (&self);
        return NULL;
    }
    return self;
}

void
casm_auth_destroy (casm_auth_t **self_p)
{
    casm_auth_t *self = *self_p;
    if (!self)
        return;
    free (self->keys);
    free (self->path);
    free (self);
    *self_p = NULL;
}

int
casm_auth_reload (casm_auth_t *self)
{
    s_key_t *keys = NULL;
    size_t count = 0;
    if (s_keys_read (self->path, &keys, &count) != 0) {
        casm_error (NULL, json_pack ("{s:I}", "keys",
                                     (json_int_t) self->count),
                    "kept the API keys in force");
        return -1;
    }
    free (self->keys);
    self->keys = keys;
    self->count = count;
    casm_info (NULL, json_pack ("{s:s, s:I}", "file", self->path, "keys",
                                (json_int_t) count),
               "API keys reloaded");
    return 0;
}

size_t
casm_auth_size (casm_auth_t *self)
{
    return self->count;
}

//  A token68 character (RFC 9110 11.2), '=' aside: it only pads the end.
static int
s_token_char (int c)
{
    return isalnum (c) || c == '-' || c == '.' || c == '_' || c == '~'
        || c == '+' || c == '/';
}

//  Finds the key in "Bearer <key>" (RFC 6750 2.1; the scheme in any case,
//  RFC 9110 11.1). Returns 0 and sets *key and *key_size, or -1 when the
//  value has another form.
static int
s_bearer (const char *value, size_t size, const char **key,
          size_t *key_size)
{
    static const char scheme [] = "Bearer";
    const size_t scheme_size = sizeof scheme - 1;
    if (!value || size <= scheme_size
    ||  strncasecmp (value, scheme, scheme_size) != 0
    ||  value [scheme_size] != ' ')
        return -1;

    size_t at = scheme_size;
    while (at < size && value [at] == ' ')
        at++;
    size_t start = at;
    while (at < size && s_token_char ((unsigned char) value [at]))
        at++;
    if (at == start)
        return -1;
    while (at < size && value [at] == '=')
        at++;
    size_t end = at;
    while (at < size && (value [at] == ' ' || value [at] == '\t'))
        at++;
    if (at != size || end - start > CASM_AUTH_KEY_MAX)
        return -1;

    *key = value + start;
    *key_size = end - start;
    return 0;
}

const char *
casm_auth_check (casm_auth_t *self, const char *value, size_t size)
{
    const char *key;
    size_t key_size;
    if (s_bearer (value, size, &key, &key_size) != 0)
        return NULL;

    uint8_t digest [SHA256_DIGEST_SIZE];
    struct sha256_ctx context;
    sha256_init (&context);
    sha256_update (&context, key_size, (const uint8_t *) key);
    sha256_digest (&context, sizeof digest, digest);

    //  found is the matching entry plus one, or 0; every entry is
    //  compared, and the mask picks without a branch.
    size_t found = 0;
    for (size_t i = 0; i < self->count; i++) {
        size_t equal = (size_t) (memeql_sec (digest, self->keys [i].digest,
                                             sizeof digest) & 1);
        size_t mask = (size_t) 0 - equal;
        found = (found & ~mask) | ((i + 1) & mask);
    }
    memset (&context, 0, sizeof context);
    memset (digest, 0, sizeof digest);
    return found ? self->keys [found - 1].label : NULL;
}
