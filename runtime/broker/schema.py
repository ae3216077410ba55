"""The broker's SQLite file: its tables, and opening it safely.

A file is ours when its `application_id` is APPLICATION_ID; its `user_version` is the schema
version. Anything else (a text file, another program's database, another schema version) is
refused before a single byte of it is written.

    conn = open_database("app.db", synchronous="normal")
"""

from __future__ import annotations

import os
import sqlite3
import stat
import time

from runtime.errors import (
    DatabaseError,
    DatabaseLockedError,
    DiskFullError,
    ForeignDatabaseError,
    NotADatabaseError,
    ResourceError,
    SchemaVersionError,
    StreamsError,
)

APPLICATION_ID = 0x5354524D  # "STRM"
SCHEMA_VERSION = 1
SYNCHRONOUS = ("off", "normal", "full", "extra")

# Record batch kinds (the `kind` column of `batches`).
DATA = 0  # plain (idempotent or not) records
TXN = 1  # records of a transaction that is open or committed
ABORTED = 2  # records of an aborted transaction: hidden from read_committed readers
COMMIT_MARKER = 3  # control batches: one record each, never delivered to consumers
ABORT_MARKER = 4

TXN_EMPTY = 0
TXN_ONGOING = 1

DDL = """
CREATE TABLE topics (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    partitions INTEGER NOT NULL,
    compacted INTEGER NOT NULL,
    retention_ms INTEGER,
    retention_bytes INTEGER,
    delete_retention_ms INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
-- one row per topic partition; `id` is the short key the log uses
CREATE TABLE partitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic_id INTEGER NOT NULL,
    partition INTEGER NOT NULL,
    log_start INTEGER NOT NULL DEFAULT 0,
    next_offset INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    UNIQUE (topic_id, partition)
);
-- the log: one row per record batch; record i has offset base_offset + i (or + its delta
-- in a compacted batch)
CREATE TABLE batches (
    tp INTEGER NOT NULL,
    base_offset INTEGER NOT NULL,
    last_offset INTEGER NOT NULL,
    count INTEGER NOT NULL,
    pid INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    base_seq INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    max_ts INTEGER NOT NULL,
    append_ms INTEGER NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (tp, base_offset)
);
CREATE TABLE producers (
    pid INTEGER PRIMARY KEY,
    epoch INTEGER NOT NULL,
    transactional_id TEXT UNIQUE,
    txn_timeout_ms INTEGER NOT NULL,
    txn_state INTEGER NOT NULL DEFAULT 0,
    txn_deadline_ms INTEGER,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX producers_open ON producers (txn_deadline_ms) WHERE txn_state = 1;
-- the last batches (at most 5) each producer wrote to each partition, for deduplication
CREATE TABLE sequences (
    pid INTEGER NOT NULL,
    tp INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    recent BLOB NOT NULL,
    PRIMARY KEY (pid, tp)
) WITHOUT ROWID;
-- partitions an open transaction has written to, and its first offset there (pins the LSO)
CREATE TABLE txn_partitions (
    pid INTEGER NOT NULL,
    tp INTEGER NOT NULL,
    first_offset INTEGER NOT NULL,
    PRIMARY KEY (pid, tp)
) WITHOUT ROWID;
CREATE INDEX txn_partitions_tp ON txn_partitions (tp, first_offset);
-- offsets sent to an open transaction: they become committed offsets only at COMMIT
CREATE TABLE txn_offsets (
    pid INTEGER NOT NULL,
    group_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    metadata TEXT,
    PRIMARY KEY (pid, group_id, topic, partition)
) WITHOUT ROWID;
CREATE INDEX txn_offsets_group ON txn_offsets (group_id, topic, partition);
CREATE TABLE groups (
    group_id TEXT PRIMARY KEY,
    generation INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
-- `assignment` is what the member owns now (disjoint across members), `target` what the
-- assignor wants it to own; a partition moves only after its owner released it
CREATE TABLE members (
    group_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    topics BLOB NOT NULL,
    session_timeout_ms INTEGER NOT NULL,
    rebalance_timeout_ms INTEGER NOT NULL,
    joined_ms INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    assignment BLOB NOT NULL,
    target BLOB NOT NULL,
    revoke_since_ms INTEGER,
    assignor TEXT NOT NULL DEFAULT 'sticky',
    instance_id TEXT,
    standby_replicas INTEGER NOT NULL DEFAULT 0,
    standby BLOB NOT NULL DEFAULT '[]',
    PRIMARY KEY (group_id, member_id)
) WITHOUT ROWID;
CREATE TABLE offsets (
    group_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    metadata TEXT,
    commit_ms INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic, partition)
) WITHOUT ROWID;
CREATE TABLE counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""


def storage_error(exc: sqlite3.Error, path: str) -> StreamsError:
    """The typed error for an SQLite error on the broker file at `path`, in one line.

    A full disk and an I/O error are ResourceErrors (the same call may succeed later: nothing
    was written, and the connection stays usable); a read-only or corrupt file is a
    DatabaseError (retrying will not help)."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    message = str(exc)
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or "locked" in message:
        return DatabaseLockedError(f"broker database {path!r} stayed locked: {message}")
    if code == sqlite3.SQLITE_FULL or (code == sqlite3.SQLITE_IOERR and _no_space(path)):
        return DiskFullError(
            f"broker database {path!r}: the disk is full ({message}); nothing was written: "
            "free some space and the same call succeeds"
        )
    if code == sqlite3.SQLITE_IOERR:
        return ResourceError(
            f"broker database {path!r}: disk I/O error ({message}); nothing was written"
        )
    if code == sqlite3.SQLITE_READONLY:
        return DatabaseError(
            f"broker database {path!r} is read-only ({message}): give this process write "
            "access to the file and its directory"
        )
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return DatabaseError(
            f"broker database {path!r} is corrupt ({message}): run `streams broker check` "
            "and restore it from a backup (docs/operations.md)"
        )
    return DatabaseError(f"broker database {path!r}: {message}")


