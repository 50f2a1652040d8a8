#!/usr/bin/env python3
"""The running gateway against its OpenAPI document (openapi.yaml).

Every path and every status that the document lists is provoked, and every
answer is checked against the document: the status must be documented for
that operation, the Content-Type must be one of its media types, the body
must validate against its schema, and its headers must be there and valid.
The last test fails when a documented (path, method, status), an error
code or a field error code was never seen, so the document cannot promise
what casm does not do, nor casm do what the document does not say.

The document is read from the JSON bundle that the lint step writes
(tests/openapi/lint.sh, the CTest entry openapi_lint), so this suite needs
no YAML parser; it checks that the gateway serves the very YAML that bundle
was made from. Schemas are checked by a small validator of the JSON Schema
keywords openapi.yaml uses; a keyword it does not know is an error, never
silently passed.

Statuses that need a fault or a setting: 413 from a second gateway with a
small MAX_BODY_BYTES, 504 from that gateway while the validator is stopped
(SIGSTOP), 503 and 401 from a third gateway that has API keys and whose
broker port has no broker, 503 from /ready while Kafka is down, and 500
from a CHECK constraint that this suite adds to casm.customers for the
length of one test, so that PostgreSQL refuses the data."""

import hashlib
import json
import os
import re
import signal
import sys
import threading
import time
import unittest
import urllib.parse
import uuid

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from common import Case, CREATE, READ, STATE, UPDATE  # noqa: E402

SPEC = None
SMALL = None            # index in http_ports: MAX_BODY_BYTES 2048, 800 ms
NO_BROKER = None        # index in http_ports: no broker, API keys
API_KEY = "contract-" + uuid.uuid4().hex
AUTHORIZED = {"Authorization": "Bearer " + API_KEY}
SMALL_BODY = 2048
SMALL_TIMEOUT_MS = 800

EXERCISED = set()       # (path, method, status) seen and checked
ERROR_CODES = set()     # Error.code values seen
FIELD_CODES = set()     # FieldError.code values seen


# ---- a JSON Schema validator for the keywords openapi.yaml uses --------

ANNOTATIONS = {"description", "default", "example", "examples", "title",
               "summary", "deprecated", "readOnly", "writeOnly",
               "$comment"}
FORMATS = {
    "uuid": re.compile(r"\A[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                       r"[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\Z"),
    "date-time": re.compile(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}"
                            r"(\.\d+)?(Z|[+-]\d{2}:\d{2})\Z"),
}
TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float))
    and not isinstance(v, bool),
    "null": lambda v: v is None,
}


class SchemaKeywordError(Exception):
    """openapi.yaml uses a keyword this validator does not check."""


def pointer(document, ref):
    if not ref.startswith("#/"):
        raise SchemaKeywordError("only local $ref is supported: %r" % ref)
    node = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def resolve(node):
    """Follows $ref (an object that is only a $ref) to its target."""
    while isinstance(node, dict) and set(node) == {"$ref"}:
        node = pointer(SPEC, node["$ref"])
    return node


def _pattern(text):
    # ECMA-262's $ matches only at the very end; Python's also before a
    # final newline.
    if text.endswith("$") and not text.endswith("\\$"):
        text = text[:-1] + r"\Z"
    return re.compile(text)


