"""Several OS processes sharing one broker database file, some of them killed with SIGKILL.

The requirement: two or more processes producing into and consuming from the same file at
once, including one killed with SIGKILL mid-transaction: nothing committed is lost, the open
transaction is aborted by its timeout or by the next init_transactions, and no read_committed
reader ever sees it.

Every test starts real processes (`sys.executable mp_child.py ROLE ...`, the script below
written to tmp_path). A child reports on stdout, one line per event: `TAG <json>`. Every wait
has a timeout, and every child still alive at the end of a test is killed.

The test process itself keeps at most one Broker open per file at a time: opening a second
one in the same process breaks that process's SQLite locks (see the last test), which would
make every other test fail for that one reason.

Seeds: the random tests print their seed (shown by pytest on failure) and take
STREAMS_MP_SEED from the environment to replay one.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime import errors
from runtime.broker import READ_COMMITTED, READ_UNCOMMITTED, Broker, ProduceBatch
from runtime.types import Record, TopicPartition

ROOT = Path(__file__).resolve().parents[2]
WAIT = 30.0  # seconds: the longest any single wait for a child may take

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "SIGKILL") or sys.platform == "win32", reason="needs POSIX SIGKILL"
)


# --------------------------------------------------------------------------------------------
# The child process
# --------------------------------------------------------------------------------------------

CHILD = r'''
import json
import os
import random
import sys
import time
import zlib

from runtime import errors
from runtime.broker import READ_COMMITTED, READ_UNCOMMITTED, Broker, ProduceBatch
from runtime.types import TopicPartition


def emit(tag, payload=None):
    sys.stdout.write(tag + " " + json.dumps(payload) + "\n")
    sys.stdout.flush()


def now_ms():
    return time.time_ns() // 1_000_000


def read_all(b, topic, partitions, isolation):
    pos = {TopicPartition(topic, p): 0 for p in partitions}
    out = {tp: [] for tp in pos}
    while True:
        res = b.fetch(list(pos.items()), max_records=500, isolation=isolation)
        moved = False
        for tp, r in res.items():
            out[tp].extend(r.records)
            moved = moved or r.next_offset != pos[tp]
            pos[tp] = r.next_offset
        if not moved:
            return out, res


def dump(records):
    return [[r.partition, r.offset, r.key.decode(), r.value.decode()] for r in records]


def role_producer(path, topic, index, seed, steps):
    """Idempotent plain batches and transactions (committed or aborted) with keyed records."""
    index, steps = int(index), int(steps)
    rng = random.Random(int(seed))
    b = Broker(path)
    parts = b.describe_topic(topic).partitions
    ipid, iep = b.init_producer_id()
    tpid, tep = b.init_producer_id(f"mp-producer-{index}")
    emit("READY", {"ipid": ipid, "tpid": tpid})
    if sys.stdin.readline().strip() != "go":
        sys.exit(3)
    state = {"n": 0}
    iseq = {}
    records = []
    markers = {}
    commit_markers = {}

    def make(count, kind, txn, fate):
        by_part = {}
        for _ in range(count):
            n = state["n"]
            state["n"] += 1
            key = f"p{index}-{n}".encode()
            value = json.dumps(
                {"p": index, "n": n, "kind": kind, "txn": txn, "fate": fate}
            ).encode()
            by_part.setdefault(zlib.crc32(key) % parts, []).append((key, value, now_ms()))
        return by_part

    def send(pid, epoch, seqs, by_part, transactional, fate):
        batches = [
            ProduceBatch(
                topic, part, seqs.get(part, 0),
                [r[0] for r in recs], [r[1] for r in recs], [r[2] for r in recs],
            )
            for part, recs in by_part.items()
        ]
        offsets = b.produce(pid, epoch, batches, transactional=transactional)
        for batch, base in zip(batches, offsets, strict=True):
            seqs[batch.partition] = batch.base_seq + len(batch.values)
            for i, (k, v) in enumerate(zip(batch.keys, batch.values)):
                records.append([batch.partition, base + i, k.decode(), v.decode(), fate])
        return {batch.partition for batch in batches}

    txn_no = 0
    for _ in range(steps):
        if rng.random() < 0.4:
            send(ipid, iep, iseq, make(rng.randint(1, 6), "plain", None, "commit"), False,
                 "commit")
        else:
            fate = "commit" if rng.random() < 0.65 else "abort"
            tseq = {}
            touched = set()
            for _ in range(rng.randint(1, 3)):
                touched |= send(tpid, tep, tseq, make(rng.randint(1, 5), "txn", txn_no, fate),
                                True, fate)
                time.sleep(rng.random() * 0.002)
            tep = b.end_transaction(tpid, tep, commit=fate == "commit")
            for part in touched:
                markers[part] = markers.get(part, 0) + 1
                if fate == "commit":
                    commit_markers[part] = commit_markers.get(part, 0) + 1
            txn_no += 1
        time.sleep(rng.random() * 0.002)
    emit("DONE", {"records": records, "markers": markers, "commit_markers": commit_markers})


def role_hold(path, topic, txn_id, timeout_ms, partitions, count):
    """Open a transaction, write `count` records to each partition, report, then sleep."""
    count = int(count)
    b = Broker(path)
    pid, epoch = b.init_producer_id(txn_id, transaction_timeout_ms=int(timeout_ms))
    before = now_ms()
    offsets = {}
    for p in map(int, partitions.split(",")):
        keys = [f"victim-{p}-{i}".encode() for i in range(count)]
        values = [json.dumps({"tag": "victim", "p": p, "i": i}).encode() for i in range(count)]
        offsets[p] = b.produce(
            pid, epoch, [ProduceBatch(topic, p, 0, keys, values, [now_ms()] * count)],
            transactional=True,
        )[0]
    emit("OPEN", {"pid": pid, "epoch": epoch, "offsets": offsets, "count": count,
                  "before_ms": before, "after_ms": now_ms()})
    time.sleep(3600)


def role_hang(path, topic, txn_id, mode):
    """Hang inside one SQLite write transaction of the broker (it holds the write lock):
    mode "commit" after the first marker of a 4-partition commit, mode "produce" after the
    second batch of a 4-batch transactional produce."""
    from runtime.broker import log as logmod

    b = Broker(path)
    pid, epoch = b.init_producer_id(txn_id)
    count = 3

    def batch(p):
        keys = [f"victim-{p}-{i}".encode() for i in range(count)]
        values = [json.dumps({"tag": "victim", "p": p, "i": i}).encode() for i in range(count)]
        return ProduceBatch(topic, p, 0, keys, values, [now_ms()] * count)

    if mode == "commit":
        offsets = {p: b.produce(pid, epoch, [batch(p)], transactional=True)[0] for p in range(4)}
        emit("OPEN", {"pid": pid, "epoch": epoch, "offsets": offsets, "count": count})
        original = logmod.Log.append_marker

        def hang_after_marker(self, *args, **kwargs):
            offset = original(self, *args, **kwargs)
            emit("HUNG", {"marker_offset": offset})
            time.sleep(3600)
            return offset

        logmod.Log.append_marker = hang_after_marker
        b.end_transaction(pid, epoch, commit=True)
    else:
        emit("OPEN", {"pid": pid, "epoch": epoch, "offsets": {}, "count": count})
        original = logmod.Log.append
        calls = []

        def hang_after_second(self, *args, **kwargs):
            offset = original(self, *args, **kwargs)
            calls.append(offset)
            if len(calls) == 2:
                emit("HUNG", {"appended": calls})
                time.sleep(3600)
            return offset

        logmod.Log.append = hang_after_second
        b.produce(pid, epoch, [batch(p) for p in range(4)], transactional=True)
    emit("UNEXPECTED", None)


def role_loop(path, topic, txn_id, run_id, side_file, stop_after):
    """Commit transactions of 50 records (25 on each of partitions 0 and 1, in 5 produce
    calls), continuing from the last committed one; append "run txn" to side_file after each
    commit returned."""
    stop_after = int(stop_after)
    b = Broker(path)
    pid, epoch = b.init_producer_id(txn_id)
    committed, _ = read_all(b, topic, [0, 1], READ_COMMITTED)
    done = [json.loads(r.value)["txn"] for recs in committed.values() for r in recs]
    n = max(done) + 1 if done else 0
    emit("STARTED", {"start": n, "epoch": epoch})
    fd = os.open(side_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    stop = None if stop_after < 0 else n + stop_after
    while stop is None or n < stop:
        for call in range(5):
            batches = []
            for p in (0, 1):
                idx = range(call * 5, call * 5 + 5)
                keys = [f"{n}-{p}-{i}".encode() for i in idx]
                values = [
                    json.dumps({"txn": n, "run": run_id, "p": p, "i": i}).encode() for i in idx
                ]
                batches.append(ProduceBatch(topic, p, call * 5, keys, values, [now_ms()] * 5))
            b.produce(pid, epoch, batches, transactional=True)
        epoch = b.end_transaction(pid, epoch, commit=True)
        os.write(fd, f"{run_id} {n}\n".encode())
        n += 1
    emit("FINISHED", {"next": n})


def role_churn(path, topic, txn_id, run_id, seed, side_file):
    """Forever: 1 KB records, idempotent batches and transactions of random size and fate."""
    rng = random.Random(int(seed))
    b = Broker(path)
    parts = b.describe_topic(topic).partitions
    ipid, iep = b.init_producer_id()
    tpid, tep = b.init_producer_id(txn_id)
    emit("STARTED", {"tpid": tpid, "epoch": tep})
    fd = os.open(side_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    iseq = {}
    pad = "x" * 1000
    txn = 0
    while True:
        if rng.random() < 0.3:
            p = rng.randrange(parts)
            k = rng.randint(1, 40)
            values = [json.dumps({"run": run_id, "plain": True, "pad": pad}).encode()] * k
            b.produce(ipid, iep, [ProduceBatch(topic, p, iseq.get(p, 0), [b"plain"] * k,
                                               values, [now_ms()] * k)])
            iseq[p] = iseq.get(p, 0) + k
            continue
        calls = [(rng.randrange(parts), rng.randint(1, 40)) for _ in range(rng.randint(1, 4))]
        size = sum(k for _, k in calls)
        commit = rng.random() < 0.7
        tseq = {}
        i = 0
        for p, k in calls:
            values = []
            for _ in range(k):
                values.append(json.dumps({"run": run_id, "txn": txn, "i": i, "size": size,
                                          "commit": commit, "pad": pad}).encode())
                i += 1
            b.produce(tpid, tep, [ProduceBatch(topic, p, tseq.get(p, 0), [b"txn"] * k,
                                               values, [now_ms()] * k)], transactional=True)
            tseq[p] = tseq.get(p, 0) + k
        tep = b.end_transaction(tpid, tep, commit=commit)
        if commit:
            os.write(fd, f"{run_id} {txn}\n".encode())
        txn += 1


def role_write(path, topic, txn_id, partitions, count, tag):
    """`count` records to each partition: idempotent when txn_id is "-", else one committed
    transaction. Reports the offsets."""
    count = int(count)
    b = Broker(path)
    transactional = txn_id != "-"
    pid, epoch = b.init_producer_id(txn_id if transactional else None)
    offsets = {}
    for p in map(int, partitions.split(",")):
        keys = [f"{tag}-{p}-{i}".encode() for i in range(count)]
        values = [json.dumps({"tag": tag, "p": p, "i": i}).encode() for i in range(count)]
        base = b.produce(pid, epoch, [ProduceBatch(topic, p, 0, keys, values,
                                                   [now_ms()] * count)],
                         transactional=transactional)[0]
        offsets[p] = list(range(base, base + count))
    if transactional:
        b.end_transaction(pid, epoch, commit=True)
    emit("DONE", {"pid": pid, "offsets": offsets})


def role_slow_writer(path, topic, partitions, count):
    """An idempotent producer writing `count` single-record batches round robin, slowly."""
    count = int(count)
    b = Broker(path)
    parts = [int(p) for p in partitions.split(",")]
    pid, epoch = b.init_producer_id()
    emit("STARTED", {"pid": pid})
    seqs = {}
    written = []
    for i in range(count):
        p = parts[i % len(parts)]
        value = json.dumps({"tag": "steady", "i": i}).encode()
        base = b.produce(pid, epoch, [ProduceBatch(topic, p, seqs.get(p, 0), [b"steady"],
                                                   [value], [now_ms()])])[0]
        seqs[p] = seqs.get(p, 0) + 1
        written.append([p, base, i])
        time.sleep(0.003)
    emit("DONE", {"written": written})


def role_reader(path, topic, partitions):
    """read_committed everything, then partition_info of each partition."""
    parts = [int(p) for p in partitions.split(",")]
    b = Broker(path)
    seen, last = read_all(b, topic, parts, READ_COMMITTED)
    info = {}
    for p in parts:
        pi = b.partition_info(topic, p)
        info[p] = [pi.high_watermark, pi.last_stable]
    ends = {tp.partition: [r.next_offset, r.last_stable, r.high_watermark]
            for tp, r in last.items()}
    emit("SEEN", {"records": [dump(recs) for recs in seen.values()], "ends": ends,
                  "info": info})


def role_init(path, txn_id):
    b = Broker(path)
    pid, epoch = b.init_producer_id(txn_id)
    emit("INIT", {"pid": pid, "epoch": epoch})


def role_open(path, start_at, index, probe_pause="0"):
    """Open a (possibly new) database at the same moment as other processes. With
    probe_pause, the process is descheduled (sleeps) between the first and the second
    statement with which it identifies an existing file."""
    index = int(index)
    start_at = float(start_at)
    pause = float(probe_pause)
    if pause > 0:
        from runtime.broker import schema

        identify = schema._identify

        class Descheduled:
            def __init__(self, conn):
                self.conn = conn
                self.calls = 0

            def execute(self, *args):
                self.calls += 1
                if self.calls == 2:
                    emit("PROBING", None)
                    time.sleep(pause)
                return self.conn.execute(*args)

        first = [True]

        def slow_identify(conn, p):
            if first[0]:
                first[0] = False
                return identify(Descheduled(conn), p)
            return identify(conn, p)

        schema._identify = slow_identify
    emit("WAITING", None)
    time.sleep(max(0.0, start_at - time.time() - 0.02))
    while time.time() < start_at:
        pass
    try:
        b = Broker(path)
        try:
            b.create_topic("t", 4)
            created = True
        except errors.TopicExistsError:
            created = False
        pid, epoch = b.init_producer_id()
        keys = [f"open-{index}-{i}".encode() for i in range(5)]
        base = b.produce(pid, epoch, [ProduceBatch("t", index % 4, 0, keys, keys,
                                                   [now_ms()] * 5)])[0]
    except Exception as exc:
        emit("ERROR", {"type": type(exc).__name__, "message": str(exc)})
        sys.exit(1)
    emit("DONE", {"created": created, "partition": index % 4, "base": base})


def role_slow_create(path, pause):
    """Create a new database, pausing inside the creating transaction (as a process
    descheduled at that moment would)."""
    from runtime.broker import schema

    identify = schema._identify

    def slow_identify(conn, p):
        ours = identify(conn, p)
        if not ours:
            emit("CREATING", None)
            time.sleep(float(pause))
        return ours

    schema._identify = slow_identify
    b = Broker(path)
    b.create_topic("t", 4)
    emit("DONE", {"created": True})


if __name__ == "__main__":
    globals()["role_" + sys.argv[1]](*sys.argv[2:])
'''


class Child:
    """One child process; its stdout lines are collected by a thread."""

    def __init__(self, script: Path, args: list[str], workdir: Path, name: str) -> None:
        self.name = name
        self.stderr_path = workdir / f"{name}.stderr"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, str(script), *args],
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        self.pid = self.proc.pid
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.history: list[str] = []
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def describe(self) -> str:
        return (
            f"child {self.name} (pid {self.pid}, returncode {self.proc.poll()})\n"
            f"stdout so far: {[h[:200] for h in self.history[-5:]]}\nstderr:\n{self.stderr()}"
        )

    def expect(self, tag: str, timeout: float = WAIT) -> Any:
        """The payload of the next line tagged `tag` (other lines are kept in history)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"timed out after {timeout}s waiting for {tag}: {self.describe()}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                self.lines.put(None)
                self.proc.wait(timeout=WAIT)
                pytest.fail(f"stdout closed before {tag}: {self.describe()}")
            self.history.append(line)
            head, _, payload = line.partition(" ")
            if head == tag:
                return json.loads(payload)
            if head in ("ERROR", "UNEXPECTED"):
                pytest.fail(f"expected {tag}, got {line[:500]}: {self.describe()}")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait_ok(self, timeout: float = WAIT) -> None:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"did not exit within {timeout}s: {self.describe()}")
        assert rc == 0, f"exited with {rc}: {self.describe()}"

    def sigkill(self) -> None:
        """SIGKILL the child, which must still be running."""
        assert self.proc.poll() is None, f"died before it was killed: {self.describe()}"
        os.kill(self.pid, signal.SIGKILL)
        rc = self.proc.wait(timeout=WAIT)
        assert rc == -signal.SIGKILL, f"expected death by SIGKILL: {self.describe()}"

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=WAIT)
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass


