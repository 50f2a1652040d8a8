"""A steady client load for the fault suites, and what must hold after it.

Load runs a few client threads that update the custom attributes of their
own customers back to back (a short pause between requests, or the
Retry-After of a 503), each request with a fresh requestId, and records
every answer: status, headers, body, or the error when there was no answer
at all. After the fault, retry()
sends every request that did not get 200 again, same requestId and same
body, until it gets 200 (bounded), as DESIGN.md 6 tells a client to do.

FaultCase.assertExactlyOnce then checks the guarantees in PostgreSQL and
Kafka: every request has exactly one effect (one requests row, one outbox
row with the transaction id of its answer, and the customer's version is
one more per request, with every answer carrying a different version), and
every event is on the topic. FaultCase.report prints the counts (sent,
acknowledged, failed, retried) and appends them as one JSON line to the
file named by CASM_FAULT_REPORT, when set, for docs/reliability.md.

Standard library only.
"""

import http.client
import json
import os
import sys
import threading
import time
import uuid

from common import Case, UPDATE

THREADS = 8
PAUSE_S = 0.02


class Answer:
    """One request sent and what came back."""

    def __init__(self, thread, request_id, ref_id, payload, gateway):
        self.thread = thread
        self.request_id = request_id
        self.ref_id = ref_id
        self.payload = payload
        self.gateway = gateway
        self.started = time.monotonic()
        self.elapsed = None
        self.status = None          # None: no answer
        self.headers = None
        self.body = None
        self.error = None
        self.retry = None           # the Answer that finally got 200
        self.attempts = 0           # retries sent

    @property
    def ok(self):
        return self.status == 200

    def kind(self):
        """How it failed, for the tables: "503", "504", "no answer"."""
        return "no answer" if self.status is None else str(self.status)


def send(stack, conns, gateway, payload, timeout):
    """Sends one update on this thread's connection to that gateway (a new
    one when needed), once. Returns (status, headers, body, error)."""
    port = stack.http_ports[gateway]
    conn = conns.get(port)
    if conn is None:
        conn = conns[port] = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=timeout)
    data = json.dumps(payload).encode()
    try:
        conn.request("PUT", UPDATE, body=data, headers={
            "Content-Type": "application/json; charset=utf-8"})
        resp = conn.getresponse()
        raw = resp.read()
    except (OSError, http.client.HTTPException) as e:
        conn.close()
        del conns[port]
        return None, None, None, "%s: %s" % (type(e).__name__, e)
    if resp.will_close:
        conn.close()
        del conns[port]
    try:
        body = json.loads(raw)
    except ValueError:
        body = raw.decode("utf-8", "replace")
    return resp.status, resp.msg, body, None


def retry_after(headers, cap=2.0):
    """The Retry-After of an answer in seconds (at most cap), 0 when none
    or not a number of seconds."""
    try:
        return min(float(headers.get("Retry-After", "0")), cap)
    except (TypeError, ValueError, AttributeError):
        return 0.0


