#!/usr/bin/env python3
"""Security end to end (docs/security.md): API keys, HTTPS, CURVE between
the processes and the broker, and a gateway under slow and oversized
clients, against one real stack.

The stack runs with API_KEYS_FILE and with CURVE on every ZeroMQ link (keys
from casm-keygen). Extra gateways are started beside the stack's own: one
speaking HTTPS with a self-signed certificate made by openssl, one with
tight connection limits for the slow clients, one logging at debug level.
The CURVE test stops the stack's only validator, shows that validators
with a wrong key or none get no work, then starts one with a right key and
shows that it does."""

import http.client
import os
import select
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from common import Case, CREATE, READ  # noqa: E402

BUILD_DIR = None
KEYS_DIR = None
API_KEY = None
API_KEYS_FILE = None
CURVE = {}          # the stack's CURVE variables
GUARDED = {"HTTP_MAX_CONNECTIONS": "100", "HTTP_MAX_CONNECTIONS_PER_IP": "20",
           "HTTP_RECEIVE_TIMEOUT_S": "5"}


def keygen(*args):
    """casm-keygen's VARIABLE=value lines as a dict, and its comment lines
    (the line for the key file) as a list."""
    out = subprocess.run(
        [os.path.join(BUILD_DIR, "tools", "keygen", "casm-keygen")] +
        list(args), stdout=subprocess.PIPE, check=True,
        timeout=10).stdout.decode()
    values, comments = {}, []
    for line in out.splitlines():
        if line.startswith("#"):
            comments.append(line[1:].strip())
        elif "=" in line:
            name, value = line.split("=", 1)
            values[name] = value
    return values, comments


def write_api_keys(path, entries):
    """entries: (label, key) pairs, written as LABEL SHA256HEX."""
    import hashlib
    with open(path + ".tmp", "w") as f:
        f.write("# written by test_security\n\n")
        for label, key in entries:
            f.write("%s %s\n" % (label, hashlib.sha256(key.encode())
                                 .hexdigest()))
    os.replace(path + ".tmp", path)


def setUpModule():
    global BUILD_DIR, KEYS_DIR, API_KEY, API_KEYS_FILE
    here = os.path.dirname(os.path.abspath(__file__))
    source = os.environ.get("CASM_SOURCE_DIR",
                            os.path.normpath(os.path.join(here, "..", "..")))
    BUILD_DIR = os.environ.get("CASM_BUILD_DIR",
                               os.path.join(source, "build"))
    KEYS_DIR = tempfile.mkdtemp(prefix="casm-e2e-keys-")

    values, comments = keygen("api", "crm")
    API_KEY = values["API_KEY"]
    API_KEYS_FILE = os.path.join(KEYS_DIR, "api-keys")
    with open(API_KEYS_FILE, "w") as f:
        f.write("# the CRM\n%s\n" % comments[-1])

    server, _ = keygen("server")
    client, comments = keygen("client", "stages")
    clients_file = os.path.join(KEYS_DIR, "curve-clients")
    with open(clients_file, "w") as f:
        f.write("# every stage shares one key here\n%s\n" % comments[-1])
    CURVE.update({
        "CURVE_SERVER_SECRET": server["CURVE_SERVER_SECRET"],
        "CURVE_SERVER_PUBLIC": server["CURVE_SERVER_PUBLIC"],
        "CURVE_CLIENT_SECRET": client["CURVE_CLIENT_SECRET"],
        "CURVE_CLIENT_PUBLIC": client["CURVE_CLIENT_PUBLIC"],
        "CURVE_CLIENTS_FILE": clients_file,
    })
    env = dict(CURVE)
    env["API_KEYS_FILE"] = API_KEYS_FILE
    harness.start_module_stack(name="security", env=env)


def tearDownModule():
    harness.stop_module_stack(dump=harness.DumpOnFailure.failed)
    if KEYS_DIR:
        import shutil
        shutil.rmtree(KEYS_DIR, ignore_errors=True)


def auth(key=None):
    return {"Authorization": "Bearer %s" % (key or API_KEY)}