Spawn = Callable[..., Child]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    script = tmp_path / "mp_child.py"
    script.write_text(CHILD)
    children: list[Child] = []

    def start(role: str, *args: object, name: str | None = None) -> Child:
        child = Child(script, [role, *map(str, args)], tmp_path, name or f"{role}-{len(children)}")
        children.append(child)
        return child

    yield start
    for child in children:
        child.cleanup()


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "broker.db")


@pytest.fixture
def seed() -> int:
    value = int(os.environ.get("STREAMS_MP_SEED", random.randrange(2**32)))
    print(f"random seed: {value} (replay with STREAMS_MP_SEED={value})")
    return value


# --------------------------------------------------------------------------------------------
# Helpers run in the test process
# --------------------------------------------------------------------------------------------


def read_all(
    b: Broker, topic: str, partitions: range | list[int], isolation: str
) -> dict[int, list[Record]]:
    """Every record from offset 0 to the end (the LSO under read_committed) of each partition,
    following next_offset until it stops moving."""
    pos = {TopicPartition(topic, p): 0 for p in partitions}
    out: dict[int, list[Record]] = {p: [] for p in partitions}
    for _ in range(100_000):
        res = b.fetch(list(pos.items()), max_records=500, isolation=isolation)
        moved = False
        for tp, r in res.items():
            out[tp.partition].extend(r.records)
            moved = moved or r.next_offset != pos[tp]
            pos[tp] = r.next_offset
        if not moved:
            for tp, r in res.items():
                end = r.last_stable if isolation == READ_COMMITTED else r.high_watermark
                assert r.next_offset == end, (tp, r.next_offset, r.last_stable, r.high_watermark)
            return out
    raise AssertionError("fetch did not reach the end of the log")


