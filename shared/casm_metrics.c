/*  casm_metrics: the registry, the text format, casm's catalogue. See
    casm_metrics.h.

    A family keeps its series in an array that doubles as it grows, up to
    CASM_METRICS_SERIES_MAX; a histogram series holds one count per bucket
    (not cumulative: observing touches one bucket) and renders the running
    sums. Numbers are written in their shortest form that reads back the
    same, as Prometheus's own clients do, so "0.1" stays "0.1".             */

#include "casm_metrics.h"
#include "casm_log.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define COLLECTORS_MAX 8

typedef enum {
    TYPE_COUNTER,
    TYPE_GAUGE,
    TYPE_HISTOGRAM
} type_t;

static const char *s_type_names [] = { "counter", "gauge", "histogram" };

typedef struct family_t family_t;

struct casm_series_t {
    family_t *family;
    char *values [CASM_METRICS_LABELS_MAX];
    double value;               // counter, gauge
    double sum;                 // histogram
    uint64_t count;
    uint64_t *buckets;          // histogram: bound_count + 1 (+Inf)
};

struct family_t {
    char *name;
    char *help;
    type_t type;
    char *labels [CASM_METRICS_LABELS_MAX];
    size_t label_count;
    double bounds [CASM_METRICS_BOUNDS_MAX];
    size_t bound_count;
    casm_series_t **series;
    size_t series_count;
    size_t series_capacity;
    int warned_full;
    family_t *next;
};

struct casm_metrics_t {
    family_t *first;
    family_t *last;
    struct {
        casm_metrics_collect_fn *fn;
        void *arg;
    } collectors [COLLECTORS_MAX];
    size_t collector_count;
};

static casm_metrics_t *s_process = NULL;


//  --------------------------------------------------------------------
//  The registry

int64_t
casm_metrics_now_us (void)
{
    struct timespec now;
    clock_gettime (CLOCK_MONOTONIC, &now);
    return (int64_t) now.tv_sec * 1000000 + now.tv_nsec / 1000;
}

static void
s_series_destroy (casm_series_t *series)
{
    for (size_t i = 0; i < CASM_METRICS_LABELS_MAX; i++)
        free (series->values [i]);
    free (series->buckets);
    free (series);
}

static void
s_family_destroy (family_t *family)
{
    for (size_t i = 0; i < family->series_count; i++)
        s_series_destroy (family->series [i]);
    for (size_t i = 0; i < family->label_count; i++)
        free (family->labels [i]);
    free (family->series);
    free (family->name);
    free (family->help);
    free (family);
}

casm_metrics_t *
casm_metrics_new (void)
{
    return calloc (1, sizeof (casm_metrics_t));
}

void
casm_metrics_destroy (casm_metrics_t **self_p)
{
    casm_metrics_t *self = *self_p;
    if (!self)
        return;

    //  The process registry lives until exit: the catalogue keeps series
    //  of it.
    if (self == s_process) {
        *self_p = NULL;
        return;
    }
    family_t *family = self->first;
    while (family) {
        family_t *next = family->next;
        s_family_destroy (family);
        family = next;
    }
    free (self);
    *self_p = NULL;
}

casm_metrics_t *
casm_metrics_process (void)
{
    if (s_process)
        return s_process;

    s_process = casm_metrics_new ();
    struct timespec now;
    clock_gettime (CLOCK_REALTIME, &now);
    casm_series_set (casm_metrics_gauge (s_process,
        "process_start_time_seconds",
        "Start time of the process since the Unix epoch, in seconds.",
        NULL), (double) now.tv_sec + now.tv_nsec / 1e9);
    return s_process;
}

//  A metric name: [a-zA-Z_:][a-zA-Z0-9_:]*. A label name: the same
//  without colons, and not starting with "__" (reserved).
static int
s_name_valid (const char *name, int label)
{
    if (!name || !*name || (label && strncmp (name, "__", 2) == 0))
        return 0;
    for (const char *c = name; *c; c++) {
        int letter = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z')
                  || *c == '_' || (!label && *c == ':');
        int digit = *c >= '0' && *c <= '9';
        if (!letter && !(digit && c > name))
            return 0;
    }
    return 1;
}

