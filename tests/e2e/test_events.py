#!/usr/bin/env python3
"""Events on Kafka, DESIGN.md 3 and 6: one event per successful change,
keyed by refId, with the OCS.io headers and the customer JSON of the
Business Transaction as its value; nothing for failed requests or replays;
and with Kafka down, requests still succeed within the deadline while the
events wait in the outbox and all arrive once Kafka is back."""

import json
import os
import sys
import time
import unittest
import uuid

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from common import Case, UPDATE, customer_substring  # noqa: E402

REQUEST_TIMEOUT_MS = 5000
PUBLISH_TIMEOUT_MS = 500
ARRIVAL_TIMEOUT = 30


def setUpModule():
    harness.start_module_stack(name="events", env={
        "PUBLISH_TIMEOUT_MS": str(PUBLISH_TIMEOUT_MS),
        "REQUEST_TIMEOUT_MS": str(REQUEST_TIMEOUT_MS),
    })


def tearDownModule():
    harness.stop_module_stack(dump=harness.DumpOnFailure.failed)


class EventCase(Case):

    def events_by_transaction(self, transaction_ids, timeout=ARRIVAL_TIMEOUT):
        """Polls the topic until every transaction id has an event; returns
        {transaction id: [events]} for the whole topic."""
        wanted = set(transaction_ids)
        found = {}

        def poll():
            found.clear()
            for e in self.stack.kafka_events(timeout=15):
                tid = e["headers"].get("X-Ocs-Io-transaction-id")
                found.setdefault(tid, []).append(e)
            return wanted <= set(found)

        try:
            self.stack.wait_for(poll, timeout, interval=0.5,
                                what="events on the topic")
        except AssertionError:
            missing = wanted - set(found)
            self.fail("%d of %d events missing after %d s: %s"
                      % (len(missing), len(wanted), timeout,
                         sorted(missing)[:5]))
        return found

    def assertEvent(self, event, response, request_id):
        bt = response.body
        customer = bt["customer"]
        self.assertEqual(event["key"], customer["refId"])
        headers = event["headers"]
        self.assertEqual(headers.get("X-Ocs-Io-transaction-id"),
                         bt["transactionId"])
        self.assertEqual(headers.get("X-Ocs-Io-message-code"), "customer")
        self.assertEqual(headers.get("X-Ocs-Io-message-payload"),
                         "CustomerEx")
        self.assertEqual(headers.get("X-Ocs-Io-operation"), bt["operation"])
        self.assertEqual(headers.get("X-Ocs-Io-request-id"), request_id)
        names = [k for k, _ in event["headers_list"]]
        self.assertEqual(len(names), len(set(names)),
                         "a header appears twice: %r" % names)
        self.assertEqual(json.loads(event["payload"]), customer)
        self.assertEqual(event["payload"], customer_substring(response.raw),
                         "the value is not byte-equal to the answer's "
                         "customer")


class TestEvents(EventCase):

    def test_one_event_per_change(self):
        s = self.stack
        done = []           # (request id, response) of each success

        rid = s.request_id()
        r = s.create_customer(request_id=rid, custom_attributes={"a": "1"},
                              custom_name="Événement")
        done.append((rid, r))
        ref = {"refId": r.body["customer"]["refId"]}
        ref_id = ref["refId"]

        for attributes, merge in (({"a": "2"}, None), ({"b": "3"}, True),
                                  ({"a": None}, True), ({}, False)):
            rid = s.request_id()
            r = s.update_attributes(ref, attributes, merge=merge,
                                    request_id=rid)
            self.assertEqual(r.status, 200, r.body)
            done.append((rid, r))
        rid = s.request_id()
        r = s.update_state(ref, "SUSPENDED", reason="unpaid",
                           request_id=rid)
        self.assertEqual(r.status, 200, r.body)
        done.append((rid, r))

        # Failures and a replay: no event.
        failed = []
        rid = s.request_id()
        r = s.update_attributes(ref, {"k": None}, request_id=rid)
        self.assertEqual(r.status, 400)
        failed.append(rid)
        rid = s.request_id()
        r = s.update_attributes({"refId": str(uuid.uuid4())}, {"k": "v"},
                                request_id=rid)
        self.assertEqual(r.status, 400)
        failed.append(rid)
        rid = s.request_id()
        r = s.update_state(ref, "NOPE", request_id=rid)
        self.assertEqual(r.status, 400)
        failed.append(rid)
        replay_rid, replay = done[1]
        r = s.update_attributes(ref, {"a": "2"}, request_id=replay_rid)
        self.assertEqual((r.status, r.raw), (200, replay.raw))

        found = self.events_by_transaction(
            [r.body["transactionId"] for _, r in done])
        for rid, r in done:
            events = found[r.body["transactionId"]]
            self.assertEqual(len(events), 1,
                             "transaction %s published %d times"
                             % (r.body["transactionId"], len(events)))
            self.assertEvent(events[0], r, rid)

        mine = [e for es in found.values() for e in es
                if e["key"] == ref_id]
        self.assertEqual(len(mine), len(done))
        # No failed request has an event, under any key (one of them
        # named a customer that does not exist).
        request_ids = {e["headers"].get("X-Ocs-Io-request-id")
                       for es in found.values() for e in es}
        for rid in failed:
            self.assertNotIn(rid, request_ids)

        # One customer, one partition, in version order.
        self.assertEqual(len({e["partition"] for e in mine}), 1)
        mine.sort(key=lambda e: e["offset"])
        self.assertEqual([json.loads(e["payload"])["version"] for e in mine],
                         list(range(1, len(done) + 1)))

        # The outbox marks every one of them sent.
        s.wait_for(lambda: self.count(
            "SELECT count(*) FROM casm.outbox WHERE customer_ref = '%s' "
            "AND sent_at IS NULL" % ref_id) == 0, ARRIVAL_TIMEOUT,
            what="outbox rows marked sent")
        self.assertEqual(self.count(
            "SELECT count(*) FROM casm.outbox WHERE customer_ref = '%s'"
            % ref_id), len(done))