def schema_errors(schema, value, where="$"):
    """The list of ways value breaks schema (empty when it validates)."""
    if schema is True or schema == {}:
        return []
    if schema is False:
        return ["%s: no value is allowed here" % where]
    errors = []
    unknown = set(schema) - ANNOTATIONS - {
        "$ref", "type", "enum", "const", "required", "properties",
        "additionalProperties", "propertyNames", "maxProperties",
        "minProperties", "items", "minItems", "maxItems", "minLength",
        "maxLength", "pattern", "minimum", "maximum", "format", "oneOf",
        "anyOf", "allOf"}
    if unknown:
        raise SchemaKeywordError("%s: keywords %s" % (where, sorted(unknown)))

    if "$ref" in schema:
        errors += schema_errors(pointer(SPEC, schema["$ref"]), value, where)
    if "type" in schema:
        types = schema["type"]
        types = types if isinstance(types, list) else [types]
        if not any(TYPES[t](value) for t in types):
            return errors + ["%s: %r is not of type %s"
                             % (where, _short(value), types)]
    if "enum" in schema and value not in schema["enum"]:
        errors.append("%s: %r not in %s" % (where, _short(value),
                                            schema["enum"]))
    if "const" in schema and value != schema["const"]:
        errors.append("%s: %r is not %r" % (where, _short(value),
                                            schema["const"]))

    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append("%s: shorter than %d" % (where,
                                                   schema["minLength"]))
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append("%s: longer than %d" % (where, schema["maxLength"]))
        if "pattern" in schema and \
                not _pattern(schema["pattern"]).search(value):
            errors.append("%s: %r does not match %s"
                          % (where, _short(value), schema["pattern"]))
        if "format" in schema:
            if schema["format"] not in FORMATS:
                raise SchemaKeywordError("%s: format %s"
                                         % (where, schema["format"]))
            if not FORMATS[schema["format"]].match(value):
                errors.append("%s: %r is not a %s"
                              % (where, _short(value), schema["format"]))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append("%s: below %r" % (where, schema["minimum"]))
        if "maximum" in schema and value > schema["maximum"]:
            errors.append("%s: above %r" % (where, schema["maximum"]))

    if isinstance(value, dict):
        for name in schema.get("required", []):
            if name not in value:
                errors.append("%s: %s is required" % (where, name))
        if "maxProperties" in schema and \
                len(value) > schema["maxProperties"]:
            errors.append("%s: more than %d members"
                          % (where, schema["maxProperties"]))
        if "minProperties" in schema and \
                len(value) < schema["minProperties"]:
            errors.append("%s: fewer than %d members"
                          % (where, schema["minProperties"]))
        properties = schema.get("properties", {})
        for name, member in value.items():
            at = "%s.%s" % (where, name)
            if "propertyNames" in schema:
                errors += schema_errors(schema["propertyNames"], name,
                                        at + " (name)")
            if name in properties:
                errors += schema_errors(properties[name], member, at)
            elif "additionalProperties" in schema:
                errors += schema_errors(schema["additionalProperties"],
                                        member, at)
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append("%s: fewer than %d items"
                          % (where, schema["minItems"]))
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append("%s: more than %d items"
                          % (where, schema["maxItems"]))
        if "items" in schema:
            for i, item in enumerate(value):
                errors += schema_errors(schema["items"], item,
                                        "%s[%d]" % (where, i))

    for sub in schema.get("allOf", []):
        errors += schema_errors(sub, value, where)
    if "anyOf" in schema and not any(
            not schema_errors(sub, value, where) for sub in schema["anyOf"]):
        errors.append("%s: matches none of anyOf" % where)
    if "oneOf" in schema:
        passing = sum(1 for sub in schema["oneOf"]
                      if not schema_errors(sub, value, where))
        if passing != 1:
            errors.append("%s: matches %d of oneOf, not exactly 1"
                          % (where, passing))
    return errors


def _short(value):
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ---- the document ------------------------------------------------------

def load_spec():
    build = os.environ.get("CASM_BUILD_DIR", "build")
    tools = os.path.join(build, "openapi-tools")
    path = os.path.join(tools, "openapi.json")
    if not os.path.exists(path):
        raise RuntimeError("%s is missing: run the lint first (ctest -R "
                           "openapi_lint, or tests/openapi/lint.sh)" % path)
    with open(path) as f:
        spec = json.load(f)
    with open(os.path.join(tools, "openapi.sha256")) as f:
        spec["x-test-sha256"] = f.read().strip()
    return spec