def wait_until(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError("%s not within %.0f s" % (what, timeout))
        time.sleep(0.1)


def log_text(proc):
    with open(proc.log_path, "rb") as f:
        return f.read().decode("utf-8", "replace")


def extra_gateway(stack, name, env=None):
    """Starts one more gateway on a fresh port; returns (process, index
    for stack.http)."""
    port = harness._Ports.one()
    extra = {"HTTP_PORT": str(port)}
    extra.update(env or {})
    proc = stack.start_process("gateway", name, extra)
    stack.http_ports.append(port)
    index = len(stack.http_ports) - 1

    def up():
        if not proc.alive():
            raise AssertionError("%s exited: %s" % (name, log_text(proc)))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False
    wait_until(up, 15, "%s listening" % name)
    return proc, index


class TestApiKeys(Case):

    def assertUnauthorized(self, r):
        body = self.assertError(r, 401, "AUTH-UNAUTHORIZED")
        self.assertEqual(set(body), {"status", "code", "message"}, body)
        self.assertTrue(r.headers.get("WWW-Authenticate", "")
                        .startswith("Bearer"), r.headers)

    def test_refused_without_a_valid_key(self):
        body = self.stack.create_body()
        ext = body["externalId"]
        bad = [None, "", "Bearer", "Bearer ", "Basic " + API_KEY,
               "Bearer " + API_KEY + "x", "Bearer " + API_KEY[:-1],
               "Bearer wrong-key", "Bearer " + API_KEY + " extra",
               "Bearer\t" + API_KEY, "Token " + API_KEY]
        if API_KEY.upper() != API_KEY:
            bad.append("Bearer " + API_KEY.upper())
        for value in bad:
            headers = {} if value is None else {"Authorization": value}
            r = self.stack.http("POST", CREATE, body, headers=headers)
            self.assertUnauthorized(r)
            r = self.stack.http("GET", READ + "?externalId=" + ext,
                                headers=headers)
            self.assertUnauthorized(r)

        #  A refused request changed nothing.
        self.assertEqual(self.count(
            "SELECT count(*) FROM casm.customers WHERE external_id = '%s'"
            % ext), 0)

        #  A bad method on an API path is refused before it is routed.
        r = self.stack.http("DELETE", CREATE)
        self.assertUnauthorized(r)

    def test_valid_key_works(self):
        rid = self.stack.request_id()
        body = self.stack.create_body(request_id=rid)
        r = self.stack.http("POST", CREATE, body, headers=auth())
        customer = self.assertBT(r, 201, "createCustomer", rid)
        r = self.stack.http("GET", READ + "?refId=" + customer["refId"],
                            headers={"Authorization": "bearer  %s "
                                     % API_KEY})
        self.assertEqual(r.status, 200, r.body)
        self.assertEqual(r.body["refId"], customer["refId"])

    def test_operational_endpoints_need_no_key(self):
        self.assertEqual(self.stack.http("GET", "/health").status, 200)
        self.assertEqual(self.stack.http("GET", "/ready").status, 200)
        r = self.stack.http("GET", "/health",
                            headers={"Authorization": "Bearer wrong"})
        self.assertEqual(r.status, 200)
        self.assertError(self.stack.http("GET", "/nowhere"), 404,
                         "NOT-FOUND")

    def test_label_logged_key_never(self):
        proc, index = extra_gateway(self.stack, "gateway-debug",
                                    {"LOG_LEVEL": "debug"})
        r = self.stack.http("GET", READ + "?externalId=nobody",
                            headers=auth(), gateway=index)
        self.assertError(r, 404, "NOT-FOUND")
        r = self.stack.http("GET", READ + "?externalId=nobody",
                            headers=auth(API_KEY[::-1]), gateway=index)
        self.assertUnauthorized(r)
        wait_until(lambda: '"apiKey":"crm"' in log_text(proc), 5,
                   "the key's label in the log")
        self.assertIn("without a valid API key", log_text(proc))
        for p in self.stack.processes:
            text = log_text(p)
            self.assertNotIn(API_KEY, text, p.name)
            self.assertNotIn(API_KEY[::-1], text, p.name)

    def test_sighup_rotates_keys(self):
        gateway = self.stack.instances("gateway")[0]
        new_key = "rotated-" + uuid.uuid4().hex
        path = "%s?externalId=nobody" % READ
        try:
            #  Both keys during the rotation, then the new one alone.
            write_api_keys(API_KEYS_FILE, [("crm", API_KEY),
                                           ("crm-next", new_key)])
            gateway.signal(signal.SIGHUP)
            wait_until(lambda: self.stack.http(
                "GET", path, headers=auth(new_key)).status == 404, 5,
                "the new key accepted")
            self.assertEqual(self.stack.http(
                "GET", path, headers=auth()).status, 404)
            write_api_keys(API_KEYS_FILE, [("crm-next", new_key)])
            gateway.signal(signal.SIGHUP)
            wait_until(lambda: self.stack.http(
                "GET", path, headers=auth()).status == 401, 5,
                "the old key refused")
            self.assertEqual(self.stack.http(
                "GET", path, headers=auth(new_key)).status, 404)

            #  A file that does not parse keeps the keys in force.
            with open(API_KEYS_FILE, "w") as f:
                f.write("crm-next not-a-hash\n")
            gateway.signal(signal.SIGHUP)
            wait_until(lambda: "kept the API keys in force"
                       in log_text(gateway), 5, "the reload refused")
            self.assertEqual(self.stack.http(
                "GET", path, headers=auth(new_key)).status, 404)
            self.assertTrue(gateway.alive())
        finally:
            write_api_keys(API_KEYS_FILE, [("crm", API_KEY)])
            gateway.signal(signal.SIGHUP)
            wait_until(lambda: self.stack.http(
                "GET", path, headers=auth()).status == 404, 5,
                "the first key back")


class TestTls(Case):

    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="casm-e2e-tls-")
        cls.cert = os.path.join(cls.dir, "cert.pem")
        cls.key = os.path.join(cls.dir, "key.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
             "-subj", "/CN=localhost", "-addext",
             "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-keyout", cls.key, "-out", cls.cert],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, check=True, timeout=30)
        cls.proc, index = extra_gateway(
            harness.STACK, "gateway-tls",
            {"TLS_CERT_FILE": cls.cert, "TLS_KEY_FILE": cls.key})
        cls.port = harness.STACK.http_ports[index]

    @classmethod
    def tearDownClass(cls):
        import shutil
        shutil.rmtree(cls.dir, ignore_errors=True)

    def https(self, method, path, body=None, headers=None):
        context = ssl.create_default_context(cafile=self.cert)
        conn = http.client.HTTPSConnection("127.0.0.1", self.port,
                                           context=context, timeout=30)
        try:
            hdrs = dict(headers or {})
            data = None
            if body is not None:
                import json
                data = json.dumps(body).encode()
                hdrs["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=hdrs)
            version = conn.sock.version()
            r = conn.getresponse()
            return r.status, r.read(), version
        finally:
            conn.close()

    def test_https_end_to_end(self):
        status, _, version = self.https("GET", "/health")
        self.assertEqual(status, 200)
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))
        rid = self.stack.request_id()
        status, raw, _ = self.https("POST", CREATE,
                                    self.stack.create_body(request_id=rid),
                                    auth())
        self.assertEqual(status, 201, raw)
        self.assertIn(rid.encode(), raw)
        status, _, _ = self.https("POST", CREATE, self.stack.create_body())
        self.assertEqual(status, 401)

    def test_untrusted_and_plain_clients_refused(self):
        #  A client that checks certificates refuses one it does not know.
        conn = http.client.HTTPSConnection(
            "127.0.0.1", self.port, timeout=10,
            context=ssl.create_default_context())
        with self.assertRaises(ssl.SSLError):
            conn.request("GET", "/health")
        conn.close()

        #  Plain HTTP on the TLS port gets no HTTP answer.
        with socket.create_connection(("127.0.0.1", self.port),
                                      timeout=10) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: casm\r\n\r\n")
            try:
                data = s.recv(100)
            except ConnectionResetError:
                data = b""
            self.assertFalse(data.startswith(b"HTTP/"), data)
        self.assertTrue(self.proc.alive())

    def test_bad_tls_settings_stop_the_gateway(self):
        not_pem = os.path.join(self.dir, "not.pem")
        with open(not_pem, "w") as f:
            f.write("this is not a certificate\n")
        cases = [({"TLS_CERT_FILE": self.cert}, "TLS_KEY_FILE"),
                 ({"TLS_CERT_FILE": not_pem, "TLS_KEY_FILE": self.key},
                  "TLS_CERT_FILE"),
                 ({"TLS_CERT_FILE": self.cert,
                   "TLS_KEY_FILE": os.path.join(self.dir, "missing")},
                  "TLS_KEY_FILE")]
        for i, (env, named) in enumerate(cases):
            env = dict(env, HTTP_PORT=str(harness._Ports.one()))
            proc = self.stack.start_process("gateway", "gateway-bad-%d" % i,
                                            env)
            self.assertEqual(proc.wait(15), 2, log_text(proc))
            self.assertIn(named, log_text(proc))


