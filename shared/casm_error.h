/*  casm_error: the one error body of the API (DESIGN.md 2.3).

        { "status": 400, "code": "CASM-VALIDATION", "message": "...",
          "parameter": "customer", "requestId": "...",
          "errors": [ { "field": "...", "code": "...", "message": "..." } ] }

    parameter, requestId and errors are left out when not known.           */

#ifndef CASM_ERROR_H
#define CASM_ERROR_H

#include <jansson.h>
#include <stddef.h>

#define CASM_ERR_VALIDATION "CASM-VALIDATION"
#define CASM_ERR_NOT_FOUND_ENTITY "CASM-ENTITY-NOT-FOUND"
#define CASM_ERR_DEACTIVATED "CASM-STATE-DEACTIVATED"
#define CASM_ERR_EXTERNAL_ID_EXISTS "CASM-EXTERNAL-ID-EXISTS"
#define CASM_ERR_REQUEST_ID_REUSED "CASM-REQUEST-ID-REUSED"
#define CASM_ERR_UNAUTHORIZED "AUTH-UNAUTHORIZED"
#define CASM_ERR_NOT_FOUND "NOT-FOUND"
#define CASM_ERR_METHOD "METHOD-NOT-ALLOWED"
#define CASM_ERR_TOO_LARGE "PAYLOAD-TOO-LARGE"
#define CASM_ERR_MEDIA_TYPE "UNSUPPORTED-MEDIA-TYPE"
#define CASM_ERR_UNAVAILABLE "SERVICE-UNAVAILABLE"
#define CASM_ERR_TIMEOUT "TIMEOUT"
#define CASM_ERR_INTERNAL "INTERNAL"

//  The standard message for an error code ("Entity is deactivated." ...).
const char *casm_error_message (const char *code);

//  A new error body as compact JSON text; the caller frees it with free().
//  message NULL means the standard message of the code. parameter and
//  request_id may be NULL. errors may be NULL; when given, the function
//  takes its reference. *size gets the length. Never returns NULL unless
//  memory runs out.
char *casm_error_body (int status, const char *code, const char *message,
                       const char *parameter, const char *request_id,
                       json_t *errors, size_t *size);

//  Appends { field, code, message } to the errors array.
void casm_error_add (json_t *errors, const char *field, const char *code,
                     const char *message);

#endif
