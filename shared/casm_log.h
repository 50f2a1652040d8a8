/*  casm_log: one JSON object per line on stderr.

    Every line carries time, level, process, instance and message, plus the
    request id when the event belongs to a request (and its trace id, when
    casm_log_trace has paired them), plus any extra fields the caller
    passes as a jansson object. Strings are escaped by jansson, so
    nothing from a request reaches the log unescaped. The level is checked
    before any formatting is done.                                          */

#ifndef CASM_LOG_H
#define CASM_LOG_H

#include <jansson.h>

typedef enum {
    CASM_LOG_DEBUG = 0,
    CASM_LOG_INFO,
    CASM_LOG_WARN,
    CASM_LOG_ERROR
} casm_log_level_t;

//  Sets the process name and instance name used on every line, and the
//  level from LOG_LEVEL (debug, info, warn, error; default info). Exits
//  with a message when LOG_LEVEL holds anything else.
void casm_log_init (const char *process, const char *instance);

//  True when a line at this level would be written.
int casm_log_enabled (casm_log_level_t level);

//  Writes one line. request_id may be NULL. fields may be NULL; when given
//  it is consumed (its reference is stolen).
void casm_log (casm_log_level_t level, const char *request_id,
               json_t *fields, const char *format, ...)
    __attribute__ ((format (printf, 4, 5)));

//  A new JSON string of these bytes, with any invalid UTF-8 and any NUL
//  byte replaced by '?'.
json_t *casm_log_string (const char *text, size_t size);

//  A new JSON string of these bytes as they are when they are valid UTF-8
//  without NUL; otherwise with every byte from 0x80 up, and NUL, replaced
//  by replacement (an ASCII byte other than NUL). NULL only when memory
//  runs out.
json_t *casm_json_string_replacing (const char *text, size_t size,
                                    char replacement);

//  Remembers that the request request_id travels with the trace id
//  trace_id (the gateway's X-Request-Id), so that every later line naming
//  that request id carries "traceId" too: one grep for either finds the
//  request's whole path. The last CASM_LOG_TRACES pairs are kept. Empty
//  or NULL ids are ignored. For the loop's thread, like the lines that
//  name a request.
#define CASM_LOG_TRACES 256
void casm_log_trace (const char *request_id, const char *trace_id);

#define casm_debug(...) \
    do { if (casm_log_enabled (CASM_LOG_DEBUG)) \
             casm_log (CASM_LOG_DEBUG, __VA_ARGS__); } while (0)
#define casm_info(...)  casm_log (CASM_LOG_INFO, __VA_ARGS__)
#define casm_warn(...)  casm_log (CASM_LOG_WARN, __VA_ARGS__)
#define casm_error(...) casm_log (CASM_LOG_ERROR, __VA_ARGS__)

#endif