class TestCurve(Case):

    def test_broker_enforces_curve(self):
        broker = self.stack.instances("broker")[0]
        self.assertIn("CURVE on", log_text(broker))

    def test_wrong_key_gets_no_work(self):
        broker = self.stack.instances("broker")[0]
        wrong, _ = keygen("client", "intruder")
        intruder = self.stack.start_process("validator", "validator-wrong", {
            "CURVE_CLIENT_SECRET": wrong["CURVE_CLIENT_SECRET"],
            "CURVE_CLIENT_PUBLIC": wrong["CURVE_CLIENT_PUBLIC"]})
        plain = self.stack.start_process("validator", "validator-plain", {
            "CURVE_SERVER_PUBLIC": "", "CURVE_CLIENT_SECRET": "",
            "CURVE_CLIENT_PUBLIC": ""})
        wait_until(lambda: wrong["CURVE_CLIENT_PUBLIC"] in log_text(broker),
                   15, "the broker refusing the wrong key")

        #  With the right validator gone, nobody takes the work: the
        #  request is answered 503 or 504 and changes nothing.
        right = self.stack.instances("validator")[0]
        right.signal(signal.SIGTERM)
        self.assertIsNotNone(right.wait(15), "validator-1 did not stop")
        rid = self.stack.request_id()
        body = self.stack.create_body(request_id=rid)
        r = self.stack.http("POST", CREATE, body, headers=auth())
        self.assertIn(r.status, (503, 504), r.body)
        self.assertTrue(intruder.alive() and plain.alive())
        self.assertEqual(self.count(
            "SELECT count(*) FROM casm.customers WHERE external_id = '%s'"
            % body["externalId"]), 0)

        #  A validator with a right key takes it.
        self.stack.start_process("validator", "validator-right")
        wait_until(lambda: self.stack.http("GET", "/ready").status == 200,
                   20, "ready with the right validator")
        r = self.stack.http("POST", CREATE, body, headers=auth())
        self.assertBT(r, 201, "createCustomer", rid)

        intruder.signal(signal.SIGTERM)
        plain.signal(signal.SIGTERM)
        self.assertIsNotNone(intruder.wait(15))
        self.assertIsNotNone(plain.wait(15))


