"""Exactly-once under crashes at every step of the commit cycle, and what at-least-once does.

The word-count example runs on a file broker; a fault hook raises at a chosen step of a chosen
commit, the worker is abandoned as a crash would leave it (no abort, no more commits, its
transaction left open), and a new worker on the same files finishes the work. The committed
outputs must then be, for every word w, the counts 1..freq(w) exactly once each and in order,
and the table must equal the true frequencies, also when rebuilt from the changelog alone.
"""

from __future__ import annotations

import asyncio
import collections
import random
from pathlib import Path
from typing import Any

import pytest

from examples.wordcount import app
from runtime.worker import STEPS
from streams.testing import TestRun

VOCABULARY = ["apple", "banana", "cherry", "date", "elder", "fig", "grape", "kiwi"]


class Crash(Exception):
    """A simulated process death (not a StreamsError: nothing catches and aborts it)."""


def crash_at(step: str, commit: int) -> Any:
    seen = collections.Counter[str]()

    def fault(at: str) -> None:
        seen[at] += 1
        if at == step and seen[at] == commit:
            raise Crash(f"{step} of commit {commit}")

    return fault


def words(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(VOCABULARY) for _ in range(n)]


def run(tmp_path: Path, guarantee: str, state: str = "state", fault: Any = None) -> TestRun:
    return app.testing(
        broker=f"sqlite:///{tmp_path}/broker.db",
        state_dir=str(tmp_path / state),
        processing_guarantee=guarantee,
        commit_every=40,  # many commits, so a crash finds committed work behind it
        max_poll_records=20,
        fault=fault,
    )


async def crash_then_finish(
    tmp_path: Path, guarantee: str, inputs: list[str], crashes: list[tuple[str, int]]
) -> tuple[list[Any], dict[str, int]]:
    """Run until each crash in turn, then to the end; returns committed outputs and table."""
    first = True
    for step, commit in crashes:
        attempt = run(tmp_path, guarantee, fault=crash_at(step, commit))
        await attempt.start()
        if first:
            await attempt.send_many("words", inputs)
            first = False
        with pytest.raises(Crash):
            await attempt.drain()
        await attempt.stop(clean=False)
    async with run(tmp_path, guarantee) as final:
        if first:
            await final.send_many("words", inputs)
        await final.drain()
        outputs = await final.read("word-counts")
        table = final.table("counts")
    return outputs, table


def counts_per_word(outputs: list[Any]) -> dict[str, list[int]]:
    per_word: dict[str, list[int]] = collections.defaultdict(list)
    for event in outputs:  # sorted by (partition, offset): a word's updates are in order
        assert event.key == event.value["word"]
        per_word[event.key].append(event.value["count"])
    return per_word


def assert_exactly_once(inputs: list[str], outputs: list[Any], table: dict[str, int]) -> None:
    truth = collections.Counter(inputs)
    assert table == truth
    assert counts_per_word(outputs) == {w: list(range(1, n + 1)) for w, n in truth.items()}


@pytest.mark.parametrize("step", STEPS)
async def test_crash_at_each_step_loses_and_repeats_nothing(tmp_path: Path, step: str) -> None:
    inputs = words(400, seed=STEPS.index(step))
    outputs, table = await crash_then_finish(tmp_path, "exactly_once", inputs, [(step, 3)])
    assert_exactly_once(inputs, outputs, table)


async def test_one_crash_at_every_step_in_successive_runs(tmp_path: Path) -> None:
    inputs = words(600, seed=99)
    crashes = [(step, 2) for step in STEPS]
    outputs, table = await crash_then_finish(tmp_path, "exactly_once", inputs, crashes)
    assert_exactly_once(inputs, outputs, table)


async def test_table_rebuilt_from_the_changelog_alone_is_exact(tmp_path: Path) -> None:
    """After crashes, a worker with an empty state dir restores the same table."""
    inputs = words(300, seed=5)
    await crash_then_finish(tmp_path, "exactly_once", inputs, [("after_commit", 2)])
    async with run(tmp_path, "exactly_once", state="fresh-state") as fresh:
        await fresh.drain()
        assert fresh.table("counts") == collections.Counter(inputs)


async def test_restart_after_clean_stop_continues_from_the_checkpoint(tmp_path: Path) -> None:
    first, second = words(200, seed=1), words(200, seed=2)
    async with run(tmp_path, "exactly_once") as one:
        await one.send_many("words", first)
        await one.drain()
    async with run(tmp_path, "exactly_once") as two:
        await two.send_many("words", second)
        await two.drain()
        outputs = await two.read("word-counts")
        table = two.table("counts")
    assert_exactly_once(first + second, outputs, table)


