"""Tables: dict operations in agents, defaults, deletes as changelog tombstones, writes outside
agents, keys of partitions the worker does not own, rollback and restore."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

import orjson
import pytest

import streams
from runtime.errors import DiskFullError, ResourceError
from runtime.partitioner import partition_for_key
from runtime.transport import READ_COMMITTED
from runtime.types import TopicPartition
from runtime.worker import TableState
from runtime.worker import worker as worker_module
from runtime.worker.cached import StoreTableState


@pytest.fixture(autouse=True, params=["memory", "local"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs twice: on the in-memory backend (a memory:// broker and store), and
    on the store-backed one (an sqlite:// broker, its local store, a cache of 2 keys)."""
    if request.param == "local":
        original = streams.App.testing
        runs = itertools.count()

        def testing(app: streams.App, **overrides: Any) -> Any:
            run = next(runs)
            overrides.setdefault("broker", f"sqlite:///{tmp_path}/run-{run}.db")
            overrides.setdefault("state_dir", f"{tmp_path}/run-{run}-state")
            overrides.setdefault("table_cache_size", 2)
            return original(app, **overrides)

        monkeypatch.setattr(streams.App, "testing", testing)
    return str(request.param)


async def read_changelog(t: Any, table: streams.Table) -> list[tuple[Any, Any]]:
    """Committed (key, value) records of a table's changelog; value None for a tombstone."""
    records = [
        r async for r in t.transport.committed_records(table.changelog_topic, table.partitions)
    ]
    records.sort(key=lambda r: (r.partition, r.offset))
    return [
        (orjson.loads(r.key), None if r.value is None else orjson.loads(r.value)) for r in records
    ]


def command_app(**table_options: Any) -> tuple[streams.App, streams.Table]:
    """An app whose agent applies commands {"op": "set"|"add"|"del"|"pop", "key", "value"}
    to the table `kv`, yielding what each command returned to the topic `results`."""
    app = streams.App("tables")
    commands = app.topic("commands", partitions=4)
    kv = app.table("kv", **table_options)
    results = app.topic("results")

    @app.stream(commands, sink=[results])
    async def apply(stream: streams.Stream) -> Any:
        async for cmd in stream:
            key = cmd["key"]
            if cmd["op"] == "set":
                kv[key] = cmd["value"]
            elif cmd["op"] == "add":
                kv[key] += cmd["value"]
            elif cmd["op"] == "del":
                del kv[key]
            elif cmd["op"] == "pop":
                yield {"popped": kv.pop(key, "absent")}
                continue
            elif cmd["op"] == "fail":
                raise RuntimeError("command failed")
            yield {"key": key, "in": key in kv, "value": kv.get(key)}

    return app, kv


async def run_commands(t: Any, *cmds: dict[str, Any]) -> None:
    for cmd in cmds:
        await t.send("commands", value=cmd, key=cmd["key"])
    await t.drain()


# --- dict operations ----------------------------------------------------------------------------


async def test_default_factory_gives_missing_keys_a_fresh_value() -> None:
    """With default=int, `table[k] += n` starts from 0 for each new key."""
    app, _ = command_app(default=int)
    async with app.testing() as t:
        await run_commands(t, *({"op": "add", "key": f"k{i % 5}", "value": i} for i in range(50)))
        assert t.table("kv") == {f"k{j}": sum(range(j, 50, 5)) for j in range(5)}


async def test_reading_a_missing_key_with_a_default_does_not_store_it() -> None:
    """`table[missing]` returns default() but neither adds the key nor writes the changelog."""
    app, kv = command_app(default=list)
    async with app.testing() as t:
        await run_commands(t, {"op": "set", "key": "a", "value": [1]})
        assert kv["nope"] == []
        assert "nope" not in kv
        assert t.table("kv") == {"a": [1]}
        assert await read_changelog(t, kv) == [("a", [1])]


async def test_missing_key_without_default_raises_key_error() -> None:
    """Without default=, a missing key raises KeyError and get() returns its default."""
    app, kv = command_app()
    async with app.testing() as t:
        await t.drain()
        with pytest.raises(KeyError):
            kv["nope"]
        assert kv.get("nope") is None
        assert kv.get("nope", 7) == 7


