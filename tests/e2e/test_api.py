#!/usr/bin/env python3
"""The REST API of DESIGN.md 2, end to end: create, update, merge, read,
state changes, every validation rule of 2.1 at its exact limits, and the
HTTP-level errors of 2.3, against a real stack. The last test checks that
after all of it every process is still alive and ready."""

import json
import os
import socket
import subprocess
import sys
import time
import unittest
import uuid

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from common import (Case, CREATE, READ, STATE, UPDATE,  # noqa: E402
                    RFC3339_MS)


def setUpModule():
    harness.start_module_stack(name="api")


def tearDownModule():
    harness.stop_module_stack(dump=harness.DumpOnFailure.failed)


class TestCreate(Case):

    def test_create_every_field(self):
        rid = self.stack.request_id()
        ext = "CRM-" + uuid.uuid4().hex
        r = self.stack.create_customer(
            request_id=rid, external_id=ext, custom_name="Jana Nováková",
            customer_segment="B2C", test_customer=True,
            custom_attributes={"segmentHint": "gold", "emoji": "😀"})
        customer = self.assertBT(r, 201, "createCustomer", rid)
        self.assertEqual(customer["externalId"], ext)
        self.assertEqual(customer["customName"], "Jana Nováková")
        self.assertEqual(customer["customerSegment"], "B2C")
        self.assertIs(customer["testCustomer"], True)
        self.assertEqual(customer["customAttributes"],
                         {"segmentHint": "gold", "emoji": "😀"})
        self.assertEqual(customer["version"], 1)
        self.assertEqual(customer["state"]["state"], "ACTIVE")
        self.assertEqual(customer["createdAt"], customer["modifiedAt"])

        version, attributes, state = self.row(customer["refId"])
        self.assertEqual((version, attributes, state),
                         (1, customer["customAttributes"], "ACTIVE"))

    def test_create_defaults(self):
        rid = self.stack.request_id()
        r = self.stack.create_customer(request_id=rid)
        customer = self.assertBT(r, 201, "createCustomer", rid)
        self.assertIsNone(customer["customName"])
        self.assertIsNone(customer["customerSegment"])
        self.assertIs(customer["testCustomer"], False)
        self.assertEqual(customer["customAttributes"], {})
        self.assertEqual(customer["state"]["state"], "ACTIVE")
        self.assertIsNone(customer["state"]["stateReason"])
        self.assertEqual(customer["version"], 1)

    def test_create_inactive(self):
        rid = self.stack.request_id()
        r = self.stack.create_customer(request_id=rid, state="INACTIVE",
                                       state_reason="waiting for contract")
        customer = self.assertBT(r, 201, "createCustomer", rid)
        self.assertEqual(customer["state"]["state"], "INACTIVE")
        self.assertEqual(customer["state"]["stateReason"],
                         "waiting for contract")

    def test_create_suspended_or_deactivated_rejected(self):
        for state in ("SUSPENDED", "DEACTIVATED", "active", "NOPE"):
            ext = "CRM-" + uuid.uuid4().hex
            r = self.stack.create_customer(state=state, external_id=ext,
                                           expect=None)
            self.assertError(r, 400, "CASM-VALIDATION", "state")
            self.assertEqual(self.count(
                "SELECT count(*) FROM casm.customers "
                "WHERE external_id = '%s'" % ext), 0)

    def test_duplicate_external_id(self):
        ext = "CRM-" + uuid.uuid4().hex
        self.stack.create_customer(external_id=ext)
        r = self.stack.create_customer(external_id=ext, expect=None)
        self.assertError(r, 400, "CASM-EXTERNAL-ID-EXISTS")
        self.assertEqual(self.count(
            "SELECT count(*) FROM casm.customers WHERE external_id = '%s'"
            % ext), 1)

    def test_create_missing_external_id(self):
        body = self.stack.create_body()
        del body["externalId"]
        r = self.stack.http("POST", CREATE, body)
        self.assertError(r, 400, "CASM-VALIDATION", "externalId")


