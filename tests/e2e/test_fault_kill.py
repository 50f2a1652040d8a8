#!/usr/bin/env python3
"""Fault tests 1 and 2 of DESIGN.md 6: kill -9 one of two instances of a
stage (worker, validator, publisher) under a steady load of concurrent
clients, at a moment when it holds work (it is frozen with SIGSTOP until
requests wait on it, then killed). The other instance goes on serving;
the only visible effect is 503/504 (or no answer) for the requests the
dead one held; every request that got 200 has its change and its event;
and retrying each failed one with the same requestId gives exactly one
effect."""

import os
import signal
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from faults import FaultCase, Load, THREADS, hold  # noqa: E402

REQUEST_TIMEOUT_MS = 3000
ENV = {"REQUEST_TIMEOUT_MS": str(REQUEST_TIMEOUT_MS),
       "PUBLISH_TIMEOUT_MS": "1000",
       "OUTBOX_SWEEP_AGE_MS": "2000"}


class TestKill(FaultCase):

    def setUp(self):
        harness.STACK = harness.Stack(validators=2, workers=2, publishers=2,
                                      env=ENV, name="kill").start()

    def tearDown(self):
        harness.stop_module_stack(dump=harness.DumpOnFailure.failed)
        harness.DumpOnFailure.failed = False

    def kill_one(self, kind):
        s = self.stack
        load = Load(s, self.make_customers(),
                    timeout=REQUEST_TIMEOUT_MS / 1000.0 + 10).start()
        try:
            load.wait_ok_since(0, 100, 30, "the load under way")
            # Killed while it holds work: frozen first, until requests
            # wait on it, so that the kill always loses some.
            victim = s.instances(kind)[0]
            victim.signal(signal.SIGSTOP)
            s.wait_for(lambda: load.stuck(0.5) > 0, 10, interval=0.05,
                       what="requests held by the frozen %s" % victim.name)
            killed_at = time.monotonic()
            victim.signal(signal.SIGKILL)
            self.assertIsNotNone(victim.wait(10), "%s survived SIGKILL"
                                 % victim.name)

            # The other instance serves on by itself.
            load.wait_ok_since(killed_at, 200, 30,
                               "200s after %s was killed" % victim.name)
            hold(REQUEST_TIMEOUT_MS / 1000.0)
        finally:
            load.stop()
        self.assertEqual(s.all_alive(), [victim.name])

        failed = load.failed()
        self.assertGreater(len(failed), 0, "the kill lost nothing")
        for a in failed:
            self.assertIn(a.status, (None, 503, 504),
                          "%s: %s %r" % (a.request_id, a.status, a.body))
            if a.status == 503:
                self.assertIn("Retry-After", a.headers)
        # Each client loses at most the one request the dead instance held
        # for it: the broker forgets a killed instance at once.
        self.assertLessEqual(len(failed), THREADS,
                             [(a.request_id, a.status) for a in failed])

        self.assertRetried(load)
        duplicates = self.assertExactlyOnce(load)
        self.report("kill -9 %s" % kind, load, duplicates)

    def test_1_kill_worker(self):
        self.kill_one("worker")

    def test_2a_kill_validator(self):
        self.kill_one("validator")

    def test_2b_kill_publisher(self):
        self.kill_one("publisher")


if __name__ == "__main__":
    harness.main()
