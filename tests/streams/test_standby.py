"""Standby replicas: a worker keeps warm copies of another worker's table partitions, so
taking them over replays only the changelog written since its last copy."""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path

from examples.wordcount import app
from streams.testing import TestRun


def worker(tmp_path: Path, name: str, standby: int) -> TestRun:
    return app.testing(
        broker=f"sqlite:///{tmp_path}/broker.db",
        state_dir=str(tmp_path / name),
        worker_id=name,
        table_standby_replicas=standby,
    )


async def run_both(a: TestRun, b: TestRun, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await a.worker.poll(0.01)  # type: ignore[union-attr]
        await b.worker.poll(0.01)  # type: ignore[union-attr]


async def take_over(tmp_path: Path, standby: int) -> tuple[int, int, dict[str, int]]:
    """Two workers count; `a` leaves; returns (records b copied as a standby, records b
    replayed to take a's partitions over, b's table)."""
    words = [f"w{i % 400}" for i in range(8000)]
    a, b = worker(tmp_path, "a", standby), worker(tmp_path, "b", standby)
    await a.start()
    await b.start()
    for start in range(0, len(words), 1000):  # input over time: many commits, long changelog
        await a.send_many("words", words[start : start + 1000])
        await run_both(a, b, 0.3)
    await run_both(a, b, 1.5)  # idle: standbys catch up
    assert b.worker is not None
    before = b.worker.restored_records  # b's own restores when it joined
    await a.stop()  # leaves the group: its partitions go to b
    deadline = time.monotonic() + 10
    while len(b.worker.consumer.assignment()) < 8:  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "b did not take a's partitions over"
        await b.worker.poll(0.05)  # type: ignore[union-attr]
    await b.drain()
    assert b.worker is not None
    result = (b.worker.standby_records, b.worker.restored_records - before, b.table("counts"))
    await b.stop()
    assert result[2] == collections.Counter(words)
    return result


async def test_a_standby_takes_over_replaying_only_the_tail(tmp_path: Path) -> None:
    (tmp_path / "cold").mkdir()
    (tmp_path / "warm").mkdir()
    _, cold_replayed, _ = await take_over(tmp_path / "cold", standby=0)
    copied, warm_replayed, _ = await take_over(tmp_path / "warm", standby=1)
    assert copied > 0
    assert cold_replayed > 0
    assert warm_replayed < cold_replayed / 4, (warm_replayed, cold_replayed)


def test_standby_assignment_names_another_member_for_each_unit() -> None:
    from runtime.broker.assignor import assign_standbys

    targets = {"a": {("t", 0), ("r", 0), ("t", 1), ("r", 1)}, "b": {("t", 2), ("r", 2)}}
    standbys = assign_standbys(targets, {}, 1)
    for owner, owned in targets.items():
        for other, copies in standbys.items():
            if other == owner:
                assert not owned & copies  # never a standby of what it owns
    assert standbys["b"] == {("t", 0), ("r", 0), ("t", 1), ("r", 1)}
    assert standbys["a"] == {("t", 2), ("r", 2)}
    again = assign_standbys(targets, standbys, 1)
    assert again == standbys  # sticky: warm copies stay where they are
    assert assign_standbys({"a": {("t", 0)}}, {}, 1) == {"a": set()}  # nobody else to ask


def test_standby_replicas_setting_is_validated() -> None:
    import pytest

    import streams

    with pytest.raises(streams.ConfigurationError):
        app.settings.override(table_standby_replicas=-1)
    asyncio.run(asyncio.sleep(0))