class TestUpdate(Case):

    def setUp(self):
        r = self.stack.create_customer(custom_attributes={"a": "1", "b": "2"})
        self.customer = r.body["customer"]
        self.ref = {"refId": self.customer["refId"]}
        self.ext = {"externalId": self.customer["externalId"]}

    def update(self, ref, attributes, merge=None, status=200):
        rid = self.stack.request_id()
        r = self.stack.update_attributes(ref, attributes, merge=merge,
                                         request_id=rid)
        if status != 200:
            return r
        return self.assertBT(r, 200, "updateCustomerCustomAttributes", rid)

    def test_update_by_external_id(self):
        c = self.update(self.ext, {"x": "y"})
        self.assertEqual(c["customAttributes"], {"x": "y"})
        self.assertEqual(c["version"], 2)
        self.assertEqual(c["refId"], self.customer["refId"])
        self.assertEqual(c["createdAt"], self.customer["createdAt"])
        self.assertGreaterEqual(c["modifiedAt"], self.customer["modifiedAt"])
        self.assertEqual(self.row(c["refId"])[:2], (2, {"x": "y"}))

    def test_update_by_ref_id(self):
        c = self.update(self.ref, {"x": "1", "y": "2"})
        self.assertEqual(c["customAttributes"], {"x": "1", "y": "2"})
        self.assertEqual(c["version"], 2)
        c = self.update(self.ref, {"z": "3"}, merge=False)
        self.assertEqual(c["customAttributes"], {"z": "3"})
        self.assertEqual(c["version"], 3)

    def test_ref_id_upper_case(self):
        c = self.update({"refId": self.customer["refId"].upper()},
                        {"u": "v"})
        self.assertEqual(c["refId"], self.customer["refId"])

    def test_empty_set_clears(self):
        c = self.update(self.ref, {})
        self.assertEqual(c["customAttributes"], {})
        self.assertEqual(self.row(c["refId"])[:2], (2, {}))

    def test_merge(self):
        c = self.update(self.ref, {"b": "20", "c": "3"}, merge=True)
        self.assertEqual(c["customAttributes"],
                         {"a": "1", "b": "20", "c": "3"})
        self.assertEqual(c["version"], 2)

        c = self.update(self.ref, {"a": None, "d": "4"}, merge=True)
        self.assertEqual(c["customAttributes"],
                         {"b": "20", "c": "3", "d": "4"})

        c = self.update(self.ref, {"nothere": None}, merge=True)
        self.assertEqual(c["customAttributes"],
                         {"b": "20", "c": "3", "d": "4"})

        c = self.update(self.ref, {}, merge=True)
        self.assertEqual(c["customAttributes"],
                         {"b": "20", "c": "3", "d": "4"})
        self.assertEqual(self.row(c["refId"])[1],
                         {"b": "20", "c": "3", "d": "4"})

    def test_read_equals_bt_customer(self):
        c = self.update(self.ref, {"k": "v", "ü": "ß"})
        r = self.stack.read_customer(ref_id=c["refId"])
        self.assertEqual(r.status, 200, r.body)
        self.assertJsonResponse(r)
        self.assertCustomer(r.body)
        self.assertEqual(r.body, c)
        r = self.stack.read_customer(external_id=c["externalId"])
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.body, c)

    def test_read_unknown(self):
        r = self.stack.read_customer(ref_id=str(uuid.uuid4()))
        self.assertError(r, 404, "NOT-FOUND")
        r = self.stack.read_customer(external_id="CRM-no-such-" +
                                     uuid.uuid4().hex)
        self.assertError(r, 404, "NOT-FOUND")

    def test_read_without_reference(self):
        r = self.stack.http("GET", READ)
        self.assertError(r, 400, "CASM-VALIDATION")
        r = self.stack.http("GET", READ + "?refId=%s&externalId=x"
                            % self.customer["refId"])
        self.assertError(r, 400, "CASM-VALIDATION")

    def test_read_bytes_not_utf8(self):
        # A query value that is not UTF-8 (or holds a NUL) is refused with
        # the field named; it is never looked up with the bad bytes
        # replaced, which could find another customer ("CRM?1" here).
        external_id = "CRM?%s" % uuid.uuid4().hex
        r = self.stack.create_customer(external_id=external_id)
        self.assertEqual(r.status, 201, r.body)
        for raw in ("CRM%%FF%s" % external_id[4:],
                    "CRM%%00%s" % external_id[4:]):
            r = self.stack.http("GET", READ + "?externalId=" + raw)
            self.assertError(r, 400, "CASM-VALIDATION", "externalId")

    def test_unknown_customer(self):
        r = self.update({"refId": str(uuid.uuid4())}, {"a": "b"},
                        status=400)
        self.assertError(r, 400, "CASM-ENTITY-NOT-FOUND")
        r = self.update({"externalId": "CRM-none-" + uuid.uuid4().hex},
                        {"a": "b"}, status=400)
        self.assertError(r, 400, "CASM-ENTITY-NOT-FOUND")