static family_t *
s_family_find (casm_metrics_t *self, const char *name)
{
    for (family_t *family = self->first; family; family = family->next)
        if (strcmp (family->name, name) == 0)
            return family;
    return NULL;
}

//  True when the family has these label names, in this order.
static int
s_family_labels_match (family_t *family, const char **names, size_t count)
{
    if (family->label_count != count)
        return 0;
    for (size_t i = 0; i < count; i++)
        if (strcmp (family->labels [i], names [i]) != 0)
            return 0;
    return 1;
}

static family_t *
s_family_new (casm_metrics_t *self, type_t type, const char *name,
              const char *help, const char **labels, size_t label_count,
              const double *bounds, size_t bound_count)
{
    family_t *family = calloc (1, sizeof *family);
    if (!family)
        return NULL;
    family->type = type;
    family->name = strdup (name);
    family->help = strdup (help ? help : "");
    int failed = !family->name || !family->help;
    for (size_t i = 0; i < label_count; i++) {
        family->labels [i] = strdup (labels [i]);
        failed |= !family->labels [i];
        family->label_count++;
    }
    if (bound_count)
        memcpy (family->bounds, bounds, bound_count * sizeof *bounds);
    family->bound_count = bound_count;
    if (failed) {
        s_family_destroy (family);
        return NULL;
    }

    if (self->last)
        self->last->next = family;
    else
        self->first = family;
    self->last = family;
    return family;
}

static casm_series_t *
s_series_new (family_t *family, const char **values)
{
    if (family->series_count == CASM_METRICS_SERIES_MAX) {
        if (!family->warned_full)
            casm_error (NULL, NULL, "metrics: %s has %d series, no more "
                        "are made", family->name, CASM_METRICS_SERIES_MAX);
        family->warned_full = 1;
        return NULL;
    }
    if (family->series_count == family->series_capacity) {
        size_t capacity = family->series_capacity
                        ? family->series_capacity * 2 : 4;
        casm_series_t **grown = realloc (family->series,
                                         capacity * sizeof *grown);
        if (!grown)
            return NULL;
        family->series = grown;
        family->series_capacity = capacity;
    }

    casm_series_t *series = calloc (1, sizeof *series);
    if (!series)
        return NULL;
    series->family = family;
    int failed = 0;
    for (size_t i = 0; i < family->label_count; i++) {
        series->values [i] = strdup (values [i]);
        failed |= !series->values [i];
    }
    if (family->type == TYPE_HISTOGRAM) {
        series->buckets = calloc (family->bound_count + 1,
                                  sizeof *series->buckets);
        failed |= !series->buckets;
    }
    if (failed) {
        s_series_destroy (series);
        return NULL;
    }
    family->series [family->series_count++] = series;
    return series;
}

static casm_series_t *
s_series_find (family_t *family, const char **values)
{
    for (size_t i = 0; i < family->series_count; i++) {
        casm_series_t *series = family->series [i];
        size_t label = 0;
        while (label < family->label_count
           &&  strcmp (series->values [label], values [label]) == 0)
            label++;
        if (label == family->label_count)
            return series;
    }
    return s_series_new (family, values);
}

//  The common part of the three constructors: checks the names, finds or
//  makes the family, finds or makes the series.
static casm_series_t *
s_series (casm_metrics_t *self, type_t type, const char *name,
          const char *help, const double *bounds, size_t bound_count,
          va_list pairs)
{
    if (!self)
        self = casm_metrics_process ();
    if (!self)
        return NULL;

    const char *labels [CASM_METRICS_LABELS_MAX];
    const char *values [CASM_METRICS_LABELS_MAX];
    size_t count = 0;
    const char *label;
    int valid = s_name_valid (name, 0);
    while ((label = va_arg (pairs, const char *))) {
        const char *value = va_arg (pairs, const char *);
        if (count == CASM_METRICS_LABELS_MAX || !value
        ||  !s_name_valid (label, 1)
        ||  (type == TYPE_HISTOGRAM && strcmp (label, "le") == 0)) {
            valid = 0;
            break;
        }
        labels [count] = label;
        values [count++] = value;
    }

    family_t *family = valid ? s_family_find (self, name) : NULL;
    if (family && (family->type != type
    ||  !s_family_labels_match (family, labels, count)))
        valid = 0;
    if (valid && !family && type == TYPE_HISTOGRAM) {
        valid = bounds && bound_count > 0
             && bound_count <= CASM_METRICS_BOUNDS_MAX;
        for (size_t i = 0; valid && i < bound_count; i++)
            valid = isfinite (bounds [i])
                 && (i == 0 || bounds [i] > bounds [i - 1]);
    }
    if (!valid) {
        casm_error (NULL, NULL, "metrics: invalid %s %s", s_type_names [type],
                    name ? name : "(null)");
        return NULL;
    }

    if (!family)
        family = s_family_new (self, type, name, help, labels, count,
                               bounds, bound_count);
    return family ? s_series_find (family, values) : NULL;
}

