"""End-to-end: casm-dwh between the Kafka-protocol broker and PostgreSQL.

Business Transactions are produced to casm-kafka with kcat (and, for the
thousands of the crash test, with casm-dwh-load, since kcat cannot vary the
headers per message); casm-dwh runs as a real process; the warehouse is
checked with psql. Shown here:

- each transaction id is stored once in the history, however often it is
  delivered;
- the current customer is the newest version, whatever the order of
  arrival, and the attribute index follows it and answers its query;
- a malformed message lands in dwh.dead_letters and the next good message
  is still stored;
- SIGKILL while thousands of events are being produced, then a restart,
  loses nothing and duplicates nothing (the history, the per-day counts, the
  current customers and the attribute index all come out exact);
- PostgreSQL going away and coming back loses nothing, and casm-dwh waits
  instead of dying;
- SIGTERM stores what is in hand and exits 0 within the grace period;
- through the whole stack: what the API answered is what the warehouse
  holds.

Standard library only; uses harness.py's Stack for the processes.
"""

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

TOPIC = harness.TOPIC
DWH_ENV = {
    "DWH_SESSION_TIMEOUT_MS": "6000",
    "DWH_BATCH_MS": "20",
    "SHUTDOWN_GRACE_MS": "5000",
    "LOG_LEVEL": "info",
}


class DwhStack(harness.Stack):
    """PostgreSQL, casm-kafka and casm-dwh only: no API stages."""

    def _start(self):
        self.binary("dwh")
        self.binary("kafka-mock")
        self.tmp = tempfile.mkdtemp(prefix="casm-e2e-dwh-")
        self._start_watchdog()
        self._start_postgres()
        self._start_kafka()


STACK = None
DWH = []            # the casm-dwh processes started, last one current


def start_dwh(stack, name, extra=None):
    env = dict(DWH_ENV)
    env.update(extra or {})
    proc = stack.start_process("dwh", name, env)
    DWH.append(proc)
    return proc


def stop_dwh(proc, timeout=10):
    """SIGTERM; returns the exit status (None when it did not exit)."""
    proc.signal(signal.SIGTERM)
    return proc.wait(timeout)


def setUpModule():
    global STACK
    STACK = DwhStack(name="dwh").start()
    start_dwh(STACK, "dwh-1")
    STACK.wait_for(lambda: "dwh started" in read_log(DWH[-1]), 30,
                   what="casm-dwh started")


def tearDownModule():
    if STACK is None:
        return
    try:
        for proc in DWH:
            if proc.alive():
                stop_dwh(proc)
    finally:
        if harness.DumpOnFailure.failed:
            STACK.dump_logs("a test failed")
        STACK.stop()


