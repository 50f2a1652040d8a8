#!/usr/bin/env python3
"""Idempotency, DESIGN.md 2.4 and 6: a replay gives the recorded answer
byte for byte and changes nothing; a reused requestId with another request
is refused; failures are not recorded; concurrent copies execute once; and
concurrent distinct updates of one customer serialise, one version each."""

import json
import os
import sys
import threading
import unittest
import uuid

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from common import Case, CREATE, STATE, UPDATE  # noqa: E402


def setUpModule():
    harness.start_module_stack(name="idem")


def tearDownModule():
    harness.stop_module_stack(dump=harness.DumpOnFailure.failed)


def replayed(r):
    return (r.headers.get("Idempotent-Replayed") or "").lower() == "true"


class TestReplay(Case):

    def setUp(self):
        self.customer = self.stack.create_customer(
            custom_attributes={"a": "1"}).body["customer"]
        self.ref = {"refId": self.customer["refId"]}

    def outbox(self):
        return self.count("SELECT count(*) FROM casm.outbox "
                          "WHERE customer_ref = '%s'" % self.customer["refId"])

    def test_replay_same_bytes(self):
        rid = self.stack.request_id()
        body = {"requestId": rid, "customer": self.ref,
                "customAttributes": {"x": "1"}}
        first = self.stack.http("PUT", UPDATE, body)
        self.assertBT(first, 200, "updateCustomerCustomAttributes", rid)
        self.assertFalse(replayed(first), first.headers.items())
        version, attributes, _ = self.row(self.customer["refId"])
        self.assertEqual((version, attributes), (2, {"x": "1"}))
        events = self.outbox()

        for _ in range(3):
            again = self.stack.http("PUT", UPDATE, body)
            self.assertEqual(again.status, 200)
            self.assertTrue(replayed(again), again.headers.items())
            self.assertEqual(again.raw, first.raw)
            self.assertEqual(self.row(self.customer["refId"])[:2],
                             (2, {"x": "1"}))
            self.assertEqual(self.outbox(), events)

    def test_replay_after_customer_changed(self):
        rid = self.stack.request_id()
        body = {"requestId": rid, "customer": self.ref,
                "customAttributes": {"x": "1"}}
        first = self.stack.http("PUT", UPDATE, body)
        self.assertEqual(first.status, 200, first.body)

        r = self.stack.update_attributes(self.ref, {"y": "2"})
        self.assertEqual(r.status, 200, r.body)
        r = self.stack.update_state(self.ref, "SUSPENDED")
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(self.row(self.customer["refId"]),
                         (4, {"y": "2"}, "SUSPENDED"))

        again = self.stack.http("PUT", UPDATE, body)
        self.assertEqual(again.status, 200)
        self.assertTrue(replayed(again))
        self.assertEqual(again.raw, first.raw)
        self.assertEqual(again.body["customer"]["version"], 2)
        self.assertEqual(self.row(self.customer["refId"]),
                         (4, {"y": "2"}, "SUSPENDED"))

    def test_replay_after_deactivation(self):
        rid = self.stack.request_id()
        body = {"requestId": rid, "customer": self.ref,
                "customAttributes": {"x": "1"}}
        first = self.stack.http("PUT", UPDATE, body)
        self.assertEqual(first.status, 200, first.body)
        r = self.stack.update_state(self.ref, "DEACTIVATED")
        self.assertEqual(r.status, 200, r.body)
        again = self.stack.http("PUT", UPDATE, body)
        self.assertEqual((again.status, again.raw), (200, first.raw))
        self.assertTrue(replayed(again))

    def test_replay_ignores_key_order_and_spacing(self):
        rid = self.stack.request_id()
        text = json.dumps({"requestId": rid, "customer": self.ref,
                           "customAttributes": {"p": "1", "q": "2"},
                           "merge": True})
        first = self.stack.http("PUT", UPDATE, text)
        self.assertEqual(first.status, 200, first.body)
        reordered = ('{ "merge" : true , "customAttributes" : {"q":"2",'
                     '"p":"1"}, "customer":{"refId":"%s"}, '
                     '"requestId":"%s" }' % (self.ref["refId"], rid))
        again = self.stack.http("PUT", UPDATE, reordered)
        self.assertEqual((again.status, again.raw), (200, first.raw))
        self.assertTrue(replayed(again))

    def test_replay_of_create_and_state(self):
        body = self.stack.create_body(custom_attributes={"c": "d"})
        first = self.stack.http("POST", CREATE, body)
        self.assertEqual(first.status, 201, first.body)
        again = self.stack.http("POST", CREATE, body)
        self.assertEqual((again.status, again.raw), (201, first.raw))
        self.assertTrue(replayed(again))
        ext = body["externalId"]
        self.assertEqual(self.count(
            "SELECT count(*) FROM casm.customers WHERE external_id = '%s'"
            % ext), 1)

        rid = self.stack.request_id()
        state = {"requestId": rid, "customer": self.ref,
                 "state": {"state": "INACTIVE", "stateReason": "r"}}
        first = self.stack.http("PUT", STATE, state)
        self.assertEqual(first.status, 200, first.body)
        again = self.stack.http("PUT", STATE, state)
        self.assertEqual((again.status, again.raw), (200, first.raw))
        self.assertTrue(replayed(again))
        self.assertEqual(self.row(self.customer["refId"])[0], 2)

    def test_reused_with_other_request(self):
        rid = self.stack.request_id()
        body = {"requestId": rid, "customer": self.ref,
                "customAttributes": {"x": "1"}}
        first = self.stack.http("PUT", UPDATE, body)
        self.assertEqual(first.status, 200, first.body)
        events = self.outbox()

        others = [
            ("PUT", UPDATE, dict(body, customAttributes={"x": "2"})),
            ("PUT", UPDATE, dict(body, merge=True)),
            ("PUT", UPDATE, dict(body, customer={
                "externalId": self.customer["externalId"]})),
            ("PUT", STATE, {"requestId": rid, "customer": self.ref,
                            "state": {"state": "SUSPENDED"}}),
            ("POST", CREATE, self.stack.create_body(request_id=rid)),
        ]
        for method, path, other in others:
            r = self.stack.http(method, path, other)
            self.assertError(r, 422, "CASM-REQUEST-ID-REUSED")
            self.assertFalse(replayed(r))
        self.assertEqual(self.row(self.customer["refId"])[:2],
                         (2, {"x": "1"}))
        self.assertEqual(self.outbox(), events)

        # The original is still replayed as it was.
        again = self.stack.http("PUT", UPDATE, body)
        self.assertEqual((again.status, again.raw), (200, first.raw))

    def test_failures_not_recorded(self):
        # A validation failure, then the corrected request.
        rid = self.stack.request_id()
        bad = {"requestId": rid, "customer": self.ref,
               "customAttributes": {"x": None}}
        r = self.stack.http("PUT", UPDATE, bad)
        self.assertError(r, 400, "CASM-VALIDATION")
        self.assertEqual(self.count(
            "SELECT count(*) FROM casm.requests WHERE request_id = '%s'"
            % rid), 0)
        good = dict(bad, customAttributes={"x": "fixed"})
        r = self.stack.http("PUT", UPDATE, good)
        self.assertBT(r, 200, "updateCustomerCustomAttributes", rid)
        self.assertFalse(replayed(r))

        # An unknown customer, then an existing one.
        rid = self.stack.request_id()
        body = {"requestId": rid, "customer": {"refId": str(uuid.uuid4())},
                "customAttributes": {"y": "1"}}
        r = self.stack.http("PUT", UPDATE, body)
        self.assertError(r, 400, "CASM-ENTITY-NOT-FOUND")
        r = self.stack.http("PUT", UPDATE, dict(body, customer=self.ref))
        self.assertEqual(r.status, 200, r.body)

        # A duplicate externalId on create, then a free one.
        rid = self.stack.request_id()
        body = self.stack.create_body(request_id=rid,
                                      external_id=self.customer["externalId"])
        r = self.stack.http("POST", CREATE, body)
        self.assertError(r, 400, "CASM-EXTERNAL-ID-EXISTS")
        body["externalId"] = "CRM-" + uuid.uuid4().hex
        r = self.stack.http("POST", CREATE, body)
        self.assertEqual(r.status, 201, r.body)
        self.assertEqual(self.row(self.customer["refId"])[:2],
                         (3, {"y": "1"}))