casm_series_t *
casm_metrics_counter (casm_metrics_t *self, const char *name,
                      const char *help, ...)
{
    va_list pairs;
    va_start (pairs, help);
    casm_series_t *series = s_series (self, TYPE_COUNTER, name, help, NULL,
                                      0, pairs);
    va_end (pairs);
    return series;
}

casm_series_t *
casm_metrics_gauge (casm_metrics_t *self, const char *name, const char *help,
                    ...)
{
    va_list pairs;
    va_start (pairs, help);
    casm_series_t *series = s_series (self, TYPE_GAUGE, name, help, NULL, 0,
                                      pairs);
    va_end (pairs);
    return series;
}

casm_series_t *
casm_metrics_histogram (casm_metrics_t *self, const char *name,
                        const char *help, const double *bounds, size_t count,
                        ...)
{
    va_list pairs;
    va_start (pairs, count);
    casm_series_t *series = s_series (self, TYPE_HISTOGRAM, name, help,
                                      bounds, count, pairs);
    va_end (pairs);
    return series;
}

void
casm_series_add (casm_series_t *self, double amount)
{
    if (!self || self->family->type == TYPE_HISTOGRAM)
        return;
    if (self->family->type == TYPE_COUNTER && !(amount >= 0))
        return;
    self->value += amount;
}

void
casm_series_set (casm_series_t *self, double value)
{
    if (self && self->family->type != TYPE_HISTOGRAM)
        self->value = value;
}

void
casm_series_observe (casm_series_t *self, double value)
{
    if (!self || self->family->type != TYPE_HISTOGRAM)
        return;

    //  Bucket i counts what is at most bounds [i]; NaN lands in +Inf.
    family_t *family = self->family;
    size_t bucket = 0;
    while (bucket < family->bound_count
       &&  !(value <= family->bounds [bucket]))
        bucket++;
    self->buckets [bucket]++;
    self->sum += value;
    self->count++;
}

double
casm_series_value (casm_series_t *self)
{
    if (!self)
        return 0;
    return self->family->type == TYPE_HISTOGRAM ? (double) self->count
                                                : self->value;
}

int
casm_metrics_on_collect (casm_metrics_t *self,
                         casm_metrics_collect_fn *collect, void *arg)
{
    if (!self)
        self = casm_metrics_process ();
    if (!self || self->collector_count == COLLECTORS_MAX)
        return -1;
    self->collectors [self->collector_count].fn = collect;
    self->collectors [self->collector_count].arg = arg;
    self->collector_count++;
    return 0;
}

void
casm_metrics_off_collect (casm_metrics_t *self,
                          casm_metrics_collect_fn *collect, void *arg)
{
    if (!self)
        self = casm_metrics_process ();
    for (size_t i = 0; self && i < self->collector_count; i++)
        if (self->collectors [i].fn == collect
        &&  self->collectors [i].arg == arg) {
            memmove (&self->collectors [i], &self->collectors [i + 1],
                     (self->collector_count - i - 1)
                     * sizeof self->collectors [0]);
            self->collector_count--;
            return;
        }
}


//  --------------------------------------------------------------------
//  The text format

typedef struct {
    char *data;
    size_t size;
    size_t capacity;
    int failed;
} text_t;

static void
s_append (text_t *text, const char *data, size_t size)
{
    if (text->failed)
        return;
    if (text->size + size + 1 > text->capacity) {
        size_t capacity = text->capacity ? text->capacity : 4096;
        while (text->size + size + 1 > capacity)
            capacity *= 2;
        char *grown = realloc (text->data, capacity);
        if (!grown) {
            text->failed = 1;
            return;
        }
        text->data = grown;
        text->capacity = capacity;
    }
    memcpy (text->data + text->size, data, size);
    text->size += size;
    text->data [text->size] = 0;
}