def read_log(proc):
    try:
        with open(proc.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def now_rfc3339():
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + \
        ".%03dZ" % (int(t * 1000) % 1000)


def customer(ref_id, version, attributes, state="ACTIVE", modified=None):
    """The customer JSON of DESIGN.md 2.2, compact, on one line."""
    return json.dumps({
        "refId": ref_id, "externalId": "E2E-" + ref_id,
        "customName": None, "customerSegment": None,
        "state": {"state": state, "stateReason": None,
                  "stateValidFrom": "2026-12-01T09:00:00.000Z"},
        "testCustomer": False, "customAttributes": attributes,
        "version": version, "createdAt": "2026-12-01T09:00:00.000Z",
        "modifiedAt": modified or now_rfc3339()}, separators=(",", ":"))


def headers(transaction_id, operation, request_id=None):
    return [("X-Ocs-Io-transaction-id", transaction_id),
            ("X-Ocs-Io-message-code", "customer"),
            ("X-Ocs-Io-message-payload", "CustomerEx"),
            ("X-Ocs-Io-operation", operation),
            ("X-Ocs-Io-request-id", request_id or str(uuid.uuid4()))]


def produce(key, value, header_list):
    """One message with kcat: key, headers, value (one line)."""
    args = ["kcat", "-P", "-b", STACK.kafka_brokers, "-t", TOPIC, "-k", key]
    for name, val in header_list:
        args += ["-H", "%s=%s" % (name, val)]
    out = subprocess.run(args, input=value.encode() + b"\n",
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         timeout=30)
    if out.returncode != 0:
        raise AssertionError("kcat failed: %s" % out.stderr.decode())


def sql(query):
    return STACK.sql(query)


def sql_int(query):
    return int(sql(query) or 0)


def metrics_total():
    return sql_int("SELECT coalesce (sum (count), 0) FROM dwh.metrics_daily")


def history_count(where):
    return sql_int("SELECT count (*) FROM dwh.business_transactions WHERE "
                   + where)


class DwhCase(harness.DumpOnFailure, unittest.TestCase):

    def wait_for(self, predicate, timeout=30, what="condition"):
        return STACK.wait_for(predicate, timeout, 0.1, what)

    def assertDwhAlive(self):
        self.assertTrue(DWH[-1].alive(), "casm-dwh exited:\n%s"
                        % read_log(DWH[-1])[-3000:])

    def test_1_each_transaction_once_newest_wins(self):
        ref = str(uuid.uuid4())
        tx = [str(uuid.uuid4()) for _ in range(3)]
        before = metrics_total()
        v1 = customer(ref, 1, {"tier": "bronze", "channel": "sms"})
        v2 = customer(ref, 2, {"tier": "silver", "channel": "email"})
        v3 = customer(ref, 3, {"tier": "gold"}, state="SUSPENDED")

        produce(ref, v1, headers(tx[0], "createCustomer"))
        produce(ref, v3, headers(tx[2], "updateCustomerState"))
        produce(ref, v2, headers(tx[1], "updateCustomerCustomAttributes"))
        # Redeliveries, as a publisher's outbox sweep could send them.
        produce(ref, v3, headers(tx[2], "updateCustomerState"))
        produce(ref, v1, headers(tx[0], "createCustomer"))
        produce(ref, v2, headers(tx[1], "updateCustomerCustomAttributes"))

        # A last message on the same partition (same key): once it is
        # stored, everything before it has been read.
        sentinel = str(uuid.uuid4())
        produce(ref, customer(str(uuid.uuid4()), 1, {}),
                headers(sentinel, "createCustomer"))
        self.wait_for(lambda: history_count(
            "transaction_id = '%s'" % sentinel) == 1, 30, "all consumed")

        for t in tx:
            self.assertEqual(history_count("transaction_id = '%s'" % t), 1)
        self.assertEqual(metrics_total(), before + 4)
        self.assertEqual(
            sql("SELECT version || ' ' || state || ' ' || transaction_id "
                "FROM dwh.customers WHERE ref_id = '%s'" % ref),
            "3 SUSPENDED %s" % tx[2])
        self.assertEqual(
            sql("SELECT string_agg (key || '=' || value, ',' ORDER BY key) "
                "FROM dwh.custom_attributes WHERE ref_id = '%s'" % ref),
            "tier=gold")
        self.assertDwhAlive()

    def test_2_attribute_query(self):
        refs = [str(uuid.uuid4()) for _ in range(3)]
        value = "platinum-" + uuid.uuid4().hex
        for i, ref in enumerate(refs):
            attributes = {"tier": value if i < 2 else "other",
                          "n": str(i)}
            produce(ref, customer(ref, 1, attributes),
                    headers(str(uuid.uuid4()), "createCustomer"))
        self.wait_for(lambda: sql_int(
            "SELECT count (*) FROM dwh.customers WHERE ref_id IN (%s)"
            % ",".join("'%s'" % r for r in refs)) == 3, 30,
            "three customers")
        found = sql("SELECT string_agg (ref_id::text, ',' ORDER BY ref_id)"
                    " FROM dwh.customers_with_attribute ('tier', '%s')"
                    % value)
        self.assertEqual(found, ",".join(sorted(refs[:2])))
        plain = sql("SELECT string_agg (ref_id::text, ',' ORDER BY ref_id)"
                    " FROM dwh.custom_attributes WHERE key = 'tier' AND "
                    "value = '%s'" % value)
        self.assertEqual(plain, found)

        # The newest set replaces the old one in the index.
        produce(refs[0], customer(refs[0], 2, {"n": "changed"}),
                headers(str(uuid.uuid4()),
                        "updateCustomerCustomAttributes"))
        self.wait_for(lambda: sql(
            "SELECT string_agg (key || '=' || value, ',') FROM "
            "dwh.custom_attributes WHERE ref_id = '%s'" % refs[0])
            == "n=changed", 30, "attribute index follows")
        self.assertEqual(
            sql("SELECT string_agg (ref_id::text, ',') FROM "
                "dwh.customers_with_attribute ('tier', '%s')" % value),
            refs[1])

    def test_3_malformed_then_good(self):
        key = str(uuid.uuid4())
        marker = uuid.uuid4().hex
        produce(key, "this is not json " + marker,
                headers(str(uuid.uuid4()), "createCustomer"))
        produce(key, customer(key, 1, {}),
                [("X-Ocs-Io-operation", "createCustomer")])
        produce(key, customer(key, 1, {}),
                headers(str(uuid.uuid4()), "deleteEverything"))
        good_tx = str(uuid.uuid4())
        produce(key, customer(key, 1, {"ok": marker}),
                headers(good_tx, "createCustomer"))

        self.wait_for(lambda: history_count(
            "transaction_id = '%s'" % good_tx) == 1, 30,
            "the good message stored")
        reasons = sql("SELECT string_agg (reason, '|' ORDER BY "
                      "kafka_offset) FROM dwh.dead_letters WHERE "
                      "convert_from (key, 'UTF8') = '%s'" % key)
        self.assertEqual(reasons.split("|")[0][:18], "value is not JSON:")
        self.assertEqual(reasons.split("|")[1],
                         "missing header X-Ocs-Io-transaction-id")
        self.assertEqual(reasons.split("|")[2],
                         "unknown operation deleteEverything")
        self.assertEqual(
            sql("SELECT convert_from (value, 'UTF8') FROM dwh.dead_letters "
                "WHERE position ('%s' IN convert_from (value, 'UTF8')) > 0 "
                "AND reason LIKE 'value is not JSON%%'" % marker),
            "this is not json " + marker)
        self.assertIn("malformed message stored as a dead letter",
                      read_log(DWH[-1]))
        self.assertDwhAlive()

    def test_4_sigkill_mid_stream(self):
        seed = random.randrange(1 << 20, 1 << 31)
        customers, chunk, chunks = 300, 500, 12
        total = chunk * chunks
        prefix = "%08x-0001-" % seed
        ref_prefix = "%08x-0000-" % seed
        before = metrics_total()
        loader = STACK.binary("dwh").replace("casm-dwh", "casm-dwh-load")
        failures = []

        def produce_all():
            for k in range(chunks):
                out = subprocess.run(
                    [loader, "--brokers", STACK.kafka_brokers, "--topic",
                     TOPIC, "--seed", str(seed), "--customers",
                     str(customers), "--first", str(k * chunk), "--count",
                     str(chunk)], stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, timeout=60)
                if out.returncode != 0:
                    failures.append(out.stderr.decode())
                time.sleep(0.25)

        producer = threading.Thread(target=produce_all)
        producer.start()
        try:
            self.wait_for(lambda: history_count(
                "transaction_id::text LIKE '%s%%'" % prefix) >= 1000, 60,
                "a first part stored")
            victim = DWH[-1]
            victim.signal(signal.SIGKILL)
            self.assertEqual(victim.wait(10), -signal.SIGKILL)
            stored_at_kill = history_count(
                "transaction_id::text LIKE '%s%%'" % prefix)
            time.sleep(0.5)
            start_dwh(STACK, "dwh-2")
        finally:
            producer.join(120)
        self.assertEqual(failures, [])
        self.assertLess(stored_at_kill, total,
                        "the kill came after the end of the stream")

        # The killed member leaves the group when its session times out;
        # then the new one gets the partitions and goes on from the
        # committed offsets.
        self.wait_for(lambda: history_count(
            "transaction_id::text LIKE '%s%%'" % prefix) == total, 90,
            "every event stored after the restart")
        time.sleep(1)
        self.assertEqual(history_count(
            "transaction_id::text LIKE '%s%%'" % prefix), total)
        self.assertEqual(metrics_total() - before, total,
                         "transactions counted more than once")
        # Each customer is at its last version, with its last attribute
        # set, and the attribute index holds exactly those sets.
        steps = total // customers
        self.assertEqual(
            sql("SELECT count (*) || ' ' || min (version) || ' ' || "
                "max (version) FROM dwh.customers WHERE ref_id::text LIKE "
                "'%s%%'" % ref_prefix),
            "%d %d %d" % (customers, steps, steps))
        for a, b in (("current", "index"), ("index", "current")):
            differing = sql_int(
                "WITH current AS (SELECT c.ref_id, kv.key, kv.value FROM "
                "dwh.customers c, jsonb_each_text (c.custom_attributes) kv "
                "WHERE c.ref_id::text LIKE '{p}%'), index AS (SELECT ref_id,"
                " key, value FROM dwh.custom_attributes WHERE ref_id::text "
                "LIKE '{p}%') SELECT count (*) FROM (SELECT * FROM {a} "
                "EXCEPT ALL SELECT * FROM {b}) d".format(
                    p=ref_prefix, a=a, b=b))
            self.assertEqual(differing, 0, "%s has rows %s lacks" % (a, b))
        self.assertDwhAlive()

    def test_5_crash_between_store_and_commit(self):
        # The one moment where a crash leaves work to be done twice: the
        # batch is committed in PostgreSQL, its offsets are not in Kafka.
        # casm-dwh dies there on purpose (DWH_TEST_CRASH_AFTER_BATCHES),
        # and the restarted instance reads that batch again.
        stop_dwh(DWH[-1])
        seed = random.randrange(1 << 20, 1 << 31)
        total, prefix = 3000, "%08x-0001-" % seed
        before = metrics_total()
        loader = STACK.binary("dwh").replace("casm-dwh", "casm-dwh-load")
        subprocess.run([loader, "--brokers", STACK.kafka_brokers, "--topic",
                        TOPIC, "--seed", str(seed), "--customers", "100",
                        "--count", str(total)], check=True,
                       stdout=subprocess.DEVNULL, timeout=60)

        crashing = start_dwh(STACK, "dwh-crash", {
            "DWH_TEST_CRASH_AFTER_BATCHES": "3", "DWH_BATCH_MAX": "100"})
        self.assertEqual(crashing.wait(60), 137, read_log(crashing)[-2000:])
        stored = history_count("transaction_id::text LIKE '%s%%'" % prefix)
        self.assertGreater(stored, 0)
        self.assertLess(stored, total)

        start_dwh(STACK, "dwh-after-crash", {"LOG_LEVEL": "debug"})
        self.wait_for(lambda: history_count(
            "transaction_id::text LIKE '%s%%'" % prefix) == total, 60,
            "every event stored after the restart")
        time.sleep(0.5)
        self.assertEqual(metrics_total() - before, total)
        again = [json.loads(line) for line in read_log(DWH[-1]).splitlines()
                 if '"batch stored"' in line]
        self.assertTrue(any(b["stored"] < b["messages"] for b in again),
                        "no batch was read again")
        self.assertDwhAlive()

    def test_6_database_outage(self):
        pg_sh = os.path.join(STACK.source_dir, "scripts", "pg.sh")
        port = STACK.database_url.rsplit(":", 1)[1].split("/")[0]
        before = metrics_total()
        subprocess.run([pg_sh, "stop", STACK._pg_dir], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=60)
        try:
            refs = [str(uuid.uuid4()) for _ in range(20)]
            for ref in refs:
                produce(ref, customer(ref, 1, {"outage": "yes"}),
                        headers(str(uuid.uuid4()), "createCustomer"))
            time.sleep(3)
            self.assertDwhAlive()
        finally:
            subprocess.run([pg_sh, "start", STACK._pg_dir, port], check=True,
                           stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=90)
        self.wait_for(lambda: metrics_total() == before + len(refs), 60,
                      "the events of the outage stored")
        log = read_log(DWH[-1])
        self.assertIn("database unavailable", log)
        self.assertIn("database available", log)
        self.assertDwhAlive()

    def test_7_sigterm(self):
        ref = str(uuid.uuid4())
        tx = str(uuid.uuid4())
        produce(ref, customer(ref, 1, {}), headers(tx, "createCustomer"))
        self.wait_for(lambda: history_count(
            "transaction_id = '%s'" % tx) == 1, 30, "stored")
        proc = DWH[-1]
        started = time.monotonic()
        status = stop_dwh(proc, 10)
        self.assertEqual(status, 0, read_log(proc)[-2000:])
        self.assertLess(time.monotonic() - started, 5.0)
        self.assertIn("dwh stopped", read_log(proc))

        # A new instance finds nothing left to do: the offsets were
        # committed, nothing is counted twice.
        before = metrics_total()
        start_dwh(STACK, "dwh-3")
        self.wait_for(lambda: "partitions assigned" in read_log(DWH[-1]),
                      30, "dwh-3 joined")
        time.sleep(1)
        self.assertEqual(metrics_total(), before)


    def test_8_two_instances_share_the_partitions(self):
        first = DWH[-1]
        second = start_dwh(STACK, "dwh-4")
        self.wait_for(lambda: "partitions assigned" in read_log(second), 60,
                      "dwh-4 joined")
        seed = random.randrange(1 << 20, 1 << 31)
        total, prefix = 3000, "%08x-0001-" % seed
        before = metrics_total()
        loader = STACK.binary("dwh").replace("casm-dwh", "casm-dwh-load")
        subprocess.run([loader, "--brokers", STACK.kafka_brokers, "--topic",
                        TOPIC, "--seed", str(seed), "--customers", "90",
                        "--count", str(total)], check=True,
                       stdout=subprocess.DEVNULL, timeout=60)
        self.wait_for(lambda: history_count(
            "transaction_id::text LIKE '%s%%'" % prefix) == total, 60,
            "every event stored")
        time.sleep(0.5)
        self.assertEqual(metrics_total() - before, total)

        # Each instance wrote partitions of its own.
        writers = sql(
            "SELECT count (DISTINCT kafka_partition) FROM "
            "dwh.business_transactions WHERE transaction_id::text LIKE "
            "'%s%%'" % prefix)
        self.assertEqual(writers, "3")
        last = [line for line in read_log(second).splitlines()
                if "partitions assigned" in line][-1]
        assigned = json.loads(last)["partitions"]
        self.assertTrue(0 < len(assigned) < 3, assigned)
        self.assertTrue(first.alive() and second.alive())
        self.assertEqual(stop_dwh(second), 0)


class ThroughTheApi(harness.DumpOnFailure, unittest.TestCase):
    """The whole stack plus casm-dwh: what the API answered is what the
    warehouse holds (issue 3, done when 1)."""

    @classmethod
    def setUpClass(cls):
        cls.stack = harness.Stack(name="dwh-api").start()
        cls.dwh = cls.stack.start_process("dwh", "dwh-api", DWH_ENV)
        try:
            cls.stack.wait_for(lambda: "dwh started" in read_log(cls.dwh),
                               30, 0.1, "casm-dwh started")
        except BaseException:
            cls.stack.dump_logs("casm-dwh did not start")
            cls.stack.stop()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            if cls.dwh.alive():
                stop_dwh(cls.dwh)
        finally:
            if harness.DumpOnFailure.failed:
                cls.stack.dump_logs("a test failed")
            cls.stack.stop()

    def test_api_to_warehouse(self):
        s = self.stack
        marker = "gold-" + uuid.uuid4().hex[:8]
        r = s.create_customer(custom_attributes={"segmentHint": "silver"})
        ref = r.body["customer"]["refId"]
        transactions = [r.body["transactionId"]]
        for attributes in ({"segmentHint": marker, "channel": "email"},
                           {"segmentHint": marker}):
            r = s.update_attributes({"refId": ref}, attributes)
            self.assertEqual(r.status, 200, r.body)
            transactions.append(r.body["transactionId"])
        r = s.update_state({"refId": ref}, "SUSPENDED", "unpaid")
        self.assertEqual(r.status, 200, r.body)
        transactions.append(r.body["transactionId"])

        quoted = ",".join("'%s'" % t for t in transactions)
        s.wait_for(lambda: s.sql(
            "SELECT count (*) FROM dwh.business_transactions WHERE "
            "transaction_id IN (%s)" % quoted) == str(len(transactions)),
            60, 0.2, "every transaction in the history")
        self.assertEqual(
            s.sql("SELECT count (*) FROM dwh.business_transactions WHERE "
                  "ref_id = '%s'" % ref), str(len(transactions)))

        read = s.read_customer(ref_id=ref)
        self.assertEqual(read.status, 200, read.body)
        api = read.body
        s.wait_for(lambda: s.sql(
            "SELECT version FROM dwh.customers WHERE ref_id = '%s'" % ref)
            == str(api["version"]), 30, 0.2, "the current version")
        row = json.loads(s.sql(
            "SELECT json_build_object ('externalId', external_id, "
            "'state', state, 'stateReason', state_reason, "
            "'customAttributes', custom_attributes, 'version', version, "
            "'testCustomer', test_customer, 'modifiedAt', "
            "to_char (modified_at AT TIME ZONE 'UTC', "
            "'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')) FROM dwh.customers "
            "WHERE ref_id = '%s'" % ref))
        self.assertEqual(row, {
            "externalId": api["externalId"],
            "state": api["state"]["state"],
            "stateReason": api["state"]["stateReason"],
            "customAttributes": api["customAttributes"],
            "version": api["version"],
            "testCustomer": api["testCustomer"],
            "modifiedAt": api["modifiedAt"]})
        self.assertEqual(
            s.sql("SELECT string_agg (ref_id::text, ',') FROM "
                  "dwh.customers_with_attribute ('segmentHint', '%s')"
                  % marker), ref)


if __name__ == "__main__":
    unittest.main(verbosity=2)