def tags(records: list[Record]) -> list[str]:
    return [json.loads(r.value)["tag"] for r in records]


def check_file(path: str) -> None:
    """The file is a sound SQLite database and a consistent broker log: integrity_check ok,
    each partition's batches cover log_start..next_offset without gap or overlap, byte counts
    match, and only open transactions pin partitions."""
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        partitions = conn.execute(
            "SELECT id, log_start, next_offset, bytes FROM partitions"
        ).fetchall()
        assert partitions
        for tp, log_start, next_offset, size in partitions:
            rows = conn.execute(
                "SELECT base_offset, last_offset, count, length(payload) FROM batches"
                " WHERE tp = ? ORDER BY base_offset",
                (tp,),
            ).fetchall()
            expected = log_start
            for base, last, count, _ in rows:
                assert (base, last) == (expected, base + count - 1), (tp, base, last, expected)
                expected = last + 1
            assert expected == next_offset, (tp, expected, next_offset)
            assert sum(r[3] for r in rows) == size, tp
        stray = conn.execute(
            "SELECT count(*) FROM txn_partitions WHERE pid NOT IN"
            " (SELECT pid FROM producers WHERE txn_state = 1)"
        ).fetchone()[0]
        assert stray == 0
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# 1. Concurrent producers and a concurrent read_committed consumer
# --------------------------------------------------------------------------------------------


