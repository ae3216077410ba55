"""The store-backed table (runtime/worker/cached.py) against a dict model: random reads,
writes, deletes, commits, aborts and restarts, with a cache of one to three keys so nearly
every read goes to the store and entries are evicted all the time."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.errors import StoreCorruptError
from runtime.worker.cached import StoreTableState
from runtime.worker.spec import TableSpec
from runtime.worker.store import StateStore
from streams.codecs import get_codec

PARTITIONS = 3
KEYS = st.sampled_from([f"k{i}" for i in range(12)])
VALUES = st.one_of(st.integers(-5, 5), st.lists(st.integers(0, 3), max_size=3))
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("get"), KEYS),
        st.tuples(st.just("set"), KEYS, VALUES),
        st.tuples(st.just("mutate"), KEYS),  # read a list, append in place, write it back
        st.tuples(st.just("delete"), KEYS),
        st.tuples(st.just("contains"), KEYS),
        st.tuples(st.just("len")),
        st.tuples(st.just("items")),
        st.tuples(st.just("commit")),
        st.tuples(st.just("abort")),
        st.tuples(st.just("restart")),
    ),
    max_size=60,
)


def copied(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def spec() -> TableSpec:
    codec = get_codec("json")
    return TableSpec("t", "t-changelog", PARTITIONS, codec, codec, None)


def open_table(path: str, cache_size: int) -> StoreTableState:
    table = StoreTableState(spec(), cache_size=cache_size)
    table.open(path)
    for partition in range(PARTITIONS):
        table.attach(partition, {})
    return table


async def commit(table: StoreTableState, store: StateStore, offsets: dict[int, int]) -> None:
    """What the commit cycle does with a table: changes, committed, save, saved."""
    changes = [(table.spec.name, p, k, v) for p, k, v in table.encoded_changes()]
    table.committed()
    for _, partition, _, _ in changes:
        offsets[partition] = offsets.get(partition, 0) + 1
    await store.save(changes, {(table.spec.name, p): o for p, o in offsets.items()})
    table.saved()


async def run(ops: list[tuple[Any, ...]], cache_size: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        store = await StateStore.open(directory)
        table = open_table(store.path, cache_size)
        committed: dict[str, Any] = {}
        model: dict[str, Any] = {}
        offsets: dict[int, int] = {}
        try:
            for op in ops:
                name = op[0]
                if name == "get":
                    assert table.get(op[1], None) == model.get(op[1])
                elif name == "set":
                    table.set(op[1], op[2])
                    model[op[1]] = copied(op[2])
                elif name == "mutate":
                    value = table.get(op[1], None)
                    if isinstance(value, list):
                        model[op[1]] = [*value, 9]
                        value.append(9)
                        table.set(op[1], value)
                elif name == "delete":
                    if op[1] in model:
                        table.delete(op[1])
                        del model[op[1]]
                    else:
                        try:
                            table.delete(op[1])
                        except KeyError:
                            pass
                        else:
                            raise AssertionError(f"deleted {op[1]!r}, which is absent")
                elif name == "contains":
                    assert table.contains(op[1]) == (op[1] in model)
                elif name == "len":
                    assert len(table) == len(model)
                elif name == "items":
                    assert sorted(table.items(), key=repr) == sorted(model.items(), key=repr)
                elif name == "commit":
                    await commit(table, store, offsets)
                    committed = {k: copied(v) for k, v in model.items()}
                elif name == "abort":
                    table.rollback()
                    model = {k: copied(v) for k, v in committed.items()}
                elif name == "restart":  # uncommitted writes are lost, the store is read again
                    table.close()
                    table = open_table(store.path, cache_size)
                    model = {k: copied(v) for k, v in committed.items()}
                assert len(table.cache) <= cache_size
            assert dict(table.items()) == model
            for key in model:
                assert table.get(key) == model[key]
            assert not table.contains("absent")
        finally:
            table.close()
            await store.close()


@settings(max_examples=150, deadline=None)
@given(ops=OPS, cache_size=st.integers(1, 3))
def test_the_cached_table_behaves_like_a_dict_with_commits_aborts_and_restarts(
    ops: list[tuple[Any, ...]], cache_size: int
) -> None:
    asyncio.run(run(ops, cache_size))


def test_reads_of_evicted_keys_go_to_the_store() -> None:
    async def scenario() -> None:
        with tempfile.TemporaryDirectory() as directory:
            store = await StateStore.open(directory)
            table = open_table(store.path, 2)
            try:
                for i in range(10):
                    table.set(f"k{i}", i)
                await commit(table, store, {})
                reads = table.store_reads
                assert [table.get(f"k{i}") for i in range(10)] == list(range(10))
                assert table.store_reads - reads >= 8  # only the last two written stay cached
                assert len(table.cache) == 2
            finally:
                table.close()
                await store.close()

    asyncio.run(scenario())


def test_a_corrupt_store_read_is_the_stores_error_and_discards_the_file() -> None:
    """A read that finds the file corrupt raises StoreCorruptError (a StreamsError: it stops
    the worker whatever the agent's on_error) and deletes the file, to be rebuilt."""

    class Corrupt:
        def execute(self, *args: Any) -> Any:
            exc = sqlite3.DatabaseError("database disk image is malformed")
            exc.sqlite_errorcode = sqlite3.SQLITE_CORRUPT
            raise exc

        def close(self) -> None:
            pass

    async def scenario() -> None:
        with tempfile.TemporaryDirectory() as directory:
            store = await StateStore.open(directory)
            table = open_table(store.path, 2)
            table._db = Corrupt()  # type: ignore[assignment]
            try:
                with pytest.raises(StoreCorruptError, match="discarded"):
                    table.get("k1")
                assert not os.path.exists(store.path)
            finally:
                table.close()
                await store.close()

    asyncio.run(scenario())
