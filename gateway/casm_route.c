/*  casm_route: paths, methods and request checks. See casm_route.h.       */

#include "casm_route.h"
#include "casm_log.h"
#include "casm_msg.h"

#include <jansson.h>
#include <string.h>
#include <strings.h>

static const struct {
    const char *path;
    const char *method;
    casm_route_kind_t kind;
    int op;
    int has_body;
} s_routes [] = {
    { "/v1/casm/customers/update-custom-attributes", "PUT",
      CASM_ROUTE_OPERATION, CASM_OP_UPDATE_ATTRIBUTES, 1 },
    { "/v1/casm/customers/create", "POST",
      CASM_ROUTE_OPERATION, CASM_OP_CREATE, 1 },
    { "/v1/casm/customers/update-state", "PUT",
      CASM_ROUTE_OPERATION, CASM_OP_UPDATE_STATE, 1 },
    { "/v1/casm/customers/read", "GET",
      CASM_ROUTE_OPERATION, CASM_OP_READ, 0 },
    { "/health", "GET", CASM_ROUTE_HEALTH, CASM_OP_NONE, 0 },
    { "/ready", "GET", CASM_ROUTE_READY, CASM_OP_PING, 0 },
    { "/openapi.yaml", "GET", CASM_ROUTE_OPENAPI, CASM_OP_NONE, 0 },
    { "/metrics", "GET", CASM_ROUTE_METRICS, CASM_OP_NONE, 0 },
};

int
casm_route_find (const char *method, const char *path, casm_route_t *route)
{
    if (!method || !path)
        return CASM_ROUTE_NOT_FOUND;

    for (size_t i = 0; i < sizeof s_routes / sizeof s_routes [0]; i++) {
        if (strcmp (s_routes [i].path, path) != 0)
            continue;

        route->kind = s_routes [i].kind;
        route->op = s_routes [i].op;
        route->has_body = s_routes [i].has_body;
        route->allow = s_routes [i].method;

        //  Methods are case-sensitive (RFC 9110 9.1): "put" is not PUT.
        return strcmp (s_routes [i].method, method) == 0
               ? CASM_ROUTE_FOUND : CASM_ROUTE_BAD_METHOD;
    }
    return CASM_ROUTE_NOT_FOUND;
}

int
casm_route_is_json (const char *content_type)
{
    static const char json [] = "application/json";
    const size_t json_size = sizeof json - 1;
    if (!content_type)
        return 0;

    while (*content_type == ' ' || *content_type == '\t')
        content_type++;
    if (strncasecmp (content_type, json, json_size) != 0)
        return 0;

    //  The media type must end here: "application/jsonx" is not JSON.
    const char *rest = content_type + json_size;
    while (*rest == ' ' || *rest == '\t')
        rest++;
    return *rest == 0 || *rest == ';';
}

int
casm_route_trace_id_valid (const char *trace_id)
{
    if (!trace_id)
        return 0;

    size_t size = 0;
    for (const char *c = trace_id; *c; c++, size++) {
        if (*c < 0x21 || *c > 0x7e || size >= CASM_TRACE_ID_MAX)
            return 0;
    }
    return size > 0;
}

//  Query bytes that cannot be in a JSON string (not UTF-8, or NUL) become
//  0x1A, the ASCII substitute character: a control character, which no
//  externalId and no refId may hold, so the validator refuses the value
//  with a field-level error, where '?' would have looked up another
//  customer.
#define QUERY_REPLACEMENT 0x1A

char *
casm_route_read_body (const char *ref_id, size_t ref_id_size,
                      const char *external_id, size_t external_id_size,
                      size_t *size)
{
    json_t *body = json_object ();
    if (!body)
        return NULL;

    //  json_object_set_new takes the value, and fails on a NULL one.
    if ((ref_id
    &&   json_object_set_new (body, "refId", casm_json_string_replacing (
             ref_id, ref_id_size, QUERY_REPLACEMENT)) != 0)
    ||  (external_id
    &&   json_object_set_new (body, "externalId", casm_json_string_replacing (
             external_id, external_id_size, QUERY_REPLACEMENT)) != 0)) {
        json_decref (body);
        return NULL;
    }

    char *text = json_dumps (body, JSON_COMPACT);
    json_decref (body);
    *size = text ? strlen (text) : 0;
    return text;
}