def test_concurrent_producers_with_concurrent_read_committed_consumer(
    db: str, spawn: Spawn, seed: int
) -> None:
    topic, parts = "t", 4
    b = Broker(db)
    try:
        b.create_topic(topic, parts)
        producers = [
            spawn("producer", db, topic, i, seed + i, 120, name=f"producer{i}") for i in range(3)
        ]
        for p in producers:
            p.expect("READY")
        for p in producers:
            p.send("go")

        # Read read_committed while the producers run.
        pos = {TopicPartition(topic, p): 0 for p in range(parts)}
        seen: dict[int, list[Record]] = {p: [] for p in range(parts)}
        last_lso = dict.fromkeys(range(parts), 0)
        fetches = pinned = 0
        deadline = time.monotonic() + WAIT

        def poll_once() -> bool:
            nonlocal fetches, pinned
            res = b.fetch(list(pos.items()), max_records=200, isolation=READ_COMMITTED)
            fetches += 1
            moved = False
            for tp, r in res.items():
                p = tp.partition
                assert r.next_offset <= r.last_stable <= r.high_watermark, (tp, r)
                assert r.last_stable >= last_lso[p], f"LSO of {tp} went back: {r}"
                last_lso[p] = r.last_stable
                pinned += r.last_stable < r.high_watermark
                for rec in r.records:
                    value = json.loads(rec.value)
                    assert value["fate"] == "commit", f"read_committed returned {rec}"
                    assert pos[tp] <= rec.offset < r.last_stable
                seen[p].extend(r.records)
                moved = moved or r.next_offset != pos[tp]
                pos[tp] = r.next_offset
            return moved

        while any(p.proc.poll() is None for p in producers):
            assert time.monotonic() < deadline, "producers did not finish in time"
            if not poll_once():
                time.sleep(0.002)
        reports = [p.expect("DONE") for p in producers]
        for p in producers:
            p.wait_ok()
        while poll_once():
            pass
        print(f"{fetches} concurrent fetches, {pinned} saw an open transaction pin the LSO")

        expected: dict[int, dict[int, tuple[str, str]]] = defaultdict(dict)
        aborted: dict[int, dict[int, tuple[str, str]]] = defaultdict(dict)
        markers: Counter[int] = Counter()
        commit_markers: Counter[int] = Counter()
        for report in reports:
            for part, offset, key, value, fate in report["records"]:
                target = expected if fate == "commit" else aborted
                assert offset not in expected[part] and offset not in aborted[part], (
                    f"offset {offset} of partition {part} returned to two produce calls"
                )
                target[part][offset] = (key, value)
            markers.update({int(k): v for k, v in report["markers"].items()})
            commit_markers.update({int(k): v for k, v in report["commit_markers"].items()})
        assert sum(len(v) for v in expected.values()) > 100
        assert sum(len(v) for v in aborted.values()) > 10

        final = read_all(b, topic, range(parts), READ_COMMITTED)
        everything = read_all(b, topic, range(parts), READ_UNCOMMITTED)
        for p in range(parts):
            got = {r.offset: (r.key.decode(), r.value.decode()) for r in seen[p]}
            assert len(got) == len(seen[p]), f"partition {p}: a record delivered twice"
            # every committed record exactly once, at the offset its producer was given,
            # and nothing else (no aborted record)
            assert got == expected[p], f"partition {p}: concurrent reader saw other records"
            assert [r.offset for r in final[p]] == [r.offset for r in seen[p]]
            assert [r.value for r in final[p]] == [r.value for r in seen[p]]
            # per producer, records appear in the order it produced them
            for producer in range(3):
                ns = [
                    json.loads(r.value)["n"]
                    for r in seen[p]
                    if json.loads(r.value)["p"] == producer
                ]
                assert ns == sorted(ns), f"partition {p}: producer {producer} out of order"
            # read_uncommitted: committed and aborted records, plus one offset per marker,
            # cover 0..high watermark exactly
            all_records = {r.offset: (r.key.decode(), r.value.decode()) for r in everything[p]}
            assert all_records == {**expected[p], **aborted[p]}
            info = b.partition_info(topic, p)
            assert info.last_stable == info.high_watermark
            assert info.high_watermark == len(all_records) + markers[p]
            gaps = set(range(info.high_watermark)) - set(all_records)
            assert len(gaps) == markers[p]
        check_file(db)
        conn = sqlite3.connect(db)
        try:
            rows = conn.execute(
                "SELECT p.partition, b.kind, count(*) FROM batches b JOIN partitions p"
                " ON p.id = b.tp WHERE b.kind IN (3, 4) GROUP BY p.partition, b.kind"
            ).fetchall()
        finally:
            conn.close()
        counted = {(part, kind): n for part, kind, n in rows}
        for p in range(parts):
            assert counted.get((p, 3), 0) == commit_markers[p]
            assert counted.get((p, 4), 0) == markers[p] - commit_markers[p]
    finally:
        b.close()