async def test_contains_get_items_len_and_reads_outside_agents() -> None:
    """Owned keys can be read from the test body: [], in, get, items, keys, values, len."""
    app, kv = command_app()
    async with app.testing() as t:
        await run_commands(
            t,
            {"op": "set", "key": "a", "value": 1},
            {"op": "set", "key": "b", "value": {"nested": True}},
        )
        assert kv["a"] == 1 and kv["b"] == {"nested": True}
        assert "a" in kv and "c" not in kv
        assert dict(kv.items()) == {"a": 1, "b": {"nested": True}}
        assert sorted(kv.keys()) == ["a", "b"]
        assert len(kv) == 2 and len(list(kv.values())) == 2


async def test_agent_sees_its_own_writes() -> None:
    """Within an agent a write is visible to `in` and get() right away."""
    app, _ = command_app()
    async with app.testing() as t:
        await run_commands(t, {"op": "set", "key": "a", "value": 5})
        out = [e.value for e in await t.read("results")]
    assert out == [{"key": "a", "in": True, "value": 5}]


async def test_every_change_is_written_to_the_changelog() -> None:
    """Each commit writes the latest value of every changed key to `<app>-<table>-changelog`."""
    app, kv = command_app()
    assert kv.changelog_topic == "tables-kv-changelog"
    async with app.testing() as t:
        await run_commands(t, {"op": "set", "key": "a", "value": 1})
        await run_commands(t, {"op": "set", "key": "a", "value": 2})
        await run_commands(t, {"op": "set", "key": "b", "value": 3})
        log = await read_changelog(t, kv)
        described = await t.transport.describe_topic(kv.changelog_topic)
    assert [v for k, v in log if k == "a"] == [1, 2]
    assert [v for k, v in log if k == "b"] == [3]
    assert described.compacted and described.partitions == 4


async def test_changelog_records_land_on_the_keys_partition() -> None:
    """A key's changelog records are in partition murmur2(encoded key) % partitions."""
    app, kv = command_app()
    keys = [f"key-{i}" for i in range(20)]
    async with app.testing() as t:
        await run_commands(t, *({"op": "set", "key": k, "value": 0} for k in keys))
        consumer = t.transport.consumer(isolation=READ_COMMITTED)
        await consumer.assign([TopicPartition(kv.changelog_topic, p) for p in range(4)])
        batch = await consumer.getmany(timeout=1.0)
        await consumer.close()
    placed = {orjson.loads(r.key): tp.partition for tp, rs in batch.items() for r in rs}
    assert placed == {k: partition_for_key(orjson.dumps(k), 4) for k in keys}


async def test_delete_removes_the_key_and_writes_a_tombstone() -> None:
    """`del table[k]` removes k; its changelog record after the commit has a None value."""
    app, kv = command_app()
    async with app.testing() as t:
        await run_commands(t, {"op": "set", "key": "a", "value": 1})
        await run_commands(t, {"op": "del", "key": "a"})
        assert "a" not in kv
        assert t.table("kv") == {}
        assert await read_changelog(t, kv) == [("a", 1), ("a", None)]


async def test_set_then_delete_in_one_commit_writes_nothing() -> None:
    """A key created and deleted within one commit cycle leaves no changelog record."""
    app, kv = command_app()
    async with app.testing() as t:
        await run_commands(
            t,
            {"op": "set", "key": "a", "value": 1},
            {"op": "del", "key": "a"},
            {"op": "set", "key": "b", "value": 2},
        )
        assert await read_changelog(t, kv) == [("b", 2)]


async def test_pop_returns_the_value_and_deletes_the_key() -> None:
    """`table.pop(k, default)` returns k's value and removes it, or the default if absent."""
    app, kv = command_app()
    async with app.testing() as t:
        await run_commands(t, {"op": "set", "key": "a", "value": 9})
        await run_commands(t, {"op": "pop", "key": "a"})
        await run_commands(t, {"op": "pop", "key": "a"})
        popped = [e.value["popped"] for e in await t.read("results") if "popped" in e.value]
        assert popped == [9, "absent"]
        assert t.table("kv") == {}
        assert await read_changelog(t, kv) == [("a", 9), ("a", None)]


async def test_deleting_a_missing_key_fails_the_agent() -> None:
    """`del table[missing]` raises KeyError in the agent (surfacing as AgentError)."""
    app, _ = command_app()
    async with app.testing() as t:
        with pytest.raises(streams.AgentError) as failure:
            await run_commands(t, {"op": "del", "key": "ghost"})
    assert isinstance(failure.value.__cause__, KeyError)


# --- rollback and restore -----------------------------------------------------------------------


