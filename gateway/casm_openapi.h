/*  casm_openapi: the OpenAPI 3.1 document of the REST API.

    openapi.yaml, at the top of the source tree, is embedded into the
    gateway at build time (gateway/embed_openapi.cmake), so that
    GET /openapi.yaml serves the document of exactly this build and no
    file has to be found at run time.                                      */

#ifndef CASM_OPENAPI_H
#define CASM_OPENAPI_H

#include <stddef.h>

//  The document's bytes, followed by a NUL that is not counted.
extern const char casm_openapi_yaml [];
extern const size_t casm_openapi_yaml_size;

#endif