static void
s_append_str (text_t *text, const char *string)
{
    s_append (text, string, strlen (string));
}

//  Escapes for the text format: a backslash and a newline always, a
//  double quote inside a label value.
static void
s_append_escaped (text_t *text, const char *string, int quote)
{
    const char *run = string;
    for (const char *c = string; *c; c++) {
        const char *escape = *c == '\\' ? "\\\\"
                           : *c == '\n' ? "\\n"
                           : *c == '"' && quote ? "\\\"" : NULL;
        if (!escape)
            continue;
        s_append (text, run, (size_t) (c - run));
        s_append_str (text, escape);
        run = c + 1;
    }
    s_append_str (text, run);
}

//  The shortest decimal form that reads back as the same double.
static void
s_format_number (char *buffer, size_t size, double value)
{
    if (isnan (value)) {
        snprintf (buffer, size, "NaN");
        return;
    }
    if (isinf (value)) {
        snprintf (buffer, size, value > 0 ? "+Inf" : "-Inf");
        return;
    }
    if (value == floor (value) && fabs (value) < 1e15) {
        snprintf (buffer, size, "%.0f", value);
        return;
    }
    for (int precision = 1; precision <= 17; precision++) {
        snprintf (buffer, size, "%.*g", precision, value);
        if (strtod (buffer, NULL) == value)
            return;
    }
}

static void
s_append_number (text_t *text, double value)
{
    char number [64];
    s_format_number (number, sizeof number, value);
    s_append_str (text, number);
}

static void
s_append_integer (text_t *text, uint64_t value)
{
    char number [32];
    snprintf (number, sizeof number, "%llu", (unsigned long long) value);
    s_append_str (text, number);
}

//  {a="x",b="y"} with an optional extra le label; nothing when there is
//  no label at all.
static void
s_append_labels (text_t *text, casm_series_t *series, const char *le)
{
    family_t *family = series->family;
    if (family->label_count == 0 && !le)
        return;

    s_append_str (text, "{");
    for (size_t i = 0; i < family->label_count; i++) {
        if (i)
            s_append_str (text, ",");
        s_append_str (text, family->labels [i]);
        s_append_str (text, "=\"");
        s_append_escaped (text, series->values [i], 1);
        s_append_str (text, "\"");
    }
    if (le) {
        if (family->label_count)
            s_append_str (text, ",");
        s_append_str (text, "le=\"");
        s_append_str (text, le);
        s_append_str (text, "\"");
    }
    s_append_str (text, "}");
}

static void
s_append_histogram (text_t *text, casm_series_t *series)
{
    family_t *family = series->family;
    uint64_t cumulative = 0;
    for (size_t i = 0; i <= family->bound_count; i++) {
        char le [64];
        if (i < family->bound_count)
            s_format_number (le, sizeof le, family->bounds [i]);
        else
            snprintf (le, sizeof le, "+Inf");
        cumulative += series->buckets [i];
        s_append_str (text, family->name);
        s_append_str (text, "_bucket");
        s_append_labels (text, series, le);
        s_append_str (text, " ");
        s_append_integer (text, cumulative);
        s_append_str (text, "\n");
    }
    s_append_str (text, family->name);
    s_append_str (text, "_sum");
    s_append_labels (text, series, NULL);
    s_append_str (text, " ");
    s_append_number (text, series->sum);
    s_append_str (text, "\n");
    s_append_str (text, family->name);
    s_append_str (text, "_count");
    s_append_labels (text, series, NULL);
    s_append_str (text, " ");
    s_append_integer (text, series->count);
    s_append_str (text, "\n");
}

static void
s_append_family (text_t *text, family_t *family)
{
    s_append_str (text, "# HELP ");
    s_append_str (text, family->name);
    s_append_str (text, " ");
    s_append_escaped (text, family->help, 0);
    s_append_str (text, "\n# TYPE ");
    s_append_str (text, family->name);
    s_append_str (text, " ");
    s_append_str (text, s_type_names [family->type]);
    s_append_str (text, "\n");

    for (size_t i = 0; i < family->series_count; i++) {
        casm_series_t *series = family->series [i];
        if (family->type == TYPE_HISTOGRAM) {
            s_append_histogram (text, series);
            continue;
        }
        s_append_str (text, family->name);
        s_append_labels (text, series, NULL);
        s_append_str (text, " ");
        s_append_number (text, series->value);
        s_append_str (text, "\n");
    }
}

