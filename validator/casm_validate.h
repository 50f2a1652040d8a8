/*  casm_validate: checks one request and puts it in normalised form.

    Pure: the request text and its operation go in; out comes either the
    command body that the worker expects (docs/internals.md, "the command
    body") with the request hash, or the list of every problem found, as
    { field, code, message } entries for the 400 CASM-VALIDATION body of
    DESIGN.md 2.3. No database is involved: whether the customer exists is
    the look-up's business (casm_lookup).

    Error codes: TOO_DEEP, MALFORMED_JSON, INVALID_UTF8 (the body as a
    whole, field ""), REQUIRED (missing or null mandatory field),
    INVALID_TYPE, TOO_SHORT, TOO_LONG, TOO_MANY, INVALID_FORMAT,
    INVALID_VALUE and UNKNOWN_FIELD.                                        */

#ifndef CASM_VALIDATE_H
#define CASM_VALIDATE_H

#include <jansson.h>
#include <stddef.h>

typedef struct casm_validate_t casm_validate_t;

//  Validates body (size bytes, need not be NUL-terminated) as a request of
//  operation op (casm_op_t). Always returns a new result, which the caller
//  destroys; NULL only when memory runs out.
casm_validate_t *casm_validate_new (int op, const char *body, size_t size);

//  Destroys the result and NULLs the caller's pointer.
void casm_validate_destroy (casm_validate_t **self_p);

//  True when the request passed.
int casm_validate_ok (casm_validate_t *self);

//  The error list (a JSON array, empty when the request passed). Owned by
//  the result: take a reference (json_incref) to keep it.
json_t *casm_validate_errors (casm_validate_t *self);

//  The command body, or NULL when the request failed. Owned by the result.
json_t *casm_validate_command (casm_validate_t *self);

//  The command body as compact JSON text that the caller frees with
//  free(), or NULL when the request failed.
char *casm_validate_command_text (casm_validate_t *self, size_t *size);

//  The client's requestId when it is present and valid (even when other
//  fields are not), else NULL. Owned by the result.
const char *casm_validate_request_id (casm_validate_t *self);

//  The request hash as 64 lower-case hex digits, or NULL when the request
//  failed. Owned by the result.
const char *casm_validate_hash (casm_validate_t *self);

//  The customer the request refers to: its refId (lower case) or its
//  externalId, one of them NULL. For createCustomer the externalId is the
//  new customer's. NULL, NULL when the request failed. Owned by the result.
const char *casm_validate_ref_id (casm_validate_t *self);
const char *casm_validate_external_id (casm_validate_t *self);

//  Sets the command's refId once the look-up has resolved an externalId.
void casm_validate_resolve (casm_validate_t *self, const char *ref_id);

//  True when text (size bytes) is a UUID in canonical 8-4-4-4-12 form.
int casm_validate_uuid (const char *text, size_t size);

//  The deepest nesting of arrays and objects in a JSON text, counted
//  without parsing (strings and escapes honoured); stops counting once
//  limit is exceeded and returns limit + 1.
int casm_validate_depth (const char *text, size_t size, int limit);

#endif
