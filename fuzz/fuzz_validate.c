/*  fuzz_validate: request validation (validator/casm_validate.h).

    Input: one byte that picks the operation (any value, so unknown ones
    are tried too), then the request body as the gateway would pass it.
    Properties: a result always comes back; it either passed, with a
    command, a 64-digit hash and exactly one customer reference, or failed
    with at least one well-formed error; and the command is JSON that
    parses again.                                                          */

#include "fuzz.h"
#include "casm_log.h"
#include "casm_msg.h"
#include "casm_validate.h"

#include <jansson.h>
#include <string.h>

int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
    setenv ("LOG_LEVEL", "error", 1);
    casm_log_init ("fuzz_validate", NULL);
    return 0;
}

static void
s_check_errors (json_t *errors)
{
    FUZZ_CHECK (json_is_array (errors));
    size_t index;
    json_t *error;
    json_array_foreach (errors, index, error) {
        FUZZ_CHECK (json_is_string (json_object_get (error, "field")));
        FUZZ_CHECK (json_is_string (json_object_get (error, "code")));
        FUZZ_CHECK (json_is_string (json_object_get (error, "message")));
    }
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int op = data [0] % 8;
    const char *body = (const char *) data + 1;
    size_t body_size = size - 1;

    casm_validate_t *result = casm_validate_new (op, body, body_size);
    FUZZ_CHECK (result);
    s_check_errors (casm_validate_errors (result));

    if (casm_validate_ok (result)) {
        FUZZ_CHECK (json_array_size (casm_validate_errors (result)) == 0);
        FUZZ_CHECK (op >= CASM_OP_UPDATE_ATTRIBUTES && op <= CASM_OP_READ);
        const char *hash = casm_validate_hash (result);
        FUZZ_CHECK (hash && strlen (hash) == 64
                    && strspn (hash, "0123456789abcdef") == 64);
        FUZZ_CHECK (!casm_validate_ref_id (result)
                    != !casm_validate_external_id (result));
        if (op != CASM_OP_READ)
            FUZZ_CHECK (casm_validate_request_id (result));

        size_t text_size = 0;
        char *text = casm_validate_command_text (result, &text_size);
        FUZZ_CHECK (text && text_size == strlen (text));
        json_t *again = json_loadb (text, text_size, 0, NULL);
        FUZZ_CHECK (json_is_object (again));
        json_decref (again);
        free (text);
    }
    else {
        FUZZ_CHECK (json_array_size (casm_validate_errors (result)) > 0);
        FUZZ_CHECK (!casm_validate_command (result));
        FUZZ_CHECK (!casm_validate_hash (result));
    }

    //  The depth count that guards the parser agrees with itself at any
    //  limit.
    int depth = casm_validate_depth (body, body_size, 64);
    FUZZ_CHECK (depth >= 0 && depth <= 65);
    if (depth <= 64)
        FUZZ_CHECK (casm_validate_depth (body, body_size, depth) == depth);
    casm_validate_uuid (body, body_size);

    casm_validate_destroy (&result);
    FUZZ_CHECK (!result);
    return 0;
}