char *
casm_metrics_render (casm_metrics_t *self, size_t *size)
{
    if (!self)
        self = casm_metrics_process ();
    *size = 0;
    if (!self)
        return NULL;

    for (size_t i = 0; i < self->collector_count; i++)
        self->collectors [i].fn (self->collectors [i].arg);

    text_t text = { NULL, 0, 0, 0 };
    s_append (&text, "", 0);
    for (family_t *family = self->first; family; family = family->next)
        s_append_family (&text, family);
    if (text.failed) {
        free (text.data);
        return NULL;
    }
    *size = text.size;
    return text.data;
}


//  --------------------------------------------------------------------
//  casm's catalogue

const double casm_metrics_seconds_bounds [] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
    2.5, 5, 10
};
const size_t casm_metrics_seconds_count =
    sizeof casm_metrics_seconds_bounds / sizeof casm_metrics_seconds_bounds [0];

static const double s_batch_bounds [] = {
    1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024
};

void
casm_metrics_request (const char *operation, unsigned status,
                      double seconds)
{
    char code [16];
    snprintf (code, sizeof code, "%u", status);
    casm_series_add (casm_metrics_counter (NULL,
        "casm_http_requests_total",
        "HTTP requests answered by the gateway, by operation and status.",
        "operation", operation, "status", code, NULL), 1);
    casm_series_observe (casm_metrics_histogram (NULL,
        "casm_http_request_duration_seconds",
        "Time from a request's arrival at the gateway to its answer.",
        casm_metrics_seconds_bounds, casm_metrics_seconds_count,
        "operation", operation, NULL), seconds);
}

void
casm_metrics_inflight (double inflight, double capacity)
{
    static casm_series_t *used = NULL, *cap = NULL;
    if (!used)
        used = casm_metrics_gauge (NULL, "casm_http_requests_in_flight",
            "Requests the gateway holds now (in the pipeline or being "
            "answered).", NULL);
    if (!cap)
        cap = casm_metrics_gauge (NULL, "casm_http_requests_in_flight_max",
            "The gateway's cap on requests in flight (MAX_INFLIGHT).",
            NULL);
    casm_series_set (used, inflight);
    casm_series_set (cap, capacity);
}

//  The last stage seen and its series: a process runs one stage, so the
//  look-ups are made once.
#define OUTCOMES 5
static const char *s_outcomes [OUTCOMES] = {
    "forwarded", "ok", "client_error", "server_error", "dropped"
};

void
casm_metrics_unit (const char *stage, const char *outcome, double seconds)
{
    static const char *cached = NULL;
    static casm_series_t *duration = NULL;
    static casm_series_t *units [OUTCOMES];
    if (!stage || !outcome)
        return;

    if (!cached || strcmp (cached, stage) != 0) {
        cached = stage;
        duration = casm_metrics_histogram (NULL,
            "casm_stage_duration_seconds",
            "Time from a unit of work's arrival at a stage instance to its "
            "answer or its forward to the next queue.",
            casm_metrics_seconds_bounds, casm_metrics_seconds_count,
            "stage", stage, NULL);
        for (int i = 0; i < OUTCOMES; i++)
            units [i] = casm_metrics_counter (NULL,
                "casm_stage_units_total",
                "Units of work a stage instance finished, by outcome.",
                "stage", stage, "outcome", s_outcomes [i], NULL);
    }
    casm_series_observe (duration, seconds);
    for (int i = 0; i < OUTCOMES; i++)
        if (strcmp (outcome, s_outcomes [i]) == 0)
            casm_series_add (units [i], 1);
}

void
casm_metrics_batch (const char *stage, size_t units)
{
    casm_series_observe (casm_metrics_histogram (NULL, "casm_batch_size",
        "Units of work run together: per validator look-up, per worker "
        "transaction, per warehouse batch.",
        s_batch_bounds, sizeof s_batch_bounds / sizeof s_batch_bounds [0],
        "stage", stage, NULL), (double) units);
}