class Load:
    """Client threads updating their customers until stopped."""

    def __init__(self, stack, customers, threads=THREADS, gateways=(0,),
                 timeout=30.0, pause=PAUSE_S):
        self.stack = stack
        self.customers = list(customers)
        self.threads = threads
        self.gateways = list(gateways)
        self.timeout = timeout
        self.pause = pause
        self.prefix = "fault-" + uuid.uuid4().hex[:12]
        self.answers = []
        self._inflight = {}             # thread -> its Answer in flight
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = []

    def start(self):
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self):
        self._stop.set()
        deadline = time.monotonic() + self.timeout + 10
        for t in self._threads:
            t.join(max(deadline - time.monotonic(), 0))
        alive = [t for t in self._threads if t.is_alive()]
        if alive:
            raise AssertionError("%d client threads did not stop"
                                 % len(alive))

    def use_gateways(self, gateways):
        """From the next request on, the clients use these gateways."""
        self.gateways = list(gateways)

    def _run(self, index):
        conns = {}
        ref_id = self.customers[index % len(self.customers)]
        n = 0
        try:
            while not self._stop.is_set():
                gateways = self.gateways
                gateway = gateways[index % len(gateways)]
                rid = "%s-%d-%d" % (self.prefix, index, n)
                payload = {"requestId": rid, "customer": {"refId": ref_id},
                           "customAttributes": {"thread": str(index),
                                                "n": str(n)}}
                answer = Answer(index, rid, ref_id, payload, gateway)
                self._inflight[index] = answer
                (answer.status, answer.headers, answer.body,
                 answer.error) = send(self.stack, conns, gateway, payload,
                                      self.timeout)
                answer.elapsed = time.monotonic() - answer.started
                with self._lock:
                    self.answers.append(answer)
                    del self._inflight[index]
                n += 1

                # A 503 says when to come back: a client that honours it
                # does not hammer a pipeline that is down.
                pause = self.pause
                if answer.status == 503:
                    pause = max(pause, retry_after(answer.headers))
                self._stop.wait(pause)
        finally:
            for conn in conns.values():
                conn.close()

    # ---- views ----------------------------------------------------------

    def snapshot(self):
        with self._lock:
            return list(self.answers)

    def stuck(self, min_age):
        """How many requests have waited longer than min_age seconds."""
        now = time.monotonic()
        with self._lock:
            return sum(1 for a in self._inflight.values()
                       if now - a.started > min_age)

    def count_ok_since(self, since):
        return sum(1 for a in self.snapshot()
                   if a.ok and a.started >= since)

    def wait_ok_since(self, since, count, timeout, what):
        """Waits, bounded, until count requests sent after since got 200."""
        self.stack.wait_for(lambda: self.count_ok_since(since) >= count,
                            timeout, interval=0.1, what=what)

    def resumed_after(self, since):
        """Seconds from since to the first 200 of a request sent after it
        (None when there is none)."""
        done = [a.started + a.elapsed for a in self.snapshot()
                if a.ok and a.started >= since]
        return round(min(done) - since, 2) if done else None

    def failed(self):
        return [a for a in self.snapshot() if not a.ok]

    # ---- retries --------------------------------------------------------

    def retry(self, timeout=60.0, gateways=None):
        """Sends every failed request again, same requestId and body, until
        it gets 200; 503, 504 and no answer are retried after a short
        pause, anything else is final. Returns the requests that never got
        200 (empty when all did)."""
        gateways = list(gateways or self.gateways)
        conns = {}
        deadline = time.monotonic() + timeout
        left = []
        try:
            for a in self.failed():
                while True:
                    retry = Answer(a.thread, a.request_id, a.ref_id,
                                   a.payload, gateways[0])
                    (retry.status, retry.headers, retry.body,
                     retry.error) = send(self.stack, conns, gateways[0],
                                         a.payload, self.timeout)
                    a.attempts += 1
                    if retry.ok:
                        a.retry = retry
                        break
                    final = retry.status not in (None, 503, 504)
                    if final or time.monotonic() >= deadline:
                        left.append((a, retry))
                        break
                    time.sleep(0.25)
        finally:
            for conn in conns.values():
                conn.close()
        return left