async def test_agent_error_rolls_back_the_batchs_table_changes() -> None:
    """An agent raising undoes the batch's table writes; earlier commits stay."""
    app, kv = command_app()
    async with app.testing() as t:
        await run_commands(t, {"op": "set", "key": "a", "value": 1})
        with pytest.raises(streams.AgentError):
            await run_commands(
                t,
                {"op": "set", "key": "a", "value": 2},
                {"op": "set", "key": "b", "value": 3},
                {"op": "del", "key": "a"},
                {"op": "fail", "key": "b"},
            )
        assert t.table("kv") == {"a": 1}
        assert await read_changelog(t, kv) == [("a", 1)]
        assert len(await t.read("results")) == 1


async def test_a_new_worker_restores_the_table_from_the_changelog(tmp_path: Path) -> None:
    """A worker with an empty local store rebuilds the table from the changelog."""
    app, _ = command_app(default=int)
    broker = f"sqlite:///{tmp_path}/broker.db"
    async with app.testing(broker=broker) as t:
        await run_commands(
            t,
            {"op": "add", "key": "a", "value": 2},
            {"op": "add", "key": "b", "value": 5},
            {"op": "add", "key": "a", "value": 3},
        )
        await run_commands(t, {"op": "del", "key": "b"})
    async with app.testing(broker=broker) as t:
        await run_commands(t, {"op": "add", "key": "a", "value": 10})
        assert t.table("kv") == {"a": 15}


async def test_table_is_unavailable_when_no_worker_runs() -> None:
    """Outside a running worker the table raises AppError explaining where it is available."""
    app, kv = command_app()
    with pytest.raises(streams.AppError, match="only while a worker"):
        kv["a"]
    async with app.testing():
        pass
    with pytest.raises(streams.AppError, match="only while a worker"):
        "a" in kv  # noqa: B015


# --- writes outside agents ----------------------------------------------------------------------


async def test_writes_outside_an_agent_are_refused() -> None:
    """Setting, deleting or popping from the test body raises TableWriteOutsideAgentError."""
    app, kv = command_app()
    async with app.testing() as t:
        await run_commands(t, {"op": "set", "key": "a", "value": 1})
        with pytest.raises(streams.TableWriteOutsideAgentError, match="outside an agent"):
            kv["a"] = 2
        with pytest.raises(streams.TableWriteOutsideAgentError):
            del kv["a"]
        with pytest.raises(streams.TableWriteOutsideAgentError):
            kv.pop("a")
        assert t.table("kv") == {"a": 1}


async def test_writes_from_a_timer_are_refused() -> None:
    """Timers and tasks run outside agents: their table writes raise too."""
    app = streams.App("tables")
    kv = app.table("kv", default=int)
    errors: list[BaseException] = []

    @app.task
    async def write() -> None:
        try:
            kv["from-task"] = 1
        except streams.StreamsError as exc:
            errors.append(exc)

    async with app.testing() as t:
        await asyncio.sleep(0.05)
        await t.drain()
        assert t.table("kv") == {}
    assert len(errors) == 1
    assert isinstance(errors[0], streams.TableWriteOutsideAgentError)


# --- keys this worker does not own --------------------------------------------------------------


def key_in_partition(partition: int, partitions: int = 4) -> str:
    return next(
        k
        for k in (f"key-{i}" for i in range(1000))
        if partition_for_key(orjson.dumps(k), partitions) == partition
    )


def test_not_owned_key_error_names_the_partition_and_group_by() -> None:
    """A write to a key of a partition not owned raises TableKeyNotOwnedError about group_by."""
    app = streams.App("tables")
    state = TableState(app.table("kv").spec())
    state.attach(0, {})
    state.set(key_in_partition(0), 1)
    foreign = key_in_partition(2)
    with pytest.raises(streams.TableKeyNotOwnedError) as failure:
        state.set(foreign, 1)
    message = str(failure.value)
    assert "group_by" in message
    assert "partition 2" in message
    assert "[0]" in message
    assert repr(foreign) in message
    with pytest.raises(streams.TableKeyNotOwnedError):
        state.get(foreign)
    with pytest.raises(streams.TableKeyNotOwnedError):
        state.contains(foreign)