void
casm_metrics_queue (const char *queue, const casm_metrics_queue_t *sample)
{
    static const struct {
        const char *name;
        int counter;
        size_t offset;
        const char *help;
    } fields [] = {
        { "casm_queue_waiting", 0,
          offsetof (casm_metrics_queue_t, waiting),
          "Units of work waiting in the queue for an instance's credit." },
        { "casm_queue_credit", 0,
          offsetof (casm_metrics_queue_t, credit),
          "Free slots the queue's instances have announced." },
        { "casm_queue_instances", 0,
          offsetof (casm_metrics_queue_t, instances),
          "Stage instances registered with the queue." },
        { "casm_queue_instances_accepting", 0,
          offsetof (casm_metrics_queue_t, accepting),
          "Stage instances registered with the queue and not draining." },
        { "casm_queue_dispatched_total", 1,
          offsetof (casm_metrics_queue_t, dispatched),
          "Units of work sent to an instance." },
        { "casm_queue_replies_total", 1,
          offsetof (casm_metrics_queue_t, replies),
          "Replies passed upstream." },
        { "casm_queue_rejected_total", 1,
          offsetof (casm_metrics_queue_t, rejected),
          "Units of work answered 503 at once: no instance, or the queue "
          "full." },
        { "casm_queue_expired_total", 1,
          offsetof (casm_metrics_queue_t, expired),
          "Units of work dropped from the queue past their deadline." },
        { "casm_queue_undeliverable_total", 1,
          offsetof (casm_metrics_queue_t, undeliverable),
          "Replies whose upstream was gone or full." },
        { "casm_queue_malformed_total", 1,
          offsetof (casm_metrics_queue_t, malformed),
          "Messages dropped as unreadable." },
    };
    for (size_t i = 0; i < sizeof fields / sizeof fields [0]; i++) {
        double value = *(const double *) ((const char *) sample
                                          + fields [i].offset);
        casm_series_t *series = fields [i].counter
            ? casm_metrics_counter (NULL, fields [i].name, fields [i].help,
                                    "queue", queue, NULL)
            : casm_metrics_gauge (NULL, fields [i].name, fields [i].help,
                                  "queue", queue, NULL);
        casm_series_set (series, value);
    }
}

void
casm_metrics_outbox (double backlog, double oldest_age_seconds)
{
    casm_series_set (casm_metrics_gauge (NULL, "casm_outbox_backlog",
        "Outbox rows not yet confirmed by Kafka (counted up to a "
        "million), as last measured.", NULL), backlog);
    casm_series_set (casm_metrics_gauge (NULL,
        "casm_outbox_oldest_age_seconds",
        "Age of the oldest outbox row not yet confirmed by Kafka (0 when "
        "none), as last measured.", NULL), oldest_age_seconds);
}

void
casm_metrics_kafka_delivery (int error)
{
    static casm_series_t *delivered = NULL, *errors = NULL;
    if (!delivered)
        delivered = casm_metrics_counter (NULL, "casm_kafka_delivered_total",
            "Events Kafka acknowledged.", NULL);
    if (!errors)
        errors = casm_metrics_counter (NULL,
            "casm_kafka_delivery_errors_total",
            "Events Kafka did not take (failed delivery reports and events "
            "the producer refused); they stay in the outbox.", NULL);
    casm_series_add (error ? errors : delivered, 1);
}

void
casm_metrics_dwh_batch (size_t messages, size_t events, size_t dead_letters,
                        double age_seconds)
{
    casm_metrics_batch ("dwh", messages);
    casm_metrics_dwh_lag (age_seconds);
    casm_series_add (casm_metrics_counter (NULL,
        "casm_dwh_events_ingested_total",
        "Business Transactions stored in the warehouse (duplicates "
        "included).", NULL), (double) events);
    casm_series_add (casm_metrics_counter (NULL,
        "casm_dwh_dead_letters_total",
        "Messages the warehouse stored as dead letters.", NULL),
        (double) dead_letters);
}

void
casm_metrics_dwh_lag (double seconds)
{
    casm_series_set (casm_metrics_gauge (NULL, "casm_dwh_lag_seconds",
        "How far the warehouse trails Kafka: the age of the oldest message "
        "waiting to be stored, or when none waits, the age the last stored "
        "batch's oldest message had when it was stored.", NULL), seconds);
}