class SlowClients:
    """Sockets from one source address that each send one byte of an
    endless request a second, in a thread of their own."""

    REQUEST = (b"GET /health HTTP/1.1\r\nHost: casm\r\n" +
               b"X-Slow: " + b"s" * 200)

    def __init__(self, port, source, count, request=None):
        self.request = request or self.REQUEST
        self.open = []
        self.refused = 0
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((source, 0))
            s.settimeout(5)
            try:
                s.connect(("127.0.0.1", port))
            except OSError:
                s.close()
                self.refused += 1
                continue
            s.setblocking(False)
            self.open.append(s)
        self.closed = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _closed_by_server(self, s):
        try:
            return s.recv(4096) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _run(self):
        at = 0
        while not self.stop.is_set():
            with self.lock:
                alive = []
                for s in self.open:
                    if self._closed_by_server(s):
                        s.close()
                        self.closed += 1
                        continue
                    try:
                        s.send(self.request[at % len(self.request):][:1])
                        alive.append(s)
                    except BlockingIOError:
                        alive.append(s)
                    except OSError:
                        s.close()
                        self.closed += 1
                self.open = alive
            at += 1
            self.stop.wait(1.0)

    def still_open(self):
        with self.lock:
            return len(self.open)

    def close(self):
        self.stop.set()
        self.thread.join(5)
        with self.lock:
            for s in self.open:
                s.close()
            self.open = []