def operation(path, method):
    """The operation a request gets: the path's operation for this
    method, or, for another method, the path's one operation (whose
    responses list the 405)."""
    item = SPEC["paths"][path]
    methods = [m for m in item if m in ("get", "put", "post", "delete",
                                        "patch", "head", "options")]
    if method.lower() in methods:
        return method.lower(), item[method.lower()]
    assert len(methods) == 1, (path, methods)
    return methods[0], item[methods[0]]


def documented():
    """Every (path, method, status) of the document."""
    out = set()
    for path, item in SPEC["paths"].items():
        for method, op in item.items():
            if method in ("get", "put", "post", "delete", "patch"):
                for status in op["responses"]:
                    out.add((path, method, int(status)))
    return out


def setUpModule():
    global SPEC, SMALL, NO_BROKER
    SPEC = load_spec()
    stack = harness.start_module_stack(name="openapi")

    small_port = harness._Ports.one()
    stack.start_process("gateway", "gateway-small", {
        "HTTP_PORT": str(small_port),
        "MAX_BODY_BYTES": str(SMALL_BODY),
        "REQUEST_TIMEOUT_MS": str(SMALL_TIMEOUT_MS)})
    stack.http_ports.append(small_port)
    SMALL = len(stack.http_ports) - 1

    # A block of ports that nobody binds: this gateway has no broker. It
    # has API keys, the one given here.
    keys = os.path.join(stack.tmp, "api-keys")
    with open(keys, "w") as f:
        f.write("# label sha256\ncontract %s\n"
                % hashlib.sha256(API_KEY.encode()).hexdigest())
    lonely_port = harness._Ports.one()
    stack.start_process("gateway", "gateway-no-broker", {
        "HTTP_PORT": str(lonely_port),
        "BROKER_PORT": str(harness._Ports.block(6)),
        "API_KEYS_FILE": keys})
    stack.http_ports.append(lonely_port)
    NO_BROKER = len(stack.http_ports) - 1

    for index in (SMALL, NO_BROKER):
        stack.wait_for(lambda: _healthy(stack, index), 15,
                       what="gateway %d up" % index)


def _healthy(stack, index):
    try:
        return stack.http("GET", "/health", gateway=index,
                          timeout=2).status == 200
    except OSError:
        return False


def tearDownModule():
    harness.stop_module_stack(dump=harness.DumpOnFailure.failed)


class Contract(Case):
    """Sends requests and checks each answer against the document."""

    def call(self, method, url, status, body=None, headers=None,
             gateway=0, fresh=False):
        """Sends the request, expects status, and checks the answer
        against the operation of url's path. Returns the Response."""
        r = self.stack.http(method, url, body, headers=headers,
                            gateway=gateway, fresh=fresh)
        self.assertEqual(r.status, status, "%s %s: %d %r"
                         % (method, url, r.status, r.raw[:400]))
        path = urllib.parse.urlsplit(url).path
        self.check(r, path, method)
        return r

    def check(self, r, path, method, response=None):
        """Checks r against the document: the response of its path and
        method (or the given response object, for unknown paths)."""
        if response is None:
            self.assertIn(path, SPEC["paths"], "undocumented path")
            name, op = operation(path, method)
            self.assertIn(str(r.status), op["responses"],
                          "%s %s answered %d, which is not documented"
                          % (method, path, r.status))
            response = resolve(op["responses"][str(r.status)])
            EXERCISED.add((path, name, r.status))

        # Headers: the required ones are there, and every documented one
        # that is there is valid. casm's own headers are never sent
        # undocumented.
        documented_headers = {k.lower(): resolve(v) for k, v in
                              response.get("headers", {}).items()}
        for name, header in documented_headers.items():
            value = r.headers.get(name)
            if value is None:
                self.assertFalse(header.get("required"),
                                 "header %s missing" % name)
                continue
            errors = schema_errors(header["schema"], value, name)
            self.assertEqual(errors, [], "header %s: %r" % (name, value))
        for name in ("Idempotent-Replayed", "Retry-After", "Allow",
                     "X-Request-Id", "WWW-Authenticate"):
            if r.headers.get(name) is not None:
                self.assertIn(name.lower(), documented_headers,
                              "%s sent with %d but not documented"
                              % (name, r.status))

        # The body: its media type is documented, and it validates.
        ctype = r.headers.get("Content-Type", "")
        media = ctype.split(";")[0].strip().lower()
        content = response.get("content", {})
        self.assertIn(media, content, "Content-Type %r not documented"
                      % ctype)
        if media == "application/json":
            self.assertEqual(ctype, "application/json; charset=utf-8")
            value = json.loads(r.raw)
        else:
            value = r.raw.decode("utf-8")
        errors = schema_errors(content[media]["schema"], value)
        self.assertEqual(errors, [], "%s %s %d: %r"
                         % (method, path, r.status, r.raw[:600]))

        if media == "application/json" and r.status >= 400 \
                and "code" in value and "message" in value:
            ERROR_CODES.add(value["code"])
            for e in value.get("errors", []):
                FIELD_CODES.add(e["code"])
        return value

    def request_schema(self, path, method):
        _, op = operation(path, method)
        return op["requestBody"]["content"]["application/json"]["schema"]

    def assertRequestValid(self, path, method, body):
        self.assertEqual(schema_errors(self.request_schema(path, method),
                                       body), [], body)

    def assertRequestInvalid(self, path, method, body):
        self.assertNotEqual(schema_errors(self.request_schema(path, method),
                                          body), [],
                            "the document accepts %r" % (body,))

    def create(self, **fields):
        body = self.stack.create_body(**fields)
        self.assertRequestValid(CREATE, "POST", body)
        r = self.call("POST", CREATE, 201, body)
        return r.body["customer"]


