"""Assertions shared by the end-to-end suites (DESIGN.md 2.2 and 2.3)."""

import json
import re
import unittest
import uuid

import harness

RFC3339_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
BT_KEYS = {"transactionId", "requestId", "operation", "timestamp",
           "customer"}
CUSTOMER_KEYS = {"refId", "externalId", "customName", "customerSegment",
                 "state", "testCustomer", "customAttributes", "version",
                 "createdAt", "modifiedAt"}
STATE_KEYS = {"state", "stateReason", "stateValidFrom"}

UPDATE = "/v1/casm/customers/update-custom-attributes"
CREATE = "/v1/casm/customers/create"
STATE = "/v1/casm/customers/update-state"
READ = "/v1/casm/customers/read"


def is_uuid(text):
    try:
        return str(uuid.UUID(text)) == text.lower()
    except (ValueError, AttributeError, TypeError):
        return False


def customer_substring(raw):
    """The customer object of a Business Transaction exactly as the raw
    response spells it (text), or None when it cannot be found."""
    text = raw.decode("utf-8")
    at = text.find('"customer"')
    if at < 0:
        return None
    colon = text.index(":", at + len('"customer"'))
    start = colon + 1
    while text[start] in " \t\r\n":
        start += 1
    _, end = json.JSONDecoder().raw_decode(text, start)
    return text[start:end]


class Case(harness.DumpOnFailure, unittest.TestCase):
    """Base of every end-to-end test case."""

    maxDiff = 4000

    @property
    def stack(self):
        return harness.STACK

    def assertJsonResponse(self, r):
        ctype = r.headers.get("Content-Type", "")
        self.assertTrue(ctype.startswith("application/json"),
                        "Content-Type %r" % ctype)
        self.assertIsInstance(r.body, (dict, list),
                              "body is not JSON: %r" % (r.raw[:300],))

    def assertError(self, r, status, code, field=None):
        """The error body of DESIGN.md 2.3 with this status and code; when
        field is given, errors names it (exactly, or as a prefix of a
        dotted path)."""
        self.assertEqual(r.status, status,
                         "expected %d %s, got %d %r"
                         % (status, code, r.status, r.raw[:500]))
        self.assertJsonResponse(r)
        body = r.body
        self.assertIsInstance(body, dict)
        self.assertEqual(body.get("status"), status, body)
        self.assertEqual(body.get("code"), code, body)
        self.assertIsInstance(body.get("message"), str, body)
        self.assertTrue(body["message"], body)
        allowed = {"status", "code", "message", "parameter", "requestId",
                   "errors"}
        self.assertLessEqual(set(body), allowed, body)
        if "errors" in body:
            self.assertIsInstance(body["errors"], list)
            for e in body["errors"]:
                self.assertEqual(set(e), {"field", "code", "message"}, e)
        if field is not None:
            fields = [e.get("field") for e in body.get("errors", [])]
            self.assertTrue(
                any(f == field or (f or "").startswith(field + ".")
                    for f in fields),
                "no error names %r: %r" % (field, body))
        return body

    def assertCustomer(self, customer):
        """Every field of DESIGN.md 2.2's customer, with its type."""
        self.assertIsInstance(customer, dict)
        self.assertEqual(set(customer), CUSTOMER_KEYS, customer)
        self.assertTrue(is_uuid(customer["refId"]), customer["refId"])
        self.assertIsInstance(customer["externalId"], str)
        for k in ("customName", "customerSegment"):
            self.assertTrue(customer[k] is None
                            or isinstance(customer[k], str), customer)
        state = customer["state"]
        self.assertEqual(set(state), STATE_KEYS, state)
        self.assertIn(state["state"],
                      ("INACTIVE", "ACTIVE", "SUSPENDED", "DEACTIVATED"))
        self.assertTrue(state["stateReason"] is None
                        or isinstance(state["stateReason"], str))
        self.assertRegex(state["stateValidFrom"], RFC3339_MS)
        self.assertIsInstance(customer["testCustomer"], bool)
        self.assertIsInstance(customer["customAttributes"], dict)
        for k, v in customer["customAttributes"].items():
            self.assertIsInstance(v, str, (k, v))
        self.assertIsInstance(customer["version"], int)
        self.assertNotIsInstance(customer["version"], bool)
        self.assertGreaterEqual(customer["version"], 1)
        self.assertRegex(customer["createdAt"], RFC3339_MS)
        self.assertRegex(customer["modifiedAt"], RFC3339_MS)
        self.assertGreaterEqual(customer["modifiedAt"], customer["createdAt"])

    def assertBT(self, r, status, operation, request_id):
        """A Business Transaction answer; returns its customer."""
        self.assertEqual(r.status, status,
                         "expected %d, got %d %r"
                         % (status, r.status, r.raw[:500]))
        self.assertJsonResponse(r)
        bt = r.body
        self.assertEqual(set(bt), BT_KEYS, bt)
        self.assertTrue(is_uuid(bt["transactionId"]), bt["transactionId"])
        self.assertEqual(bt["requestId"], request_id)
        self.assertEqual(bt["operation"], operation)
        self.assertRegex(bt["timestamp"], RFC3339_MS)
        self.assertCustomer(bt["customer"])
        return bt["customer"]

    # ---- SQL views of one customer ------------------------------------

    def row(self, ref_id):
        """(version, custom_attributes as dict, state) from PostgreSQL."""
        self.assertTrue(is_uuid(ref_id))
        out = self.stack.sql(
            "SELECT version, state, custom_attributes::text "
            "FROM casm.customers WHERE ref_id = '%s'" % ref_id)
        self.assertTrue(out, "no row for %s" % ref_id)
        version, state, attributes = out.split("|", 2)
        return int(version), json.loads(attributes), state

    def count(self, query):
        return int(self.stack.sql(query))
