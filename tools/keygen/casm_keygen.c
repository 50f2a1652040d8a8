/*  casm-keygen: makes keys for casm (docs/security.md).

        casm-keygen server          the broker's CURVE key pair
        casm-keygen client LABEL    a process's CURVE key pair, and its
                                    line for CURVE_CLIENTS_FILE
        casm-keygen api LABEL       an API key, and its line for
                                    API_KEYS_FILE

    Prints VARIABLE=value lines (an env file) and '#' comments; the secret
    goes to standard output only, so redirect it into a file that only its
    user can read. Exits 0, or 2 on a usage error, 1 when no key could be
    made.                                                                  */

#include "casm_curve.h"

#include <nettle/base64.h>
#include <nettle/sha2.h>

#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#define API_KEY_BYTES 32

static int
s_usage (void)
{
    fprintf (stderr, "usage: casm-keygen server\n"
                     "       casm-keygen client LABEL\n"
                     "       casm-keygen api LABEL\n");
    return 2;
}

static int
s_curve (const char *role, const char *label)
{
    char public [CASM_CURVE_Z85_SIZE + 1], secret [CASM_CURVE_Z85_SIZE + 1];
    if (zmq_curve_keypair (public, secret) != 0) {
        fprintf (stderr, "casm-keygen: cannot make a CURVE key pair: %s\n",
                 zmq_strerror (zmq_errno ()));
        return 1;
    }
    printf ("# CURVE key pair for the %s%s%s. Keep the secret secret.\n",
            role, label ? " " : "", label ? label : "");
    printf ("CURVE_%s_PUBLIC=%s\n", streq (role, "broker") ? "SERVER"
                                                           : "CLIENT", public);
    printf ("CURVE_%s_SECRET=%s\n", streq (role, "broker") ? "SERVER"
                                                           : "CLIENT", secret);
    if (label)
        printf ("# its line in the broker's CURVE_CLIENTS_FILE:\n"
                "# %s %s\n", label, public);
    memset (secret, 0, sizeof secret);
    return 0;
}

static int
s_api (const char *label)
{
    uint8_t random [API_KEY_BYTES];
    if (getrandom (random, sizeof random, 0) != sizeof random) {
        perror ("casm-keygen: getrandom");
        return 1;
    }

    //  base64url without padding: a token68 that needs no quoting.
    char key [BASE64_ENCODE_RAW_LENGTH (API_KEY_BYTES) + 1];
    struct base64_encode_ctx encoder;
    base64url_encode_init (&encoder);
    size_t size = base64_encode_update (&encoder, key, sizeof random,
                                        random);
    size += base64_encode_final (&encoder, key + size);
    while (size && key [size - 1] == '=')
        size--;
    key [size] = 0;

    uint8_t digest [SHA256_DIGEST_SIZE];
    struct sha256_ctx context;
    sha256_init (&context);
    sha256_update (&context, size, (const uint8_t *) key);
    sha256_digest (&context, sizeof digest, digest);

    printf ("# API key for %s: send it as \"Authorization: Bearer <key>\"\n",
            label);
    printf ("API_KEY=%s\n", key);
    printf ("# its line in the gateway's API_KEYS_FILE:\n# %s ", label);
    for (size_t i = 0; i < sizeof digest; i++)
        printf ("%02x", digest [i]);
    printf ("\n");
    memset (random, 0, sizeof random);
    memset (key, 0, sizeof key);
    return 0;
}

int
main (int argc, char *argv [])
{
    if (argc == 2 && streq (argv [1], "server"))
        return s_curve ("broker", NULL);
    if (argc == 3 && streq (argv [1], "client"))
        return s_curve ("client", argv [2]);
    if (argc == 3 && streq (argv [1], "api"))
        return s_api (argv [2]);
    return s_usage ();
}