# ---- the operations ----------------------------------------------------

class TestOperations(Contract):

    def test_create_and_replay(self):
        body = self.stack.create_body(
            custom_name="Jana Nováková", customer_segment="B2C",
            test_customer=True, custom_attributes={"tier": "silver"},
            state="INACTIVE", state_reason="waiting for the contract")
        self.assertRequestValid(CREATE, "POST", body)
        trace = "trace-" + uuid.uuid4().hex
        r = self.call("POST", CREATE, 201, body,
                      headers={"X-Request-Id": trace})
        self.assertEqual(r.headers.get("X-Request-Id"), trace)
        self.assertIsNone(r.headers.get("Idempotent-Replayed"))

        again = self.call("POST", CREATE, 201, body)
        self.assertEqual(again.headers.get("Idempotent-Replayed"), "true")
        self.assertEqual(again.body, r.body)

    def test_update_and_replay(self):
        customer = self.create(custom_attributes={"a": "1"})
        body = {"requestId": self.stack.request_id(),
                "customer": {"externalId": customer["externalId"]},
                "customAttributes": {"b": "2", "a": None}, "merge": True}
        self.assertRequestValid(UPDATE, "PUT", body)
        r = self.call("PUT", UPDATE, 200, body)
        self.assertEqual(r.body["customer"]["customAttributes"], {"b": "2"})
        again = self.call("PUT", UPDATE, 200, body)
        self.assertEqual(again.headers.get("Idempotent-Replayed"), "true")

    def test_update_state(self):
        customer = self.create()
        body = {"requestId": self.stack.request_id(),
                "customer": {"refId": customer["refId"]},
                "state": {"state": "SUSPENDED", "stateReason": None}}
        self.assertRequestValid(STATE, "PUT", body)
        r = self.call("PUT", STATE, 200, body)
        self.assertEqual(r.body["customer"]["state"]["state"], "SUSPENDED")

    def test_read(self):
        customer = self.create(custom_attributes={"k": "v"})
        read_op = SPEC["paths"][READ]["get"]
        params = {p["name"]: p for p in map(resolve, read_op["parameters"])}
        for name in ("refId", "externalId"):
            value = customer[name]
            self.assertEqual(schema_errors(params[name]["schema"], value),
                             [])
            r = self.call("GET", READ + "?" + urllib.parse.urlencode(
                {name: value}), 200)
            self.assertEqual(r.body, customer)

    def test_limits_as_documented(self):
        # What casm accepts at its limits, the document accepts too.
        customer = self.create()
        for attributes in ({"k" * 128: "v" * 4096},
                           {"key%03d" % i: "" for i in range(256)}):
            body = {"requestId": "r" * 96 + uuid.uuid4().hex,
                    "customer": {"refId": customer["refId"].upper()},
                    "customAttributes": attributes}
            self.assertRequestValid(UPDATE, "PUT", body)
            self.call("PUT", UPDATE, 200, body)

    def test_health_metrics_document(self):
        self.call("GET", "/health", 200)
        r = self.call("GET", "/metrics", 200)
        self.assertIn("# TYPE", r.raw.decode())
        r = self.call("GET", "/openapi.yaml", 200)
        self.assertTrue(r.raw.startswith(b"openapi: 3.1"), r.raw[:40])
        self.assertEqual(hashlib.sha256(r.raw).hexdigest(),
                         SPEC["x-test-sha256"],
                         "the gateway serves another openapi.yaml than the "
                         "one linted: rebuild")
        with open(os.path.join(self.stack.source_dir, "openapi.yaml"),
                  "rb") as f:
            self.assertEqual(r.raw, f.read())

    def test_ready(self):
        self.call("GET", "/ready", 200)

    def test_request_id_header(self):
        r = self.call("GET", "/health", 200,
                      headers={"X-Request-Id": "has space"})
        self.assertRegex(r.headers.get("X-Request-Id"), r"^[0-9a-f]{32}$")
        r = self.call("GET", "/health", 200,
                      headers={"X-Request-Id": "x" * 65})
        self.assertRegex(r.headers.get("X-Request-Id"), r"^[0-9a-f]{32}$")
        r = self.call("GET", "/health", 200,
                      headers={"X-Request-Id": "x" * 64})
        self.assertEqual(r.headers.get("X-Request-Id"), "x" * 64)


