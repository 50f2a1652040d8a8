/*  casm_metrics: counters, gauges and histograms, rendered in Prometheus's
    text exposition format 0.0.4.

    A registry holds metric families (a name, a help text, a type, label
    names, and for a histogram its bucket bounds) and their series (one per
    set of label values). A series is found or made once, by name and label
    values, and kept by the caller: observing it is an addition or two on
    memory allocated when the series was made, never an allocation. Label
    sets are small and fixed by the code (an operation, a status, a stage),
    never taken from a request, so every family has a bounded number of
    series; past CASM_METRICS_SERIES_MAX a family makes no more (NULL, and
    every function below takes NULL as "do nothing").

    The registry is for one thread: each casm process observes and renders
    on its loop's thread. Most callers use the process registry (pass NULL
    as the registry), which /metrics renders; tests make their own.

    The second half of this header is casm's catalogue: one function per
    thing a process reports, so that every metric name and help text lives
    in casm_metrics.c, and a hook in a process is one line.                 */

#ifndef CASM_METRICS_H
#define CASM_METRICS_H

#include <stddef.h>
#include <stdint.h>

//  Label names per family, buckets per histogram, series per family.
#define CASM_METRICS_LABELS_MAX 3
#define CASM_METRICS_BOUNDS_MAX 32
#define CASM_METRICS_SERIES_MAX 512

//  The content type of casm_metrics_render's text.
#define CASM_METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

typedef struct casm_metrics_t casm_metrics_t;
typedef struct casm_series_t casm_series_t;

//  An empty registry, or NULL when memory runs out.
casm_metrics_t *casm_metrics_new (void);

//  Frees the registry and every series in it, NULLs the pointer. Series
//  pointers taken from it are dead from then on. The process registry is
//  never freed: for it, only the pointer is NULLed.
void casm_metrics_destroy (casm_metrics_t **self_p);

//  The process's registry, made on first use and kept until exit. It
//  holds process_start_time_seconds from the start.
casm_metrics_t *casm_metrics_process (void);

//  Finds or makes the series of a family with these label values. name and
//  help are the family's; the variable arguments are label name and value
//  pairs, ending in NULL (at most CASM_METRICS_LABELS_MAX pairs). A family
//  is made on the first call with its name; later calls must give the same
//  type and label names. self NULL means the process registry. Returns
//  NULL, after logging why once, when a name is not a valid Prometheus
//  name, the family exists with another type or other labels, the family
//  is full, or memory runs out. Not for a hot path: keep the series.
casm_series_t *casm_metrics_counter (casm_metrics_t *self, const char *name,
                                     const char *help, ...)
    __attribute__ ((sentinel));
casm_series_t *casm_metrics_gauge (casm_metrics_t *self, const char *name,
                                   const char *help, ...)
    __attribute__ ((sentinel));

//  The same for a histogram with these bucket upper bounds (strictly
//  increasing, finite, at most CASM_METRICS_BOUNDS_MAX; the +Inf bucket is
//  implied). Later calls may pass NULL bounds: the family's are used.
casm_series_t *casm_metrics_histogram (casm_metrics_t *self,
                                       const char *name, const char *help,
                                       const double *bounds, size_t count,
                                       ...)
    __attribute__ ((sentinel));

//  Adds amount to a counter (amount must not be negative; a negative one
//  is ignored) or to a gauge (any sign).
void casm_series_add (casm_series_t *self, double amount);

//  Sets a gauge; or a counter that mirrors a count kept elsewhere, which
//  must never go down.
void casm_series_set (casm_series_t *self, double value);

//  Counts one observation of value in a histogram.
void casm_series_observe (casm_series_t *self, double value);

//  A counter's or gauge's value, or a histogram's observation count; 0
//  for NULL.
double casm_series_value (casm_series_t *self);

//  Called by casm_metrics_render before it renders, to set the gauges
//  that are read rather than counted (a queue's depth).
typedef void (casm_metrics_collect_fn) (void *arg);

