"""Faults of the disk under a broker file, for tests: a disk that fills up, a read-only file.

A full disk is a real one where the test may mount (a small tmpfs, filled with a filler file
that is deleted when "space returns"); elsewhere (CI without mount) the same fault is raised
by SQLite itself, through `PRAGMA max_page_count` on the broker's connection (SQLITE_FULL).

    with small_disk(tmp_path / "disk") as disk:
        broker = Broker(str(disk.path / "app.db"))
        disk.fill(broker)      # the next writes fail with SQLITE_FULL
        disk.free(broker)      # and succeed again
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

from runtime.broker import Broker

ROOT = Path(__file__).resolve().parents[1]
MARGIN = 48 * 1024  # what a filled disk keeps free: a few small writes fit, a burst does not


# Without a mount, child processes see a full disk through this sitecustomize: while the flag
# file exists, every write transaction's COMMIT fails as SQLite fails it on a full disk
# (SQLITE_FULL, "database or disk is full"), after which the broker rolls back.
_FULL_DISK_SITE = """
import os
import sqlite3

_flag = os.environ["STREAMS_TEST_DISK_FULL"]
_connect = sqlite3.connect


class _Connection(sqlite3.Connection):
    writing = False

    def execute(self, sql, *args):
        verb = sql.strip().upper() if isinstance(sql, str) else ""
        if verb.startswith("BEGIN"):
            self.writing = verb != "BEGIN"
        elif verb == "COMMIT" and self.writing and os.path.exists(_flag):
            self.writing = False
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode = sqlite3.SQLITE_FULL
            error.sqlite_errorname = "SQLITE_FULL"
            raise error
        return super().execute(sql, *args)


def connect(database, *args, **kwargs):
    kwargs.setdefault("factory", _Connection)
    return _connect(database, *args, **kwargs)


