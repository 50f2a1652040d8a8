#!/usr/bin/env python3
"""Fault test 3 of DESIGN.md 6: SIGTERM drains. Under a steady load of
concurrent clients on two gateways, one of two instances of each stage in
turn gets SIGTERM, an instance started by hand with the same environment
takes its place, then the other original instance gets SIGTERM too, so
that only the hand-started one is left: no request fails, and every
drained process exits 0. Last, the first gateway drains while the clients
move to the second. A second signal ends a drain at once, and so does
the end of SHUTDOWN_GRACE_MS."""

import os
import signal
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from faults import FaultCase, Load  # noqa: E402

REQUEST_TIMEOUT_MS = 3000
GRACE_MS = 5000
EXIT_TIMEOUT = GRACE_MS / 1000.0 + 10
QUEUES = {"validator": "Q1", "worker": "Q2", "publisher": "Q3"}


class DrainCase(FaultCase):

    stack_args = {}

    def setUp(self):
        harness.STACK = harness.Stack(name="drain", **self.stack_args) \
            .start()

    def tearDown(self):
        # Nothing stays frozen: a stopped process would not see SIGTERM.
        if harness.STACK is not None:
            for p in harness.STACK.processes:
                p.signal(signal.SIGCONT)
        harness.stop_module_stack(dump=harness.DumpOnFailure.failed)
        harness.DumpOnFailure.failed = False

    def hold_a_request(self):
        """One update that waits in a frozen publisher, committed and on
        its way there. Returns (customer reference, the publisher)."""
        s = self.stack
        ref = {"refId": s.create_customer().body["customer"]["refId"]}
        publisher = s.instances("publisher")[0]
        publisher.signal(signal.SIGSTOP)

        def stuck_request():
            try:
                s.update_attributes(ref, {"a": "1"})
            except OSError:
                pass        # its gateway is stopped under it

        threading.Thread(target=stuck_request, daemon=True).start()
        s.wait_for(lambda: "sent" in s.sql(
            "SELECT CASE WHEN count(*) > 0 THEN 'sent' END FROM casm.outbox "
            "WHERE customer_ref = '%s' AND version = 2" % ref["refId"]),
            10, what="the change committed")
        time.sleep(0.5)     # on its way to the frozen publisher
        return ref, publisher

    def undelivered_publisher(self, ref, frozen):
        """Replaces the frozen publisher (and the worker and validator,
        drained before) with new instances, takes Kafka down and sends an
        update through the second gateway: the new publisher answers it
        and holds its event. Returns that publisher."""
        s = self.stack
        frozen.signal(signal.SIGCONT)
        frozen.signal(signal.SIGKILL)
        frozen.wait(10)
        s.kafka_down(wait=True)
        s.start_instance("worker")
        s.start_instance("validator")
        publisher = s.start_instance("publisher")
        s.wait_for(lambda: s.http("GET", "/ready", gateway=1).body.get(
            "kafka") == "down", 20, interval=0.25,
            what="/ready through the new instances, naming kafka down")
        r = s.http(
            "PUT", "/v1/casm/customers/update-custom-attributes",
            {"requestId": s.request_id(), "customer": ref,
             "customAttributes": {"a": "2"}}, gateway=1)
        self.assertEqual(r.status, 200, r.body)
        return publisher

    def drain_each(self, stop):
        """stop (a method that signals one process and checks how it
        ends) for each process holding a request it cannot finish: the
        worker, the validator and the gateway of a request stuck in a
        frozen publisher, then a publisher whose event Kafka, down, cannot
        take."""
        ref, frozen = self.hold_a_request()
        for kind in ("worker", "validator", "gateway"):
            stop(self.stack.instances(kind)[0])
        stop(self.undelivered_publisher(ref, frozen))
        self.stack.kafka_up(wait=True)

    def terminate(self, proc):
        """SIGTERM, then waits for a clean exit."""
        proc.signal(signal.SIGTERM)
        status = proc.wait(EXIT_TIMEOUT)
        self.assertIsNotNone(status, "%s did not exit within %.0f s of "
                             "SIGTERM" % (proc.name, EXIT_TIMEOUT))
        self.assertEqual(status, 0, "%s exited %s" % (proc.name, status))