//  Adds a collector (at most 8). Returns 0, or -1 when there is no room.
int casm_metrics_on_collect (casm_metrics_t *self,
                             casm_metrics_collect_fn *collect, void *arg);

//  Removes a collector added with these arguments, if any.
void casm_metrics_off_collect (casm_metrics_t *self,
                               casm_metrics_collect_fn *collect, void *arg);

//  Runs the collectors and renders every family, in the order they were
//  made, as Prometheus text format 0.0.4. Returns text the caller frees
//  with free(), and its length in *size; NULL when memory runs out.
char *casm_metrics_render (casm_metrics_t *self, size_t *size);

//  A monotonic clock in microseconds, for durations.
int64_t casm_metrics_now_us (void);


//  ---------------------------------------------------------------------
//  casm's catalogue. Each function records into the process registry.

//  Bucket bounds in seconds for request and stage latencies: 0.5 ms to
//  10 s.
extern const double casm_metrics_seconds_bounds [];
extern const size_t casm_metrics_seconds_count;

//  The gateway answered a request: casm_http_requests_total{operation,
//  status} and casm_http_request_duration_seconds{operation}. operation
//  is an API operation's name, or health, ready, metrics, other, unknown.
void casm_metrics_request (const char *operation, unsigned status,
                           double seconds);

//  The gateway's requests held in the pipeline now, and its cap:
//  casm_http_requests_in_flight, casm_http_requests_in_flight_max.
void casm_metrics_inflight (double inflight, double capacity);

//  A stage instance finished a unit of work received from its queue:
//  casm_stage_units_total{stage,outcome} and
//  casm_stage_duration_seconds{stage} (from its arrival to its answer or
//  forward). outcome is forwarded, ok, client_error, server_error or
//  dropped (destroyed unanswered: past its deadline, or at exit).
void casm_metrics_unit (const char *stage, const char *outcome,
                        double seconds);

//  units of work were run together (one transaction, one warehouse
//  batch): casm_batch_size{stage}.
void casm_metrics_batch (const char *stage, size_t units);

//  A queue of the broker, as its counters stand now.
typedef struct {
    double waiting;             // work in the FIFO
    double credit;              // free slots announced by its instances
    double instances;           // instances registered
    double accepting;           // of those, not draining
    double dispatched;          // totals since start
    double replies;
    double rejected;
    double expired;
    double undeliverable;
    double malformed;
} casm_metrics_queue_t;

//  casm_queue_waiting{queue}, casm_queue_credit{queue},
//  casm_queue_instances{queue}, casm_queue_instances_accepting{queue}
//  and casm_queue_{dispatched,replies,rejected,expired,undeliverable,
//  malformed}_total{queue}.
void casm_metrics_queue (const char *queue,
                         const casm_metrics_queue_t *sample);

//  The outbox: unsent rows and the age of the oldest, as last measured:
//  casm_outbox_backlog, casm_outbox_oldest_age_seconds.
void casm_metrics_outbox (double backlog, double oldest_age_seconds);

//  Kafka answered for one event: casm_kafka_delivered_total, or
//  casm_kafka_delivery_errors_total when error is true (a failed delivery
//  report, or an event librdkafka would not take).
void casm_metrics_kafka_delivery (int error);

//  The warehouse stored a batch of messages, of which events were valid
//  Business Transactions and dead_letters not, the oldest produced
//  age_seconds ago: casm_batch_size{stage="dwh"},
//  casm_dwh_events_ingested_total, casm_dwh_dead_letters_total and
//  casm_dwh_lag_seconds.
void casm_metrics_dwh_batch (size_t messages, size_t events,
                             size_t dead_letters, double age_seconds);

//  How far the warehouse trails Kafka now, when messages wait to be
//  stored: casm_dwh_lag_seconds.
void casm_metrics_dwh_lag (double seconds);

#endif