class TestHostileHttp(Case):

    @classmethod
    def setUpClass(cls):
        cls.proc, cls.index = extra_gateway(harness.STACK, "gateway-guarded",
                                            GUARDED)
        cls.port = harness.STACK.http_ports[cls.index]

    def normal_requests(self, count, retry_s=0, timeout=10):
        """count creates and reads, alternating, each on a fresh connection
        and retried for up to retry_s when the connection is refused or
        unanswered after timeout seconds; returns the statuses (None for a
        request that got no answer)."""
        statuses = []
        for i in range(count):
            deadline = time.monotonic() + retry_s
            while True:
                try:
                    if i % 2:
                        r = self.stack.http("GET", READ + "?externalId=none",
                                            headers=auth(),
                                            gateway=self.index, fresh=True,
                                            timeout=timeout)
                    else:
                        r = self.stack.http("POST", CREATE,
                                            self.stack.create_body(),
                                            headers=auth(),
                                            gateway=self.index, fresh=True,
                                            timeout=timeout)
                    statuses.append(r.status)
                    break
                except (OSError, http.client.HTTPException):
                    if time.monotonic() >= deadline:
                        statuses.append(None)
                        break
                    time.sleep(0.2)
        self.stack.close_connections()
        return statuses

    def test_slow_clients_cannot_take_the_gateway(self):
        #  200 slow clients from one address, twice the connection cap:
        #  the per-address limit (20) closes all but 20 at once, so
        #  requests from elsewhere are served at the first try while
        #  those 20 trickle.
        slow = SlowClients(self.port, "127.0.0.2", 200)
        try:
            statuses = self.normal_requests(6)
            self.assertEqual(statuses, [201, 404] * 3)
            wait_until(lambda: slow.still_open() <= 20, 5,
                       "connections past the per-address limit closed")

            #  Sending a byte a second does not keep a connection: each
            #  must deliver its request within HTTP_RECEIVE_TIMEOUT_S.
            wait_until(lambda: slow.still_open() == 0, 10,
                       "every slow client closed by its receive deadline")
        finally:
            slow.close()

    def test_slow_clients_everywhere_cannot_hold_the_cap(self):
        #  Slow clients from ten addresses, none past its limit, fill the
        #  cap of 100: a new connection waits, unanswered (the probe only
        #  has to start within the 5 s the crowd has, which takes
        #  milliseconds). Only the receive deadline can free the gateway,
        #  and it does: normal requests, retried, are served.
        crowds = [SlowClients(self.port, "127.0.1.%d" % i, 15)
                  for i in range(1, 11)]
        try:
            self.assertEqual(self.normal_requests(1, timeout=1), [None])
            statuses = self.normal_requests(4, retry_s=15)
            self.assertEqual(statuses, [201, 404] * 2)
            wait_until(lambda: sum(c.still_open() for c in crowds) == 0, 10,
                       "every slow client closed")
        finally:
            for c in crowds:
                c.close()

    def test_slow_body_closed(self):
        head = ("PUT /v1/casm/customers/update-custom-attributes HTTP/1.1\r\n"
                "Host: casm\r\nContent-Type: application/json\r\n"
                "Authorization: Bearer %s\r\nContent-Length: 100000\r\n\r\n"
                % API_KEY).encode()
        slow = SlowClients(self.port, "127.0.0.3", 0)
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        s.sendall(head)
        s.setblocking(False)
        with slow.lock:
            slow.request = b"{" + b" " * 100000
            slow.open.append(s)
        try:
            wait_until(lambda: slow.still_open() == 0, 10,
                       "a body sent a byte a second closed")
        finally:
            slow.close()

    def test_nul_in_a_query(self):
        #  Found by fuzz_http: a NUL in a readCustomer parameter made a body
        #  the validator could not parse (400 MALFORMED_JSON). Like any byte
        #  that is not UTF-8 it now becomes a control character, which the
        #  validator refuses with the field named, and nothing is looked up.
        r = self.stack.http("GET", READ + "?externalId=a%00b",
                            headers=auth())
        self.assertError(r, 400, "CASM-VALIDATION", "externalId")
        r = self.stack.http("GET", READ + "?refId=a%00b", headers=auth())
        self.assertError(r, 400, "CASM-VALIDATION", "refId")

    def test_oversized_headers_refused(self):
        with socket.create_connection(("127.0.0.1", self.port),
                                      timeout=10) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: casm\r\nX-Big: " +
                      b"b" * 100000 + b"\r\n\r\n")
            data = b""
            deadline = time.monotonic() + 10
            while b"\r\n" not in data and time.monotonic() < deadline:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        self.assertTrue(data.startswith(b"HTTP/1.1 431"), data[:100])
        self.assertEqual(self.stack.http("GET", "/health",
                                         gateway=self.index,
                                         fresh=True).status, 200)


