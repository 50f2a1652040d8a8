/*  fuzz_http: what the gateway makes of a request's parts before anything
    reaches the pipeline (gateway/casm_route.h, gateway/casm_auth.h).

    Input: lines, each one part: method, path, Content-Type, X-Request-Id,
    Authorization, refId, externalId (missing lines are absent parts).
    Properties: a found route has a method and a kind; a usable trace id is
    1 to 64 printable characters; the readCustomer body is a JSON object
    with at most the two references; and the Authorization value is only
    ever accepted when it carries the one key in the table.                */

#define _GNU_SOURCE                     // memmem
#include "fuzz.h"
#include "casm_auth.h"
#include "casm_log.h"
#include "casm_msg.h"
#include "casm_route.h"

#include <jansson.h>
#include <string.h>
#include <unistd.h>

#define PARTS 7

//  The one key of the table, labelled "fuzz".
#define KEY "fuzz-key-0123456789"
static casm_auth_t *s_auth;

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
    setenv ("LOG_LEVEL", "error", 1);
    casm_log_init ("fuzz_http", NULL);

    char path [] = "/tmp/casm-fuzz-keys-XXXXXX";
    int fd = mkstemp (path);
    FUZZ_CHECK (fd != -1);
    static const char line [] = "fuzz "   // the SHA-256 of KEY
        "c909b0944eac32e3fd8baaa345bedcda2891bfa1eb459cb0be85272c3bdf15b5\n";
    FUZZ_CHECK (write (fd, line, sizeof line - 1) == sizeof line - 1);
    close (fd);
    s_auth = casm_auth_new (path);
    unlink (path);
    FUZZ_CHECK (s_auth);
    return 0;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    //  Split into parts; a part is NULL when the input has no line for it.
    const char *part [PARTS] = { NULL };
    size_t part_size [PARTS] = { 0 };
    char *text [PARTS] = { NULL };
    const char *at = (const char *) data, *end = at + size;
    for (int i = 0; i < PARTS && at <= end && size; i++) {
        const char *newline = memchr (at, '\n', (size_t) (end - at));
        const char *stop = newline ? newline : end;
        part [i] = at;
        part_size [i] = (size_t) (stop - at);
        text [i] = strndup (at, part_size [i]);
        FUZZ_CHECK (text [i]);
        if (!newline)
            break;
        at = newline + 1;
    }

    casm_route_t route;
    int found = casm_route_find (text [0], text [1], &route);
    FUZZ_CHECK (found == CASM_ROUTE_FOUND || found == CASM_ROUTE_NOT_FOUND
                || found == CASM_ROUTE_BAD_METHOD);
    if (found != CASM_ROUTE_NOT_FOUND)
        FUZZ_CHECK (route.allow && route.kind >= CASM_ROUTE_HEALTH);
    if (found == CASM_ROUTE_FOUND)
        FUZZ_CHECK (strcmp (route.allow, text [0]) == 0);

    casm_route_is_json (text [2]);

    if (casm_route_trace_id_valid (text [3])) {
        size_t length = strlen (text [3]);
        FUZZ_CHECK (length >= 1 && length <= CASM_TRACE_ID_MAX);
        for (size_t i = 0; i < length; i++)
            FUZZ_CHECK (text [3][i] > 0x20 && text [3][i] < 0x7f);
    }

    const char *label = casm_auth_check (s_auth, part [4], part_size [4]);
    if (label) {
        FUZZ_CHECK (strcmp (label, "fuzz") == 0);
        FUZZ_CHECK (memmem (part [4], part_size [4], KEY, strlen (KEY)));
    }

    size_t body_size = 0;
    char *body = casm_route_read_body (part [5], part_size [5], part [6],
                                       part_size [6], &body_size);
    FUZZ_CHECK (body && body_size == strlen (body));
    json_t *parsed = json_loadb (body, body_size, 0, NULL);
    FUZZ_CHECK (json_is_object (parsed));
    FUZZ_CHECK (json_object_size (parsed)
                == (size_t) (part [5] != NULL) + (part [6] != NULL));
    json_decref (parsed);
    free (body);

    for (int i = 0; i < PARTS; i++)
        free (text [i]);
    return 0;
}
