"""The end-to-end harness: a whole casm stack in a temporary directory.

A Stack starts a private PostgreSQL (scripts/pg.sh), the Kafka-protocol mock
broker (casm-kafka), casm-broker and instances of every stage, each process
in its own process group with its stderr in a log file, waits until
GET /ready answers 200, and takes everything down again. Tests talk to it
over HTTP like a CRM would, look into PostgreSQL with psql and read the
topic with kcat.

Nothing may outlive a test run, even one that crashes or is killed: the
stack is torn down from atexit and from SIGTERM/SIGINT/SIGHUP handlers, and
a watchdog process, in a session of its own, kills whatever is left and
stops PostgreSQL as soon as the test process disappears (ctest's timeout
sends SIGKILL, which no handler sees).

Standard library only. Environment: CASM_BUILD_DIR (default build),
CASM_SOURCE_DIR (default: two levels up from this file), CASM_KEEP_TMP=1
keeps the temporary directory for a post-mortem.
"""

import atexit
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

TOPIC = "ocs.business-transactions"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
LOG_TAIL_LINES = 40

_STACKS = []
_HANDLERS_INSTALLED = False

# The watchdog: waits for the test process to vanish, then SIGKILLs every
# process group listed in the pids file, stops PostgreSQL and removes the
# temporary directory. Exits by itself when the directory is gone (a clean
# teardown).
_WATCHDOG = r"""
import os, signal, shutil, subprocess, sys, time
parent, tmp, pg_sh = int(sys.argv[1]), sys.argv[2], sys.argv[3]
keep = sys.argv[4] == "1"
def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
stopped = os.path.join(tmp, "stopped")
while alive(parent) and os.path.isdir(tmp) and not os.path.exists(stopped):
    time.sleep(0.5)
if not os.path.isdir(tmp) or os.path.exists(stopped):
    sys.exit(0)
try:
    with open(os.path.join(tmp, "pgids")) as f:
        for line in f:
            try:
                os.killpg(int(line), signal.SIGKILL)
            except (ValueError, OSError):
                pass
except OSError:
    pass
if os.path.isdir(os.path.join(tmp, "pg")):
    subprocess.run([pg_sh, "stop", os.path.join(tmp, "pg")],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=60)
if not keep:
    shutil.rmtree(tmp, ignore_errors=True)
"""


class StackError(Exception):
    pass


class Response(tuple):
    """(status, headers, body) with body parsed as JSON when it is JSON;
    also .raw (the body bytes), .status, .headers, .body."""

    def __new__(cls, status, headers, body, raw):
        self = super().__new__(cls, (status, headers, body))
        self.status = status
        self.headers = headers
        self.body = body
        self.raw = raw
        return self


def _port_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class _Ports:
    """Hands out free ports, never the same twice within a run, from a
    range away from the kernel's ephemeral ports."""

    taken = set()
    lock = threading.Lock()

    @classmethod
    def block(cls, count):
        with cls.lock:
            for _ in range(500):
                base = random.randrange(20000, 32000)
                ports = range(base, base + count)
                if any(p in cls.taken for p in ports):
                    continue
                if all(_port_free(p) for p in ports):
                    cls.taken.update(ports)
                    return base
        raise StackError("no block of %d free ports" % count)

    @classmethod
    def one(cls):
        return cls.block(1)


class Process:
    """One process of the stack, in a process group of its own."""

    def __init__(self, name, kind, args, env, log_path, stdout=None):
        self.name = name
        self.kind = kind
        self.args = args
        self.env = env
        self.log_path = log_path
        self.log = open(log_path, "ab")
        out = stdout if stdout is not None else self.log
        self.popen = subprocess.Popen(
            args, env=env, stdin=subprocess.DEVNULL, stdout=out,
            stderr=self.log, start_new_session=True)
        self.pgid = self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def signal(self, sig):
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout):
        try:
            return self.popen.wait(timeout=max(timeout, 0))
        except subprocess.TimeoutExpired:
            return None

    def close(self):
        try:
            self.log.close()
        except OSError:
            pass


