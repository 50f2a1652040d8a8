#!/usr/bin/env python3
"""Fault tests 4, 5 and 6 of DESIGN.md 6, each under a steady load of
concurrent clients, with /ready checked in each degraded state:

4. the Kafka-protocol broker down for 10 s, then back: every request still
   gets its 200 within the bound, /ready names kafka, every event reaches
   the topic afterwards, and (with casm-dwh built) the warehouse holds each
   transaction once;
5. PostgreSQL stopped for 10 s, then back: 503 with Retry-After meanwhile
   and /ready names postgres; service resumes by itself; nothing
   acknowledged is lost and retries give exactly one effect;
6. the ZeroMQ broker killed (-9) and restarted on the same ports: /ready
   says 503 meanwhile, service resumes within seconds and nobody else is
   restarted."""

import os
import signal
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from faults import FaultCase, Load, hold  # noqa: E402

REQUEST_TIMEOUT_MS = 3000
PUBLISH_TIMEOUT_MS = 1000
OUTAGE_S = 10.0
RESUME_TIMEOUT = 60.0
ENV = {"REQUEST_TIMEOUT_MS": str(REQUEST_TIMEOUT_MS),
       "PUBLISH_TIMEOUT_MS": str(PUBLISH_TIMEOUT_MS),
       "OUTBOX_SWEEP_AGE_MS": "2000"}


def dwh_built():
    build = os.environ.get("CASM_BUILD_DIR", "")
    return os.access(os.path.join(build, "dwh", "casm-dwh"), os.X_OK)


class OutageCase(FaultCase):

    dwhs = 0
    env = {}

    def setUp(self):
        env = dict(ENV, **self.env)
        harness.STACK = harness.Stack(validators=2, workers=2, publishers=2,
                                      dwhs=self.dwhs, env=env,
                                      name="outage").start()

    def tearDown(self):
        harness.stop_module_stack(dump=harness.DumpOnFailure.failed)
        harness.DumpOnFailure.failed = False

    def start_load(self):
        load = Load(self.stack, self.make_customers(),
                    timeout=REQUEST_TIMEOUT_MS / 1000.0 + 10).start()
        load.wait_ok_since(0, 100, 30, "the load under way")
        return load

    def wait_not_ready(self, names, timeout=20):
        """/ready answers 503 and its body names each of names down."""
        last = []

        def check():
            try:
                r = self.stack.http("GET", "/ready", timeout=10)
            except OSError as e:
                last[:] = [e]
                return False
            last[:] = [r.status, r.body]
            return r.status == 503 and isinstance(r.body, dict) and all(
                r.body.get(n) == "down" for n in names)

        try:
            self.stack.wait_for(check, timeout, interval=0.25,
                                what="/ready 503 naming %s" % names)
        except AssertionError:
            self.fail("/ready did not say %s down within %d s; last: %r"
                      % (names, timeout, last))
        self.assertIn("Retry-After", self.stack.http("GET", "/ready")
                      .headers)

    def assertFailuresAre(self, load, statuses):
        for a in load.failed():
            self.assertIn(a.status, statuses, "%s: %s %s %r" % (
                a.request_id, a.status, a.error, a.body))
            if a.status == 503:
                self.assertIn("Retry-After", a.headers)