class TestLargestEvent(EventCase):

    def test_large_customer(self):
        # An event past librdkafka's default message.max.bytes (1,000,000):
        # 64 pairs of a 128-byte key and a 4096-byte value of control
        # characters, which JSON writes as six bytes each, make a body
        # under the 2 MiB limit and an event of about 1.6 MB. (The largest
        # the limits allow, 256 such pairs built by merges, is about
        # 6.4 MB; the mock Kafka broker of the tests keeps only about 5 MB
        # per partition, so this one stays small.)
        s = self.stack
        done = []
        rid = s.request_id()
        r = s.create_customer(request_id=rid)
        done.append((rid, r))
        ref = {"refId": r.body["customer"]["refId"]}
        value = "\u0001" * 4096
        attributes = {("k%d-" % i).ljust(128, "x"): value for i in range(64)}
        rid = s.request_id()
        r = s.update_attributes(ref, attributes, request_id=rid)
        self.assertEqual(r.status, 200, r.raw[:300])
        done.append((rid, r))
        self.assertGreater(len(customer_substring(r.raw)), 1500 * 1000)

        found = self.events_by_transaction(
            [r.body["transactionId"] for _, r in done], timeout=60)
        for rid, r in done:
            events = found[r.body["transactionId"]]
            self.assertEqual(len(events), 1)
            self.assertEvent(events[0], r, rid)


class TestKafkaDown(EventCase):

    def test_outage(self):
        s = self.stack
        ref = {"refId": s.create_customer().body["customer"]["refId"]}
        done = []
        latencies = []
        s.kafka_down()
        try:
            for i in range(5):
                rid = s.request_id()
                started = time.monotonic()
                r = s.update_attributes(ref, {"n": str(i)}, request_id=rid)
                elapsed = time.monotonic() - started
                self.assertEqual(r.status, 200, r.body)
                self.assertLess(elapsed, REQUEST_TIMEOUT_MS / 1000.0,
                                "answer took %.1f s with Kafka down"
                                % elapsed)
                done.append((rid, r))
                latencies.append(elapsed)
            sys.stderr.write("test_outage: answers with Kafka down took "
                             "%s s\n" % ", ".join("%.2f" % t
                                                  for t in latencies))

            # The events wait in the outbox, none confirmed: Kafka is down.
            tids = ",".join("'%s'" % r.body["transactionId"]
                            for _, r in done)
            self.assertEqual(self.count(
                "SELECT count(*) FROM casm.outbox "
                "WHERE transaction_id IN (%s) AND sent_at IS NULL" % tids),
                len(done))

            # Readiness notices.
            s.wait_for(lambda: s.http("GET", "/ready").status == 503, 20,
                       interval=0.25, what="/ready 503 with Kafka down")
        finally:
            s.kafka_up()

        found = self.events_by_transaction(
            [r.body["transactionId"] for _, r in done])
        duplicates = 0
        for rid, r in done:
            events = found[r.body["transactionId"]]
            duplicates += len(events) - 1
            self.assertEvent(events[0], r, rid)
        sys.stderr.write("test_outage: %d events, %d duplicates\n"
                         % (len(done), duplicates))

        s.wait_for(lambda: self.count(
            "SELECT count(*) FROM casm.outbox "
            "WHERE transaction_id IN (%s) AND sent_at IS NULL" % tids) == 0,
            ARRIVAL_TIMEOUT, what="outbox rows marked sent")
        s.wait_for(lambda: s.http("GET", "/ready").status == 200, 30,
                   interval=0.25, what="/ready 200 after Kafka is back")
        self.assertEqual(s.all_alive(), [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