class TestConcurrent(Case):

    def run_threads(self, count, target):
        """Runs target(i) in count threads started together; returns the
        results in order. Each thread has its own HTTP connection."""
        barrier = threading.Barrier(count, timeout=30)
        results = [None] * count

        def run(i):
            try:
                barrier.wait()
                results[i] = target(i)
            except BaseException as e:  # reported by the test
                results[i] = e
            finally:
                self.stack.close_connections()

        threads = [threading.Thread(target=run, args=(i,), daemon=True)
                   for i in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertFalse(any(t.is_alive() for t in threads),
                         "requests still running after 60 s")
        for res in results:
            if isinstance(res, BaseException):
                raise res
        return results

    def test_same_request_executes_once(self):
        customer = self.stack.create_customer().body["customer"]
        ref_id = customer["refId"]
        rid = self.stack.request_id()
        body = json.dumps({"requestId": rid, "customer": {"refId": ref_id},
                           "customAttributes": {"once": "only"}})

        results = self.run_threads(
            16, lambda i: self.stack.http("PUT", UPDATE, body, fresh=True))
        statuses = [r.status for r in results]
        self.assertEqual(statuses, [200] * 16,
                         [(r.status, r.body) for r in results
                          if r.status != 200])
        transactions = {r.body["transactionId"] for r in results}
        self.assertEqual(len(transactions), 1, transactions)
        self.assertEqual(len({r.raw for r in results}), 1)
        self.assertEqual(sum(not replayed(r) for r in results), 1,
                         "exactly one answer is the original")

        self.assertEqual(self.row(ref_id)[:2], (2, {"once": "only"}))
        self.assertEqual(self.count(
            "SELECT count(*) FROM casm.outbox WHERE request_id = '%s'"
            % rid), 1)
        self.assertEqual(self.count(
            "SELECT count(*) FROM casm.requests WHERE request_id = '%s'"
            % rid), 1)

    def test_distinct_updates_serialise(self):
        customer = self.stack.create_customer().body["customer"]
        ref_id = customer["refId"]
        start = customer["version"]
        n = 40

        def update(i):
            return self.stack.update_attributes(
                {"refId": ref_id}, {"n": str(i)},
                request_id="conc-%d-%s" % (i, uuid.uuid4().hex))

        results = self.run_threads(n, update)
        bad = [(r.status, r.body) for r in results if r.status != 200]
        self.assertEqual(bad, [])
        versions = sorted(r.body["customer"]["version"] for r in results)
        self.assertEqual(versions, list(range(start + 1, start + n + 1)))
        for i, r in enumerate(results):
            self.assertEqual(r.body["customer"]["customAttributes"],
                             {"n": str(i)})
        version, attributes, _ = self.row(ref_id)
        self.assertEqual(version, start + n)
        last = max(results, key=lambda r: r.body["customer"]["version"])
        self.assertEqual(attributes, last.body["customer"]["customAttributes"])
        self.assertEqual(self.count(
            "SELECT count(*) FROM casm.outbox WHERE customer_ref = '%s'"
            % ref_id), n + 1)

    def test_concurrent_merges_lose_nothing(self):
        customer = self.stack.create_customer().body["customer"]
        ref_id = customer["refId"]
        n = 20
        results = self.run_threads(n, lambda i: self.stack.update_attributes(
            {"refId": ref_id}, {"k%d" % i: "v"}, merge=True))
        self.assertEqual([r.status for r in results], [200] * n)
        self.assertEqual(self.row(ref_id)[:2],
                         (1 + n, {"k%d" % i: "v" for i in range(n)}))


if __name__ == "__main__":
    unittest.main(verbosity=2)