class Stack:
    """A whole casm stack. Counts give how many instances of each stage;
    env adds variables to every casm process (e.g. PUBLISH_TIMEOUT_MS).
    With metrics, every process but the gateways (which serve /metrics on
    their HTTP port) gets a METRICS_PORT of its own: see scrape()."""

    def __init__(self, validators=1, workers=1, publishers=1, gateways=1,
                 env=None, name="casm", dwhs=0, metrics=False):
        here = os.path.dirname(os.path.abspath(__file__))
        self.source_dir = os.environ.get(
            "CASM_SOURCE_DIR", os.path.normpath(os.path.join(here, "..", "..")))
        self.build_dir = os.environ.get(
            "CASM_BUILD_DIR", os.path.join(self.source_dir, "build"))
        self.counts = {"validator": validators, "worker": workers,
                       "publisher": publishers, "gateway": gateways,
                       "dwh": dwhs}
        self.extra_env = dict(env or {})
        self.name = name
        self.tmp = None
        self.processes = []
        self.database_url = None
        self.pg_port = None
        self.kafka_brokers = None
        self.broker_port = None
        self.http_ports = []
        self.metrics = metrics
        self.metrics_ports = {}
        self.kafka = None
        self._local = threading.local()
        self._watchdog = None
        self._stopped = False
        self._pg_dir = None
        self._lock = threading.RLock()

    # ---- start --------------------------------------------------------

    def binary(self, directory):
        """The path of a built casm program, by its directory (broker,
        gateway, ..., dwh, kafka-mock); StackError when it is missing."""
        if directory == "kafka-mock":
            path = os.path.join(self.build_dir, "tools", "kafka-mock",
                                "casm-kafka")
        else:
            path = os.path.join(self.build_dir, directory,
                                "casm-" + directory)
        if not os.access(path, os.X_OK):
            raise StackError("missing binary %s (build it first)" % path)
        return path

    def start(self):
        _install_handlers()
        _STACKS.append(self)
        try:
            self._start()
        except BaseException:
            self.dump_logs("start failed")
            self.stop()
            raise
        return self

    def _start(self):
        for d in ("broker", "gateway", "validator", "worker", "publisher",
                  "kafka-mock"):
            self.binary(d)
        if self.counts["dwh"]:
            self.binary("dwh")
        self.tmp = tempfile.mkdtemp(prefix="casm-e2e-%s-" % self.name)
        self._start_watchdog()

        self._start_postgres()
        self._start_kafka()

        self.broker_port = _Ports.block(6)
        self.start_process("broker", "broker")
        for kind in ("publisher", "worker", "validator", "dwh"):
            for i in range(self.counts[kind]):
                self.start_process(kind, "%s-%d" % (kind, i + 1))
        for i in range(self.counts["gateway"]):
            port = _Ports.one()
            self.http_ports.append(port)
            self.start_process("gateway", "gateway-%d" % (i + 1),
                               {"HTTP_PORT": str(port)})
        self.wait_ready(READY_TIMEOUT)

    def _start_watchdog(self):
        pg_sh = os.path.join(self.source_dir, "scripts", "pg.sh")
        keep = "1" if os.environ.get("CASM_KEEP_TMP") == "1" else "0"
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(os.getpid()), self.tmp,
             pg_sh, keep],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True)

    def _note_pgid(self, pgid):
        with open(os.path.join(self.tmp, "pgids"), "a") as f:
            f.write("%d\n" % pgid)

    def _start_postgres(self):
        port = self.pg_port or _Ports.one()
        self.pg_port = port
        self._pg_dir = os.path.join(self.tmp, "pg")
        pg_sh = os.path.join(self.source_dir, "scripts", "pg.sh")
        with open(os.path.join(self.tmp, "pg.sh.log"), "ab") as log:
            try:
                out = subprocess.run(
                    [pg_sh, "start", self._pg_dir, str(port)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    stderr=log, timeout=90, check=True).stdout.decode()
            except (subprocess.CalledProcessError,
                    subprocess.TimeoutExpired) as e:
                raise StackError("pg.sh start failed: %s" % e)
        for line in out.splitlines():
            if line.startswith("DATABASE_URL="):
                self.database_url = line.split("=", 1)[1].strip()
        if not self.database_url:
            raise StackError("pg.sh printed no DATABASE_URL: %r" % out)

    def _start_kafka(self):
        out_path = os.path.join(self.tmp, "kafka.stdout")
        out = open(out_path, "wb")
        env = dict(os.environ)
        env.setdefault("KAFKA_TOPIC", TOPIC)
        self.kafka = Process("casm-kafka", "kafka",
                             [self.binary("kafka-mock")], env,
                             os.path.join(self.tmp, "casm-kafka.log"),
                             stdout=out)
        out.close()
        self.processes.append(self.kafka)
        self._note_pgid(self.kafka.pgid)

        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with open(out_path) as f:
                for line in f:
                    if line.startswith("KAFKA_BROKERS="):
                        self.kafka_brokers = line.split("=", 1)[1].strip()
            if self.kafka_brokers:
                return
            if not self.kafka.alive():
                raise StackError("casm-kafka exited with %s"
                                 % self.kafka.popen.returncode)
            time.sleep(0.05)
        raise StackError("casm-kafka printed no KAFKA_BROKERS in 15 s")

    def process_env(self, instance, extra=None):
        env = dict(os.environ)
        env.update({
            "BROKER_HOST": "127.0.0.1",
            "BROKER_BIND": "127.0.0.1",
            "BROKER_PORT": str(self.broker_port),
            "DATABASE_URL": self.database_url,
            "KAFKA_BROKERS": self.kafka_brokers,
            "KAFKA_TOPIC": TOPIC,
            "INSTANCE": instance,
            "LOG_LEVEL": "info",
            "SHUTDOWN_GRACE_MS": "5000",
        })
        env.update(self.extra_env)
        env.update(extra or {})
        return env

    def start_process(self, kind, instance, extra_env=None):
        """Starts one more process of this kind (broker, gateway,
        validator, worker, publisher) and returns it."""
        with self._lock:
            extra_env = dict(extra_env or {})
            if self.metrics and kind != "gateway" \
                    and "METRICS_PORT" not in extra_env:
                extra_env["METRICS_PORT"] = str(_Ports.one())
                extra_env.setdefault("METRICS_BIND", "127.0.0.1")
            if "METRICS_PORT" in extra_env:
                self.metrics_ports[instance] = int(extra_env["METRICS_PORT"])
            log_path = os.path.join(self.tmp, "%s.log" % instance)
            proc = Process(instance, kind, [self.binary(kind)],
                           self.process_env(instance, extra_env), log_path)
            self.processes.append(proc)
            self._note_pgid(proc.pgid)
            return proc

    def scrape(self, instance, path="/metrics", timeout=10):
        """GET path (/metrics, /health) from a process's METRICS_PORT, by
        instance name ("broker", "worker-1"); a gateway ("gateway-1")
        answers on its HTTP port. Returns Response."""
        if instance.startswith("gateway-"):
            return self.http("GET", path, timeout=timeout,
                             gateway=int(instance.split("-")[1]) - 1)
        conn = http.client.HTTPConnection(
            "127.0.0.1", self.metrics_ports[instance], timeout=timeout)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        return Response(resp.status, resp.msg,
                        raw.decode("utf-8", "replace"), raw)

    def ready(self):
        try:
            status, _, _ = self.http("GET", "/ready", timeout=5)
        except OSError:
            return False
        return status == 200

    def wait_ready(self, timeout=READY_TIMEOUT):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            dead = [p.name for p in self.processes if not p.alive()]
            if dead:
                raise StackError("exited during start: %s" % ", ".join(dead))
            try:
                last = self.http("GET", "/ready", timeout=5)
                if last[0] == 200:
                    return last
            except OSError as e:
                last = e
            time.sleep(0.1)
        raise StackError("GET /ready not 200 within %.0f s (last: %r)"
                         % (timeout, last))

    # ---- HTTP ---------------------------------------------------------

    def _connection(self, port, fresh=False):
        conns = getattr(self._local, "conns", None)
        if conns is None:
            conns = self._local.conns = {}
        conn = conns.get(port)
        if fresh and conn is not None:
            conn.close()
            conn = None
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conns[port] = conn
        return conn

    def close_connections(self):
        """Closes this thread's kept-alive connections (call at the end of
        a worker thread)."""
        conns = getattr(self._local, "conns", None) or {}
        for conn in conns.values():
            conn.close()
        conns.clear()

    def http(self, method, path, body=None, headers=None, gateway=0,
             timeout=30, fresh=False):
        """One request on this thread's keep-alive connection (a fresh one
        when the old one was closed). body: dict/list (sent as JSON), str
        or bytes (sent as is) or None. Default Content-Type is JSON when a
        body is given. Returns Response (status, headers, body)."""
        port = self.http_ports[gateway]
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = body
        hdrs = {}
        if data is not None:
            hdrs["Content-Type"] = "application/json; charset=utf-8"
        hdrs.update(headers or {})

        for attempt in (0, 1):
            conn = self._connection(port, fresh=fresh or attempt == 1)
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            try:
                conn.request(method, path, body=data, headers=hdrs)
                resp = conn.getresponse()
                raw = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError,
                    ConnectionResetError, http.client.CannotSendRequest,
                    http.client.ResponseNotReady) as e:
                # A kept-alive connection the server has closed: once more
                # on a fresh one. A timeout is not retried.
                conn.close()
                if attempt == 1:
                    raise
                continue
            except BaseException:
                conn.close()
                raise
            if resp.will_close:
                conn.close()
            parsed = raw.decode("utf-8", "replace")
            ctype = resp.getheader("Content-Type", "")
            if "json" in ctype or raw[:1] in (b"{", b"["):
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    pass
            return Response(resp.status, resp.msg, parsed, raw)

    def http_raw(self, data, gateway=0, timeout=10):
        """Sends bytes on a new socket and returns all bytes received until
        the server closes or timeout passes (for requests http.client will
        not send)."""
        port = self.http_ports[gateway]
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) \
                as s:
            s.sendall(data)
            chunks = []
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks):
                    head, _, rest = b"".join(chunks).partition(b"\r\n\r\n")
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            if len(rest) >= int(line.split(b":")[1]):
                                return b"".join(chunks)
            return b"".join(chunks)

    # ---- API helpers --------------------------------------------------

    @staticmethod
    def request_id():
        return str(uuid.uuid4())

    # DESIGN.md 2 fixes the update request only. The createCustomer and
    # updateCustomerState bodies follow the customer's own shape, as the
    # validator reads them: create is flat ({"requestId", "externalId",
    # "customName", "customerSegment", "customAttributes", "testCustomer",
    # "state": {"state", "stateReason"}}), updateCustomerState is
    # {"requestId", "customer": {refId|externalId}, "state": {"state",
    # "stateReason"}}.

    def create_body(self, external_id=None, custom_attributes=None,
                    state=None, state_reason=None, custom_name=None,
                    customer_segment=None, test_customer=None,
                    request_id=None):
        body = {"requestId": request_id or self.request_id(),
                "externalId": external_id or "CRM-" + uuid.uuid4().hex}
        if custom_name is not None:
            body["customName"] = custom_name
        if customer_segment is not None:
            body["customerSegment"] = customer_segment
        if test_customer is not None:
            body["testCustomer"] = test_customer
        if custom_attributes is not None:
            body["customAttributes"] = custom_attributes
        if state is not None:
            body["state"] = {"state": state}
            if state_reason is not None:
                body["state"]["stateReason"] = state_reason
        return body

    def create_customer(self, expect=201, **fields):
        """POST /create with create_body(**fields); returns the Response.
        Checks the status when expect is not None."""
        r = self.http("POST", "/v1/casm/customers/create",
                      self.create_body(**fields))
        if expect is not None and r.status != expect:
            raise AssertionError("create: expected %d, got %d %r"
                                 % (expect, r.status, r.body))
        return r

    def update_attributes(self, customer_ref, attributes, merge=None,
                          request_id=None):
        """PUT update-custom-attributes; customer_ref is a dict such as
        {"refId": ...}."""
        body = {"requestId": request_id or self.request_id(),
                "customer": customer_ref,
                "customAttributes": attributes}
        if merge is not None:
            body["merge"] = merge
        return self.http("PUT", "/v1/casm/customers/update-custom-attributes",
                         body)

    def update_state(self, customer_ref, state, reason=None,
                     request_id=None):
        body = {"requestId": request_id or self.request_id(),
                "customer": customer_ref, "state": {"state": state}}
        if reason is not None:
            body["state"]["stateReason"] = reason
        return self.http("PUT", "/v1/casm/customers/update-state", body)

    def read_customer(self, ref_id=None, external_id=None):
        from urllib.parse import urlencode
        query = {"refId": ref_id} if ref_id else {"externalId": external_id}
        return self.http("GET", "/v1/casm/customers/read?" + urlencode(query))

    # ---- PostgreSQL and Kafka -----------------------------------------

    def sql(self, query, timeout=30):
        """Runs query with psql -At; returns stdout without the last
        newline. Raises on an SQL error."""
        out = subprocess.run(
            ["psql", "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d",
             self.database_url, "-c", query],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, timeout=timeout)
        if out.returncode != 0:
            raise StackError("psql failed: %s" % out.stderr.decode())
        return out.stdout.decode().rstrip("\n")

    def kafka_events(self, timeout=10):
        """Reads the whole topic (kcat -e: to the end, then exit). Returns
        a list of dicts: key, headers (dict and list), payload (text),
        partition, offset."""
        try:
            out = subprocess.run(
                ["kcat", "-C", "-b", self.kafka_brokers, "-t", TOPIC,
                 "-e", "-J", "-q", "-o", "beginning"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise StackError("kcat did not finish in %.0f s" % timeout)
        if out.returncode != 0:
            raise StackError("kcat failed (%d): %s"
                             % (out.returncode, out.stderr.decode()))
        events = []
        for line in out.stdout.decode("utf-8", "replace").splitlines():
            line = line.strip()
            if not line:
                continue
            m = json.loads(line)
            raw = m.get("headers") or []
            pairs = list(zip(raw[0::2], raw[1::2]))
            events.append({
                "key": m.get("key"),
                "headers_list": pairs,
                "headers": dict(pairs),
                "payload": m.get("payload"),
                "partition": m.get("partition"),
                "offset": m.get("offset"),
            })
        return events

    def wait_for(self, predicate, timeout, interval=0.1, what="condition"):
        """Polls predicate until it returns a true value, bounded."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError("%s not reached within %.0f s"
                                     % (what, timeout))
            time.sleep(interval)

    # ---- faults -------------------------------------------------------

    def instances(self, kind):
        return [p for p in self.processes if p.kind == kind]

    def kill_stage(self, name, sig=signal.SIGKILL):
        """Signals one process, by instance name ("worker-1") or kind
        ("worker": the first live one). Returns the process."""
        matches = [p for p in self.processes if p.name == name] or \
                  [p for p in self.processes if p.kind == name and p.alive()]
        if not matches:
            raise StackError("no process %s" % name)
        proc = matches[0]
        proc.signal(sig)
        return proc

    def start_instance(self, kind, extra_env=None):
        """Starts one more instance of a stage (validator, worker,
        publisher, dwh), named after the ones before it ("worker-3"), with
        the environment the others got: how an operator scales out by
        hand. For a gateway, extra_env must give HTTP_PORT. Returns the
        process."""
        taken = {p.name for p in self.processes}
        n = 1
        while "%s-%d" % (kind, n) in taken:
            n += 1
        return self.start_process(kind, "%s-%d" % (kind, n), extra_env)

    def wait_log(self, proc, text, timeout, start=0):
        """Waits, bounded, until proc's log holds a line containing text
        after byte offset start (see log_size). Returns the line."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with open(proc.log_path, "rb") as f:
                    f.seek(start)
                    for line in f.read().decode("utf-8", "replace") \
                            .splitlines():
                        if text in line:
                            return line
            except OSError:
                pass
            if time.monotonic() >= deadline:
                raise AssertionError("%s logged no %r within %.0f s"
                                     % (proc.name, text, timeout))
            time.sleep(0.05)

    @staticmethod
    def log_size(proc):
        """The size of proc's log now: a start for wait_log."""
        try:
            return os.path.getsize(proc.log_path)
        except OSError:
            return 0

    def wait_exit(self, proc, timeout):
        """Waits, bounded, for proc to exit; returns its exit status, or
        None when it still runs."""
        return proc.wait(timeout)

    def kafka_down(self, wait=False):
        """Takes the Kafka-protocol brokers down (SIGUSR1). With wait, waits
        until the mock says they are down (it takes about a second)."""
        start = self.log_size(self.kafka)
        self.kafka.signal(signal.SIGUSR1)
        if wait:
            self.wait_log(self.kafka, "down: connections closed", 15, start)

    def kafka_up(self, wait=False):
        """Brings the Kafka-protocol brokers back (SIGUSR2). With wait,
        waits until the mock says they are up."""
        start = self.log_size(self.kafka)
        self.kafka.signal(signal.SIGUSR2)
        if wait:
            self.wait_log(self.kafka, "up: accepting connections", 15,
                          start)

    def postgres_stop(self):
        """Stops PostgreSQL (pg.sh stop: a fast shutdown, which ends every
        session). The stack's processes keep running."""
        pg_sh = os.path.join(self.source_dir, "scripts", "pg.sh")
        with open(os.path.join(self.tmp, "pg.sh.log"), "ab") as log:
            subprocess.run([pg_sh, "stop", self._pg_dir],
                           stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                           timeout=90, check=True)

    def postgres_start(self):
        """Starts PostgreSQL again, same directory and port."""
        self._start_postgres()

    def broker(self):
        """The live casm-broker process, or None."""
        live = [p for p in self.instances("broker") if p.alive()]
        return live[0] if live else None

    def broker_restart(self, sig=signal.SIGKILL, down_s=0.0):
        """Signals the broker (SIGKILL by default), waits for it to exit,
        leaves it down for down_s seconds, and starts a new one on the
        same ports. Nobody else is touched. Returns the new process."""
        old = self.broker()
        if old is not None:
            old.signal(sig)
            if old.wait(STOP_TIMEOUT) is None:
                raise StackError("the broker did not exit on signal %d"
                                 % sig)
        if down_s > 0:
            time.sleep(down_s)
        return self.start_instance("broker")

    def all_alive(self):
        """Names of the processes that have exited (empty when all live)."""
        return [p.name for p in self.processes if not p.alive()]

    # ---- teardown -----------------------------------------------------

    def dump_logs(self, why="", lines=LOG_TAIL_LINES, out=None):
        out = out or sys.stderr
        if not self.tmp or not os.path.isdir(self.tmp):
            return
        out.write("\n==== casm stack logs (%s) in %s ====\n" % (why, self.tmp))
        paths = [p.log_path for p in self.processes]
        extra = [os.path.join(self.tmp, "pg.sh.log")]
        if self._pg_dir and os.path.isdir(os.path.join(self._pg_dir, "log")):
            logdir = os.path.join(self._pg_dir, "log")
            extra += [os.path.join(logdir, f) for f in sorted(
                os.listdir(logdir))]
        for path in paths + extra:
            try:
                with open(path, "rb") as f:
                    tail = f.read().splitlines()[-lines:]
            except OSError:
                continue
            out.write("---- %s (last %d lines) ----\n"
                      % (os.path.basename(path), len(tail)))
            for line in tail:
                out.write(line.decode("utf-8", "replace") + "\n")
        out.flush()

    def stop(self):
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        if self in _STACKS:
            _STACKS.remove(self)

        self.close_connections()

        # Front to back, so that in-flight work can drain; Kafka last but
        # one, so that publishers can flush; PostgreSQL last.
        order = ["gateway", "validator", "worker", "publisher", "dwh",
                 "broker", "kafka"]
        for kind in order:
            for p in self.processes:
                if p.kind == kind and p.alive():
                    p.signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            for p in self.processes:
                if p.kind == kind:
                    p.wait(deadline - time.monotonic())
        for p in self.processes:
            if p.alive():
                sys.stderr.write("harness: %s did not stop: SIGKILL\n"
                                 % p.name)
                p.signal(signal.SIGKILL)
                p.wait(5)
            p.close()

        if self._pg_dir and os.path.isdir(self._pg_dir):
            pg_sh = os.path.join(self.source_dir, "scripts", "pg.sh")
            try:
                subprocess.run([pg_sh, "stop", self._pg_dir],
                               stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=60)
            except subprocess.TimeoutExpired:
                sys.stderr.write("harness: pg.sh stop timed out\n")

        if self.tmp:
            open(os.path.join(self.tmp, "stopped"), "w").close()
        if self.tmp and os.environ.get("CASM_KEEP_TMP") != "1":
            shutil.rmtree(self.tmp, ignore_errors=True)
        elif self.tmp:
            sys.stderr.write("harness: kept %s\n" % self.tmp)
        if self._watchdog is not None:
            try:
                self._watchdog.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
                self._watchdog.wait(timeout=5)


def _stop_all():
    for stack in list(_STACKS):
        try:
            stack.stop()
        except Exception as e:  # teardown must go on for the others
            sys.stderr.write("harness: teardown failed: %r\n" % e)


def _on_signal(signum, frame):
    sys.stderr.write("harness: signal %d: tearing down\n" % signum)
    for stack in list(_STACKS):
        stack.dump_logs("signal %d" % signum)
    _stop_all()
    os._exit(128 + signum)


def _install_handlers():
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED:
        return
    _HANDLERS_INSTALLED = True
    atexit.register(_stop_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, _on_signal)


# ---- shared by the suites ---------------------------------------------

STACK = None


def start_module_stack(**kwargs):
    """For setUpModule: starts the suite's one stack."""
    global STACK
    STACK = Stack(**kwargs).start()
    return STACK


def stop_module_stack(dump=False):
    """For tearDownModule: dumps the log tails when asked (a test failed)
    and stops the stack."""
    global STACK
    if STACK is None:
        return
    if dump:
        STACK.dump_logs("a test failed")
    STACK.stop()
    STACK = None


class DumpOnFailure:
    """unittest.TestCase mixin: remembers whether any test of the module
    failed, so that tearDownModule can dump the logs."""

    failed = False

    def run(self, result=None):
        result = super().run(result)
        if result is not None and (result.failures or result.errors):
            DumpOnFailure.failed = True
        return result


def main():
    """Runs the calling module's tests and exits with their status."""
    import unittest
    unittest.main(module="__main__", verbosity=2)