# --------------------------------------------------------------------------------------------
# 2. SIGKILL mid-transaction, recovered by the next init_transactions
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigkilled_transaction_is_aborted_by_the_next_init(db: str, spawn: Spawn) -> None:
    topic = "t"
    b = Broker(db)
    try:
        b.create_topic(topic, 4)
        spawn("write", db, topic, "-", "0,1,2,3", 2, "before").expect("DONE")

        victim = spawn("hold", db, topic, "victim", 60_000, "0,1,2", 3, name="victim")
        opened = victim.expect("OPEN")
        first = {int(p): off for p, off in opened["offsets"].items()}
        assert first == {0: 2, 1: 2, 2: 2}
        victim.sigkill()

        # While it is dead: its records are invisible, the LSO stays at its first record.
        for p in range(4):
            info = b.partition_info(topic, p)
            if p in first:
                assert (info.last_stable, info.high_watermark) == (first[p], first[p] + 3)
            else:
                assert info.last_stable == info.high_watermark == 2
        committed = read_all(b, topic, range(4), READ_COMMITTED)
        assert {p: tags(r) for p, r in committed.items()} == {p: ["before"] * 2 for p in range(4)}
        reader = spawn("reader", db, topic, "0,1,2,3").expect("SEEN")
        assert all("victim" not in line[3] for recs in reader["records"] for line in recs)
        assert {int(p): e[1] for p, e in reader["ends"].items()} == {0: 2, 1: 2, 2: 2, 3: 2}

        # Other processes still write and commit.
        plain = spawn("write", db, topic, "-", "0,1,2,3", 2, "plain").expect("DONE")
        txn = spawn("write", db, topic, "other-txn", "0,1,2,3", 2, "other").expect("DONE")
        assert {int(p): o for p, o in plain["offsets"].items()} == {
            0: [5, 6],
            1: [5, 6],
            2: [5, 6],
            3: [2, 3],
        }
        committed = read_all(b, topic, range(4), READ_COMMITTED)
        for p in range(3):
            assert tags(committed[p]) == ["before"] * 2, "records beyond the pinned LSO leaked"
            assert b.partition_info(topic, p).last_stable == first[p]
        assert tags(committed[3]) == ["before"] * 2 + ["plain"] * 2 + ["other"] * 2
        uncommitted = read_all(b, topic, range(4), READ_UNCOMMITTED)
        assert (
            tags(uncommitted[0]) == ["before"] * 2 + ["victim"] * 3 + ["plain"] * 2 + ["other"] * 2
        )

        # The next instance of the transactional id aborts the transaction.
        reinit = spawn("init", db, "victim").expect("INIT")
        assert reinit["pid"] == opened["pid"]
        assert reinit["epoch"] > opened["epoch"]
        for p in range(4):
            info = b.partition_info(topic, p)
            assert info.last_stable == info.high_watermark, info
        committed = read_all(b, topic, range(4), READ_COMMITTED)
        for p in range(4):
            assert tags(committed[p]) == ["before"] * 2 + ["plain"] * 2 + ["other"] * 2, p
        assert {int(p): o for p, o in txn["offsets"].items()} == {
            p: [r.offset for r in committed[p] if json.loads(r.value)["tag"] == "other"]
            for p in range(4)
        }
        after = spawn("reader", db, topic, "0,1,2,3").expect("SEEN")
        seen = [[line[3] for line in recs] for recs in after["records"]]
        assert seen == [[r.value.decode() for r in committed[p]] for p in range(4)]

        # The killed instance is fenced.
        with pytest.raises(errors.ProducerFencedError):
            b.produce(
                opened["pid"],
                opened["epoch"],
                [ProduceBatch(topic, 0, 3, [b"k"], [b"zombie"], [0])],
                transactional=True,
            )
        with pytest.raises(errors.ProducerFencedError):
            b.end_transaction(opened["pid"], opened["epoch"], commit=True)
        assert all(
            "victim" not in json.loads(r.value)["tag"]
            for recs in read_all(b, topic, range(4), READ_COMMITTED).values()
            for r in recs
        )
        check_file(db)
    finally:
        b.close()