sqlite3.connect = connect
"""


class SmallDisk:
    def __init__(self, path: Path, mounted: bool, scratch: Path) -> None:
        self.path = path
        self.mounted = mounted  # a real tmpfs; else SQLite's max_page_count stands in for it
        self._filler = path / "filler"
        self._flag = scratch / "disk-full"
        self.env: dict[str, str] = {}  # for child processes that must see this disk fill up
        if not mounted:
            scratch.mkdir(parents=True, exist_ok=True)
            (scratch / "sitecustomize.py").write_text(_FULL_DISK_SITE)
            self.env = {
                "STREAMS_TEST_DISK_FULL": str(self._flag),
                "PYTHONPATH": f"{scratch}{os.pathsep}{ROOT}",
            }

    def fill(self, broker: Broker | None = None, margin: int = MARGIN) -> None:
        """Leave about `margin` bytes for the broker file to grow into (without a mount: in
        `broker`'s connection and in child processes run with `env`)."""
        if self.mounted:
            chunk = b"\0" * 65536
            with open(self._filler, "ab") as handle:
                try:  # others write meanwhile: fill in steps, until the margin or no space
                    while (room := shutil.disk_usage(self.path).free - margin) > 0:
                        handle.write(chunk[: min(room, len(chunk))])
                        handle.flush()
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
            return
        self._flag.touch()
        if broker is not None:
            pages = broker.conn.execute("PRAGMA page_count").fetchone()[0]
            page_size = broker.conn.execute("PRAGMA page_size").fetchone()[0]
            broker.conn.execute(f"PRAGMA max_page_count = {pages + margin // page_size}")

    def free(self, broker: Broker | None = None) -> None:
        """Space returns."""
        if self.mounted:
            self._filler.unlink()
            return
        self._flag.unlink()
        if broker is not None:
            broker.conn.execute("PRAGMA max_page_count = 4294967294")


def _try_mount(path: Path, size_kb: int) -> bool:
    """Mount a tmpfs (root only); STREAMS_TEST_NO_MOUNT=1 tries the fallback here too."""
    if os.environ.get("STREAMS_TEST_NO_MOUNT") or os.geteuid() != 0 or not shutil.which("mount"):
        return False
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


@contextlib.contextmanager
def small_disk(path: Path, size_kb: int = 2048) -> Iterator[SmallDisk]:
    """A directory on a file system of `size_kb` KiB where possible (see the module doc)."""
    path.mkdir(parents=True)
    mounted = _try_mount(path, size_kb)
    try:
        yield SmallDisk(path, mounted, path.parent / f"{path.name}-site")
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


_READ_ONLY_SITE = """
import os
import sqlite3

_connect = sqlite3.connect
_target = os.path.abspath(os.environ["STREAMS_TEST_READ_ONLY"])


def connect(database, *args, **kwargs):
    if isinstance(database, str) and os.path.abspath(database) == _target:
        database, kwargs["uri"] = f"file:{_target}?mode=ro", True
    return _connect(database, *args, **kwargs)


sqlite3.connect = connect
"""


@contextlib.contextmanager
def read_only(path: Path, scratch: Path) -> Iterator[dict[str, str]]:
    """Make the file at `path` read-only for child processes run with the environment
    additions yielded: by its mode bits; as root (whom they do not stop) by the immutable
    attribute; where that is not allowed either, SQLite opens it read-only (mode=ro, through
    a sitecustomize in `scratch`), which fails writes the same way (SQLITE_READONLY)."""
    mode = path.stat().st_mode
    path.chmod(0o444)
    env: dict[str, str] = {}
    immutable = False
    if os.access(path, os.W_OK):  # root
        chattr = subprocess.run(["chattr", "+i", str(path)], capture_output=True, check=False)
        immutable = chattr.returncode == 0
        if not immutable:
            scratch.mkdir(parents=True, exist_ok=True)
            (scratch / "sitecustomize.py").write_text(_READ_ONLY_SITE)
            env = {
                "STREAMS_TEST_READ_ONLY": str(path),
                "PYTHONPATH": f"{scratch}{os.pathsep}{ROOT}",
            }
    try:
        yield env
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(mode)


def corrupt_a_table_page(path: Path, table: str) -> None:
    """Overwrite the root page of `table` (a b-tree page SQLite's checks walk) with garbage,
    in a file no connection holds open."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        (root,) = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,))
    finally:
        conn.close()
    with open(path, "r+b") as handle:
        handle.seek((root[0] - 1) * page_size)
        handle.write(bytes(range(7, 256)) * (page_size // 249) + b"\x07" * (page_size % 249))


def _varint(data: bytes | bytearray, at: int) -> tuple[int, int]:
    value = 0
    for k in range(9):
        byte = data[at + k]
        if k == 8:
            return (value << 8) | byte, at + 9
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + k + 1
    raise AssertionError("unreachable")


def stale_index_entry(path: Path) -> None:
    """Make the last entry of the `batches` primary-key index name an offset one past its
    row's, as a file copied while in use can have: every page stays well formed (SQLite's
    quick_check passes), but the index no longer matches its table. The index must fit in
    its root page (a small file) and the offset in one byte."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        (root,) = conn.execute(
            "SELECT rootpage FROM sqlite_master WHERE name = 'sqlite_autoindex_batches_1'"
        ).fetchone()
    finally:
        conn.close()
    data = bytearray(path.read_bytes())
    page = (root - 1) * page_size
    assert data[page] == 0x0A, "the index is more than one leaf page"
    cells = int.from_bytes(data[page + 3 : page + 5], "big")
    pointer = page + 8 + 2 * (cells - 1)
    _, header = _varint(data, page + int.from_bytes(data[pointer : pointer + 2], "big"))
    header_size, at = _varint(data, header)
    tp_type, at = _varint(data, at)
    offset_type, _ = _varint(data, at)
    assert offset_type == 1 and tp_type in (1, 8, 9), (tp_type, offset_type)
    value_at = header + header_size + (1 if tp_type == 1 else 0)
    assert data[value_at] < 127
    data[value_at] += 1
    path.write_bytes(bytes(data))