class TestState(Case):

    def test_transitions_and_deactivation(self):
        r = self.stack.create_customer(custom_attributes={"keep": "me"})
        customer = r.body["customer"]
        ref = {"refId": customer["refId"]}
        version = 1
        valid_from = customer["state"]["stateValidFrom"]
        for state in ("SUSPENDED", "ACTIVE", "INACTIVE", "ACTIVE",
                      "DEACTIVATED"):
            rid = self.stack.request_id()
            r = self.stack.update_state(ref, state, reason="because " + state,
                                        request_id=rid)
            c = self.assertBT(r, 200, "updateCustomerState", rid)
            version += 1
            self.assertEqual(c["state"]["state"], state)
            self.assertEqual(c["state"]["stateReason"], "because " + state)
            self.assertEqual(c["version"], version)
            self.assertEqual(c["customAttributes"], {"keep": "me"})
            self.assertGreaterEqual(c["state"]["stateValidFrom"], valid_from)
            valid_from = c["state"]["stateValidFrom"]
        self.assertEqual(self.row(customer["refId"]),
                         (version, {"keep": "me"}, "DEACTIVATED"))

        # Deactivated: no update, by either reference, and no way back.
        for which in (ref, {"externalId": customer["externalId"]}):
            r = self.stack.update_attributes(which, {"x": "y"})
            self.assertError(r, 400, "CASM-STATE-DEACTIVATED")
            r = self.stack.update_attributes(which, {"x": "y"}, merge=True)
            self.assertError(r, 400, "CASM-STATE-DEACTIVATED")
        for state in ("ACTIVE", "DEACTIVATED"):
            r = self.stack.update_state(ref, state)
            self.assertError(r, 400, "CASM-STATE-DEACTIVATED")
        self.assertEqual(self.row(customer["refId"]),
                         (version, {"keep": "me"}, "DEACTIVATED"))

        r = self.stack.read_customer(ref_id=customer["refId"])
        self.assertEqual(r.status, 200)
        self.assertEqual(r.body["state"]["state"], "DEACTIVATED")
        self.assertEqual(r.body["version"], version)

    def test_bad_state(self):
        customer = self.stack.create_customer().body["customer"]
        ref = {"refId": customer["refId"]}
        for state in ("GONE", "active", ""):
            r = self.stack.update_state(ref, state)
            self.assertError(r, 400, "CASM-VALIDATION", "state")
        r = self.stack.http("PUT", STATE, {
            "requestId": self.stack.request_id(), "customer": ref})
        self.assertError(r, 400, "CASM-VALIDATION", "state")
        self.assertEqual(self.row(customer["refId"])[0], 1)

    def test_state_of_unknown_customer(self):
        r = self.stack.update_state({"refId": str(uuid.uuid4())}, "ACTIVE")
        self.assertError(r, 400, "CASM-ENTITY-NOT-FOUND")


