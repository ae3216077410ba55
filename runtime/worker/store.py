"""The local table store: a cache of the changelogs, one SQLite file per worker state dir.

Rows and the changelog offset they reflect (the checkpoint) are written in one SQLite
transaction, after the broker transaction that wrote the same changes to the changelog has
committed. So the store always equals a committed prefix of the changelog, even after
`kill -9`; restoring reads the changelog from the checkpoint to its end. The log stays the
truth: a checkpoint that does not fit the changelog (ahead of its end, behind its start) is
discarded and the partition rebuilt from the changelog alone.

    store = await StateStore.open("wordcount-state/worker-0")
    rows, checkpoint = await store.load("counts", 3)
    await store.save([("counts", 3, b'"a"', b"2")], {("counts", 3): 118})
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import aiosqlite

from runtime.errors import DatabaseError

STORE_FILE = "store.db"
MEMORY = ":memory:"
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
        """The store in `directory` (created if needed), or an in-memory one for ":memory:"."""
        if directory == MEMORY:
            path = MEMORY
        else:
            os.makedirs(directory, exist_ok=True)
            path = os.path.join(directory, STORE_FILE)
        try:
            conn = await aiosqlite.connect(path, isolation_level=None)
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute("PRAGMA synchronous = NORMAL")
            await conn.execute("PRAGMA busy_timeout = 60000")
            await conn.executescript(STORE_SCHEMA)
        except Exception as exc:  # sqlite3.DatabaseError and OS errors alike
            raise DatabaseError(f"cannot open the state store {path!r}: {exc}") from exc
        return cls(conn, path)

    async def close(self) -> None:
        await self.conn.close()

    async def load(self, table: str, partition: int) -> tuple[dict[bytes, bytes], int | None]:
        """The rows of one table partition and the changelog offset they reflect."""
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
        except BaseException:
            await self.conn.execute("ROLLBACK")
            raise

    async def wipe(self, table: str, partition: int) -> None:
        """Forget a partition (its checkpoint does not fit the changelog)."""
        await self.conn.execute("BEGIN IMMEDIATE")
        await self.conn.execute(
            "DELETE FROM rows WHERE tbl = ? AND partition = ?", (table, partition)
        )
        await self.conn.execute(
            "DELETE FROM checkpoints WHERE tbl = ? AND partition = ?", (table, partition)
        )
        await self.conn.execute("COMMIT")
