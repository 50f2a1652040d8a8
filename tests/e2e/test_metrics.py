#!/usr/bin/env python3
"""Operations, issue 6: /metrics on every process, /health and /ready with
each dependency's state, JSON logs that one grep follows through the
pipeline.

One stack, every process but the gateway with a METRICS_PORT of its own
(the gateway serves /metrics on its API port), LOG_LEVEL=debug so that each
stage logs each unit. The tests send traffic, scrape each process, parse
the text strictly (Prometheus text format 0.0.4) and check that the
metrics of README "Metrics" are there with non-zero values where traffic
passed."""

import json
import os
import re
import sys
import time
import unittest
import uuid

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from common import Case, UPDATE  # noqa: E402

PUBLISH_TIMEOUT_MS = 300
PROCESSES = ("gateway-1", "broker", "validator-1", "worker-1",
             "publisher-1", "dwh-1")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
SAMPLE = re.compile(r"^(%s)(?:\{(.*)\})? (\S+)$" % NAME)
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


def setUpModule():
    harness.start_module_stack(name="metrics", metrics=True, dwhs=1, env={
        "LOG_LEVEL": "debug",
        "PUBLISH_TIMEOUT_MS": str(PUBLISH_TIMEOUT_MS),
    })


def tearDownModule():
    harness.stop_module_stack(dump=harness.DumpOnFailure.failed)


def parse(text):
    """Parses the text format strictly. Returns (types, samples): family
    name -> type, and (sample name, ((label, value), ...)) -> float.
    Raises ValueError on any line that is not HELP, TYPE or a sample of a
    declared family, and on a histogram whose buckets do not add up."""
    types, samples = {}, {}
    for number, line in enumerate(text.split("\n"), 1):
        if line == "" and number == len(text.split("\n")):
            break
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            parts = line.split(" ", 3)
            if len(parts) < 4 or not re.fullmatch(NAME, parts[2]):
                raise ValueError("line %d: %r" % (number, line))
            if parts[1] == "TYPE":
                if parts[3] not in ("counter", "gauge", "histogram"):
                    raise ValueError("line %d: type %r" % (number, line))
                types[parts[2]] = parts[3]
            continue
        m = SAMPLE.match(line)
        if not m:
            raise ValueError("line %d: %r" % (number, line))
        name, labels_text, value = m.groups()
        labels = ()
        if labels_text:
            found = LABEL.findall(labels_text)
            rebuilt = ",".join('%s="%s"' % pair for pair in found)
            if rebuilt != labels_text:
                raise ValueError("line %d: labels %r" % (number, line))
            labels = tuple(found)
        family = re.sub(r"_(bucket|sum|count)$", "", name) \
            if name not in types else name
        if family not in types:
            raise ValueError("line %d: no TYPE for %s" % (number, name))
        samples[(name, labels)] = float(value)
    for (name, labels), value in samples.items():
        if types.get(name[:-len("_count")]) == "histogram" \
                and name.endswith("_count"):
            base = name[:-len("_count")]
            buckets = sorted(
                (float(dict(l)["le"]), v) for (n, l), v in samples.items()
                if n == base + "_bucket"
                and tuple(p for p in l if p[0] != "le") == labels)
            counts = [v for _, v in buckets]
            if not buckets or buckets[-1][0] != float("inf") \
                    or counts != sorted(counts) or counts[-1] != value:
                raise ValueError("histogram %s%r: buckets %r, count %r"
                                 % (base, labels, buckets, value))
    return types, samples