async def test_at_least_once_repeats_work_after_the_same_crash(tmp_path: Path) -> None:
    """The documented difference: outputs written, offsets not committed, then a crash.
    At-least-once replays the events (duplicate outputs, over-counted table); exactly-once,
    crashed at the same step, does not."""
    inputs = words(400, seed=7)
    outputs, table = await crash_then_finish(
        tmp_path, "at_least_once", inputs, [("after_offsets", 3)]
    )
    per_word = counts_per_word(outputs)
    assert len(outputs) > len(inputs)  # duplicates
    assert sum(table.values()) > len(inputs)  # and over-counted
    assert any(counts != list(range(1, len(counts) + 1)) for counts in per_word.values()) or (
        table != collections.Counter(inputs)
    )
    eos = tmp_path / "eos"
    eos.mkdir()
    outputs, table = await crash_then_finish(eos, "exactly_once", inputs, [("after_offsets", 3)])
    assert_exactly_once(inputs, outputs, table)


async def test_a_restored_partition_is_saved_whole_to_the_new_owners_store(
    tmp_path: Path,
) -> None:
    """Worker B restores partitions that worker A built, commits a little, and restarts from
    its own store: the store must hold A's rows too, not only the keys B changed (found by the
    fault suite: a store checkpoint claimed rows it never received)."""
    first, second = words(300, seed=11), ["apple", "kiwi"] * 5
    broker = f"sqlite:///{tmp_path}/broker.db"

    def worker(name: str) -> TestRun:
        return app.testing(broker=broker, state_dir=str(tmp_path / name), worker_id=name)

    async with worker("a") as a:
        await a.send_many("words", first)
        await a.drain()
    async with worker("b") as b:  # restores everything A wrote, from the changelog
        await b.send_many("words", second)
        await b.drain()
    async with worker("b") as again:  # restores from B's store checkpoint
        await again.drain()
        assert again.table("counts") == collections.Counter(first + second)
        assert_exactly_once(first + second, await again.read("word-counts"), again.table("counts"))


async def test_restore_waits_for_a_dead_owners_open_transaction(tmp_path: Path) -> None:
    """A previous owner died with a transaction open on the changelog (no offsets sent yet),
    and a committed record lies behind it: the new owner's restore waits for that transaction
    to end instead of stopping at the last stable offset and missing the record."""
    from runtime.broker import Broker, ProduceBatch
    from runtime.partitioner import partition_for_key

    broker_path = tmp_path / "broker.db"
    async with app.testing(
        broker=f"sqlite:///{broker_path}", state_dir=str(tmp_path / "a"), worker_id="a"
    ) as first:
        await first.send_many("words", ["apple"] * 3)
        await first.drain()
    raw = Broker(str(broker_path))
    key = b'"zzz"'
    p = partition_for_key(key, 4)
    zombie, epoch = raw.init_producer_id("dead-owner")
    raw.produce(
        zombie,
        epoch,
        [ProduceBatch("wordcount-counts-changelog", p, 0, [key], [b"1"], [0])],
        transactional=True,
    )
    later, later_epoch = raw.init_producer_id()  # committed after the open transaction began
    raw.produce(
        later, later_epoch, [ProduceBatch("wordcount-counts-changelog", p, 0, [key], [b"99"], [0])]
    )
    info = raw.partition_info("wordcount-counts-changelog", p)
    assert info.last_stable < info.high_watermark

    async def dead_owner_restarts() -> None:
        await asyncio.sleep(0.5)
        raw.init_producer_id("dead-owner")  # its successor aborts the open transaction

    restart = asyncio.ensure_future(dead_owner_restarts())
    async with app.testing(
        broker=f"sqlite:///{broker_path}", state_dir=str(tmp_path / "b"), worker_id="b"
    ) as second:
        await second.drain()
        assert second.table("counts") == {"apple": 3, "zzz": 99}
    await restart
    raw.close()


@pytest.mark.parametrize("guarantee", ["exactly_once", "at_least_once"])
async def test_a_commit_between_fetch_and_processing_commits_only_what_was_processed(
    tmp_path: Path, guarantee: str
) -> None:
    """The offsets committed are those the worker tracked as processed, not the consumer's
    fetch positions: a commit made after a fetch whose records no agent has seen (as a new
    call site could) leaves them uncommitted, and a restarted worker processes them once."""
    inputs = words(100, seed=3)
    async with run(tmp_path, guarantee) as first:
        await first.send_many("words", inputs[:60])
        await first.drain()
        await first.send_many("words", inputs[60:])
        worker = first.worker
        assert worker is not None
        fetched: dict[Any, Any] = {}
        while sum(len(r) for r in fetched.values()) < 40:  # fetched, never processed
            for tp, records in (await worker.consumer.getmany(timeout=1.0)).items():
                fetched.setdefault(tp, []).extend(records)
        await worker.cycle.begin()
        await worker.commit()
        committed = await worker.consumer.committed(worker.consumer.assignment())
        for tp, records in fetched.items():
            assert committed[tp] <= records[0].offset, (tp, committed[tp], records[0].offset)
        await first.stop(clean=False)
    async with run(tmp_path, guarantee) as second:
        await second.drain()
        outputs = await second.read("word-counts")
        table = second.table("counts")
    assert_exactly_once(inputs, outputs, table)