class TestDrain(DrainCase):

    stack_args = {"validators": 2, "workers": 2, "publishers": 2,
                  "gateways": 2,
                  "env": {"REQUEST_TIMEOUT_MS": str(REQUEST_TIMEOUT_MS),
                          "SHUTDOWN_GRACE_MS": str(GRACE_MS)}}

    def test_3_sigterm_each_stage(self):
        s = self.stack
        load = Load(s, self.make_customers(), gateways=(0, 1),
                    timeout=REQUEST_TIMEOUT_MS / 1000.0 + 10).start()
        drained = []
        try:
            load.wait_ok_since(0, 100, 30, "the load under way")
            for kind in ("validator", "worker", "publisher"):
                first, second = s.instances(kind)
                self.terminate(first)
                drained.append(first.name)
                since = time.monotonic()
                load.wait_ok_since(since, 100, 30,
                                   "200s after %s drained" % first.name)

                # An instance started by hand joins; once the second
                # original one has drained too, it serves alone.
                start = s.log_size(s.broker())
                s.start_instance(kind)
                s.wait_log(s.broker(), '"instance joined","queue":"%s"'
                           % QUEUES[kind], 10, start)
                self.terminate(second)
                drained.append(second.name)
                since = time.monotonic()
                load.wait_ok_since(since, 100, 30,
                                   "200s from the hand-started %s" % kind)

            # The clients move to the second gateway, as a load balancer
            # would, and the first drains what it still has.
            load.use_gateways([1])
            gateway = s.instances("gateway")[0]
            self.terminate(gateway)
            drained.append(gateway.name)
            since = time.monotonic()
            load.wait_ok_since(since, 100, 30, "200s after the gateway")
        finally:
            load.stop()

        self.assertEqual(sorted(s.all_alive()), sorted(drained))
        failed = load.failed()
        self.assertEqual(failed, [], "requests failed during the drains: %s"
                         % [(a.request_id, a.status, a.error, a.body)
                            for a in failed[:5]])
        duplicates = self.assertExactlyOnce(load)
        self.report("SIGTERM each stage", load, duplicates,
                    drained=drained)


class TestSecondSignal(DrainCase):
    """With a request that cannot finish (the publisher frozen), the
    gateway, the validator and the worker that hold it drain and wait; a
    second signal ends the wait at once. With Kafka down, the publisher
    waits for its deliveries; a second signal ends that too."""

    stack_args = {"gateways": 2,
                  "env": {"REQUEST_TIMEOUT_MS": "60000",
                          "PUBLISH_TIMEOUT_MS": "500",
                          "SHUTDOWN_GRACE_MS": "60000"}}

    def second_signal(self, proc):
        start = self.stack.log_size(proc)
        proc.signal(signal.SIGTERM)
        self.stack.wait_log(proc, "draining", 10, start)
        time.sleep(0.5)
        self.assertTrue(proc.alive(), "%s did not wait for its work"
                        % proc.name)
        proc.signal(signal.SIGTERM)
        status = proc.wait(5)
        self.assertIsNotNone(status, "%s still runs 5 s after a second "
                             "SIGTERM" % proc.name)

    def test_second_signal(self):
        self.drain_each(self.second_signal)


class TestGraceExpires(DrainCase):
    """A drain waits for work it cannot finish no longer than
    SHUTDOWN_GRACE_MS: the same stuck request as above, one SIGTERM, and
    each process that holds it exits soon after its grace."""

    GRACE_S = 2.0
    SLACK_S = 6.0

    stack_args = {"gateways": 2,
                  "env": {"REQUEST_TIMEOUT_MS": "60000",
                          "PUBLISH_TIMEOUT_MS": "500",
                          "SHUTDOWN_GRACE_MS": str(int(GRACE_S * 1000))}}

    def drain_expires(self, proc):
        start = self.stack.log_size(proc)
        signalled = time.monotonic()
        proc.signal(signal.SIGTERM)
        self.stack.wait_log(proc, "draining", 10, start)
        time.sleep(0.5)
        self.assertTrue(proc.alive(), "%s did not wait for its work"
                        % proc.name)
        status = proc.wait(self.GRACE_S + self.SLACK_S)
        elapsed = time.monotonic() - signalled
        self.assertIsNotNone(status, "%s still runs %.1f s after SIGTERM "
                             "with a grace of %.1f s"
                             % (proc.name, elapsed, self.GRACE_S))

    def test_grace_expires(self):
        self.drain_each(self.drain_expires)


if __name__ == "__main__":
    harness.main()