# ---- the errors --------------------------------------------------------

class TestErrors(Contract):

    def update_body(self, ref, **changes):
        body = {"requestId": self.stack.request_id(), "customer": ref,
                "customAttributes": {"k": "v"}}
        body.update(changes)
        return body

    def test_validation_codes(self):
        """Each field error code, from a request that casm and the
        document both refuse."""
        customer = self.create()
        ref = {"refId": customer["refId"]}
        cases = [
            ("REQUIRED", {"customer": ref, "customAttributes": {}}),
            ("INVALID_TYPE", self.update_body(ref, merge="yes")),
            ("TOO_SHORT", self.update_body(ref, requestId="")),
            ("TOO_LONG", self.update_body(ref, customAttributes={
                "k" * 129: "v"})),
            ("TOO_MANY", self.update_body(ref, customAttributes={
                "k%d" % i: "v" for i in range(257)})),
            ("INVALID_VALUE", self.update_body(ref, customAttributes={
                "k": None})),
            ("INVALID_FORMAT", self.update_body(ref, requestId="a b")),
            ("INVALID_FORMAT", self.update_body({"refId": "not-a-uuid"})),
            ("INVALID_VALUE", self.update_body({})),
            ("UNKNOWN_FIELD", self.update_body(ref, extra=1)),
            ("TOO_MANY_ERRORS", self.update_body(ref, **{
                "extra%d" % i: 1 for i in range(100)})),
        ]
        for code, body in cases:
            self.assertRequestInvalid(UPDATE, "PUT", body)
            r = self.call("PUT", UPDATE, 400, body)
            self.assertEqual(r.body["code"], "CASM-VALIDATION")
            self.assertIn(code, [e["code"] for e in r.body["errors"]],
                          r.body)

        for code, raw in (("MALFORMED_JSON", b'{"requestId": '),
                          ("INVALID_UTF8", b'{"requestId": "\xff\xfe"}'),
                          ("TOO_DEEP", b"[" * 40 + b"]" * 40)):
            r = self.call("PUT", UPDATE, 400, raw)
            self.assertEqual([e["code"] for e in r.body["errors"]], [code])

        create = self.stack.create_body(state="SUSPENDED")
        self.assertRequestInvalid(CREATE, "POST", create)
        self.call("POST", CREATE, 400, create)
        state = {"requestId": self.stack.request_id(), "customer": ref,
                 "state": {"state": "GONE"}}
        self.assertRequestInvalid(STATE, "PUT", state)
        self.call("PUT", STATE, 400, state)
        self.call("GET", READ, 400)

    def test_business_errors(self):
        customer = self.create()
        ref = {"refId": customer["refId"]}
        r = self.call("PUT", UPDATE, 400,
                      self.update_body({"refId": str(uuid.uuid4())}))
        self.assertEqual(r.body["code"], "CASM-ENTITY-NOT-FOUND")
        r = self.call("POST", CREATE, 400, self.stack.create_body(
            external_id=customer["externalId"]))
        self.assertEqual(r.body["code"], "CASM-EXTERNAL-ID-EXISTS")

        self.call("PUT", STATE, 200, {
            "requestId": self.stack.request_id(), "customer": ref,
            "state": {"state": "DEACTIVATED"}})
        r = self.call("PUT", UPDATE, 400, self.update_body(ref))
        self.assertEqual(r.body["code"], "CASM-STATE-DEACTIVATED")
        r = self.call("PUT", STATE, 400, {
            "requestId": self.stack.request_id(), "customer": ref,
            "state": {"state": "ACTIVE"}})
        self.assertEqual(r.body["code"], "CASM-STATE-DEACTIVATED")

        r = self.call("GET", READ + "?refId=" + str(uuid.uuid4()), 404)
        self.assertEqual(r.body["code"], "NOT-FOUND")

    def test_request_id_reused(self):
        customer = self.create()
        ref = {"refId": customer["refId"]}
        rid = self.stack.request_id()
        self.call("PUT", UPDATE, 200, self.update_body(ref, requestId=rid))
        self.call("PUT", UPDATE, 422, self.update_body(
            ref, requestId=rid, customAttributes={"other": "set"}))
        self.call("PUT", STATE, 422, {"requestId": rid, "customer": ref,
                                      "state": {"state": "ACTIVE"}})
        self.call("POST", CREATE, 422, self.stack.create_body(
            request_id=rid))

    def test_unknown_path(self):
        not_found = resolve(SPEC["components"]["responses"]["NotFound"])
        for method, path in (("GET", "/nope"),
                             ("GET", "/v1/casm/customers/read/x")):
            r = self.stack.http(method, path)
            self.assertEqual(r.status, 404)
            self.check(r, path, method, response=not_found)

    def test_wrong_method(self):
        for path, item in SPEC["paths"].items():
            documented_method = next(m for m in item
                                     if m in ("get", "put", "post"))
            wrong = "DELETE" if documented_method != "get" else "POST"
            body = {} if wrong == "POST" else None
            r = self.call(wrong, path, 405, body)
            self.assertEqual(r.headers.get("Allow"),
                             documented_method.upper())

    def test_media_type(self):
        for method, path in (("PUT", UPDATE), ("POST", CREATE),
                             ("PUT", STATE)):
            self.call(method, path, 415, "{}",
                      headers={"Content-Type": "text/plain"})

    def test_payload_too_large(self):
        customer = self.create()
        body = self.update_body({"refId": customer["refId"]},
                                customAttributes={"k": "v" * SMALL_BODY})
        for method, path in (("PUT", UPDATE), ("POST", CREATE),
                             ("PUT", STATE)):
            self.call(method, path, 413, body, gateway=SMALL, fresh=True)

    def test_internal(self):
        """PostgreSQL refuses the data (a CHECK constraint this test adds
        for its own length): 500, nothing recorded."""
        marker = "contract-test-500-" + uuid.uuid4().hex[:8]
        customer = self.create()
        ref = {"refId": customer["refId"]}
        self.stack.sql(
            "ALTER TABLE casm.customers ADD CONSTRAINT contract_test_500 "
            "CHECK (state_reason IS DISTINCT FROM '%s' "
            "AND NOT custom_attributes ? '%s')" % (marker, marker))
        try:
            rid = self.stack.request_id()
            r = self.call("PUT", UPDATE, 500, self.update_body(
                ref, requestId=rid, customAttributes={marker: "x"}))
            self.assertEqual(r.body.get("requestId"), rid)
            answers = [r, self.call("POST", CREATE, 500,
                                    self.stack.create_body(
                                        state="ACTIVE", state_reason=marker)),
                       self.call("PUT", STATE, 500, {
                           "requestId": self.stack.request_id(),
                           "customer": ref,
                           "state": {"state": "SUSPENDED",
                                     "stateReason": marker}})]
        finally:
            self.stack.sql("ALTER TABLE casm.customers "
                           "DROP CONSTRAINT contract_test_500")
        # What PostgreSQL said stays in the log: the client learns only
        # that it failed.
        for a in answers:
            text = a.raw.decode("utf-8", "replace").lower()
            for detail in ("contract_test_500", "constraint", "violates",
                           "casm.customers"):
                self.assertNotIn(detail, text, a.body)
        self.assertEqual(self.count(
            "SELECT count(*) FROM casm.requests WHERE request_id = '%s'"
            % rid), 0)
        self.assertEqual(self.row(customer["refId"])[0], 1)