class MetricsCase(Case):

    @classmethod
    def setUpClass(cls):
        """Traffic that passes every stage, and some that ends early."""
        s = harness.STACK
        created = s.create_customer(custom_attributes={"tier": "silver"})
        cls.ref_id = created.body["customer"]["refId"]
        for value in ("gold", "platinum"):
            r = s.update_attributes({"refId": cls.ref_id}, {"tier": value})
            assert r.status == 200, r
        assert s.read_customer(ref_id=cls.ref_id).status == 200
        assert s.read_customer(external_id="CRM-nobody").status == 404
        assert s.update_attributes({"refId": cls.ref_id},
                                   {"": "empty key"}).status == 400

    def scrape(self, instance):
        r = self.stack.scrape(instance)
        self.assertEqual(r.status, 200, "%s: %r" % (instance, r.raw[:200]))
        self.assertEqual(r.headers.get("Content-Type"), CONTENT_TYPE)
        try:
            return parse(r.raw.decode("utf-8"))
        except ValueError as e:
            self.fail("%s: /metrics does not parse: %s" % (instance, e))

    def value(self, samples, name, **labels):
        """The sample's value; fails when it is absent."""
        key = (name, tuple(sorted(labels.items())))
        for (n, l), v in samples.items():
            if n == name and tuple(sorted(l)) == key[1]:
                return v
        self.fail("no sample %s%r among %d" % (name, labels, len(samples)))

    def eventually(self, instance, name, predicate=lambda v: v > 0,
                   timeout=20, **labels):
        """Scrapes until the sample exists and satisfies predicate (the
        outbox backlog and the warehouse are measured asynchronously)."""
        last = [None]

        def check():
            _, samples = self.scrape(instance)
            key = tuple(sorted(labels.items()))
            for (n, l), v in samples.items():
                if n == name and tuple(sorted(l)) == key:
                    last[0] = v
                    return predicate(v)
            return False
        try:
            self.stack.wait_for(check, timeout, interval=0.25,
                                what="%s %s%r" % (instance, name, labels))
        except AssertionError:
            self.fail("%s: %s%r is %r" % (instance, name, labels, last[0]))
        return last[0]

    # ---- /metrics ------------------------------------------------------

    def test_every_process_serves_parseable_metrics(self):
        for instance in PROCESSES:
            types, samples = self.scrape(instance)
            self.assertEqual(types.get("process_start_time_seconds"),
                             "gauge", instance)
            self.assertGreater(self.value(samples,
                                          "process_start_time_seconds"),
                               1.5e9)

    def test_gateway(self):
        types, samples = self.scrape("gateway-1")
        self.assertEqual(types["casm_http_requests_total"], "counter")
        self.assertEqual(types["casm_http_request_duration_seconds"],
                         "histogram")
        v = self.value
        self.assertGreaterEqual(v(samples, "casm_http_requests_total",
                                  operation="createCustomer", status="201"),
                                1)
        self.assertGreaterEqual(v(samples, "casm_http_requests_total",
                                  operation="updateCustomerCustomAttributes",
                                  status="200"), 2)
        self.assertGreaterEqual(v(samples, "casm_http_requests_total",
                                  operation="updateCustomerCustomAttributes",
                                  status="400"), 1)
        self.assertGreaterEqual(v(samples, "casm_http_requests_total",
                                  operation="readCustomer", status="404"), 1)
        self.assertGreaterEqual(v(samples, "casm_http_requests_total",
                                  operation="ready", status="200"), 1)
        count = v(samples, "casm_http_request_duration_seconds_count",
                  operation="updateCustomerCustomAttributes")
        self.assertGreaterEqual(count, 3)
        self.assertGreater(v(samples, "casm_http_request_duration_seconds_sum",
                             operation="updateCustomerCustomAttributes"), 0)
        self.assertGreater(v(samples, "casm_http_requests_in_flight_max"), 0)
        # Idle: every slot given back (a scrape holds none).
        self.eventually("gateway-1", "casm_http_requests_in_flight",
                        predicate=lambda v: v == 0)

    def test_broker(self):
        _, samples = self.scrape("broker")
        for queue in ("Q1", "Q2", "Q3"):
            self.assertGreater(self.value(samples,
                                          "casm_queue_dispatched_total",
                                          queue=queue), 0, queue)
            self.assertGreater(self.value(samples, "casm_queue_replies_total",
                                          queue=queue), 0, queue)
            self.assertEqual(self.value(samples, "casm_queue_instances",
                                        queue=queue), 1, queue)
            self.assertEqual(self.value(samples, "casm_queue_waiting",
                                        queue=queue), 0, queue)
            self.assertGreater(self.value(samples, "casm_queue_credit",
                                          queue=queue), 0, queue)
            for name in ("casm_queue_rejected_total",
                         "casm_queue_expired_total"):
                self.value(samples, name, queue=queue)

    def test_stages(self):
        expected = {
            "validator-1": ("validator", ("forwarded", "ok",
                                          "client_error")),
            "worker-1": ("worker", ("forwarded",)),
            "publisher-1": ("publisher", ("ok",)),
        }
        for instance, (stage, outcomes) in expected.items():
            _, samples = self.scrape(instance)
            for outcome in outcomes:
                self.assertGreater(self.value(samples,
                                              "casm_stage_units_total",
                                              stage=stage, outcome=outcome),
                                   0, "%s %s" % (stage, outcome))
            self.assertGreater(self.value(
                samples, "casm_stage_duration_seconds_count", stage=stage),
                0, stage)
            # Present, though not necessarily 0: /ready answered 503
            # while the schema was being made at start.
            self.value(samples, "casm_stage_units_total", stage=stage,
                       outcome="server_error")

    def test_worker_batches(self):
        _, samples = self.scrape("worker-1")
        self.assertGreaterEqual(self.value(samples, "casm_batch_size_count",
                                           stage="worker"), 3)
        self.assertGreaterEqual(self.value(samples, "casm_batch_size_sum",
                                           stage="worker"), 3)

    def test_validator_batches(self):
        _, samples = self.scrape("validator-1")
        self.assertGreaterEqual(self.value(samples, "casm_batch_size_count",
                                           stage="validator"), 3)
        self.assertGreaterEqual(self.value(samples, "casm_batch_size_sum",
                                           stage="validator"), 3)

    def test_publisher(self):
        _, samples = self.scrape("publisher-1")
        self.assertGreaterEqual(self.value(samples,
                                           "casm_kafka_delivered_total"), 3)
        self.assertGreaterEqual(self.value(
            samples, "casm_kafka_delivery_errors_total"), 0)
        # Measured every few seconds once PostgreSQL is connected.
        self.eventually("publisher-1", "casm_outbox_backlog",
                        predicate=lambda v: v == 0)
        self.eventually("publisher-1", "casm_outbox_oldest_age_seconds",
                        predicate=lambda v: v == 0)

    def test_dwh(self):
        self.eventually("dwh-1", "casm_dwh_events_ingested_total",
                        predicate=lambda v: v >= 3)
        _, samples = self.scrape("dwh-1")
        self.assertGreater(self.value(samples, "casm_batch_size_count",
                                      stage="dwh"), 0)
        self.assertGreater(self.value(samples, "casm_dwh_lag_seconds"), 0)
        self.assertEqual(self.value(samples, "casm_dwh_dead_letters_total"),
                         0)

    def test_outbox_backlog_while_kafka_is_down(self):
        s = self.stack
        s.kafka_down(wait=True)
        try:
            for i in range(3):
                r = s.update_attributes({"refId": self.ref_id},
                                        {"outage": str(i)})
                self.assertEqual(r.status, 200)
            self.eventually("publisher-1", "casm_outbox_backlog",
                            predicate=lambda v: v >= 3)
            self.eventually("publisher-1", "casm_outbox_oldest_age_seconds")
        finally:
            s.kafka_up(wait=True)
        self.eventually("publisher-1", "casm_outbox_backlog",
                        predicate=lambda v: v == 0, timeout=40)

    # ---- the metrics port's other answers ------------------------------

    def test_metrics_port_health_and_refusals(self):
        for instance in PROCESSES[1:]:
            r = self.stack.scrape(instance, path="/health")
            self.assertEqual((r.status, json.loads(r.raw)),
                             (200, {"status": "up"}), instance)
        r = self.stack.scrape("broker", path="/v1/casm/customers/create")
        self.assertEqual(r.status, 404)

    # ---- request ids and logs ------------------------------------------

    def test_x_request_id_returned(self):
        s = self.stack
        r = s.http("GET", "/health", headers={"X-Request-Id": "probe-42"})
        self.assertEqual(r.headers.get("X-Request-Id"), "probe-42")
        r = s.http("GET", "/nowhere", headers={"X-Request-Id": "lost-1"})
        self.assertEqual((r.status, r.headers.get("X-Request-Id")),
                         (404, "lost-1"))
        r = s.http("GET", "/metrics", headers={"X-Request-Id": "scrape-1"})
        self.assertEqual(r.headers.get("X-Request-Id"), "scrape-1")

        # Unusable ids (a space, too long) are replaced by a fresh one.
        for bad in ("has space", "x" * 65):
            r = s.http("GET", "/health", headers={"X-Request-Id": bad})
            self.assertRegex(r.headers.get("X-Request-Id", ""),
                             r"^[0-9a-f]{32}$")

    def test_one_grep_follows_a_request(self):
        s = self.stack
        trace = "trace-" + uuid.uuid4().hex
        request_id = s.request_id()
        r = s.http("PUT", UPDATE, {
            "requestId": request_id, "customer": {"refId": self.ref_id},
            "customAttributes": {"followed": "yes"}},
            headers={"X-Request-Id": trace})
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers.get("X-Request-Id"), trace)

        def lines(instance):
            proc = [p for p in s.processes if p.name == instance][0]
            found = []
            with open(proc.log_path, encoding="utf-8",
                      errors="replace") as f:
                for line in f:
                    if trace not in line and request_id not in line:
                        continue
                    event = json.loads(line)
                    for key in ("time", "level", "process", "instance",
                                "message"):
                        self.assertIn(key, event, line)
                    found.append(event)
            return found

        for instance in ("gateway-1", "validator-1", "worker-1",
                         "publisher-1"):
            found = s.wait_for(lambda: lines(instance), 10,
                               what="%s logs about the request" % instance)
            both = [e for e in found if e.get("requestId") == request_id
                    and e.get("traceId") == trace]
            self.assertTrue(both, "%s: no line with both ids in %r"
                            % (instance, found))
            self.assertEqual(both[0]["instance"], instance)

    # ---- readiness -----------------------------------------------------

    def test_ready_names_every_dependency(self):
        r = self.stack.http("GET", "/ready")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.body, {
            "status": "ready", "gateway": "up", "broker": "up",
            "validator": "up", "postgres": "up", "worker": "up",
            "publisher": "up", "kafka": "up"})

    def test_zz_ready_names_the_missing_stage(self):
        # Last: the stack has no worker afterwards.
        s = self.stack
        s.kill_stage("worker-1")
        s.wait_for(lambda: s.http("GET", "/ready").status == 503, 20,
                   interval=0.25, what="/ready 503 without a worker")
        r = s.wait_for(lambda: (lambda r: r if r.body.get("worker") == "down"
                                else None)(s.http("GET", "/ready")),
                       20, interval=0.25, what="worker named down")
        self.assertEqual(r.status, 503)
        self.assertEqual(r.body["status"], "not-ready")
        self.assertEqual(r.body["validator"], "up")
        self.assertEqual(r.body["broker"], "up")
        _, samples = self.scrape("broker")
        self.assertGreater(self.value(samples, "casm_queue_rejected_total",
                                      queue="Q2"), 0)
        self.assertEqual(self.value(samples, "casm_queue_instances",
                                    queue="Q2"), 0)


if __name__ == "__main__":
    unittest.main(verbosity=2)