class TestInflightCap(Case):
    """MAX_INFLIGHT bounds what one gateway holds: past it a request is
    answered 503 with Retry-After at once, and a slot that frees up takes
    the next one."""

    CAP = 2

    @classmethod
    def setUpClass(cls):
        cls.proc, cls.index = extra_gateway(
            harness.STACK, "gateway-capped", {"MAX_INFLIGHT": str(cls.CAP)})

    def in_flight(self):
        r = self.stack.http("GET", "/metrics", gateway=self.index,
                            fresh=True, timeout=10)
        self.assertEqual(r.status, 200)
        text = r.raw.decode("utf-8", "replace")
        for line in text.splitlines():
            if line.startswith("casm_http_requests_in_flight "):
                return float(line.split()[1])
        self.fail("no casm_http_requests_in_flight in /metrics")

    def create(self, timeout=15):
        return self.stack.http("POST", CREATE, self.stack.create_body(),
                               headers=auth(), gateway=self.index,
                               fresh=True, timeout=timeout)

    def test_cap_answers_503_then_frees(self):
        publishers = self.stack.instances("publisher")
        self.assertGreater(len(publishers), 0)
        held = []

        def hold_one():
            try:
                held.append(self.create())
            except OSError as e:
                held.append(e)
            finally:
                self.stack.close_connections()

        threads = [threading.Thread(target=hold_one)
                   for _ in range(self.CAP)]
        # A frozen publisher holds each create after its commit, so that
        # CAP of them stay in flight at the gateway.
        for p in publishers:
            p.signal(signal.SIGSTOP)
        try:
            for t in threads:
                t.start()
            wait_until(lambda: self.in_flight() >= self.CAP, 4,
                       "%d requests in flight" % self.CAP)
            started = time.monotonic()
            r = self.create()
            elapsed = time.monotonic() - started
        finally:
            for p in publishers:
                p.signal(signal.SIGCONT)
            for t in threads:
                t.join(30)
        self.assertEqual(r.status, 503, r.body)
        self.assertEqual(r.body.get("code"), "SERVICE-UNAVAILABLE", r.body)
        self.assertIn("Retry-After", r.headers)
        self.assertLess(elapsed, 2.0, "the 503 waited %.1f s" % elapsed)
        self.assertFalse(any(t.is_alive() for t in threads))
        # The held ones were let through (or timed out, if the machine
        # was slow to resume the publisher): never refused by the cap.
        self.assertEqual(len(held), self.CAP, held)
        for h in held:
            self.assertIn(getattr(h, "status", None), (201, 504), h)
        # Their slots are free again.
        wait_until(lambda: self.in_flight() == 0, 10, "no request in flight")
        self.assertEqual(self.create().status, 201)


class TestZzEnd(Case):

    def test_everything_still_alive(self):
        dead = [p.name for p in self.stack.processes if not p.alive()
                and p.name not in ("validator-1", "validator-wrong",
                                   "validator-plain")
                and not p.name.startswith("gateway-bad-")]
        self.assertEqual(dead, [])
        self.assertEqual(self.stack.http("GET", "/ready").status, 200)


if __name__ == "__main__":
    harness.main()