async def test_reading_a_key_of_a_detached_partition_raises() -> None:
    """After its partition is detached, reading a key raises TableKeyNotOwnedError."""
    app, kv = command_app(default=int)
    foreign = key_in_partition(3)
    async with app.testing() as t:
        await run_commands(t, {"op": "add", "key": foreign, "value": 1})
        assert kv[foreign] == 1
        t.worker.tables["kv"].detach(3)
        with pytest.raises(streams.TableKeyNotOwnedError, match="group_by"):
            kv[foreign]
        with pytest.raises(streams.TableKeyNotOwnedError, match="group_by"):
            foreign in kv  # noqa: B015
        assert kv[key_in_partition(1)] == 0  # other partitions still work


async def test_agent_writing_a_key_it_does_not_own_fails_with_the_cause() -> None:
    """An agent updating a key of a partition not owned fails with TableKeyNotOwnedError."""
    app, _ = command_app(default=int)
    async with app.testing() as t:
        await t.drain()
        t.worker.tables["kv"].detach(2)
        with pytest.raises(streams.AgentError) as failure:
            await run_commands(t, {"op": "add", "key": key_in_partition(2), "value": 1})
    assert isinstance(failure.value.__cause__, streams.TableKeyNotOwnedError)
    assert "group_by" in str(failure.value.__cause__)


async def test_a_restart_with_a_current_store_replays_and_loads_nothing(
    tmp_path: Path, backend: str
) -> None:
    """A store-backed table restarted on its own store: no changelog record replayed, no row
    loaded into memory (the cache starts empty), and every value read from the store."""
    app, _ = command_app(default=int, store=backend)
    settings = {"broker": f"sqlite:///{tmp_path}/broker.db", "state_dir": f"{tmp_path}/state"}
    adds = [{"op": "add", "key": f"k{i % 50}", "value": i} for i in range(200)]
    async with app.testing(**settings) as t:
        await run_commands(t, *adds)
        expected = t.table("kv")
    async with app.testing(**settings) as t:
        assert t.worker is not None
        await t.worker.poll(0.05)  # assignment and restore
        assert t.worker.restored_records == 0
        state = t.worker.tables["kv"]
        if backend == "local":
            assert isinstance(state, StoreTableState)
            assert len(state.cache) == 0 and state.store_reads == 0
        assert t.table("kv") == expected
        await run_commands(t, {"op": "add", "key": "k1", "value": 1000})
        assert t.table("kv")["k1"] == expected["k1"] + 1000


async def test_a_cold_restore_saves_the_store_in_chunks_of_the_changelog(
    tmp_path: Path, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore from the changelog alone saves rows and checkpoint every few keys (memory
    stays bounded for tables larger than it); the store it leaves is current."""
    monkeypatch.setattr(worker_module, "RESTORE_SAVE_EVERY", 3)
    app, _ = command_app(default=int, store=backend)
    broker = f"sqlite:///{tmp_path}/broker.db"
    adds = [{"op": "add", "key": f"k{i % 40}", "value": i} for i in range(120)]
    async with app.testing(broker=broker, state_dir=f"{tmp_path}/first") as t:
        await run_commands(t, *adds)
        expected = t.table("kv")
    for attempt, replays in enumerate((True, False)):  # cold, then on the store it left
        async with app.testing(broker=broker, state_dir=f"{tmp_path}/second") as t:
            assert t.worker is not None
            await t.worker.poll(0.05)
            assert (t.worker.restored_records > 0) == replays, attempt
            assert t.table("kv") == expected


async def test_a_failed_checkpoint_stops_commits_until_a_restore(
    tmp_path: Path, backend: str
) -> None:
    """Step 5 failing leaves the store behind what committed: nothing more commits (a
    store-backed table's later checkpoint would claim rows the store never got) until a
    restart restores the store from the changelog."""
    app, _ = command_app(default=int, store=backend)
    settings = {"broker": f"sqlite:///{tmp_path}/broker.db", "state_dir": f"{tmp_path}/state"}
    async with app.testing(**settings) as t:
        assert t.worker is not None
        await run_commands(t, {"op": "add", "key": "a", "value": 1})
        save = t.worker.store.save

        async def full(*args: Any) -> None:
            raise DiskFullError("no space left (test)")

        t.worker.store.save = full
        with pytest.raises(DiskFullError):
            await run_commands(t, {"op": "add", "key": "a", "value": 2})
        t.worker.store.save = save
        with pytest.raises(ResourceError, match="missed a checkpoint"):
            await run_commands(t, {"op": "add", "key": "b", "value": 5})
    async with app.testing(**settings) as t:
        await run_commands(t, {"op": "add", "key": "a", "value": 10})
        assert t.table("kv") == {"a": 13, "b": 5}  # b was never committed: processed now
