"""The working copy of one table's owned partitions, with its changes since the last commit.

A key lives in partition `murmur2(encoded key) % partitions`, as a record with that key would.
Every write remembers the key's value before the first change of the commit cycle, so an
aborted transaction is undone exactly; `changes()` yields the latest value per changed key, the
changelog records of the cycle.

    state = TableState(spec)
    state.attach(3, rows={})        # partition 3 is ours now
    state.set("apple", 1)
    list(state.changes())           # [(3, "apple", 1)]
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from runtime.errors import TableKeyNotOwnedError
from runtime.partitioner import partition_for_key
from runtime.types import Record
from runtime.worker.spec import TableSpec

MISSING: Any = object()
PARTITION_CACHE_SIZE = 200_000


class TableState:
    loads_rows = True  # attach() takes the partition's rows from the local store

    def __init__(self, spec: TableSpec) -> None:
        self.spec = spec
        self.partitions: dict[int, dict[Any, Any]] = {}
        self.undo: dict[int, dict[Any, Any]] = {}  # partition -> key -> value before the cycle
        self._placement: dict[Any, int] = {}

    # --- placement and ownership --------------------------------------------------------

    def partition_of(self, key: Any) -> int:
        try:
            return self._placement[key]
        except KeyError:
            pass
        except TypeError:
            raise TypeError(f"table keys must be hashable, not {type(key).__name__}") from None
        partition = partition_for_key(self.spec.key.encode(key), self.spec.partitions)
        if len(self._placement) >= PARTITION_CACHE_SIZE:
            self._placement.clear()
        self._placement[key] = partition
        return partition

    def _owned(self, key: Any) -> tuple[int, dict[Any, Any]]:
        partition = self.partition_of(key)
        rows = self.partitions.get(partition)
        if rows is None:
            raise TableKeyNotOwnedError(
                f"table {self.spec.name!r}: key {key!r} belongs to partition {partition}, which "
                f"this worker does not own (it owns {sorted(self.partitions)}). Tables are "
                "partitioned like the stream that updates them: re-key the stream with "
                "stream.group_by(lambda value: <the table key>, name=...) before updating it"
            )
        return partition, rows

    # --- reads and writes ---------------------------------------------------------------

    def get(self, key: Any, default: Any = MISSING) -> Any:
        try:  # fast path: a key seen before, in a partition we own
            value = self.partitions[self._placement[key]].get(key, MISSING)
        except (KeyError, TypeError):
            value = self._owned(key)[1].get(key, MISSING)
        return self._absent(key, default) if value is MISSING else value

    def _absent(self, key: Any, default: Any) -> Any:
        """What get() answers for a key the table does not hold: `default`, else the
        table's default factory, else KeyError."""
        if default is not MISSING:
            return default
        if self.spec.default is not None:
            return self.spec.default()
        raise KeyError(key)

    def contains(self, key: Any) -> bool:
        _, rows = self._owned(key)
        return key in rows

    def set(self, key: Any, value: Any) -> None:
        try:  # fast path, as in get()
            partition = self._placement[key]
            rows = self.partitions[partition]
        except (KeyError, TypeError):
            partition, rows = self._owned(key)
        undo = self.undo.get(partition)
        if undo is None:
            undo = self.undo[partition] = {}
        if key not in undo:
            undo[key] = rows.get(key, MISSING)
        rows[key] = value

    def delete(self, key: Any) -> None:
        partition, rows = self._owned(key)
        if key not in rows:
            raise KeyError(key)
        self._remember(partition, rows, key)
        del rows[key]

    def _remember(self, partition: int, rows: dict[Any, Any], key: Any) -> None:
        """Keep the value `key` had before the cycle's first change, for rollback (set()
        does the same inline: it is the hot path)."""
        undo = self.undo.get(partition)
        if undo is None:
            undo = self.undo[partition] = {}
        if key not in undo:
            undo[key] = rows.get(key, MISSING)

    def items(self) -> Iterator[tuple[Any, Any]]:
        for rows in self.partitions.values():
            yield from rows.items()

    def __len__(self) -> int:
        return sum(len(rows) for rows in self.partitions.values())

    # --- the commit cycle ---------------------------------------------------------------

    def changes(self) -> Iterator[tuple[int, Any, Any]]:
        """(partition, key, latest value or MISSING if deleted) per key written this cycle.
        Values are compared by nothing: a value mutated in place and written back must still
        reach the changelog."""
        for partition, undo in self.undo.items():
            rows = self.partitions.get(partition)
            if rows is None:
                continue
            for key, before in undo.items():
                after = rows.get(key, MISSING)
                if not (after is MISSING and before is MISSING):
                    yield partition, key, after

    def encoded_changes(self) -> Iterator[tuple[int, bytes, bytes | None]]:
        """The cycle's changelog records: (partition, key, value or None for a deletion)."""
        encode_key, encode_value = self.spec.key.encode, self.spec.value.encode
        for partition, key, value in self.changes():
            yield partition, encode_key(key), None if value is MISSING else encode_value(value)

    def committed(self) -> None:
        """The cycle's changes are durable in the changelog: forget how to undo them."""
        self.undo.clear()

    def saved(self) -> None:
        """The committed changes are in the local store too (a store-backed table's cache
        takes them)."""

    def close(self) -> None:
        """Release what the table holds besides memory (a store-backed table's connection)."""

    def rollback(self) -> None:
        """Undo every change since the last commit (the transaction aborted)."""
        for partition, undo in self.undo.items():
            rows = self.partitions.get(partition)
            if rows is None:
                continue
            for key, before in undo.items():
                if before is MISSING:
                    rows.pop(key, None)
                else:
                    rows[key] = before
        self.undo.clear()

    # --- assignment and restore ---------------------------------------------------------

    def attach(self, partition: int, rows: dict[bytes, bytes]) -> None:
        """Own `partition`, starting from encoded rows (from the local store)."""
        decode_key, decode_value = self.spec.key.decode, self.spec.value.decode
        self.partitions[partition] = {decode_key(k): decode_value(v) for k, v in rows.items()}

    def apply_changelog(self, partition: int, records: list[Record]) -> None:
        """Replay committed changelog records into an owned partition."""
        rows = self.partitions[partition]
        decode_key, decode_value = self.spec.key.decode, self.spec.value.decode
        for record in records:
            if record.key is None:
                continue
            key = decode_key(record.key)
            if record.value is None:
                rows.pop(key, None)
            else:
                rows[key] = decode_value(record.value)

    def restored(self, partition: int) -> None:
        """The changelog replay of `partition` is complete (a windowed table indexes it)."""

    def detach(self, partition: int) -> None:
        self.partitions.pop(partition, None)
        self.undo.pop(partition, None)
