/*  casm_route: how an HTTP request maps to a pipeline operation.

    The gateway's table of paths and methods, and the small checks it makes
    on a request before anything reaches the pipeline: is the body declared
    as JSON, is a client's X-Request-Id usable as a trace id, and what body
    a readCustomer query turns into. Pure functions: no sockets, no MHD, so
    that tests can call every one of them.                                 */

#ifndef CASM_ROUTE_H
#define CASM_ROUTE_H

#include <stddef.h>

typedef enum {
    CASM_ROUTE_HEALTH = 1,              // GET /health, answered at once
    CASM_ROUTE_READY,                   // GET /ready, a PING through the chain
    CASM_ROUTE_OPERATION,               // one of the API's operations
    CASM_ROUTE_OPENAPI,                 // GET /openapi.yaml, answered at once
    CASM_ROUTE_METRICS                  // GET /metrics, answered at once
} casm_route_kind_t;

typedef struct {
    casm_route_kind_t kind;
    int op;                             // casm_op_t sent down the pipeline
    int has_body;                       // the request carries a JSON body
    const char *allow;                  // the one method the path accepts
} casm_route_t;

//  casm_route_find's results.
#define CASM_ROUTE_FOUND 0
#define CASM_ROUTE_NOT_FOUND -1         // 404: no such path
#define CASM_ROUTE_BAD_METHOD -2        // 405: route->allow says what is

//  Finds the route of this method and path (the path without its query
//  string). Fills route when the path is known, whatever the method.
int casm_route_find (const char *method, const char *path,
                     casm_route_t *route);

//  True when a Content-Type value declares JSON: application/json in any
//  case, optionally followed by parameters such as charset.
int casm_route_is_json (const char *content_type);

//  True when a client's X-Request-Id can be used as the trace id: 1 to
//  CASM_TRACE_ID_MAX printable ASCII characters, no spaces.
int casm_route_trace_id_valid (const char *trace_id);

//  The readCustomer body made from the query string: a JSON object with
//  the refId and externalId parameters that are present (value NULL means
//  absent; a present parameter without a value is an empty string). Values
//  are escaped by jansson; bytes that are not UTF-8, and NUL, become 0x1A
//  (a control character, which the validator refuses). Returns
//  compact JSON text the caller frees with free(), and its length in
//  *size; NULL only when memory runs out.
char *casm_route_read_body (const char *ref_id, size_t ref_id_size,
                            const char *external_id,
                            size_t external_id_size, size_t *size);

#endif
