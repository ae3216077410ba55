"""Worker lifecycle: start-up failures, a corrupt store, parent death, slots, lost changelogs
and temporary resource errors, with real `streams worker` processes on the embedded broker.

Each failure is one line on stderr with the exit code docs/operations.md names (78: the
supervisor stops; 75: it restarts the worker with backoff), and no process is left behind.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from runtime.broker import Broker
from runtime.broker.producer import BatchProducer
from runtime.errors import UnknownTopicError
from runtime.transport import connect
from streams.settings import Settings
from tests.fault_helpers import (
    assert_exactly_once,
    children,
    stop_supervisor,
    table_from_changelog,
    worker_command,
    worker_env,
)
from tests.test_cli import one_error_line
from tests.worker.test_fault_suite import read_all

CHANGELOG = "wordcount-counts-changelog"


def send_words(db: Path, count: int, seed: int) -> list[str]:
    """`count` random words of a small vocabulary, keyed by themselves, to `words`."""
    rng = random.Random(seed)
    words = [f"w{rng.randrange(50)}" for _ in range(count)]
    broker = Broker(str(db))
    BatchProducer(broker).send("words", [(json.dumps(w).encode(), w.encode()) for w in words])
    broker.close()
    return words


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def settled(
    db: Path, events: int, supervisor: subprocess.Popen[Any] | None = None
) -> Callable[[], bool]:
    """Whether word count committed an output for each of `events` inputs (committed offsets
    can stay one short of a partition's end, at a control marker, while it is idle)."""

    def check() -> bool:
        assert supervisor is None or supervisor.poll() is None, "the supervisor exited"
        broker = Broker(str(db))
        try:
            return len(read_all(broker, "word-counts")) >= events
        except UnknownTopicError:  # the worker has not created it yet
            return False
        finally:
            broker.close()

    return check


def members(db: Path) -> list[Any]:
    broker = Broker(str(db))
    try:
        return broker.describe_group("wordcount").members
    finally:
        broker.close()


def has_members(db: Path, count: int) -> bool:
    return len(members(db)) == count


def committed(db: Path) -> tuple[list[Any], dict[str, int]]:
    """The committed outputs of word count and its table, from its changelog."""
    broker = Broker(str(db))
    try:
        return read_all(broker, "word-counts"), table_from_changelog(read_all(broker, CHANGELOG))
    finally:
        broker.close()


def gone(pid: int) -> bool:
    """Whether a process ended (a zombie no one reaped has ended too)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status


def new_broker(tmp_path: Path, partitions: int = 4) -> Path:
    db = tmp_path / "broker.db"
    broker = Broker(str(db))
    broker.create_topic("words", partitions)
    broker.close()
    return db


# --- start-up failures ----------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "parts"),
    [
        ("state dir is a file", ("cannot use", "afile", "as the state directory")),
        (
            "topic has 1 partition",
            ("topic 'words' has 1 partition but", "declares 4", "partitions=1"),
        ),
    ],
)
def test_a_start_up_failure_is_one_line_and_stops_the_supervisor(
    tmp_path: Path, case: str, parts: tuple[str, ...]
) -> None:
    """A configuration or topology error found when the worker starts: the worker says it in
    one line and exits 78; the supervisor does not restart it but stops, with 78 too."""
    db = new_broker(tmp_path, partitions=1 if "partition" in case else 4)
    env = worker_env(f"sqlite:///{db}", tmp_path)
    if "file" in case:
        (tmp_path / "afile").write_text("not a directory")
        env["STREAMS_STATE_DIR"] = str(tmp_path / "afile")
    result = subprocess.run(
        worker_command(1), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 78, result.stderr
    one_error_line(result, *parts)


# --- a corrupt local store ------------------------------------------------------------------


@pytest.mark.slow
def test_a_corrupt_local_store_is_rebuilt_from_the_changelog(tmp_path: Path) -> None:
    """Random bytes in a worker's store.db: the store is a cache, so it is discarded (logged)
    and rebuilt from the changelog; the counts go on exactly; the worker stops on SIGTERM."""
    db = new_broker(tmp_path)
    env = worker_env(f"sqlite:///{db}", tmp_path)
    words = send_words(db, 2000, seed=1)
    supervisor = subprocess.Popen(worker_command(1), cwd=tmp_path, env=env)
    try:
        wait_for(settled(db, len(words), supervisor), 30, "the first words")
    finally:
        assert stop_supervisor(supervisor) == 0
    store = tmp_path / "state" / "worker-0" / "store.db"
    assert store.exists()
    store.write_bytes(random.Random(2).randbytes(8192))
    for suffix in ("-wal", "-shm"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    words += send_words(db, 2000, seed=3)
    log = tmp_path / "second.log"
    with log.open("w") as stderr:
        supervisor = subprocess.Popen(worker_command(1), cwd=tmp_path, env=env, stderr=stderr)
        try:
            wait_for(settled(db, len(words), supervisor), 30, "the words after the corruption")
        finally:
            supervisor.send_signal(signal.SIGTERM)
            code = supervisor.wait(timeout=20)  # no hang
    assert code == 0, log.read_text()
    assert "is unreadable" in log.read_text() and "rebuilt from their changelogs" in log.read_text()
    outputs, table = committed(db)
    assert_exactly_once(words, outputs, table, seed=1, events=len(words))


# --- parent death ---------------------------------------------------------------------------


@pytest.mark.slow
def test_workers_stop_cleanly_when_their_supervisor_is_killed(tmp_path: Path) -> None:
    """kill -9 of the supervisor: its workers stop within seconds (no orphan keeps a slot),
    and they stop cleanly: they leave the group at once instead of waiting for their session
    (10 s) to expire."""
    db = new_broker(tmp_path)
    env = worker_env(f"sqlite:///{db}", tmp_path)
    supervisor = subprocess.Popen(worker_command(2), cwd=tmp_path, env=env)
    workers: list[int] = []
    try:
        wait_for(lambda: len(members(db)) == 2, 30, "two workers in the group")
        workers = children(supervisor.pid)
        assert len(workers) == 2
        supervisor.kill()
        supervisor.wait()
        wait_for(lambda: all(gone(pid) for pid in workers), 8, "the workers to exit")
        assert members(db) == []
    finally:
        supervisor.kill()
        for pid in workers:
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)  # orphans


# --- slots ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("state", ["default state dir", "a state dir each", ":memory:"])
def test_two_supervisors_of_one_app_never_share_a_slot(tmp_path: Path, state: str) -> None:
    """Two `streams worker` commands of one app on one broker, started from different
    directories (with the default state directory, each with its own as on two hosts, or
    none):
    the second takes another slot, so each worker has its own transactional id and nobody is
    fenced; the counts are exact."""
    db = new_broker(tmp_path)
    words = send_words(db, 20_000, seed=4)
    supervisors = []
    try:
        for name in ("a", "b"):
            cwd = tmp_path / name
            cwd.mkdir()
            env = worker_env(f"sqlite:///{db}", cwd)
            if state == "default state dir":
                del env["STREAMS_STATE_DIR"]
            elif state == ":memory:":  # no lock files: the broker's record alone
                env["STREAMS_STATE_DIR"] = ":memory:"
            supervisors.append(subprocess.Popen(worker_command(1), cwd=cwd, env=env))
            wait_for(partial(has_members, db, len(supervisors)), 30, f"{name} to join")
        instances = sorted(m.instance_id for m in members(db))
        assert instances == ["wordcount-0", "wordcount-1"]
        for supervisor in supervisors:
            wait_for(settled(db, len(words), supervisor), 40, "every word")
    finally:
        codes = [stop_supervisor(s) for s in supervisors]
    assert codes == [0, 0]
    outputs, table = committed(db)
    assert_exactly_once(words, outputs, table, seed=4, events=len(words))


async def test_a_slot_held_by_another_live_supervisor_is_skipped(tmp_path: Path) -> None:
    """The broker's record of a slot: a live member `<app>-0` of another owner (another host,
    or a live process here) keeps slot 0 from us; one whose owner process is gone does not."""
    from runtime.worker.slots import claim_slot

    async with connect(f"sqlite:///{tmp_path}/b.db") as broker:
        await broker.create_topic("words", 1)
        dead = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
        )
        owners = {
            "another host": "elsewhere:1",
            "a dead process": f"{socket.gethostname()}:{dead.stdout.strip()}",
        }
        for case, owner in owners.items():
            holder = broker.consumer(
                "app", client_id=f"app@{owner}-0", instance_id="app-0", session_timeout_ms=30_000
            )
            await holder.subscribe(["words"])
            await holder.getmany(timeout=0.1)
            slot = await claim_slot(broker, "app", str(tmp_path / case), preferred=0)
            try:
                assert slot.number == (1 if case == "another host" else 0), case
            finally:
                slot.release()
                await holder.close()


def test_the_default_state_dir_depends_on_the_broker_not_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/data/app.db"
    dirs = set()
    for cwd in (tmp_path, tmp_path / "data"):
        cwd.mkdir(exist_ok=True)
        monkeypatch.chdir(cwd)
        dirs.add(Settings.resolve("shop", {"broker": url}, environ={}).state_dir)
    assert dirs == {str(tmp_path / "data" / "shop-state")}
    assert Settings.resolve("shop", {"broker": "memory://"}, environ={}).state_dir == ":memory:"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    kafka = Settings.resolve("shop", {"broker": "kafka://h:9092"}, environ={}).state_dir
    assert kafka.startswith(str(tmp_path / "streams" / "shop-"))
    relative = Settings.resolve("shop", {"broker": "sqlite:///x.db"}, environ={})
    moved = relative.override(broker=url)  # a derived state dir follows the broker
    assert moved.state_dir == str(tmp_path / "data" / "shop-state")
    given = Settings.resolve("shop", {"broker": "sqlite:///x.db", "state_dir": "mine"}, environ={})
    assert given.override(broker=url).state_dir == "mine"  # a given one does not
    memory = Settings.resolve("shop", {"broker": "memory://"}, environ={})
    assert memory.override(broker=url).state_dir == ":memory:"


# --- a lost changelog -----------------------------------------------------------------------


@pytest.mark.slow
def test_a_worker_whose_changelog_vanished_stops_with_one_line(tmp_path: Path) -> None:
    """The changelog is deleted while the app runs: the worker does not recreate it empty
    (a count of 11 would become 1) but stops with one line, exit 78; the supervisor stops."""
    db = new_broker(tmp_path)
    env = worker_env(f"sqlite:///{db}", tmp_path)
    words = send_words(db, 500, seed=5)
    supervisor = subprocess.Popen(
        worker_command(1), cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(settled(db, len(words), supervisor), 30, "the first words")
        broker = Broker(str(db))
        broker.delete_topic(CHANGELOG)
        broker.close()
        send_words(db, 10, seed=6)
        _, stderr = supervisor.communicate(timeout=20)
    finally:
        if supervisor.poll() is None:
            stop_supervisor(supervisor)
    assert supervisor.returncode == 78, stderr
    result = subprocess.CompletedProcess([], supervisor.returncode, "", stderr)
    one_error_line(result, CHANGELOG, "deleted while it ran", "restore the topic")
    broker = Broker(str(db))
    assert CHANGELOG not in {t.name for t in broker.list_topics()}  # not recreated empty
    broker.close()


# --- a resource short at start --------------------------------------------------------------


@pytest.mark.slow
def test_a_locked_store_makes_the_worker_exit_75_and_retry_until_it_works(
    tmp_path: Path,
) -> None:
    """Another program holds the worker's store locked for a while: the worker exits 75
    (DatabaseLockedError is a ResourceError), the supervisor restarts it with backoff, and it
    runs once the lock is gone, with exact counts."""
    db = new_broker(tmp_path)
    env = worker_env(f"sqlite:///{db}", tmp_path)
    words = send_words(db, 1000, seed=7)
    store = tmp_path / "state" / "worker-0" / "store.db"
    store.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, time\n"
            f"c = sqlite3.connect({str(store)!r}, isolation_level=None)\n"
            "c.execute('BEGIN EXCLUSIVE'); c.execute('CREATE TABLE t (x)')\n"
            "print('locked', flush=True); time.sleep(8)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    log = tmp_path / "supervisor.log"
    with log.open("w") as stderr:
        supervisor = subprocess.Popen(worker_command(1), cwd=tmp_path, env=env, stderr=stderr)
        try:
            wait_for(settled(db, len(words), supervisor), 30, "the words once the lock is gone")
        finally:
            holder.kill()
            holder.wait()
            code = stop_supervisor(supervisor)
    text = log.read_text()
    assert code == 0, text
    assert "stayed locked by another program" in text
    assert "exited with 75 (a resource is short); restarting in 0.2 s" in text
    assert "exited with 75 (a resource is short); restarting in 0.5 s" in text  # backoff
    outputs, table = committed(db)
    assert_exactly_once(words, outputs, table, seed=7, events=len(words))


async def test_a_full_disk_under_the_store_is_a_resource_error(tmp_path: Path) -> None:
    """SQLite's "database or disk is full" while saving a checkpoint is a DiskFullError (a
    ResourceError: the worker exits 75 and is retried), not an untyped traceback; the store
    keeps its last checkpoint."""
    from runtime.errors import DiskFullError, exit_code
    from runtime.worker.store import StateStore

    store = await StateStore.open(str(tmp_path / "worker-0"))
    try:
        await store.save([("t", 0, b"k", b"v")], {("t", 0): 1})
        await store.conn.execute("PRAGMA max_page_count = 8")  # a disk with no room left
        with pytest.raises(DiskFullError) as failure:
            await store.save([("t", 0, b"big", b"x" * 100_000)], {("t", 0): 2})
        assert exit_code(failure.value) == 75
        assert await store.load("t", 0) == ({b"k": b"v"}, 1)
    finally:
        await store.close()


async def test_a_store_found_corrupt_in_use_is_discarded_for_the_restart(tmp_path: Path) -> None:
    """Pages corrupted past the ones opening reads: the first read that meets them discards
    the file and raises StoreCorruptError (exit 75: the restarted worker rebuilds the store
    from the changelogs); it never serves or checkpoints a partial copy."""
    from runtime.errors import StoreCorruptError, exit_code
    from runtime.worker.store import StateStore

    directory = str(tmp_path / "worker-0")
    store = await StateStore.open(directory)
    rows = [("t", 0, f"k{i}".encode(), b"v" * 50) for i in range(5000)]
    await store.save(rows, {("t", 0): 5000})
    await store.close()
    path = Path(directory) / "store.db"
    with path.open("r+b") as file:  # keep the header and the first pages, garble the rest
        file.seek(5 * 4096)
        file.write(random.Random(8).randbytes(path.stat().st_size - 5 * 4096))
    store = await StateStore.open(directory)
    with pytest.raises(StoreCorruptError) as failure:
        await store.load("t", 0)
    assert exit_code(failure.value) == 75
    assert not path.exists()
    await store.close()
    store = await StateStore.open(directory)
    try:
        assert await store.load("t", 0) == ({}, None)
    finally:
        await store.close()


@pytest.mark.slow
def test_a_failed_worker_exits_even_if_a_thread_is_left(tmp_path: Path) -> None:
    """The backstop against hangs: a non-daemon thread a failure left running (a client's
    I/O thread) gets a few seconds, then the worker exits with its code anyway."""
    code = (
        "import sys, threading, time\n"
        "from streams.cli import _exit_bounded\n"
        "threading.Thread(target=time.sleep, args=(60,)).start()\n"
        "sys.exit(_exit_bounded(75))\n"
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env=worker_env("memory://", tmp_path),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 75, result.stderr
    assert time.monotonic() - started < 15
    assert "did not end: exiting" in result.stderr