class TestFaults(Contract):

    def test_no_broker(self):
        """A gateway whose broker is not there: 503 with Retry-After for
        everything that needs the pipeline, /ready included."""
        customer = self.create()
        ref = {"refId": customer["refId"]}
        requests = [
            ("PUT", UPDATE, {"requestId": "r-1", "customer": ref,
                             "customAttributes": {}}),
            ("POST", CREATE, self.stack.create_body()),
            ("PUT", STATE, {"requestId": "r-2", "customer": ref,
                            "state": {"state": "ACTIVE"}}),
            ("GET", READ + "?refId=" + customer["refId"], None),
        ]
        for method, url, body in requests:
            r = self.call(method, url, 503, body, gateway=NO_BROKER,
                          headers=AUTHORIZED)
            self.assertEqual(r.body["code"], "SERVICE-UNAVAILABLE")
        r = self.call("GET", "/ready", 503, gateway=NO_BROKER)
        self.assertEqual(r.body["broker"], "down", r.body)

    def test_no_broker_concurrent(self):
        """Many clients at once on keep-alive connections, no broker: the
        gateway sends the requests of one loop turn together, and when the
        broker refuses them every one is answered 503, none left to time
        out (504)."""
        statuses = []
        lock = threading.Lock()

        def client(n):
            for i in range(5):
                r = self.stack.http(
                    "PUT", UPDATE,
                    {"requestId": "c-%d-%d" % (n, i),
                     "customer": {"externalId": "CRM-x"},
                     "customAttributes": {}},
                    gateway=NO_BROKER, headers=AUTHORIZED)
                with lock:
                    statuses.append((r.status, r.body.get("code")))

        threads = [threading.Thread(target=client, args=(n,))
                   for n in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(len(statuses), 80)
        self.assertEqual(set(statuses), {(503, "SERVICE-UNAVAILABLE")})

    def test_unauthorized(self):
        """A gateway with API keys: the operations need one, the
        operational endpoints do not."""
        ref = {"externalId": "CRM-x"}
        requests = [
            ("PUT", UPDATE, {"requestId": "r-1", "customer": ref,
                             "customAttributes": {}}),
            ("POST", CREATE, self.stack.create_body()),
            ("PUT", STATE, {"requestId": "r-2", "customer": ref,
                            "state": {"state": "ACTIVE"}}),
            ("GET", READ + "?externalId=CRM-x", None),
        ]
        for headers in (None, {"Authorization": "Bearer wrong"},
                        {"Authorization": API_KEY}):
            for method, url, body in requests:
                r = self.call(method, url, 401, body, gateway=NO_BROKER,
                              headers=headers)
                self.assertEqual(r.body["code"], "AUTH-UNAUTHORIZED")
        self.call("GET", "/health", 200, gateway=NO_BROKER)

    def test_kafka_down_not_ready(self):
        self.stack.kafka_down()
        try:
            def not_ready():
                r = self.stack.http("GET", "/ready", timeout=10)
                return r if r.status == 503 else None
            r = self.stack.wait_for(not_ready, 30, interval=0.2,
                                    what="/ready 503 with Kafka down")
            self.check(r, "/ready", "GET")
            self.assertEqual(r.body.get("kafka"), "down", r.body)
        finally:
            self.stack.kafka_up()
        self.stack.wait_ready(30)

    def test_timeout(self):
        """The validator stopped (SIGSTOP): every operation times out on
        the gateway with an 800 ms deadline, 504."""
        customer = self.create()
        ref = {"refId": customer["refId"]}
        requests = [
            ("PUT", UPDATE, {"requestId": self.stack.request_id(),
                             "customer": ref, "customAttributes": {}}),
            ("POST", CREATE, self.stack.create_body()),
            ("PUT", STATE, {"requestId": self.stack.request_id(),
                            "customer": ref,
                            "state": {"state": "ACTIVE"}}),
            ("GET", READ + "?refId=" + customer["refId"], None),
        ]
        answers = [None] * len(requests)

        def send(i, method, url, body):
            try:
                answers[i] = self.stack.http(method, url, body,
                                             gateway=SMALL, timeout=15)
            except Exception as e:  # reported below
                answers[i] = e
            finally:
                self.stack.close_connections()

        validator = self.stack.kill_stage("validator", signal.SIGSTOP)
        try:
            threads = [threading.Thread(target=send, args=(i,) + request)
                       for i, request in enumerate(requests)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(20)
        finally:
            validator.signal(signal.SIGCONT)

        for (method, url, _), r in zip(requests, answers):
            self.assertIsInstance(r, harness.Response, (method, url, r))
            self.assertEqual(r.status, 504, (method, url, r.raw[:300]))
            self.check(r, urllib.parse.urlsplit(url).path, method)
            self.assertEqual(r.body["code"], "TIMEOUT")
        self.stack.wait_ready(30)
        self.assertEqual(self.stack.all_alive(), [])


class TestZzCoverage(Case):
    """Runs last (unittest orders classes by name): everything the
    document promises was seen."""

    def test_every_documented_status_exercised(self):
        missing = documented() - EXERCISED
        self.assertEqual(missing, set(), "documented but never provoked")

    def test_every_error_code_seen(self):
        error = SPEC["components"]["schemas"]["Error"]
        field = SPEC["components"]["schemas"]["FieldError"]
        self.assertEqual(set(error["properties"]["code"]["enum"])
                         - ERROR_CODES, set())
        self.assertEqual(set(field["properties"]["code"]["enum"])
                         - FIELD_CODES, set())

    def test_validator_refuses_what_it_should(self):
        # The schema checker itself: a test that cannot fail is a defect.
        bt = {"$ref": "#/components/schemas/BusinessTransaction"}
        self.assertNotEqual(schema_errors(bt, {}), [])
        self.assertNotEqual(schema_errors(
            {"$ref": "#/components/schemas/Timestamp"},
            "2026-12-03T18:00:00.123Z\n"), [])
        self.assertNotEqual(schema_errors(
            {"$ref": "#/components/schemas/CustomerReference"},
            {"refId": str(uuid.uuid4()), "externalId": "x"}), [])
        with self.assertRaises(SchemaKeywordError):
            schema_errors({"patternProperties": {}}, {})


if __name__ == "__main__":
    unittest.main(verbosity=2)