class TestValidation(Case):
    """DESIGN.md 2.1: each rule gives 400 CASM-VALIDATION naming the field,
    and changes nothing."""

    @classmethod
    def setUpClass(cls):
        r = harness.STACK.create_customer(custom_attributes={"orig": "1"})
        cls.customer = r.body["customer"]

    def body(self, **changes):
        b = {"requestId": self.stack.request_id(),
             "customer": {"refId": self.customer["refId"]},
             "customAttributes": {"k": "v"}}
        for k, v in changes.items():
            if v is KeyError:
                b.pop(k, None)
            else:
                b[k] = v
        return b

    def rejected(self, body, field):
        r = self.stack.http("PUT", UPDATE, body)
        self.assertError(r, 400, "CASM-VALIDATION", field)
        self.assertEqual(self.row(self.customer["refId"])[:2],
                         (1, {"orig": "1"}))
        return r

    def accepted(self, body):
        r = self.stack.http("PUT", UPDATE, body)
        self.assertEqual(r.status, 200, r.body)
        return r.body["customer"]

    def test_missing_request_id(self):
        self.rejected(self.body(requestId=KeyError), "requestId")
        self.rejected(self.body(requestId=None), "requestId")

    def test_missing_customer(self):
        self.rejected(self.body(customer=KeyError), "customer")

    def test_missing_custom_attributes(self):
        self.rejected(self.body(customAttributes=KeyError),
                      "customAttributes")
        self.rejected(self.body(customAttributes=None), "customAttributes")

    def test_every_problem_listed(self):
        r = self.rejected(self.body(requestId=KeyError,
                                    customAttributes=KeyError), "requestId")
        fields = [e["field"] for e in r.body["errors"]]
        self.assertIn("customAttributes", fields)

    def test_error_names_request_id(self):
        rid = self.stack.request_id()
        r = self.rejected(self.body(requestId=rid,
                                    customAttributes=KeyError),
                          "customAttributes")
        self.assertEqual(r.body.get("requestId"), rid)

    def test_both_references(self):
        self.rejected(self.body(customer={
            "refId": self.customer["refId"],
            "externalId": self.customer["externalId"]}), "customer")

    def test_neither_reference(self):
        self.rejected(self.body(customer={}), "customer")

    def test_bad_ref_id(self):
        # DESIGN.md does not say whether a refId that is no UUID is a
        # validation error or an unknown customer: either, never a 500.
        r = self.stack.http("PUT", UPDATE,
                            self.body(customer={"refId": "not-a-uuid"}))
        self.assertEqual(r.status, 400, r.body)
        self.assertIn(r.body.get("code"),
                      ("CASM-VALIDATION", "CASM-ENTITY-NOT-FOUND"))
        self.assertError(r, 400, r.body["code"])

    def test_wrong_types(self):
        self.rejected(self.body(requestId=5), "requestId")
        self.rejected(self.body(customer="x"), "customer")
        self.rejected(self.body(customer=["x"]), "customer")
        self.rejected(self.body(customer={"refId": 12}), "customer")
        self.rejected(self.body(customAttributes=["k", "v"]),
                      "customAttributes")
        self.rejected(self.body(customAttributes="k=v"), "customAttributes")
        self.rejected(self.body(customAttributes={"k": 5}),
                      "customAttributes")
        self.rejected(self.body(customAttributes={"k": {"n": "v"}}),
                      "customAttributes")
        self.rejected(self.body(customAttributes={"k": True}),
                      "customAttributes")
        self.rejected(self.body(merge="yes"), "merge")
        self.rejected(self.body(merge=1), "merge")
        self.rejected(["a", "list"], None)
        self.rejected("a string", None)

    def test_null_without_merge(self):
        self.rejected(self.body(customAttributes={"k": None}),
                      "customAttributes")
        self.rejected(self.body(customAttributes={"k": None}, merge=False),
                      "customAttributes")

    def test_request_id_format(self):
        self.rejected(self.body(requestId="has space"), "requestId")
        self.rejected(self.body(requestId=""), "requestId")
        self.rejected(self.body(requestId="tab\there"), "requestId")
        self.rejected(self.body(requestId="caf\u00e9"), "requestId")
        self.rejected(self.body(requestId="r" * 129), "requestId")

    def test_request_id_128(self):
        rid = "r" * 100 + uuid.uuid4().hex[:28]
        self.assertEqual(len(rid), 128)
        r = self.stack.http("PUT", UPDATE, self.body(requestId=rid))
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.body["requestId"], rid)
        self.restore()

    def restore(self):
        """After an accepted update: a fresh customer at version 1 for the
        rejected() checks that follow."""
        type(self).customer = self.stack.create_customer(
            custom_attributes={"orig": "1"}).body["customer"]

    def test_key_length(self):
        key = "k" * 128
        c = self.accepted(self.body(customAttributes={key: "v"}))
        self.assertEqual(c["customAttributes"], {key: "v"})
        self.restore()
        self.rejected(self.body(customAttributes={"k" * 129: "v"}),
                      "customAttributes")
        # Bytes, not characters: 64 two-byte characters are 128 bytes.
        c = self.accepted(self.body(customAttributes={"é" * 64: "v"}))
        self.assertEqual(c["customAttributes"], {"é" * 64: "v"})
        self.restore()
        self.rejected(self.body(customAttributes={"é" * 64 + "x": "v"}),
                      "customAttributes")
        self.rejected(self.body(customAttributes={"": "v"}),
                      "customAttributes")
        self.rejected(self.body(customAttributes={"a\nb": "v"}),
                      "customAttributes")
        self.rejected(self.body(customAttributes={"a\u0001b": "v"}),
                      "customAttributes")

    def test_value_length(self):
        c = self.accepted(self.body(customAttributes={"k": "v" * 4096}))
        self.assertEqual(len(c["customAttributes"]["k"]), 4096)
        self.restore()
        self.rejected(self.body(customAttributes={"k": "v" * 4097}),
                      "customAttributes")
        value = "€" * 1365 + "a"            # 4096 bytes
        self.assertEqual(len(value.encode()), 4096)
        c = self.accepted(self.body(customAttributes={"k": value}))
        self.assertEqual(c["customAttributes"]["k"], value)
        self.restore()
        self.rejected(self.body(customAttributes={"k": value + "a"}),
                      "customAttributes")
        c = self.accepted(self.body(customAttributes={"k": ""}))
        self.assertEqual(c["customAttributes"], {"k": ""})
        self.restore()

    def test_pair_count(self):
        pairs = {"key%03d" % i: "v%d" % i for i in range(256)}
        c = self.accepted(self.body(customAttributes=pairs))
        self.assertEqual(c["customAttributes"], pairs)
        self.restore()
        pairs["key256"] = "one too many"
        self.rejected(self.body(customAttributes=pairs), "customAttributes")

    def test_unknown_customer_after_validation(self):
        # Validation comes first: a bad body about an unknown customer is
        # a validation error.
        r = self.stack.http("PUT", UPDATE, self.body(
            customer={"refId": str(uuid.uuid4())},
            customAttributes={"k": 1}))
        self.assertError(r, 400, "CASM-VALIDATION", "customAttributes")


