"""The partitioned log: topics, appends, fetches, offsets by time, retention and compaction.

Every method runs inside a transaction its caller (`Broker`) opened; none commits. The log is a
sequence of record batches per partition; offsets are contiguous (control markers take one),
except where compaction removed records.

    base = log.append(tp_id, keys, values, timestamps, None, pid, epoch, seq, DATA, now)
    records, next_offset = log.read(tp, tp_id, offset, end, max_records, committed=True)
"""

from __future__ import annotations

import re
import sqlite3
import struct
from collections.abc import Sequence
from itertools import repeat
from typing import NamedTuple

from runtime.broker.codec import DecodedBatch, decode_batch, encode_batch
from runtime.broker.schema import ABORT_MARKER, ABORTED, COMMIT_MARKER, DATA, TXN
from runtime.errors import (
    InvalidPartitionsError,
    InvalidRequestError,
    InvalidTopicError,
    OffsetOutOfRangeError,
    PartitionOutOfRangeError,
    TopicExistsError,
    UnknownTopicError,
)
from runtime.types import Headers, Record, TopicDescription, TopicPartition

TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
MAX_PARTITIONS = 10_000
HIDDEN_KINDS = (ABORTED, COMMIT_MARKER, ABORT_MARKER)
MARKER_KEY = struct.Struct(">hh")  # (version 0, type: 0 = ABORT, 1 = COMMIT), as Kafka's
COMPACT_MIN_DIRTY_BYTES = 1 << 20

_new_record = tuple.__new__


class Topic(NamedTuple):
    id: int
    name: str
    partitions: int
    compacted: bool
    retention_ms: int | None
    retention_bytes: int | None
    delete_retention_ms: int
    tp_ids: tuple[int, ...]


class StoredBatch(NamedTuple):
    """One stored batch with its producer fields and decoded columns (for a server that
    hands batches on as they are, e.g. the Kafka protocol's Fetch)."""

    base_offset: int
    last_offset: int
    pid: int
    epoch: int
    base_seq: int
    kind: int
    batch: DecodedBatch | None  # None for a control marker
    size: int  # bytes of the stored payload


