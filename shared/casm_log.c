/*  casm_log: JSON lines on stderr. See casm_log.h.                        */

#include "casm_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static char s_process [64] = "casm";
static char s_instance [64] = "";
static casm_log_level_t s_level = CASM_LOG_INFO;

static const char *s_level_names [] = { "debug", "info", "warn", "error" };

//  Recent request id and trace id pairs, newest at s_trace_next - 1.
static struct {
    char request_id [129];
    char trace_id [65];
} s_traces [CASM_LOG_TRACES];
static unsigned s_trace_next = 0;

//  A JSON string from bytes that may not be valid UTF-8: invalid bytes
//  become '?', so a hostile request id can neither break nor forge a line.
//  NUL bytes too: jansson would write them as \u0000, which its own
//  parser (and the validator, for a readCustomer body) refuses.
json_t *
casm_log_string (const char *text, size_t size)
{
    json_t *string = casm_json_string_replacing (text, size, '?');
    return string ? string : json_string ("?");
}

json_t *
casm_json_string_replacing (const char *text, size_t size, char replacement)
{
    json_t *string = memchr (text, 0, size) ? NULL
                                            : json_stringn (text, size);
    if (string)
        return string;

    char *copy = malloc (size + 1);
    if (!copy)
        return NULL;
    for (size_t i = 0; i < size; i++) {
        unsigned char c = (unsigned char) text [i];
        copy [i] = c < 0x80 && c != 0 ? (char) c : replacement;
    }
    copy [size] = 0;
    string = json_stringn (copy, size);
    free (copy);
    return string;
}

void
casm_log_init (const char *process, const char *instance)
{
    snprintf (s_process, sizeof s_process, "%s", process);
    snprintf (s_instance, sizeof s_instance, "%s",
              instance && *instance ? instance : process);

    const char *level = getenv ("LOG_LEVEL");
    if (!level || !*level)
        return;
    for (int i = 0; i < 4; i++)
        if (strcasecmp (level, s_level_names [i]) == 0) {
            s_level = (casm_log_level_t) i;
            return;
        }
    if (strcasecmp (level, "warning") == 0) {
        s_level = CASM_LOG_WARN;
        return;
    }
    fprintf (stderr, "%s: LOG_LEVEL must be one of debug, info, warn, "
             "error (got \"%s\")\n", process, level);
    exit (2);
}

void
casm_log_trace (const char *request_id, const char *trace_id)
{
    if (!request_id || !*request_id || !trace_id || !*trace_id)
        return;

    //  A request seen again at the next stage of the same process (or
    //  again at this one) keeps one entry.
    unsigned newest = (s_trace_next + CASM_LOG_TRACES - 1) % CASM_LOG_TRACES;
    unsigned at = s_trace_next;
    if (strcmp (s_traces [newest].request_id, request_id) == 0)
        at = newest;
    else
        s_trace_next = (s_trace_next + 1) % CASM_LOG_TRACES;
    snprintf (s_traces [at].request_id, sizeof s_traces [at].request_id,
              "%s", request_id);
    snprintf (s_traces [at].trace_id, sizeof s_traces [at].trace_id, "%s",
              trace_id);
}

//  The trace id paired with this request id, newest first, or NULL.
static const char *
s_trace_find (const char *request_id)
{
    for (unsigned i = 1; i <= CASM_LOG_TRACES; i++) {
        unsigned at = (s_trace_next + CASM_LOG_TRACES - i) % CASM_LOG_TRACES;
        if (!s_traces [at].request_id [0])
            return NULL;
        if (strcmp (s_traces [at].request_id, request_id) == 0)
            return s_traces [at].trace_id;
    }
    return NULL;
}

int
casm_log_enabled (casm_log_level_t level)
{
    return level >= s_level;
}

void
casm_log (casm_log_level_t level, const char *request_id, json_t *fields,
          const char *format, ...)
{
    if (!casm_log_enabled (level)) {
        json_decref (fields);
        return;
    }
    char message [1024];
    va_list args;
    va_start (args, format);
    vsnprintf (message, sizeof message, format, args);
    va_end (args);

    struct timespec now;
    clock_gettime (CLOCK_REALTIME, &now);
    struct tm tm;
    gmtime_r (&now.tv_sec, &tm);
    char stamp [96];
    snprintf (stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ",
              tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
              tm.tm_min, tm.tm_sec, (long) (now.tv_nsec / 1000000) % 1000);

    json_t *line = json_object ();
    json_object_set_new (line, "time", json_string (stamp));
    json_object_set_new (line, "level", json_string (s_level_names [level]));
    json_object_set_new (line, "process", json_string (s_process));
    json_object_set_new (line, "instance", json_string (s_instance));
    if (request_id && *request_id) {
        json_object_set_new (line, "requestId",
                             casm_log_string (request_id,
                                              strlen (request_id)));
        const char *trace_id = s_trace_find (request_id);
        if (trace_id)
            json_object_set_new (line, "traceId",
                                 casm_log_string (trace_id,
                                                  strlen (trace_id)));
    }
    json_object_set_new (line, "message",
                         casm_log_string (message, strlen (message)));
    if (fields)
        json_object_update (line, fields);
    json_decref (fields);

    char *text = json_dumps (line, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref (line);
    if (text) {
        fprintf (stderr, "%s\n", text);
        free (text);
    }
}