# --------------------------------------------------------------------------------------------
# 3. SIGKILL mid-transaction, recovered by the transaction timeout
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("trigger", ["read", "write"])
def test_sigkilled_transaction_is_aborted_by_its_timeout(
    db: str, spawn: Spawn, trigger: str
) -> None:
    topic, timeout_ms = "t", 800
    # One connection at a time in this process (see test_two_brokers_in_one_process_...):
    # first one whose clock stands still before the victim's deadline, so it never expires
    # the transaction itself.
    start_ms = time.time_ns() // 1_000_000
    frozen = Broker(db, clock=lambda: start_ms)
    try:
        frozen.create_topic(topic, 4)
        spawn("write", db, topic, "-", "0,1,2,3", 2, "before").expect("DONE")
        victim = spawn("hold", db, topic, "victim", timeout_ms, "0,1,2", 3, name="victim")
        opened = victim.expect("OPEN")
        assert opened["before_ms"] >= start_ms
        first = {int(p): off for p, off in opened["offsets"].items()}
        assert first == {0: 2, 1: 2, 2: 2}
        victim.sigkill()

        committed = read_all(frozen, topic, range(4), READ_COMMITTED)
        assert {p: tags(r) for p, r in committed.items()} == {p: ["before"] * 2 for p in range(4)}
        res = frozen.fetch(
            [(TopicPartition(topic, p), 2) for p in range(4)], isolation=READ_COMMITTED
        )
        for tp, r in res.items():
            assert r.records == []
            assert r.last_stable == first.get(tp.partition, r.high_watermark)
        pid, epoch = frozen.init_producer_id()
        frozen.produce(
            pid,
            epoch,
            [
                ProduceBatch(topic, p, 0, [b"k"], [json.dumps({"tag": "during"}).encode()], [0])
                for p in range(4)
            ],
        )
        assert tags(read_all(frozen, topic, [0], READ_COMMITTED)[0]) == ["before"] * 2

        # Past the deadline, nothing happens until someone reads or writes (partition_info
        # only reads: it never expires transactions).
        while time.time_ns() // 1_000_000 <= opened["after_ms"] + timeout_ms + 100:
            time.sleep(0.05)
        for p, off in first.items():
            assert frozen.partition_info(topic, p).last_stable == off, "aborted by nobody"
    finally:
        frozen.close()

    b = Broker(db)
    try:
        if trigger == "read":
            seen = spawn("reader", db, topic, "0,1,2,3").expect("SEEN")
            lines = [line for recs in seen["records"] for line in recs]
            assert all("victim" not in line[3] for line in lines), lines
            assert [[json.loads(line[3])["tag"] for line in recs] for recs in seen["records"]] == [
                ["before", "before", "during"]
            ] * 4
            for p, (hw, lso) in seen["info"].items():
                assert hw == lso, (p, hw, lso)
        else:
            spawn("write", db, topic, "-", "3", 1, "trigger").expect("DONE")

        # The abort was committed to the file by the other process (partition_info only
        # reads: it never expires transactions itself).
        for p in range(4):
            info = b.partition_info(topic, p)
            assert info.last_stable == info.high_watermark, info
        committed = read_all(b, topic, range(4), READ_COMMITTED)
        for p in range(4):
            expected = (
                ["before"] * 2 + ["during"] + (["trigger"] if trigger == "write" and p == 3 else [])
            )
            assert tags(committed[p]) == expected, p
        uncommitted = read_all(b, topic, range(4), READ_UNCOMMITTED)
        for p, off in first.items():
            assert [r.offset for r in uncommitted[p] if tags([r]) == ["victim"]] == [
                off,
                off + 1,
                off + 2,
            ]
            # the abort marker sits after the "during" record: one offset with no record
            info = b.partition_info(topic, p)
            assert info.high_watermark == len(uncommitted[p]) + 1

        with pytest.raises(errors.ProducerFencedError):
            b.produce(
                opened["pid"],
                opened["epoch"],
                [ProduceBatch(topic, 0, 3, [b"k"], [b"zombie"], [0])],
                transactional=True,
            )
        reinit = spawn("init", db, "victim").expect("INIT")
        assert reinit["pid"] == opened["pid"] and reinit["epoch"] > opened["epoch"] + 1
        assert tags(read_all(b, topic, range(4), READ_COMMITTED)[0]) == ["before"] * 2 + ["during"]
        check_file(db)
    finally:
        b.close()


# --------------------------------------------------------------------------------------------
# 4. SIGKILL inside a broker call (deterministic: the child hangs holding the write lock)
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["commit", "produce"])
def test_sigkill_inside_a_write_leaves_nothing_half_done(db: str, spawn: Spawn, mode: str) -> None:
    topic = "t"
    # a short busy timeout: a write waiting for the hung child gives up quickly
    b = Broker(db, busy_timeout_ms=300)
    try:
        b.create_topic(topic, 4)
        spawn("write", db, topic, "-", "0,1,2,3", 2, "before").expect("DONE")
        victim = spawn("hang", db, topic, "victim", mode, name="victim")
        opened = victim.expect("OPEN")
        victim.expect("HUNG")
        hw_before = {p: b.partition_info(topic, p).high_watermark for p in range(4)}

        # Readers are not blocked by the hung writer; writers wait and give up.
        committed = read_all(b, topic, range(4), READ_COMMITTED)
        assert {p: tags(r) for p, r in committed.items()} == {p: ["before"] * 2 for p in range(4)}
        with pytest.raises(errors.DatabaseLockedError):
            b.init_producer_id()
        victim.sigkill()

        # The killed call left nothing: the commit marker(s) or the first batches are gone.
        started = time.monotonic()
        pid, epoch = b.init_producer_id()
        assert time.monotonic() - started < 5
        for p in range(4):
            info = b.partition_info(topic, p)
            assert info.high_watermark == hw_before[p]
            if mode == "commit":
                first = opened["offsets"][str(p)]
                assert info.last_stable == first, "the half-written commit took effect"
            else:
                assert info.high_watermark == info.last_stable == 2, "a half produce was kept"
        assert {p: tags(r) for p, r in read_all(b, topic, range(4), READ_COMMITTED).items()} == {
            p: ["before"] * 2 for p in range(4)
        }

        # The next instance aborts what is open; the victim's records are never visible.
        b.produce(
            pid,
            epoch,
            [ProduceBatch(topic, 0, 0, [b"k"], [json.dumps({"tag": "after"}).encode()], [0])],
        )
        reinit = spawn("init", db, "victim").expect("INIT")
        assert reinit["pid"] == opened["pid"] and reinit["epoch"] > opened["epoch"]
        committed = read_all(b, topic, range(4), READ_COMMITTED)
        assert tags(committed[0]) == ["before"] * 2 + ["after"]
        for p in (1, 2, 3):
            assert tags(committed[p]) == ["before"] * 2
        for p in range(4):
            info = b.partition_info(topic, p)
            assert info.last_stable == info.high_watermark
        # a new instance writes from sequence 0 again
        spawn("write", db, topic, "victim", "0,1,2,3", 1, "next").expect("DONE")
        committed = read_all(b, topic, range(4), READ_COMMITTED)
        assert [tags(committed[p])[-1] for p in range(4)] == ["next"] * 4
        assert all("victim" not in t for recs in committed.values() for t in tags(recs))
        check_file(db)
    finally:
        b.close()