class Log:
    """Topic metadata and record batches of one broker database."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self._topics: dict[str, Topic] = {}
        self._topics_version = -1

    def refresh(self) -> None:
        """Drop cached topic metadata if any connection changed topics since it was read."""
        row = self.conn.execute("SELECT value FROM counters WHERE name = 'topics'").fetchone()
        version = 0 if row is None else row[0]
        if version != self._topics_version:
            self._topics.clear()
            self._topics_version = version

    def _topics_changed(self) -> None:
        self.conn.execute(
            "INSERT INTO counters VALUES ('topics', 1)"
            " ON CONFLICT (name) DO UPDATE SET value = value + 1"
        )
        self._topics.clear()

    # --- topics -------------------------------------------------------------------------

    def create_topic(
        self,
        name: str,
        partitions: int,
        compacted: bool,
        retention_ms: int | None,
        retention_bytes: int | None,
        delete_retention_ms: int,
        now: int,
    ) -> Topic:
        if not isinstance(name, str) or not TOPIC_NAME.match(name) or name in (".", ".."):
            raise InvalidTopicError(
                f"invalid topic name {name!r}: use 1-249 characters of [A-Za-z0-9._-]"
            )
        if type(partitions) is not int or not 1 <= partitions <= MAX_PARTITIONS:
            raise InvalidPartitionsError(
                f"partitions must be an integer from 1 to {MAX_PARTITIONS}, not {partitions!r}"
            )
        limits = (("retention_ms", retention_ms), ("retention_bytes", retention_bytes))
        for label, setting in limits:
            if setting is not None and (type(setting) is not int or setting <= 0):
                raise InvalidRequestError(f"{label} must be a positive integer or None")
        if type(delete_retention_ms) is not int or delete_retention_ms < 0:
            raise InvalidRequestError("delete_retention_ms must be a non-negative integer")
        if not isinstance(compacted, bool):
            raise InvalidRequestError(f"compacted must be True or False, not {compacted!r}")
        if self.conn.execute("SELECT 1 FROM topics WHERE name = ?", (name,)).fetchone():
            raise TopicExistsError(f"topic {name!r} already exists")
        cursor = self.conn.execute(
            "INSERT INTO topics (name, partitions, compacted, retention_ms, retention_bytes,"
            " delete_retention_ms, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                name,
                partitions,
                int(compacted),
                retention_ms,
                retention_bytes,
                delete_retention_ms,
                now,
            ),
        )
        topic_id = cursor.lastrowid
        self.conn.executemany(
            "INSERT INTO partitions (topic_id, partition) VALUES (?, ?)",
            [(topic_id, p) for p in range(partitions)],
        )
        self._topics_changed()
        return self.topic(name)

    def delete_topic(self, name: str) -> Topic:
        topic = self.topic(name)
        marks = ",".join("?" * len(topic.tp_ids))
        for table in ("batches", "sequences", "txn_partitions"):
            column = "tp"
            self.conn.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", topic.tp_ids)
        self.conn.execute("DELETE FROM partitions WHERE topic_id = ?", (topic.id,))
        self.conn.execute("DELETE FROM topics WHERE id = ?", (topic.id,))
        self.conn.execute("DELETE FROM offsets WHERE topic = ?", (name,))
        self.conn.execute("DELETE FROM txn_offsets WHERE topic = ?", (name,))
        self._topics_changed()
        return topic

    def topic(self, name: str) -> Topic:
        """The topic called `name`, from a cache checked against the database by callers that
        touch its partitions (a deleted and re-created topic gets new partition ids)."""
        cached = self._topics.get(name)
        if cached is not None:
            return cached
        if not isinstance(name, str):
            raise InvalidRequestError(f"topic must be a string, not {type(name).__name__}")
        row = self.conn.execute(
            "SELECT id, name, partitions, compacted, retention_ms, retention_bytes,"
            " delete_retention_ms FROM topics WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            raise UnknownTopicError(f"unknown topic {name!r}: create it first")
        tp_ids = tuple(
            r[0]
            for r in self.conn.execute(
                "SELECT id FROM partitions WHERE topic_id = ? ORDER BY partition", (row[0],)
            )
        )
        topic = Topic(row[0], row[1], row[2], bool(row[3]), row[4], row[5], row[6], tp_ids)
        self._topics[name] = topic
        return topic

    def forget(self) -> None:
        """Drop cached topic metadata (another connection deleted or re-created a topic, or
        a transaction that read or changed it was rolled back)."""
        self._topics.clear()
        self._topics_version = -1

    def topics(self) -> list[TopicDescription]:
        rows = self.conn.execute(
            "SELECT name, partitions, compacted, retention_ms, retention_bytes FROM topics"
            " ORDER BY name"
        ).fetchall()
        return [TopicDescription(r[0], r[1], bool(r[2]), r[3], r[4]) for r in rows]

    def tp_id(self, topic: str, partition: int) -> int:
        """The row id of a topic partition, validated."""
        info = self.topic(topic)
        if type(partition) is not int or not 0 <= partition < info.partitions:
            raise PartitionOutOfRangeError(
                f"partition {partition!r} out of range for topic {topic!r} "
                f"({info.partitions} partitions: 0..{info.partitions - 1})"
            )
        return info.tp_ids[partition]

    def offsets(self, tp_id: int) -> tuple[int, int, int]:
        """(log start, high watermark, bytes) of a partition."""
        row = self.conn.execute(
            "SELECT log_start, next_offset, bytes FROM partitions WHERE id = ?", (tp_id,)
        ).fetchone()
        if row is None:
            self._topics.clear()
            raise UnknownTopicError("the topic was deleted by another client")
        return row[0], row[1], row[2]

    def offsets_and_last_stable(self, tp_id: int) -> tuple[int, int, int]:
        """(log start, high watermark, last stable offset) of a partition in one statement
        (a fetch's per-partition look-up; the same values as `offsets` and `last_stable`)."""
        row = self.conn.execute(
            "SELECT log_start, next_offset,"
            " (SELECT min(first_offset) FROM txn_partitions WHERE tp = ?1)"
            " FROM partitions WHERE id = ?1",
            (tp_id,),
        ).fetchone()
        if row is None:
            self._topics.clear()
            raise UnknownTopicError("the topic was deleted by another client")
        return row[0], row[1], row[1] if row[2] is None else row[2]

    def last_stable(self, tp_id: int, high_watermark: int) -> int:
        row = self.conn.execute(
            "SELECT min(first_offset) FROM txn_partitions WHERE tp = ?", (tp_id,)
        ).fetchone()
        return high_watermark if row[0] is None else row[0]

    # --- append -------------------------------------------------------------------------

    def append(
        self,
        tp_id: int,
        keys: Sequence[bytes | None],
        values: Sequence[bytes | None],
        timestamps: Sequence[int],
        headers: Sequence[Headers | None] | None,
        pid: int,
        epoch: int,
        base_seq: int,
        kind: int,
        now: int,
    ) -> int:
        """Write one batch at the end of the partition; returns its base offset."""
        try:
            payload = encode_batch(keys, values, timestamps, headers)
        except (TypeError, ValueError, OverflowError, AttributeError) as exc:
            raise InvalidRequestError(
                f"records must have bytes or None keys and values, int timestamps and "
                f"[(str, bytes)] headers: {exc}"
            ) from exc
        base = self.offsets(tp_id)[1]
        count = len(values)
        self.conn.execute(
            "INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                tp_id,
                base,
                base + count - 1,
                count,
                pid,
                epoch,
                base_seq,
                kind,
                max(timestamps),
                now,
                payload,
            ),
        )
        self.conn.execute(
            "UPDATE partitions SET next_offset = ?, bytes = bytes + ? WHERE id = ?",
            (base + count, len(payload), tp_id),
        )
        return base

    def append_marker(self, tp_id: int, pid: int, epoch: int, commit: bool, now: int) -> int:
        key = MARKER_KEY.pack(0, 1 if commit else 0)
        kind = COMMIT_MARKER if commit else ABORT_MARKER
        return self.append(tp_id, [key], [None], [now], None, pid, epoch, -1, kind, now)

    def mark_aborted(self, tp_id: int, pid: int, first_offset: int) -> None:
        self.conn.execute(
            "UPDATE batches SET kind = ? WHERE tp = ? AND base_offset >= ? AND pid = ?"
            " AND kind = ?",
            (ABORTED, tp_id, first_offset, pid, TXN),
        )

    # --- read ---------------------------------------------------------------------------

    def read(
        self,
        tp: TopicPartition,
        tp_id: int,
        offset: int,
        end: int,
        max_records: int,
        committed: bool,
    ) -> tuple[list[Record], int]:
        """Records from `offset` up to `end` (exclusive), at most `max_records`; and the offset
        to read from next. Control batches, and under `committed` aborted batches, are skipped
        but advance the position."""
        records: list[Record] = []
        position = offset
        topic, partition = tp
        rows = self.conn.execute(
            "SELECT base_offset, last_offset, kind, payload FROM batches WHERE tp = ?1"
            " AND base_offset >= coalesce((SELECT max(base_offset) FROM batches"
            " WHERE tp = ?1 AND base_offset <= ?2), 0) AND base_offset < ?3"
            " ORDER BY base_offset",
            (tp_id, offset, end),
        )
        for base, last, kind, payload in rows:
            if last < position:
                continue
            if kind >= COMMIT_MARKER or (committed and kind == ABORTED):
                position = last + 1
                continue
            keys, values, timestamps, headers, deltas = decode_batch(payload)
            offsets = (
                range(base, base + len(values)) if deltas is None else [base + d for d in deltas]
            )
            start = 0 if position <= base else _first_at_or_after(offsets, position)
            count = len(values)
            stop = min(count, start + max_records - len(records))
            chosen = offsets
            if start or stop < count:
                chosen, keys, values = offsets[start:stop], keys[start:stop], values[start:stop]
                timestamps = timestamps[start:stop]
                headers = None if headers is None else headers[start:stop]
            # one Record per record, built at C level (no Python frame per record)
            records.extend(
                map(
                    _new_record,
                    repeat(Record),
                    zip(
                        repeat(topic),
                        repeat(partition),
                        chosen,
                        keys,
                        values,
                        timestamps,
                        repeat(None) if headers is None else headers,
                    ),
                )
            )
            if stop < count:
                position = offsets[stop]
                break
            position = last + 1
            if len(records) >= max_records:
                break
        else:
            position = max(position, end) if end > offset else position
        return records, position

    def read_batches(
        self, tp_id: int, offset: int, end: int, max_bytes: int, committed: bool
    ) -> list[StoredBatch]:
        """Whole batches holding offsets from `offset` up to `end` (exclusive), at least one
        visible batch and then up to `max_bytes` of payload. Under `committed`, batches of
        aborted transactions are left out (the control marker after them still advances a
        reader past them)."""
        rows = self.conn.execute(
            "SELECT base_offset, last_offset, pid, epoch, base_seq, kind, payload FROM batches"
            " WHERE tp = ?1 AND base_offset >= coalesce((SELECT max(base_offset) FROM batches"
            " WHERE tp = ?1 AND base_offset <= ?2), 0) AND base_offset < ?3"
            " ORDER BY base_offset",
            (tp_id, offset, end),
        )
        out: list[StoredBatch] = []
        total = 0
        for base, last, pid, epoch, seq, kind, payload in rows:
            if last < offset or (committed and kind == ABORTED):
                continue
            if out and total + len(payload) > max_bytes:
                break
            decoded = None if kind >= COMMIT_MARKER else decode_batch(payload)
            out.append(StoredBatch(base, last, pid, epoch, seq, kind, decoded, len(payload)))
            total += len(payload)
        return out

    def check_offset(self, tp: TopicPartition, offset: int, log_start: int, hw: int) -> None:
        if type(offset) is not int or not log_start <= offset <= hw:
            raise OffsetOutOfRangeError(
                f"offset {offset!r} out of range for {tp.topic}[{tp.partition}]: "
                f"valid offsets are {log_start}..{hw}"
            )

    def offset_for_time(self, tp_id: int, timestamp: int) -> int | None:
        """First offset whose record timestamp is >= `timestamp`, or None."""
        rows = self.conn.execute(
            "SELECT base_offset, payload FROM batches WHERE tp = ? AND max_ts >= ?"
            " AND kind IN (?, ?, ?) ORDER BY base_offset",
            (tp_id, timestamp, DATA, TXN, ABORTED),
        )
        for base, payload in rows:
            _, _, timestamps, _, deltas = decode_batch(payload)
            for i, ts in enumerate(timestamps):
                if ts >= timestamp:
                    return int(base) + (i if deltas is None else deltas[i])
        return None

    def delete_before(self, tp: TopicPartition, tp_id: int, offset: int) -> int:
        """Move the log start to `offset` (at most the high watermark), deleting the batches
        wholly below it (Kafka's DeleteRecords); returns the new log start."""
        log_start, hw, _ = self.offsets(tp_id)
        if type(offset) is not int or offset > hw or offset < 0:
            raise OffsetOutOfRangeError(
                f"cannot delete records of {tp.topic}[{tp.partition}] before {offset!r}: "
                f"the high watermark is {hw}"
            )
        if offset <= log_start:
            return log_start
        self.conn.execute("DELETE FROM batches WHERE tp = ? AND last_offset < ?", (tp_id, offset))
        self.conn.execute(
            "UPDATE partitions SET log_start = ?, bytes = (SELECT coalesce(sum(length(payload)),"
            " 0) FROM batches WHERE tp = ?) WHERE id = ?",
            (offset, tp_id, tp_id),
        )
        return offset

    # --- retention and compaction -------------------------------------------------------

    def enforce_retention(self, topic: Topic, now: int) -> int:
        """Delete whole batches older than retention_ms, or beyond retention_bytes, from the
        start of each partition (never past the LSO). Returns the number of batches deleted."""
        deleted = 0
        for tp_id in topic.tp_ids:
            _, hw, size = self.offsets(tp_id)
            lso = self.last_stable(tp_id, hw)
            rows = self.conn.execute(
                "SELECT last_offset, max_ts, length(payload) FROM batches"
                " WHERE tp = ? AND base_offset < ? ORDER BY base_offset",
                (tp_id, lso),
            ).fetchall()
            drop_until = None
            for last, max_ts, length in rows:
                too_old = topic.retention_ms is not None and max_ts < now - topic.retention_ms
                too_big = topic.retention_bytes is not None and size > topic.retention_bytes
                if not (too_old or too_big):
                    break
                size -= length
                drop_until = last + 1
                deleted += 1
            if drop_until is not None:
                self.conn.execute(
                    "DELETE FROM batches WHERE tp = ? AND base_offset < ?", (tp_id, drop_until)
                )
                self.conn.execute(
                    "UPDATE partitions SET log_start = ?, bytes = ? WHERE id = ?",
                    (drop_until, size, tp_id),
                )
        return deleted

    def compact(self, topic: Topic, now: int, force: bool = False) -> int:
        """Keep only the latest record per key below the LSO of each partition; tombstones
        older than delete_retention_ms go too, as do aborted records and markers. Offsets of
        the records kept do not change. Returns the number of records removed."""
        removed = 0
        for tp_id in topic.tp_ids:
            _, hw, size = self.offsets(tp_id)
            clean = self.conn.execute(
                "SELECT value FROM counters WHERE name = ?", (f"clean_bytes:{tp_id}",)
            ).fetchone()
            if not force and size < max(COMPACT_MIN_DIRTY_BYTES, 2 * (clean[0] if clean else 0)):
                continue
            removed += self._compact_partition(
                tp_id, self.last_stable(tp_id, hw), now - topic.delete_retention_ms
            )
        return removed

    def _compact_partition(self, tp_id: int, end: int, tombstone_cutoff: int) -> int:
        rows = self.conn.execute(
            "SELECT base_offset, kind, append_ms, payload FROM batches"
            " WHERE tp = ? AND base_offset < ? ORDER BY base_offset",
            (tp_id, end),
        ).fetchall()
        latest: dict[bytes | None, int] = {}
        decoded: list[tuple[int, int, DecodedBatch | None]] = []
        for base, kind, append_ms, payload in rows:
            if kind in HIDDEN_KINDS:
                decoded.append((base, append_ms, None))
                continue
            batch = decode_batch(payload)
            for key, delta in zip(batch[0], batch[4] or range(len(batch[1])), strict=True):
                latest[key] = base + delta
            decoded.append((base, append_ms, batch))
        removed = 0
        for base, append_ms, kept in decoded:
            if kept is None:
                self.conn.execute(
                    "DELETE FROM batches WHERE tp = ? AND base_offset = ?", (tp_id, base)
                )
                continue
            keys, values, timestamps, headers, deltas = kept
            offsets = [base + d for d in (deltas or range(len(values)))]
            live_tombstones = append_ms > tombstone_cutoff
            keep = [
                i
                for i, off in enumerate(offsets)
                if latest[keys[i]] == off and (values[i] is not None or live_tombstones)
            ]
            if len(keep) == len(values):
                continue
            removed += len(values) - len(keep)
            if not keep:
                self.conn.execute(
                    "DELETE FROM batches WHERE tp = ? AND base_offset = ?", (tp_id, base)
                )
                continue
            payload = encode_batch(
                [keys[i] for i in keep],
                [values[i] for i in keep],
                [timestamps[i] for i in keep],
                None if headers is None else [headers[i] for i in keep],
                [offsets[i] - offsets[keep[0]] for i in keep],
            )
            first = offsets[keep[0]]
            self.conn.execute(
                "UPDATE batches SET base_offset = ?, count = ?, payload = ?"
                " WHERE tp = ? AND base_offset = ?",
                (first, len(keep), payload, tp_id, base),
            )
        total = self.conn.execute(
            "SELECT coalesce(sum(length(payload)), 0) FROM batches WHERE tp = ?", (tp_id,)
        ).fetchone()[0]
        self.conn.execute("UPDATE partitions SET bytes = ? WHERE id = ?", (total, tp_id))
        self.conn.execute(
            "INSERT OR REPLACE INTO counters VALUES (?, ?)", (f"clean_bytes:{tp_id}", total)
        )
        return removed


def _first_at_or_after(offsets: Sequence[int], position: int) -> int:
    for i, off in enumerate(offsets):
        if off >= position:
            return i
    return len(offsets)