def is_corruption(exc: sqlite3.Error) -> bool:
    """Whether SQLite says the file itself is damaged (not the disk under it, not a lock)."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    return code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _no_space(path: str) -> bool:
    """Whether the file system holding `path` is (nearly) full: SQLite reports some writes
    that fail for want of space (growing the -shm file) as I/O errors."""
    try:
        info = os.statvfs(os.path.dirname(os.path.abspath(path)))
    except OSError:
        return False
    return info.f_bavail * info.f_frsize < 1 << 20


def _statements(script: str) -> list[str]:
    """The statements of a DDL script, comments removed."""
    lines = [line for line in script.splitlines() if not line.lstrip().startswith("--")]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def _has_content(path: str) -> bool:
    """True when `path` is a non-empty file, False when it is absent or empty.

    Never opens the file: closing any descriptor of a file releases every POSIX lock this
    process holds on it, including those of its SQLite connections (SQLite's "how to corrupt"
    list), so only SQLite itself may open a broker file."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise DatabaseError(f"cannot read broker database {path!r}: {exc}") from exc
    if stat.S_ISDIR(info.st_mode):
        raise NotADatabaseError(f"broker path {path!r} is a directory, not a database")
    return info.st_size > 0


def _identify(conn: sqlite3.Connection, path: str) -> bool:
    """True when the database is ours and current; False when it is a blank database.

    Reads page 1 (application id, user version) first, and the schema only when page 1 says
    "no application": a single page is read atomically even without locks."""
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        tables = 0
        if app_id == 0:
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise DatabaseLockedError(f"{path!r} stayed locked: {exc}") from exc
        raise NotADatabaseError(f"{path!r} cannot be read as an SQLite database: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise NotADatabaseError(
            f"{path!r} is not an SQLite database ({exc}); give the broker a new path or a file "
            "it created"
        ) from exc
    if app_id == 0 and tables == 0:
        return False
    if app_id != APPLICATION_ID:
        raise ForeignDatabaseError(
            f"{path!r} is an SQLite database of another program (application_id {app_id:#x}); "
            "streams will not modify it: give the broker a path of its own"
        )
    if version != SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{path!r} was written by streams broker schema version {version}; this version "
            f"reads schema {SCHEMA_VERSION}. Use the matching streams release, or a new path"
        )
    return True


def _probe(path: str, busy_timeout_ms: int) -> None:
    """Refuse a file that is not ours before opening it for writing.

    First through an immutable read-only connection: it takes no locks and creates no
    -wal/-shm files, so another program's database is never touched. Without locks it can
    read pages torn by a concurrent checkpoint of our own file; so when it fails, ask once
    more through an ordinary read-only connection, which takes the usual locks. (Our own
    file's first page may still be in its WAL: then it looks blank here and is identified
    again, under the write lock, by open_database.)"""
    uri = f"file:{os.path.abspath(path)}?mode=ro"
    for options in ("&immutable=1", ""):
        probe = sqlite3.connect(uri + options, uri=True)
        try:
            probe.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            _identify(probe, path)
            return
        except NotADatabaseError:
            if options == "":
                raise
        finally:
            probe.close()


def _configure(conn: sqlite3.Connection, synchronous: str, busy_timeout_ms: int) -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA cache_size = -65536")  # 64 MiB
    conn.execute("PRAGMA temp_store = MEMORY")


def _enable_wal(conn: sqlite3.Connection, busy_timeout_ms: int) -> None:
    """Switch to WAL mode. While another process is creating the file, SQLite answers "locked"
    at once instead of waiting for the busy timeout: retry until the timeout."""
    deadline = time.monotonic() + busy_timeout_ms / 1000
    delay = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def open_database(
    path: str, *, synchronous: str = "normal", busy_timeout_ms: int = 60_000
) -> sqlite3.Connection:
    """Open (creating if needed) the broker database at `path`, or ":memory:".

    The connection is in autocommit mode: every broker operation opens its own transaction.
    """
    synchronous = synchronous.lower()
    if synchronous not in SYNCHRONOUS:
        raise DatabaseError(f"synchronous must be one of {SYNCHRONOUS}, not {synchronous!r}")
    in_memory = path == ":memory:"
    if not in_memory and _has_content(path):
        _probe(path, busy_timeout_ms)
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise DatabaseError(f"cannot open broker database {path!r}: {exc}") from exc
    try:
        _configure(conn, synchronous, busy_timeout_ms)
        if not in_memory:
            _enable_wal(conn, busy_timeout_ms)
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not _identify(conn, path):
                for statement in _statements(DDL):
                    conn.execute(statement)
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        conn.close()
        if "locked" in str(exc) or "busy" in str(exc):
            raise DatabaseLockedError(
                f"broker database {path!r} is locked by another program: {exc}"
            ) from exc
        raise storage_error(exc, path) from exc
    except BaseException:
        conn.close()
        raise
    return conn
