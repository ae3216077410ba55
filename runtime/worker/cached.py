"""A table whose source of truth on the worker is the local store, with a bounded cache.

The rows of an owned partition stay in the SQLite store (runtime/worker/store.py); memory
holds only:

- `pending`: every write not yet in the store (partition -> key -> value, or MISSING for a
  deletion): the open cycle's writes, and a committed cycle's until its checkpoint is saved.
  It is never evicted, so reads always see the cycle's own writes;
- `undo`: per key written this cycle, its `pending` entry before the cycle (NOT_PENDING if it
  had none), so an abort restores `pending` exactly: the store never saw the cycle;
- `cache`: an LRU of clean values (equal to the store's), at most `cache_size` keys, absent
  keys included (a counter's new keys are not looked up twice).

A key written this cycle is dropped from the cache, so a value mutated in place and then
aborted is read back from the store as it was committed. Reads of uncached keys are point
lookups on a second, read-only SQLite connection in the worker's thread (WAL: they never wait
for the store's writer); `len()` and `items()` read the store partition by partition
(streaming), overlaid with `pending`.

    state = StoreTableState(spec, cache_size=100_000)
    state.open("state/worker-0/store.db")   # once the store exists
    state.attach(3, rows={})   # partition 3 is ours: nothing is loaded
    state.set("apple", 1)      # pending until the commit cycle saves it
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from runtime.errors import StoreCorruptError
from runtime.types import Record
from runtime.worker.spec import TableSpec
from runtime.worker.store import _corrupt, _discard, _store_error
from runtime.worker.tables import MISSING, TableState

NOT_PENDING: Any = object()
DEFAULT_CACHE_SIZE = 100_000


class StoreTableState(TableState):
    loads_rows = False  # attach() needs no rows: they stay in the store

    def __init__(self, spec: TableSpec, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        super().__init__(spec)
        if cache_size < 1:
            raise ValueError(f"cache_size must be at least 1, not {cache_size}")
        self.cache_size = cache_size
        self.cache: OrderedDict[Any, Any] = OrderedDict()
        self.pending: dict[int, dict[Any, Any]] = {}
        self.store_reads = 0  # point lookups that went to the store (cache misses)
        self._db: sqlite3.Connection | None = None
        self.path = ""

    def open(self, path: str) -> None:
        """Read the store file at `path` (the worker's StateStore writes it)."""
        self.close()
        self.path = path
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"table {self.spec.name!r}: its store is not open yet")
        return self._db

    def _query(self, sql: str, args: tuple[Any, ...]) -> sqlite3.Cursor:
        """A read of the store; its failure is the store's, never the record's: a typed
        StreamsError (which stops the worker whatever the agent's on_error), and a corrupt
        file is discarded so that the restarted worker rebuilds it from the changelogs."""
        path = self.path
        try:
            return self.db.execute(sql, args)
        except sqlite3.Error as exc:
            if not _corrupt(exc):
                raise _store_error(exc, path) from exc
            self.close()
            _discard(path)
            raise StoreCorruptError(
                f"the local store {path!r} is corrupt ({exc}): discarded; the worker "
                "restarts and rebuilds it from the changelogs"
            ) from exc

    # --- reads and writes ---------------------------------------------------------------

    def _lookup(self, partition: int, key: Any) -> Any:
        pending = self.pending.get(partition)
        if pending is not None:
            value = pending.get(key, NOT_PENDING)
            if value is not NOT_PENDING:
                return value
        cache = self.cache
        try:
            value = cache[key]
        except KeyError:
            pass
        else:
            cache.move_to_end(key)
            return value
        value = self._read(partition, key)
        cache[key] = value
        if len(cache) > self.cache_size:
            cache.popitem(last=False)
        return value

    def _read(self, partition: int, key: Any) -> Any:
        self.store_reads += 1
        row = self._query(
            "SELECT value FROM rows WHERE tbl = ? AND partition = ? AND key = ?",
            (self.spec.name, partition, self.spec.key.encode(key)),
        ).fetchone()
        return MISSING if row is None else self.spec.value.decode(bytes(row[0]))

    def get(self, key: Any, default: Any = MISSING) -> Any:
        partition, _ = self._owned(key)
        value = self._lookup(partition, key)
        return self._absent(key, default) if value is MISSING else value

    def contains(self, key: Any) -> bool:
        partition, _ = self._owned(key)
        return self._lookup(partition, key) is not MISSING

    def _write(self, key: Any, value: Any) -> None:
        partition, _ = self._owned(key)
        pending = self.pending.get(partition)
        if pending is None:
            pending = self.pending[partition] = {}
        undo = self.undo.get(partition)
        if undo is None:
            undo = self.undo[partition] = {}
        if key not in undo:
            undo[key] = pending.get(key, NOT_PENDING)
        pending[key] = value
        self.cache.pop(key, None)

    def set(self, key: Any, value: Any) -> None:
        self._write(key, value)

    def delete(self, key: Any) -> None:
        partition, _ = self._owned(key)
        if self._lookup(partition, key) is MISSING:
            raise KeyError(key)
        self._write(key, MISSING)

    def items(self) -> Iterator[tuple[Any, Any]]:
        decode_key, decode_value = self.spec.key.decode, self.spec.value.decode
        for partition in list(self.partitions):
            pending = dict(self.pending.get(partition, {}))
            cursor = self._query(
                "SELECT key, value FROM rows WHERE tbl = ? AND partition = ?",
                (self.spec.name, partition),
            )
            for key_bytes, value_bytes in cursor:
                key = decode_key(bytes(key_bytes))
                if key in pending:
                    continue
                yield key, decode_value(bytes(value_bytes))
            for key, value in pending.items():
                if value is not MISSING:
                    yield key, value

    def __len__(self) -> int:
        total = 0
        for partition in self.partitions:
            row = self._query(
                "SELECT count(*) FROM rows WHERE tbl = ? AND partition = ?",
                (self.spec.name, partition),
            ).fetchone()
            total += int(row[0])
            for key, value in self.pending.get(partition, {}).items():
                stored = self._read(partition, key) is not MISSING
                total += (value is not MISSING) - stored
        return total

    # --- the commit cycle ---------------------------------------------------------------

    def changes(self) -> Iterator[tuple[int, Any, Any]]:
        for partition, undo in self.undo.items():
            pending = self.pending.get(partition)
            if pending is None or partition not in self.partitions:
                continue
            for key, before in undo.items():
                after = pending[key]
                if after is MISSING and (
                    before is MISSING
                    or (before is NOT_PENDING and self._read(partition, key) is MISSING)
                ):
                    continue  # created and deleted within the cycle: nothing to record
                yield partition, key, after

    def committed(self) -> None:
        """The cycle's writes are in the changelog; they stay pending until saved()."""
        self.undo.clear()

    def saved(self) -> None:
        """Every pending write is in the store: they become clean cache entries."""
        cache = self.cache
        for pending in self.pending.values():
            for key, value in pending.items():
                cache[key] = value
                cache.move_to_end(key)
        while len(cache) > self.cache_size:
            cache.popitem(last=False)
        self.pending.clear()

    def rollback(self) -> None:
        for partition, undo in self.undo.items():
            pending = self.pending.get(partition)
            if pending is None:
                continue
            for key, before in undo.items():
                if before is NOT_PENDING:
                    pending.pop(key, None)
                else:
                    pending[key] = before
                self.cache.pop(key, None)
        self.undo.clear()

    # --- assignment and restore ---------------------------------------------------------

    def attach(self, partition: int, rows: dict[bytes, bytes]) -> None:
        """Own `partition`: its rows are the store's (`rows` is unused: nothing loads)."""
        self.partitions[partition] = {}
        self._forget(partition)

    def apply_changelog(self, partition: int, records: list[Record]) -> None:
        """The restore saves the replayed records into the store itself; forget what the
        cache knew of their keys."""
        decode_key = self.spec.key.decode
        for record in records:
            if record.key is not None:
                self.cache.pop(decode_key(record.key), None)

    def detach(self, partition: int) -> None:
        super().detach(partition)
        self._forget(partition)

    def _forget(self, partition: int) -> None:
        self.pending.pop(partition, None)
        self.undo.pop(partition, None)
        if self.cache:
            self.cache = OrderedDict(
                (k, v) for k, v in self.cache.items() if self.partition_of(k) != partition
            )