class TestHttp(Case):
    """DESIGN.md 2.3's HTTP-level errors, each in the one error shape."""

    def test_malformed_json(self):
        for raw in (b'{"requestId": "x", ', b"not json", b"{}}", b"",
                    b'{"requestId": "a", "requestId": }'):
            r = self.stack.http("PUT", UPDATE, raw)
            self.assertError(r, 400, "CASM-VALIDATION")

    def test_invalid_utf8(self):
        customer = self.stack.create_customer().body["customer"]
        raw = (b'{"requestId": "r-' + uuid.uuid4().hex.encode() +
               b'", "customer": {"refId": "' + customer["refId"].encode() +
               b'"}, "customAttributes": {"k": "\xff\xfe\xc3"}}')
        r = self.stack.http("PUT", UPDATE, raw)
        self.assertError(r, 400, "CASM-VALIDATION")
        raw = (b'{"requestId": "r-\xc0\xaf", "customer": {"refId": "' +
               customer["refId"].encode() + b'"}, "customAttributes": {}}')
        r = self.stack.http("PUT", UPDATE, raw)
        self.assertError(r, 400, "CASM-VALIDATION")
        self.assertEqual(self.row(customer["refId"])[0], 1)

    def test_deep_nesting(self):
        deep = "[" * 100 + "]" * 100
        raw = ('{"requestId": "r", "customer": {"externalId": "x"}, '
               '"customAttributes": {"k": %s}}' % deep)
        r = self.stack.http("PUT", UPDATE, raw)
        self.assertError(r, 400, "CASM-VALIDATION")
        r = self.stack.http("PUT", UPDATE, "[" * 100000)
        self.assertError(r, 400, "CASM-VALIDATION")

    def test_wrong_content_type(self):
        body = json.dumps({"requestId": "r", "customer": {"externalId": "x"},
                           "customAttributes": {}})
        for ctype in ("text/plain", "application/xml",
                      "application/x-www-form-urlencoded"):
            r = self.stack.http("PUT", UPDATE, body,
                                headers={"Content-Type": ctype})
            self.assertError(r, 415, "UNSUPPORTED-MEDIA-TYPE")

    def test_content_type_variants_accepted(self):
        # Only the validation answer matters: the type was accepted.
        for ctype in ("application/json", "application/json;charset=UTF-8",
                      "Application/JSON; charset=utf-8"):
            r = self.stack.http("PUT", UPDATE, "{}",
                                headers={"Content-Type": ctype})
            self.assertError(r, 400, "CASM-VALIDATION")

    def test_body_too_large(self):
        size = 2 * 1024 * 1024 + 1
        head = ("PUT %s HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Type: application/json\r\n"
                "Content-Length: %d\r\nConnection: close\r\n\r\n"
                % (UPDATE, size)).encode()
        body = b'{"k": "' + b"x" * (size - 10) + b'"}   '
        body = body[:size]
        self.assertEqual(len(body), size)
        status, headers, payload = self.raw_exchange(head + body)
        self.assertEqual(status, 413, payload[:300])
        doc = json.loads(payload)
        self.assertEqual(doc["status"], 413)
        self.assertEqual(doc["code"], "PAYLOAD-TOO-LARGE")
        self.assertIsInstance(doc["message"], str)

        # The same through http.client, so keep-alive code sees it too.
        try:
            r = self.stack.http("PUT", UPDATE, body, fresh=True)
        except (BrokenPipeError, ConnectionResetError):
            return      # closed early while we were still sending: fine
        self.assertError(r, 413, "PAYLOAD-TOO-LARGE")

    def raw_exchange(self, data, timeout=15):
        """Sends data, tolerating an early close; returns (status,
        headers text, body bytes)."""
        port = self.stack.http_ports[0]
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        try:
            try:
                s.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass
            received = b""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    chunk = s.recv(65536)
                except ConnectionResetError:
                    break
                except socket.timeout:
                    break
                if not chunk:
                    break
                received += chunk
                head, sep, rest = received.partition(b"\r\n\r\n")
                if sep:
                    length = None
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    if length is not None and len(rest) >= length:
                        break
        finally:
            s.close()
        head, _, rest = received.partition(b"\r\n\r\n")
        self.assertTrue(head, "no answer at all")
        status = int(head.split(b" ")[1])
        return status, head.decode("latin-1"), rest

    def test_wrong_method(self):
        cases = [("GET", UPDATE, "PUT"), ("POST", UPDATE, "PUT"),
                 ("DELETE", CREATE, "POST"), ("GET", CREATE, "POST"),
                 ("PUT", READ + "?refId=%s" % uuid.uuid4(), "GET"),
                 ("PATCH", STATE, "PUT"), ("POST", "/health", "GET")]
        for method, path, allow in cases:
            body = {} if method in ("POST", "PUT", "PATCH") else None
            r = self.stack.http(method, path, body)
            self.assertError(r, 405, "METHOD-NOT-ALLOWED")
            allowed = [m.strip() for m in
                       (r.headers.get("Allow") or "").split(",")]
            self.assertIn(allow, allowed, (method, path, r.headers.items()))

    def test_unknown_path(self):
        for method, path in (("GET", "/v1/casm/customers/nope"),
                             ("GET", "/nope"), ("PUT", "/v1/casm/customers"),
                             ("GET", "/v1/casm/customers/read/extra"),
                             ("GET", "/" + "a" * 1000)):
            body = {} if method == "PUT" else None
            r = self.stack.http(method, path, body)
            self.assertError(r, 404, "NOT-FOUND")

    def test_health_and_ready(self):
        r = self.stack.http("GET", "/health")
        self.assertEqual(r.status, 200)
        r = self.stack.http("GET", "/ready")
        self.assertEqual(r.status, 200, r.body)

    def test_metrics(self):
        r = self.stack.http("GET", "/metrics")
        self.assertEqual(r.status, 200)
        self.assertTrue(r.headers.get("Content-Type", "")
                        .startswith("text/plain"), r.headers.items())
        self.assertIn("# TYPE", r.raw.decode())

    def test_openapi(self):
        r = self.stack.http("GET", "/openapi.yaml")
        self.assertEqual(r.status, 200)
        self.assertIn("openapi: 3.1", r.raw.decode())

    def test_timestamp_format(self):
        rid = self.stack.request_id()
        r = self.stack.create_customer(request_id=rid)
        self.assertRegex(r.body["timestamp"], RFC3339_MS)
        self.assertTrue(r.body["timestamp"].endswith("Z"))