# --------------------------------------------------------------------------------------------
# 5. SIGKILL at random moments of a process committing transactions in a loop
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_random_sigkills_of_a_transactional_loop_lose_and_duplicate_nothing(
    db: str, spawn: Spawn, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    topic, txn_id = "t", "looper"
    side = tmp_path / "committed.txt"
    b = Broker(db)
    try:
        b.create_topic(topic, 2)
        starts = []
        for round_no in range(8):
            child = spawn(
                "loop", db, topic, txn_id, f"r{round_no}", side, -1, name=f"loop{round_no}"
            )
            if rng.random() < 0.25:
                time.sleep(rng.uniform(0.0, 0.2))  # possibly before or during init
            else:
                starts.append(child.expect("STARTED")["start"])
                time.sleep(rng.uniform(0.0, 0.12))
            child.sigkill()
        final = spawn("loop", db, topic, txn_id, "final", side, 3, name="loop-final")
        start = final.expect("STARTED")["start"]
        end = final.expect("FINISHED")["next"]
        final.wait_ok()
        assert end == start + 3
        assert starts == sorted(starts), f"a restart went back: {starts} (seed {seed})"

        committed = read_all(b, topic, [0, 1], READ_COMMITTED)
        uncommitted = read_all(b, topic, [0, 1], READ_UNCOMMITTED)
        by_txn: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for p in (0, 1):
            keys = [r.key for r in committed[p]]
            assert len(keys) == len(set(keys)), f"duplicate records in partition {p}"
            txns = [json.loads(r.value)["txn"] for r in committed[p]]
            assert txns == sorted(txns), f"partition {p}: transactions out of order"
            for r in committed[p]:
                by_txn[json.loads(r.value)["txn"]].append(json.loads(r.value))
        assert sorted(by_txn) == list(range(end)), f"committed transactions (seed {seed})"
        for n, values in by_txn.items():
            runs = {v["run"] for v in values}
            assert len(runs) == 1, f"transaction {n} mixes attempts {runs} (seed {seed})"
            for p in (0, 1):
                assert sorted(v["i"] for v in values if v["p"] == p) == list(range(25)), (
                    f"transaction {n} partly visible on partition {p} (seed {seed})"
                )
        reported = [line.split() for line in side.read_text().splitlines() if line]
        for run, n in reported:
            assert int(n) in by_txn, f"{run} reported {n} committed, it is lost (seed {seed})"
            assert by_txn[int(n)][0]["run"] == run, (
                f"{run} reported {n} committed, but {by_txn[int(n)][0]['run']}'s is visible"
            )
        attempts = {
            (v["run"], v["txn"])
            for p in (0, 1)
            for v in (json.loads(r.value) for r in uncommitted[p])
        }
        visible = {(vs[0]["run"], n) for n, vs in by_txn.items()}
        print(
            f"{end} transactions committed, {len(attempts - visible)} attempts aborted after"
            f" a kill, {len(reported)} reported"
        )
        for p in (0, 1):
            info = b.partition_info(topic, p)
            assert info.last_stable == info.high_watermark
        check_file(db)
    finally:
        b.close()


# --------------------------------------------------------------------------------------------
# 6. The file stays a valid broker file after kills; other processes keep working
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_file_stays_valid_after_random_sigkills_of_a_busy_writer(
    db: str, spawn: Spawn, tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    topic, txn_id = "t", "churner"
    side = tmp_path / "churn-committed.txt"
    b = Broker(db)
    b.create_topic(topic, 4)
    b.close()
    steady = spawn("slow_writer", db, topic, "0,1,2,3", 700, name="steady")
    steady.expect("STARTED")
    for round_no in range(6):
        child = spawn(
            "churn",
            db,
            topic,
            txn_id,
            f"r{round_no}",
            rng.randrange(2**32),
            side,
            name=f"churn{round_no}",
        )
        child.expect("STARTED")
        time.sleep(rng.uniform(0.02, 0.25))
        child.sigkill()
        # The lock of the dead process is released at once; the file opens and is sound.
        started = time.monotonic()
        fresh = Broker(db, busy_timeout_ms=10_000)
        try:
            pid, epoch = fresh.init_producer_id()
            fresh.produce(
                pid,
                epoch,
                [
                    ProduceBatch(
                        topic, 0, 0, [b"probe"], [json.dumps({"probe": round_no}).encode()], [0]
                    )
                ],
            )
            assert time.monotonic() - started < 5, "a write waited for the killed process"
            assert fresh.conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            fresh.close()
    written = steady.expect("DONE")["written"]
    steady.wait_ok()
    spawn("init", db, txn_id).expect("INIT")  # aborts what the last churner left open

    check_file(db)
    b = Broker(db)
    try:
        committed = read_all(b, topic, range(4), READ_COMMITTED)
        uncommitted = read_all(b, topic, range(4), READ_UNCOMMITTED)
        for p in range(4):
            info = b.partition_info(topic, p)
            assert info.last_stable == info.high_watermark
        steady_seen = {
            (p, r.offset, json.loads(r.value)["i"])
            for p in range(4)
            for r in committed[p]
            if r.key == b"steady"
        }
        assert steady_seen == {tuple(w) for w in written}, "the concurrent writer lost records"
        probes = [json.loads(r.value)["probe"] for r in committed[0] if r.key == b"probe"]
        assert probes == list(range(6)), "a write made between two kills was lost"
        visible: Counter[tuple[str, int]] = Counter()
        sizes: dict[tuple[str, int], int] = {}
        for p in range(4):
            for r in committed[p]:
                if r.key == b"txn":
                    v = json.loads(r.value)
                    assert v["commit"], f"an aborted transaction's record is visible: {v}"
                    visible[(v["run"], v["txn"])] += 1
                    sizes[(v["run"], v["txn"])] = v["size"]
        for attempt, count in visible.items():
            assert count == sizes[attempt], f"transaction {attempt} partly visible (seed {seed})"
        attempts = {
            (v["run"], v["txn"])
            for p in range(4)
            for v in (json.loads(r.value) for r in uncommitted[p] if r.key == b"txn")
        }
        reported = {
            (run, int(n)) for run, n in (line.split() for line in side.read_text().splitlines())
        }
        assert reported <= set(visible), f"committed transactions lost (seed {seed})"
        assert set(visible) <= attempts
        print(
            f"{len(visible)} transactions visible, {len(reported)} reported, "
            f"{len(attempts - set(visible))} aborted"
        )
        assert len(reported) > 0
    finally:
        b.close()


# --------------------------------------------------------------------------------------------
# 7. Several processes opening a new database file at the same moment
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_processes_opening_a_new_file_at_once(tmp_path: Path, spawn: Spawn) -> None:
    """Six processes open the same new path at the same instant (a race: a failing run is
    a real bug, a passing run proves little; the next test pins one window down)."""
    failures = []
    for round_no in range(10):
        path = str(tmp_path / f"fresh{round_no}.db")
        start_at = time.time() + 0.6
        openers = [spawn("open", path, start_at, i, name=f"open{round_no}-{i}") for i in range(6)]
        reports = []
        for opener in openers:
            opener.expect("WAITING")
        for opener in openers:
            try:
                opener.proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"opener hung: {opener.describe()}")
            line = opener.history[-1] if opener.history else ""
            while True:
                item = opener.lines.get(timeout=WAIT)
                if item is None:
                    break
                line = item
            tag, _, payload = line.partition(" ")
            if tag == "DONE":
                reports.append(json.loads(payload))
            else:
                failures.append(f"round {round_no}, {opener.name}: {line} {opener.stderr()}")
        if failures:
            continue
        assert sum(r["created"] for r in reports) == 1
        b = Broker(path)
        try:
            records = read_all(b, "t", range(4), READ_COMMITTED)
            for r in reports:
                keys = {x.key for x in records[r["partition"]]}
                assert {
                    f"open-{i}-{j}".encode()
                    for i in range(6)
                    if i % 4 == r["partition"]
                    for j in range(5)
                } <= keys
        finally:
            b.close()
        check_file(path)
    assert not failures, "processes opening a new file at once failed:\n" + "\n".join(failures)


@pytest.mark.slow
def test_opening_a_file_while_another_process_creates_it(db: str, spawn: Spawn) -> None:
    """Deterministic versions of the race above: the creator pauses inside its creating
    transaction. Openers must wait for it (busy timeout), also one that is descheduled while
    it identifies the file (its first read sees a blank database, the next ones the created
    schema): none may fail, least of all by calling the file another program's."""
    creator = spawn("slow_create", db, 2.0, name="creator")
    creator.expect("CREATING")
    openers = [spawn("open", db, 0, i, name=f"open{i}") for i in range(2)]
    openers.append(spawn("open", db, 0, 2, 3.0, name="open-descheduled"))
    openers[2].expect("PROBING")
    outcomes = []
    for opener in openers:
        try:
            outcomes.append(opener.expect("DONE"))
        except pytest.fail.Exception as exc:
            outcomes.append(f"{opener.name}: " + str(exc).splitlines()[0][:300])
    creator.expect("DONE")
    creator.wait_ok()
    failed = [o for o in outcomes if not isinstance(o, dict)]
    assert not failed, "opening the file while another process creates it failed:\n" + "\n".join(
        failed
    )
    assert not any(o["created"] for o in outcomes)
    check_file(db)


# --------------------------------------------------------------------------------------------
# 8. A process with two Broker objects on the file stays in sync with the other processes
# --------------------------------------------------------------------------------------------


def test_two_brokers_in_one_process_stay_in_sync_with_other_processes(
    db: str, spawn: Spawn
) -> None:
    """A process may well hold two connections to the file (say a producer and a consumer).
    Opening the second must not cost the first its SQLite locks: otherwise another process
    closing its connection believes it is the last one, checkpoints and deletes the WAL, and
    this process goes on reading and writing a WAL no other process sees."""
    topic = "t"
    first = Broker(db)
    second = None
    try:
        first.create_topic(topic, 1)
        second = Broker(db)
        spawn("write", db, topic, "-", "0", 2, "child1").expect("DONE")
        spawn("write", db, topic, "-", "0", 2, "child2").expect("DONE")
        pid, epoch = first.init_producer_id()
        offset = first.produce(
            pid,
            epoch,
            [ProduceBatch(topic, 0, 0, [b"k"], [json.dumps({"tag": "parent"}).encode()], [0])],
        )[0]
        assert offset == 4
        seen = spawn("reader", db, topic, "0").expect("SEEN")
        assert [json.loads(line[3])["tag"] for line in seen["records"][0]] == [
            "child1",
            "child1",
            "child2",
            "child2",
            "parent",
        ], "another process does not see what this process committed"
        spawn("write", db, topic, "-", "0", 2, "child3").expect("DONE")
        expected = ["child1"] * 2 + ["child2"] * 2 + ["parent"] + ["child3"] * 2
        assert tags(read_all(first, topic, [0], READ_COMMITTED)[0]) == expected
        assert tags(read_all(second, topic, [0], READ_COMMITTED)[0]) == expected
    finally:
        first.close()
        if second is not None:
            second.close()
    check_file(db)
    b = Broker(db)
    try:
        assert tags(read_all(b, topic, [0], READ_COMMITTED)[0]) == expected
    finally:
        b.close()
