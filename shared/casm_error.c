/*  casm_error: error bodies. See casm_error.h.                            */

#include "casm_error.h"
#include "casm_log.h"

#include <stdlib.h>
#include <string.h>

static const struct {
    const char *code;
    const char *message;
} s_messages [] = {
    { CASM_ERR_VALIDATION, "Request validation failed." },
    { CASM_ERR_NOT_FOUND_ENTITY, "Entity not found." },
    { CASM_ERR_DEACTIVATED, "Entity is deactivated." },
    { CASM_ERR_EXTERNAL_ID_EXISTS, "Entity with this externalId exists." },
    { CASM_ERR_REQUEST_ID_REUSED,
      "requestId was already used with a different request." },
    { CASM_ERR_UNAUTHORIZED, "Unauthorized." },
    { CASM_ERR_NOT_FOUND, "Not found." },
    { CASM_ERR_METHOD, "Method not allowed." },
    { CASM_ERR_TOO_LARGE, "Payload too large." },
    { CASM_ERR_MEDIA_TYPE, "Content-Type must be application/json." },
    { CASM_ERR_UNAVAILABLE, "Service unavailable, retry later." },
    { CASM_ERR_TIMEOUT, "No reply before the deadline." },
    { CASM_ERR_INTERNAL, "Internal error." },
};

const char *
casm_error_message (const char *code)
{
    for (size_t i = 0; i < sizeof s_messages / sizeof s_messages [0]; i++)
        if (strcmp (s_messages [i].code, code) == 0)
            return s_messages [i].message;
    return "Error.";
}

char *
casm_error_body (int status, const char *code, const char *message,
                 const char *parameter, const char *request_id,
                 json_t *errors, size_t *size)
{
    json_t *body = json_object ();
    json_object_set_new (body, "status", json_integer (status));
    json_object_set_new (body, "code", json_string (code));
    json_object_set_new (body, "message",
                         json_string (message ? message
                                              : casm_error_message (code)));
    if (parameter)
        json_object_set_new (body, "parameter", json_string (parameter));
    if (request_id && *request_id)
        json_object_set_new (body, "requestId",
                             casm_log_string (request_id,
                                              strlen (request_id)));
    if (errors)
        json_object_set_new (body, "errors", errors);

    char *text = json_dumps (body, JSON_COMPACT);
    json_decref (body);
    *size = text ? strlen (text) : 0;
    return text;
}

void
casm_error_add (json_t *errors, const char *field, const char *code,
                const char *message)
{
    json_t *error = json_object ();
    json_object_set_new (error, "field", casm_log_string (field,
                                                          strlen (field)));
    json_object_set_new (error, "code", json_string (code));
    json_object_set_new (error, "message", json_string (message));
    json_array_append_new (errors, error);
}
