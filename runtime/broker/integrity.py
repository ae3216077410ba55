"""The broker file's health: clean closes, the check at open, full checks and online backups.

A broker file is shared by processes that come and go. The first process to open it (no other
holds it open) learns whether the last one closed it cleanly; if not (a crash of the last
process, or a copy of a live file), it runs SQLite's `integrity_check` before anyone uses the
file, and refuses a corrupt one. Whoever closes it last marks it clean.

    guard = OpenGuard.acquire("app.db")         # first opener? (waits while one checks)
    problems = check_file("app.db")             # [] when healthy
    backup(conn, "copy.db")                     # a consistent copy of a live file, checked
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import time
from typing import NamedTuple

from runtime.broker.codec import decode_batch
from runtime.broker.schema import APPLICATION_ID, SCHEMA_VERSION, is_corruption, storage_error
from runtime.errors import DatabaseError, InvalidRequestError, ResourceError, StreamsError

log = logging.getLogger(__name__)

OPEN_COUNTER = "open"  # counters row: 1 from the first open until a clean last close
MAX_PROBLEMS = 100


class OpenGuard:
    """A shared `flock` on `<db>-lock`, held while this connection is open.

    flock (not the POSIX locks SQLite uses) belongs to this open file description only, so
    closing it never disturbs SQLite's own locks. Taking it exclusively succeeds only when no
    other connection, in any process, holds the file open."""

    def __init__(self, fd: int, first: bool) -> None:
        self.fd = fd
        self.first = first  # no other connection had the file open

    @classmethod
    def acquire(cls, path: str) -> OpenGuard | None:
        """The guard of the broker file at `path`; None where no lock file can be made (a
        read-only directory): such a file is opened without the check."""
        try:
            fd = os.open(path + "-lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            log.debug("no open guard for %s: %s", path, exc)
            return None
        try:
            for _ in range(2):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return cls(fd, True)
                except BlockingIOError:
                    # Wait while a first opener checks the file (or a last one closes it),
                    # then ask once more: the last one may have gone meanwhile. (A failed
                    # conversion drops the lock held, so it is taken again.)
                    fcntl.flock(fd, fcntl.LOCK_SH)
            return cls(fd, False)
        except OSError:
            os.close(fd)
            raise

    def share(self) -> None:
        """Let other connections in (after the first opener's check)."""
        fcntl.flock(self.fd, fcntl.LOCK_SH)

    def last(self) -> bool:
        """True when no other connection holds the file open (then this one keeps it; a
        False answer may drop this one's lock: call it only when closing)."""
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def release(self) -> None:
        os.close(self.fd)  # drops the flock


def wal_bytes(path: str) -> int:
    """The size of the file's write-ahead log (0 when there is none)."""
    try:
        return os.path.getsize(path + "-wal")
    except FileNotFoundError:
        return 0


def opened_uncleanly(conn: sqlite3.Connection, wal_left: int) -> bool:
    """Whether the last connection before this one did not close the file cleanly: it left a
    non-empty write-ahead log (`wal_left` bytes; a clean last close removes it), or never
    marked the file closed (a crash, or a file copied while in use). Asked by the first
    opener only, while no other connection can write."""
    if wal_left > 0:
        return True
    row = conn.execute("SELECT value FROM counters WHERE name = ?", (OPEN_COUNTER,)).fetchone()
    return row is not None and row[0] != 0


def mark_open(conn: sqlite3.Connection, is_open: bool) -> None:
    """Record that the file is in use (at the first open) or was closed cleanly (at the
    last close). Best effort: a read-only file or a full disk keeps the old mark."""
    try:
        conn.execute(
            "INSERT INTO counters VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = ?",
            (OPEN_COUNTER, int(is_open), int(is_open)),
        )
    except sqlite3.Error as exc:
        log.debug("could not mark the broker file %s: %s", "open" if is_open else "closed", exc)


def check_at_open(conn: sqlite3.Connection, path: str) -> None:
    """SQLite's `integrity_check`; raises a DatabaseError naming the first problem.

    Not `quick_check`: that one checks each page's structure but not that indexes match their
    tables, and a file copied while in use can have an index that misses rows, so fetches
    would skip records without a word. Both read the whole file, so from disk they cost about
    the same (docs/operations.md)."""
    try:
        rows = [r[0] for r in conn.execute(f"PRAGMA integrity_check({MAX_PROBLEMS})")]
    except sqlite3.DatabaseError as exc:
        if not is_corruption(exc):
            raise storage_error(exc, path) from exc
        rows = [str(exc)]
    if rows != ["ok"]:
        raise DatabaseError(
            f"broker database {path!r} was not closed cleanly and is corrupt ({_summary(rows)}); "
            "restore it from a backup (see docs/operations.md); `streams broker check` "
            "lists the damage"
        )


class CheckReport(NamedTuple):
    problems: list[str]  # empty when the file is healthy
    pages: int
    batches: int
    seconds: float


def check_file(path: str) -> CheckReport:
    """A full check of the broker file at `path`, read-only: SQLite's `integrity_check`
    (pages, b-trees, indexes) and every record batch's CRC. Never modifies the file."""
    if not os.path.isfile(path):
        raise DatabaseError(f"no broker database at {path!r}")
    started = time.perf_counter()
    problems: list[str] = []
    pages = batches = 0
    try:
        conn = sqlite3.connect(f"file:{os.path.abspath(path)}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise storage_error(exc, path) from exc
    try:
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if app_id != APPLICATION_ID or version != SCHEMA_VERSION:
                raise DatabaseError(
                    f"{path!r} is not a streams broker database of schema {SCHEMA_VERSION} "
                    f"(application_id {app_id:#x}, version {version})"
                )
            pages = conn.execute("PRAGMA page_count").fetchone()[0]
            rows = [r[0] for r in conn.execute(f"PRAGMA integrity_check({MAX_PROBLEMS})")]
            if rows != ["ok"]:
                problems.extend(_lines(rows))
            for tp, base, payload in conn.execute("SELECT tp, base_offset, payload FROM batches"):
                batches += 1
                try:
                    decode_batch(payload)
                except DatabaseError as exc:
                    problems.append(f"batch at offset {base} of partition id {tp}: {exc}")
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):  # the disk, a lock: not the file's fault
                raise storage_error(exc, path) from exc
            problems.append(str(exc))
    finally:
        conn.close()
    return CheckReport(problems, pages, batches, time.perf_counter() - started)


class BackupReport(NamedTuple):
    path: str
    pages: int
    bytes: int
    seconds: float


def backup(conn: sqlite3.Connection, source: str, dest: str) -> BackupReport:
    """Copy the broker database open on `conn` to a new file `dest` with SQLite's online
    backup API, in one step: one read transaction, so the copy is the database as of one
    moment (every call committed before it began), while other connections go on writing.
    The copy is a single file (no -wal), checked with `integrity_check`, then renamed into
    place; nothing is left at `dest` when anything fails."""
    if os.path.lexists(dest):
        raise InvalidRequestError(f"{dest!r} exists: give the backup a new path")
    started = time.perf_counter()
    partial = f"{dest}.partial-{os.getpid()}"
    for leftover in (partial, partial + "-journal"):
        if os.path.lexists(leftover):
            os.unlink(leftover)
    try:
        target = sqlite3.connect(partial, isolation_level=None)
        try:
            try:
                conn.backup(target)  # pages=-1: the whole database under one read lock
            except sqlite3.Error as exc:
                raise storage_error(exc, source) from exc
            target.execute("PRAGMA journal_mode = DELETE")  # one self-contained file
            mark_open(target, False)  # fully checked below: opens without a check
            rows = [r[0] for r in target.execute(f"PRAGMA integrity_check({MAX_PROBLEMS})")]
            if rows != ["ok"]:
                raise DatabaseError(f"the backup of {source!r} failed its check: {_summary(rows)}")
            pages = target.execute("PRAGMA page_count").fetchone()[0]
        except sqlite3.Error as exc:
            raise _backup_error(exc, dest) from exc
        finally:
            target.close()
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(partial, dest)
    except BaseException:
        for leftover in (partial, partial + "-journal"):
            if os.path.lexists(leftover):
                os.unlink(leftover)
        raise
    return BackupReport(dest, pages, os.path.getsize(dest), time.perf_counter() - started)


def _backup_error(exc: sqlite3.Error, dest: str) -> StreamsError:
    error = storage_error(exc, dest)
    if isinstance(error, ResourceError):
        return error
    return DatabaseError(f"cannot write the backup {dest!r}: {exc}")


def _lines(rows: list[str]) -> list[str]:
    """SQLite's answer rows as single-line problems (a row may hold several lines)."""
    lines = [line.strip() for row in rows for line in row.splitlines()]
    return [line for line in lines if line and not line.startswith("***")]


def _summary(rows: list[str]) -> str:
    rows = _lines(rows)
    first = rows[0] if rows else "no answer"
    more = len(rows) - 1
    return first if more <= 0 else f"{first}; and {more} more problem{'s' if more > 1 else ''}"