class TestSettings(Case):
    """A setting out of its range stops a process at start with a message
    naming it (exit status 2), before it joins the stack: among them the
    floor of 24 hours on the idempotency records' retention (DESIGN.md
    2.4)."""

    def test_out_of_range_settings_refused(self):
        port = harness._Ports.one()
        for directory, name, value in (
                ("worker", "REQUEST_RETENTION_HOURS", "23"),
                ("worker", "WORKER_CREDIT", "0"),
                ("gateway", "MAX_INFLIGHT", "0"),
                ("publisher", "KAFKA_MESSAGE_TIMEOUT_MS", "999"),
                ("validator", "VALIDATOR_CREDIT", "x")):
            env = self.stack.process_env("refused", {
                name: value, "HTTP_PORT": str(port)})
            out = subprocess.run([self.stack.binary(directory)], env=env,
                                 stdin=subprocess.DEVNULL,
                                 capture_output=True, timeout=20)
            self.assertEqual(out.returncode, 2, "%s with %s=%s: %r"
                             % (directory, name, value, out.stderr[-400:]))
            self.assertIn(('invalid %s="%s"' % (name, value)).encode(),
                          out.stderr)


class TestZzSurvival(Case):
    """Runs last (unittest orders classes by name)."""

    def test_everything_still_alive(self):
        self.assertEqual(self.stack.all_alive(), [])
        r = self.stack.http("GET", "/health", fresh=True)
        self.assertEqual(r.status, 200)
        r = self.stack.http("GET", "/ready")
        self.assertEqual(r.status, 200, r.body)
        self.stack.create_customer()
        self.assertEqual(self.stack.all_alive(), [])


if __name__ == "__main__":
    unittest.main(verbosity=2)
