"""The local table store: a cache of the changelogs, one SQLite file per worker state dir.

Rows and the changelog offset they reflect (the checkpoint) are written in one SQLite
transaction, after the broker transaction that wrote the same changes to the changelog has
committed. So the store always equals a committed prefix of the changelog, even after
`kill -9`; restoring reads the changelog from the checkpoint to its end. The log stays the
truth: a checkpoint that does not fit the changelog (ahead of its end, behind its start) is
discarded and the partition rebuilt from the changelog alone, and a store file that is not a
readable SQLite database (corrupt, truncated, overwritten) is deleted and rebuilt the same way.

    store = await StateStore.open("wordcount-state/worker-0")
    rows, checkpoint = await store.load("counts", 3)
    await store.save([("counts", 3, b'"a"', b"2")], {("counts", 3): 118})
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
from collections.abc import Iterable, Mapping

import aiosqlite

from runtime.errors import (
    DatabaseError,
    DatabaseLockedError,
    DiskFullError,
    ResourceError,
    StoreCorruptError,
    StreamsError,
)

log = logging.getLogger(__name__)
STORE_FILE = "store.db"
MEMORY = ":memory:"
BUSY_TIMEOUT_MS = 2000  # a store has one writer, its worker: a lock held longer is foreign
STORE_SCHEMA = """
CREATE TABLE IF NOT EXISTS rows (
    tbl TEXT NOT NULL,
    partition INTEGER NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (tbl, partition, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    tbl TEXT NOT NULL,
    partition INTEGER NOT NULL,
    changelog_offset INTEGER NOT NULL,
    PRIMARY KEY (tbl, partition)
) WITHOUT ROWID;
"""

Change = tuple[str, int, bytes, bytes | None]  # table, partition, key, value (None: deleted)


class StateStore:
    def __init__(self, conn: aiosqlite.Connection, path: str) -> None:
        self.conn = conn
        self.path = path

    @classmethod
    async def open(cls, directory: str) -> StateStore:
        """The store in `directory` (created if needed), or an in-memory one for ":memory:".
        A file that is not a usable store is discarded (the store is a cache of the
        changelogs, rebuilt from them); a full disk or a lock held by another program is a
        ResourceError (try again later), anything else a DatabaseError."""
        if directory == MEMORY:
            path = MEMORY
        else:
            try:
                os.makedirs(directory, exist_ok=True)
            except OSError as exc:
                raise _store_error(exc, directory) from exc
            path = os.path.join(directory, STORE_FILE)
        try:
            return cls(await _connect(path), path)
        except sqlite3.DatabaseError as exc:
            if not _corrupt(exc):
                raise _store_error(exc, path) from exc
            log.warning(
                "the local store %s is unreadable (%s): discarded; its tables are rebuilt "
                "from their changelogs",
                path,
                exc,
            )
        except OSError as exc:
            raise _store_error(exc, path) from exc
        _discard(path)
        try:
            return cls(await _connect(path), path)
        except (sqlite3.Error, OSError) as exc:
            raise _store_error(exc, path) from exc

    async def close(self) -> None:
        await self.conn.close()

    async def load(self, table: str, partition: int) -> tuple[dict[bytes, bytes], int | None]:
        """The rows of one table partition and the changelog offset they reflect."""
        try:
            return await self._load(table, partition)
        except sqlite3.DatabaseError as exc:
            raise await self._failed(exc) from exc

    async def _load(self, table: str, partition: int) -> tuple[dict[bytes, bytes], int | None]:
        cursor = await self.conn.execute(
            "SELECT changelog_offset FROM checkpoints WHERE tbl = ? AND partition = ?",
            (table, partition),
        )
        row = await cursor.fetchone()
        if row is None:
            return {}, None
        cursor = await self.conn.execute(
            "SELECT key, value FROM rows WHERE tbl = ? AND partition = ?", (table, partition)
        )
        return {bytes(k): bytes(v) for k, v in await cursor.fetchall()}, int(row[0])

    async def checkpoint(self, table: str, partition: int) -> int | None:
        """The changelog offset the stored rows of a partition reflect, if any."""
        try:
            return await self._checkpoint(table, partition)
        except sqlite3.DatabaseError as exc:
            raise await self._failed(exc) from exc

    async def _checkpoint(self, table: str, partition: int) -> int | None:
        cursor = await self.conn.execute(
            "SELECT changelog_offset FROM checkpoints WHERE tbl = ? AND partition = ?",
            (table, partition),
        )
        row = await cursor.fetchone()
        return None if row is None else int(row[0])

    async def save(
        self, changes: Iterable[Change], checkpoints: Mapping[tuple[str, int], int]
    ) -> None:
        """Apply changes and move checkpoints, atomically."""
        upserts = []
        deletes = []
        for table, partition, key, value in changes:
            if value is None:
                deletes.append((table, partition, key))
            else:
                upserts.append((table, partition, key, value))
        await self.conn.execute("BEGIN IMMEDIATE")
        try:
            if upserts:
                await self.conn.executemany(
                    "INSERT OR REPLACE INTO rows VALUES (?, ?, ?, ?)", upserts
                )
            if deletes:
                await self.conn.executemany(
                    "DELETE FROM rows WHERE tbl = ? AND partition = ? AND key = ?", deletes
                )
            await self.conn.executemany(
                "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?)",
                [(t, p, offset) for (t, p), offset in checkpoints.items()],
            )
            await self.conn.execute("COMMIT")
        except BaseException as exc:
            with contextlib.suppress(sqlite3.Error, ValueError):
                await self.conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):  # e.g. the disk is full: typed, and retried
                raise await self._failed(exc) from exc
            raise

    async def _failed(self, exc: sqlite3.Error) -> StreamsError:
        """The typed error for a failed statement. A corrupt file is closed and discarded
        now (rebuilding it while tables are loaded could checkpoint rows it lost): the
        worker exits 75 and its restart rebuilds the store from the changelogs."""
        if not _corrupt(exc) or self.path == MEMORY:
            return _store_error(exc, self.path)
        with contextlib.suppress(Exception):
            await self.conn.close()
        _discard(self.path)
        log.warning("the local store %s is corrupt (%s): discarded", self.path, exc)
        return StoreCorruptError(
            f"the local store {self.path!r} is corrupt ({exc}): discarded; the worker "
            "restarts and rebuilds it from the changelogs"
        )

    async def wipe(self, table: str, partition: int) -> None:
        """Forget a partition (its checkpoint does not fit the changelog)."""
        try:
            await self._wipe(table, partition)
        except sqlite3.DatabaseError as exc:
            raise await self._failed(exc) from exc

    async def _wipe(self, table: str, partition: int) -> None:
        await self.conn.execute("BEGIN IMMEDIATE")
        await self.conn.execute(
            "DELETE FROM rows WHERE tbl = ? AND partition = ?", (table, partition)
        )
        await self.conn.execute(
            "DELETE FROM checkpoints WHERE tbl = ? AND partition = ?", (table, partition)
        )
        await self.conn.execute("COMMIT")


async def _connect(path: str) -> aiosqlite.Connection:
    """An open, checked connection; closed again (its thread ended) if a step fails."""
    conn = await aiosqlite.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    try:
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = NORMAL")
        await conn.executescript(STORE_SCHEMA)
        await conn.execute("SELECT count(*) FROM checkpoints")  # reads a page of the file
    except BaseException:
        await conn.close()
        raise
    return conn


def _corrupt(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    return code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _discard(path: str) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.remove(path + suffix)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _store_error(exc, path) from exc


def _store_error(exc: BaseException, path: str) -> StreamsError:
    """The typed error for an SQLite or OS error of the store: a full disk, an I/O error or
    a lock held too long is temporary (ResourceError), the rest is not (DatabaseError)."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    number = getattr(exc, "errno", None)
    if code == sqlite3.SQLITE_FULL or number in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"no space left for the state store {path!r}: {exc}")
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return DatabaseLockedError(
            f"the state store {path!r} stayed locked by another program for "
            f"{BUSY_TIMEOUT_MS / 1000:.0f} s: {exc}"
        )
    if code == sqlite3.SQLITE_IOERR or number == errno.EIO:
        return ResourceError(f"I/O error on the state store {path!r}: {exc}")
    return DatabaseError(f"cannot use the state store {path!r}: {exc}")