class TestKafkaDown(OutageCase):

    dwhs = 1 if dwh_built() else 0
    # The producer gives up on an event after 2 s, well inside the
    # outage: the events of the outage then come back as failed
    # deliveries, stay in the outbox and reach Kafka only by the sweep,
    # instead of by librdkafka's own retries.
    env = {"KAFKA_MESSAGE_TIMEOUT_MS": "2000"}

    def test_4_kafka_down(self):
        s = self.stack
        load = self.start_load()
        try:
            down_at = time.monotonic()
            s.kafka_down(wait=True)
            self.wait_not_ready(["kafka"])
            hold(max(0, OUTAGE_S - (time.monotonic() - down_at)))
            up_at = time.monotonic()
            s.kafka_up(wait=True)
            load.wait_ok_since(up_at, 100, RESUME_TIMEOUT,
                               "200s after Kafka is back")
            s.wait_for(lambda: s.ready(), RESUME_TIMEOUT, interval=0.25,
                       what="/ready 200 after Kafka is back")
        finally:
            load.stop()
        self.assertEqual(s.all_alive(), [])

        # Kafka down delays the events, not the answers.
        answers = load.snapshot()
        during = [a for a in answers if down_at <= a.started < up_at]
        self.assertGreater(len(during), 0)
        self.assertEqual(load.failed(), [], "requests failed with Kafka "
                         "down: %s" % [(a.status, a.body)
                                       for a in load.failed()[:5]])
        slowest = max(a.elapsed for a in answers)
        self.assertLess(slowest, REQUEST_TIMEOUT_MS / 1000.0,
                        "an answer took %.1f s" % slowest)

        # Some deliveries failed for good, so the sweep had work to do.
        for p in s.instances("publisher"):
            try:
                s.wait_log(p, "event not delivered to kafka", 0)
                break
            except AssertionError:
                pass
        else:
            self.fail("no publisher saw a delivery fail: the outage did "
                      "not test the sweep")

        duplicates = self.assertExactlyOnce(load, kafka_timeout=90)
        extra = {"during_outage": len(during)}
        if self.dwhs:
            extra["dwh_rows"] = self.assertWarehouseOnce(load)
        self.report("Kafka down 10 s", load, duplicates, **extra)

    def assertWarehouseOnce(self, load):
        """Every transaction of the load is in the warehouse history once,
        and the daily metrics count each transaction once."""
        s = self.stack
        wanted = len(load.snapshot())
        like = "'%s-%%'" % load.prefix
        s.wait_for(lambda: int(s.sql(
            "SELECT count(*) FROM dwh.business_transactions "
            "WHERE request_id LIKE %s" % like)) >= wanted, 90,
            interval=0.5, what="every transaction in the warehouse")
        rows = s.sql("SELECT count(*), count(DISTINCT request_id), "
                     "count(DISTINCT (ref_id, version)) "
                     "FROM dwh.business_transactions "
                     "WHERE request_id LIKE %s" % like)
        self.assertEqual(rows, "%d|%d|%d" % (wanted, wanted, wanted))
        total = s.sql("SELECT (SELECT count(*) FROM "
                      "dwh.business_transactions), (SELECT sum(count) FROM "
                      "dwh.metrics_daily)")
        a, b = total.split("|")
        self.assertEqual(a, b, "metrics count a transaction twice")
        return wanted


class TestPostgresDown(OutageCase):

    def test_5_postgres_down(self):
        s = self.stack
        load = self.start_load()
        try:
            stopped_at = time.monotonic()
            s.postgres_stop()
            self.wait_not_ready(["postgres"])
            hold(max(0, OUTAGE_S - (time.monotonic() - stopped_at)))
            restart_at = time.monotonic()
            s.postgres_start()
            load.wait_ok_since(restart_at, 100, RESUME_TIMEOUT,
                               "200s after PostgreSQL is back")
            s.wait_for(lambda: s.ready(), RESUME_TIMEOUT, interval=0.25,
                       what="/ready 200 after PostgreSQL is back")
        finally:
            load.stop()
        self.assertEqual(s.all_alive(), [])

        answers = load.snapshot()
        during = [a for a in answers
                  if stopped_at + 2 <= a.started < restart_at]
        self.assertGreater(len(during), 0)
        self.assertEqual([a.status for a in during if a.status != 503], [],
                         "answers with PostgreSQL down")
        self.assertFailuresAre(load, (None, 503, 504))

        self.assertRetried(load)
        duplicates = self.assertExactlyOnce(load)
        self.report("PostgreSQL down 10 s", load, duplicates,
                    during_outage=len(during),
                    resumed_s=load.resumed_after(restart_at))


class TestBrokerRestart(OutageCase):

    def test_6_broker_killed(self):
        s = self.stack
        others = {p.name: p.popen.pid for p in s.processes
                  if p.kind != "broker"}
        load = self.start_load()
        try:
            killed_at = time.monotonic()
            broker = s.broker()
            broker.signal(signal.SIGKILL)
            self.assertIsNotNone(broker.wait(10))
            s.wait_for(lambda: s.http("GET", "/ready", timeout=10).status
                       == 503, 20, interval=0.25,
                       what="/ready 503 with the broker down")
            hold(max(0, 2 - (time.monotonic() - killed_at)))
            restart_at = time.monotonic()
            s.start_instance("broker")
            load.wait_ok_since(restart_at, 100, 20,
                               "200s after the broker restarted")
            s.wait_for(lambda: s.ready(), 20, interval=0.25,
                       what="/ready 200 after the broker restarted")
        finally:
            load.stop()

        # Nobody else was restarted.
        self.assertEqual(s.all_alive(), [broker.name])
        self.assertEqual({p.name: p.popen.pid for p in s.processes
                          if p.kind != "broker"}, others)

        self.assertFailuresAre(load, (None, 503, 504))
        self.assertRetried(load)
        duplicates = self.assertExactlyOnce(load)
        self.report("broker kill -9 and restart", load, duplicates,
                    resumed_s=load.resumed_after(restart_at))


if __name__ == "__main__":
    harness.main()