class FaultCase(Case):
    """Base of the fault tests: customers for the load, the checks, the
    counts."""

    def make_customers(self, count=THREADS):
        return [self.stack.create_customer().body["customer"]["refId"]
                for _ in range(count)]

    def assertRetried(self, load, timeout=60.0, gateways=None):
        left = load.retry(timeout=timeout, gateways=gateways)
        self.assertEqual(
            left, [],
            "%d retried requests never got 200: %s" % (len(left), [
                (a.request_id, r.status, r.error, r.body)
                for a, r in left[:5]]))

    def final_answers(self, load):
        """requestId -> the Answer with 200 (the first or the retry)."""
        finals = {}
        for a in load.snapshot():
            final = a if a.ok else a.retry
            self.assertIsNotNone(final, "%s never got 200" % a.request_id)
            finals[a.request_id] = final
        return finals

    def assertExactlyOnce(self, load, kafka_timeout=60.0):
        """Every request of the load (all got 200 by now) has exactly one
        effect in PostgreSQL, and its event is on the topic. Returns the
        count of events published more than once (allowed: delivery is at
        least once)."""
        s = self.stack
        finals = self.final_answers(load)
        like = "'%s-%%'" % load.prefix

        # One idempotency record per request, none for anything else.
        rows = s.sql("SELECT request_id, status FROM casm.requests "
                     "WHERE request_id LIKE %s" % like).splitlines()
        recorded = {}
        for line in rows:
            rid, status = line.split("|")
            recorded.setdefault(rid, []).append(int(status))
        self.assertEqual(set(recorded), set(finals),
                         "requests rows and answered requests differ: "
                         "%d missing, %d unexpected" % (
                             len(set(finals) - set(recorded)),
                             len(set(recorded) - set(finals))))
        for rid, statuses in recorded.items():
            self.assertEqual(statuses, [200], rid)

        # One outbox row per request, with the answer's transaction id.
        rows = s.sql("SELECT request_id, transaction_id, customer_ref, "
                     "version FROM casm.outbox WHERE request_id LIKE %s"
                     % like).splitlines()
        outbox = {}
        for line in rows:
            rid, tid, ref, version = line.split("|")
            outbox.setdefault(rid, []).append((tid, ref, int(version)))
        twice = {rid: v for rid, v in outbox.items() if len(v) != 1}
        self.assertEqual(twice, {}, "requests with several outbox rows")
        self.assertEqual(set(outbox), set(finals),
                         "outbox rows and answered requests differ")
        for rid, [(tid, ref, version)] in outbox.items():
            body = finals[rid].body
            self.assertEqual(tid, body["transactionId"], rid)
            self.assertEqual(ref, body["customer"]["refId"], rid)
            self.assertEqual(version, body["customer"]["version"], rid)

        # Each customer: one version step per request, each answer its own.
        per_customer = {}
        for rid, final in finals.items():
            per_customer.setdefault(final.body["customer"]["refId"], []) \
                .append(final.body["customer"]["version"])
        refs = ",".join("'%s'" % r for r in per_customer)
        rows = s.sql("SELECT ref_id, version FROM casm.customers "
                     "WHERE ref_id IN (%s)" % refs).splitlines()
        stored = dict((r, int(v)) for r, v in
                      (line.split("|") for line in rows))
        for ref, versions in per_customer.items():
            self.assertEqual(sorted(versions),
                             list(range(2, len(versions) + 2)),
                             "customer %s: answers' versions" % ref)
            self.assertEqual(stored[ref], len(versions) + 1,
                             "customer %s: stored version" % ref)

        # Every event on the topic, by transaction id.
        wanted = {f.body["transactionId"] for f in finals.values()}
        seen = {}

        def poll():
            seen.clear()
            for e in s.kafka_events(timeout=20):
                tid = e["headers"].get("X-Ocs-Io-transaction-id")
                seen[tid] = seen.get(tid, 0) + 1
            return wanted <= set(seen)

        try:
            s.wait_for(poll, kafka_timeout, interval=0.5,
                       what="every event on the topic")
        except AssertionError:
            missing = wanted - set(seen)
            self.fail("%d of %d events missing from the topic: %s"
                      % (len(missing), len(wanted), sorted(missing)[:5]))

        # And the outbox knows they were delivered.
        s.wait_for(lambda: int(s.sql(
            "SELECT count(*) FROM casm.outbox WHERE request_id LIKE %s "
            "AND sent_at IS NULL" % like)) == 0, kafka_timeout,
            interval=0.5, what="outbox rows marked sent")
        return sum(seen[t] - 1 for t in wanted)

    def report(self, name, load, duplicates=0, **extra):
        """Prints the counts and appends them to CASM_FAULT_REPORT."""
        answers = load.snapshot()
        failed = [a for a in answers if not a.ok]
        kinds = {}
        for a in failed:
            kinds[a.kind()] = kinds.get(a.kind(), 0) + 1
        counts = {
            "test": name,
            "sent": len(answers),
            "acknowledged": len(answers) - len(failed),
            "failed": len(failed),
            "failures": kinds,
            "retried": sum(1 for a in failed if a.attempts > 0),
            "retry_attempts": sum(a.attempts for a in failed),
            "retried_ok": sum(1 for a in failed if a.retry is not None),
            "replayed": sum(1 for a in failed if a.retry is not None
                            and a.retry.headers.get(
                                "Idempotent-Replayed") == "true"),
            "kafka_duplicates": duplicates,
            "slowest_s": round(max((a.elapsed for a in answers
                                    if a.elapsed is not None),
                                   default=0), 2),
        }
        counts.update(extra)
        line = json.dumps(counts, sort_keys=True)
        sys.stderr.write("fault counts: %s\n" % line)
        path = os.environ.get("CASM_FAULT_REPORT")
        if path:
            with open(path, "a") as f:
                f.write(line + "\n")
        return counts


def hold(seconds):
    """Lets the load run for a while (the faults' rhythm, not a check)."""
    time.sleep(seconds)

