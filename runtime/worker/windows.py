"""Windowed tables: a table whose values live in event-time windows.

    views = app.table("views", default=int).tumbling(60, grace=10).emit_final(to=results)
    views[page] += 1              # every window holding the current event's time
    views[page].current()         # the (latest) window holding it

Each table partition keeps its stream time: the largest event time its updates carried. A
window closes when the stream time passes its end plus grace, and is removed when it passes its
end plus `expires`. The boundaries are Kafka Streams' (kafka-semantics.md section 5):

    kind               window                            closed when stream time
    tumbling/hopping   [start, start + size)             >= end + grace
    sliding (diff d)   [start, end], both inclusive      >  end + grace
    session (gap g)    [first, last] event time          >  end + g + grace

An update at a time whose windows are all closed is late: dropped, counted (`dropped`) and,
if the table has a dead-letter topic, sent there.

Rows in memory are keyed (tag, start, end, key):

    ("w", start, end, key) -> value     a tumbling or hopping window
    ("s", start, end, key) -> value     a session
    ("r", ts, ts, key)     -> [[stream time at arrival, op, operand], ...]
                                        sliding: the updates at ts; a sliding window's value
                                        is folded from the updates inside it that arrived
                                        before it closed (in event-time order)
    ("m", 0, 0, None)      -> [stream time of the partition, ring, step] (below)

In the changelog and the local store a row is keyed by its tag, bounds and key, except a
time window: it is keyed by its key and slot, `(start / step) mod ring`, with its bounds in the
value; `ring` windows of a key are never live at once, so a key's next window in a slot
overwrites its expired one and expiry costs no tombstone. A restore drops rows its stream time
says are expired. A slot a key stops writing gets its tombstone one ring later (`_tombs`);
a window removed before it expires (`del table[key]`) gets one at once. When the ring or step
changes between runs (a new `expires=` or `grace=`), the first commit after the restore
rewrites every window under its new slot and tombstones the old records (`_migration`).

A window closes in the transaction that moves the stream time past it, and its final result
(`emit_to`) is produced in that same transaction: after any crash the restored stream time
says exactly which windows were already sent, so each is sent once.
"""

from __future__ import annotations

import bisect
import collections
import heapq
import itertools
import logging
import operator
import struct
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from runtime.errors import AppError, TableWriteOutsideAgentError
from runtime.types import Event, Record
from runtime.worker.agents import current_agent
from runtime.worker.spec import TableSpec, TopicSpec, WindowSpec
from runtime.worker.tables import MISSING, PARTITION_CACHE_SIZE, TableState
from runtime.worker.windowing import (
    OPS,
    Window,
    WindowResult,
    sliding_fold,
    to_ms,
)

log = logging.getLogger(__name__)

WINDOW, SESSION, UPDATES, META = "w", "s", "r", "m"
META_KEY: tuple[str, int, int, Any] = (META, 0, 0, None)
NO_TIME = -(2**62)  # stream time before any update
_BOUNDS = struct.Struct(">qq")
_SLOT = struct.Struct(">q")

Produce = Callable[..., None]


class _Schedule:
    """What falls due at a stream time: a heap of distinct times and a list per time (all
    the windows of one start close together, so a time window costs no heap operation)."""

    __slots__ = ("due_at", "times")

    def __init__(self) -> None:
        self.times: list[int] = []
        self.due_at: dict[int, list[Any]] = {}

    def add(self, at: int, what: Any) -> None:
        bucket = self.due_at.get(at)
        if bucket is None:
            self.due_at[at] = [what]
            heapq.heappush(self.times, at)
        else:
            bucket.append(what)

    def pop_due(self, st: int) -> list[Any]:
        """Everything due at or before `st`, earliest first."""
        out: list[Any] = []
        while self.times and self.times[0] <= st:
            out.extend(self.due_at.pop(heapq.heappop(self.times)))
        return out


class _Expire:
    """A scheduled removal of a row (the other scheduled items are windows to close)."""

    __slots__ = ("row",)

    def __init__(self, row: Any) -> None:
        self.row = row


class WindowSet:
    """`table[key]` of a windowed table: updates every window of the current event's time;
    reads one window."""

    __slots__ = ("key", "state")

    def __init__(self, state: WindowedState, key: Any) -> None:
        self.state = state
        self.key = key

    def __repr__(self) -> str:
        return f"<WindowSet {self.state.spec.name}[{self.key!r}]>"

    def current(self) -> Any:
        """The value of the window holding the current event's time (the latest one, for
        hopping windows)."""
        state = self.state
        runner = current_agent.get()
        last = state.last_write  # fast path: the window this event just updated
        if runner is not None and last[0] is runner.inbox.current and last[1] is self.key:
            value = last[2].get(last[3], MISSING)
            if value is not MISSING:
                return value
        return state.value_at(self.key, state.event_time(state.current_event()))

    def now(self) -> Any:
        """The value of the window holding the wall-clock time."""
        return self.state.value_at(self.key, round(time.time() * 1000))

    def value(self, at: Any) -> Any:
        """The value of the window holding time `at` (seconds or a datetime)."""
        return self.state.value_at(self.key, to_ms(at, "at="))

    def delta(self, seconds: Any) -> Any:
        """The value of the window holding the current event's time minus `seconds`."""
        ts = self.state.event_time(self.state.current_event())
        return self.state.value_at(self.key, ts - to_ms(seconds, "delta"))


def _in_place(op: str) -> Callable[[WindowSet, Any], WindowSet]:
    """`window_set <op>= operand`: apply `op` to every open window of the key holding the
    current event's time. Every window update runs here (one call: the hot path)."""
    fn = OPS[op]

    def apply(ws: WindowSet, operand: Any) -> WindowSet:
        state, key = ws.state, ws.key
        runner = current_agent.get()
        event = None if runner is None else runner.inbox.current
        if event is None:
            raise TableWriteOutsideAgentError(
                f"windowed table {state.spec.name!r} was written outside an agent: a window "
                "update needs the event being processed (its time picks the windows)"
            )
        ts = event.timestamp if state._timestamp_fn is None else state.event_time(event)
        try:  # fast path, as in TableState.get
            partition = state._placement[key]
            rows = state.partitions[partition]
        except (KeyError, TypeError):
            partition, rows = state._owned(key)
        if state._idle:  # the partition may have been idle: its stream time moved on
            idle_time = state._idle_time(partition, time.monotonic(), due_only=False)
            if idle_time is not None and idle_time > ts:
                state._advance(partition, idle_time)
        st = state.stream_time[partition]
        if ts > st:  # the stream time advances
            if partition not in state._time_undo:
                state._time_undo[partition] = st
            state.stream_time[partition] = st = ts
        if state._idle:
            state._last_update[partition] = (time.monotonic(), st)
        if state._tumbling and ts >= 0:  # fast path: _update_time for one window
            size = state._size
            start = ts - ts % size
            if start + size + state._grace > st:  # open
                row = (WINDOW, start, start + size, key)
                old = rows.get(row, MISSING)
                undo = state.undo.get(partition)
                if undo is None:
                    undo = state.undo[partition] = {}
                undo.setdefault(row, old)
                if old is MISSING:
                    state._due[partition].add(start + size + state._grace, row)
                    old = state._default(op, key)
                rows[row] = fn(old, operand)
                state.last_write = (event, key, rows, row)
            else:
                state._late(event, ts, st)
        elif not state._update_kind(partition, rows, key, ts, st, op, operand):
            state._late(event, ts, st)
        due = state._due[partition].times
        if due and due[0] <= st:
            state._close(partition, st)
        return ws

    apply.__name__ = f"__i{op}__"
    return apply


_IN_PLACE = {op: _in_place(op) for op in OPS}
for _op in OPS:
    if _op != "set":
        setattr(WindowSet, f"__i{_op}__", _IN_PLACE[_op])


class WindowedState(TableState):
    """The working copy of a windowed table's owned partitions (see the module docstring)."""

    def __init__(self, spec: TableSpec) -> None:
        super().__init__(spec)
        assert spec.window is not None
        self.window: WindowSpec = spec.window
        self.stream_time: dict[int, int] = {}
        self._time_undo: dict[int, int] = {}  # partition -> stream time before the cycle
        # per partition: windows to close and rows to remove (_Expire), by stream time
        self._due: dict[int, _Schedule] = {}
        # sessions (rows) and sliding update times per key; time windows need no index
        self._by_key: dict[int, dict[Any, list[Any]]] = {}
        self._pending: dict[int, set[tuple[int, int, Any]]] = {}  # sliding windows queued
        self._last_update: dict[int, tuple[float, int]] = {}  # monotonic time, stream time
        self._timed = self.window.kind in ("tumbling", "hopping")
        self._tumbling = self.window.kind == "tumbling"
        self._size, self._grace = self.window.size, self.window.grace
        self._timestamp_fn = self.window.timestamp
        self._heads: dict[tuple[str, int, int], bytes] = {}  # encoded (tag, start, end)
        # time windows: changelog slots (see the module docstring)
        w = self.window
        self._ring = -(-(w.size + w.expires) // w.step)
        self._ring_ms = self._ring * w.step  # how long a slot waits for its key's next window
        self._slot_heads: dict[int, tuple[bytes, bytes]] = {}  # start -> (key head, bounds)
        # per partition: changelog keys of slots whose window expired and that no later
        # window has written since -> stream time of the expiry; and (when their tombstone
        # is due, key, that stream time), in order. Changed only when a commit succeeds.
        self._stale: dict[int, dict[bytes, int]] = {}
        self._tombs: dict[int, collections.deque[tuple[int, bytes, int]]] = {}
        self._stale_plan: list[tuple[int, int, list[bytes], list[bytes]]] = []
        # while restoring: (key, slot) -> row, and row -> (key, slot), per partition
        self._slot_rows: dict[int, tuple[dict[tuple[Any, int], Any], dict[Any, Any]]] = {}
        self._layout: dict[int, tuple[int, int]] = {}  # (ring, step) restored, while restoring
        # per partition: changelog keys of an older (ring, step) to delete at the next commit,
        # which also writes every window under its present slot (kept until it succeeds)
        self._migration: dict[int, list[bytes]] = {}
        self._key_bytes: dict[Any, bytes] = {}  # encoded keys
        self._idle = self.window.idle_close is not None
        self.produce: Produce | None = None
        # (event, key, rows, row) of the last time-window update: what current() reads
        self.last_write: tuple[Any, Any, Any, Any] = (None, None, None, None)
        self._sets: dict[Any, WindowSet] = {}  # what get() returns, per key
        self.emit_topic: TopicSpec | None = None
        self.dead_letter_topic: TopicSpec | None = None
        self.dropped = 0  # late updates (this process)
        self.emitted = 0  # final results produced (this process, including aborted ones)
        kind = self.window.kind
        self._update_kind = {
            "tumbling": self._update_time,
            "hopping": self._update_time,
            "sliding": self._update_sliding,
            "session": self._update_session,
        }[kind]

    def bind(self, produce: Produce, topics: dict[str, TopicSpec]) -> None:
        """Where final results and late records go (the worker's producer)."""
        self.produce = produce
        self.emit_topic = topics[self.window.emit_to] if self.window.emit_to else None
        dead = self.window.dead_letter
        self.dead_letter_topic = topics[dead] if dead else None

    # --- time ---------------------------------------------------------------------------

    def current_event(self) -> Event:
        runner = current_agent.get()
        event = None if runner is None else runner.inbox.current
        if event is None:
            raise AppError(
                f"windowed table {self.spec.name!r}: there is no current event here (outside "
                "an agent); use .now() or .value(at=...) to read a window"
            )
        return event

    def event_time(self, event: Event) -> int:
        fn = self.window.timestamp
        if fn is None:
            return event.timestamp
        try:
            return to_ms(fn(event.value), "the event time")
        except (TypeError, ValueError) as exc:
            raise AppError(
                f"windowed table {self.spec.name!r}: timestamp= gave a bad time for the event "
                f"at {event.topic}[{event.partition}]@{event.offset}: {exc}"
            ) from exc

    def _close_at(self, start: int, end: int) -> int:
        """The stream time at which a window [start, end] is closed."""
        w = self.window
        if w.kind == "sliding":
            return end + w.grace + 1
        if w.kind == "session":
            return end + w.size + w.grace + 1
        return end + w.grace

    def _expire_at(self, start: int, end: int) -> int:
        return self._close_at(start, end) - self.window.grace + self.window.expires

    def _updates_expire_at(self, ts: int) -> int:
        """Sliding: the updates at `ts` are kept until the last window they define (their
        right window [ts + 1, ts + 1 + d]) has expired."""
        d = self.window.size
        return self._expire_at(ts + 1, ts + 1 + d)

    def _advance(self, partition: int, ts: int) -> int:
        st = self.stream_time[partition]
        if ts > st:
            if partition not in self._time_undo:
                self._time_undo[partition] = st
            self.stream_time[partition] = st = ts
        return st

    # --- writes -------------------------------------------------------------------------

    def update(self, key: Any, op: str, operand: Any) -> None:
        """Apply `op` to every open window of `key` holding the current event's time."""
        _IN_PLACE[op](self.get(key), operand)

    def _write(self, partition: int, rows: dict[Any, Any], row: Any, value: Any) -> None:
        self._remember(partition, rows, row)
        rows[row] = value

    def _remove(self, partition: int, rows: dict[Any, Any], row: Any) -> None:
        self._remember(partition, rows, row)
        del rows[row]
        if self._timed:
            return
        rows_of_key = self._by_key[partition].get(row[3])
        if rows_of_key is not None:
            item = row[1] if row[0] == UPDATES else row
            if item in rows_of_key:
                rows_of_key.remove(item)
            if not rows_of_key:
                del self._by_key[partition][row[3]]

    def _apply(self, op: str, old: Any, operand: Any, key: Any) -> Any:
        return OPS[op](self._default(op, key) if old is MISSING else old, operand)

    def _default(self, op: str, key: Any) -> Any:
        """The value a window starts from (`set` ignores it)."""
        if op == "set":
            return None
        if self.spec.default is None:
            raise KeyError(
                f"windowed table {self.spec.name!r} has no default= for the first "
                f"update of key {key!r}"
            )
        return self.spec.default()

    def _update_time(
        self, partition: int, rows: dict[Any, Any], key: Any, ts: int, st: int, op: str, x: Any
    ) -> bool:
        size, grace, step = self.window.size, self.window.grace, self.window.step
        undo = self.undo.get(partition)
        if undo is None:
            undo = self.undo[partition] = {}
        fn = OPS[op]
        accepted = False
        for start in range(max(0, ts - size + step) // step * step, ts + 1, step):  # windows_for
            end = start + size
            if end + grace <= st:
                continue  # this window is closed
            row = (WINDOW, start, end, key)
            old = rows.get(row, MISSING)
            undo.setdefault(row, old)
            if old is MISSING:
                self._due[partition].add(end + grace, row)
                old = self._default(op, key)
            rows[row] = fn(old, x)
            accepted = True
        return accepted

    def _update_session(
        self, partition: int, rows: dict[Any, Any], key: Any, ts: int, st: int, op: str, x: Any
    ) -> bool:
        gap = self.window.size
        sessions = self._by_key[partition].get(key, [])
        merged = sorted(r for r in sessions if r[2] >= ts - gap and r[1] <= ts + gap)
        start = min([ts, *(r[1] for r in merged)])
        end = max([ts, *(r[2] for r in merged)])
        if end < st - self.window.grace - gap:
            return False
        if any(self._close_at(r[1], r[2]) <= st for r in merged):
            return False  # it would reopen a session whose final result is out
        value: Any = MISSING
        merge = self.window.merge or operator.add
        for row in merged:
            value = rows[row] if value is MISSING else merge(value, rows[row])
        value = self._apply(op, value, x, key)
        new_row = (SESSION, start, end, key)
        for row in merged:
            if row != new_row:
                self._remove(partition, rows, row)
        if new_row not in merged:
            self._due[partition].add(self._close_at(start, end), new_row)
            self._by_key[partition].setdefault(key, []).append(new_row)
        self._write(partition, rows, new_row, value)
        return True

    def _update_sliding(
        self, partition: int, rows: dict[Any, Any], key: Any, ts: int, st: int, op: str, x: Any
    ) -> bool:
        d = self.window.size
        if ts + d < st - self.window.grace:
            return False
        try:
            orjson.dumps(x)
        except TypeError:
            raise TypeError(
                f"sliding windows store each update: its operand must be a JSON value, not "
                f"{type(x).__name__}"
            ) from None
        row = (UPDATES, ts, ts, key)
        old = rows.get(row, MISSING)
        if old is MISSING:
            times = self._by_key[partition].setdefault(key, [])
            bisect.insort(times, ts)
            self._due[partition].add(self._updates_expire_at(ts), _Expire(row))
            self._write(partition, rows, row, [[st, op, x]])
        else:
            times = self._by_key[partition][key]
            self._write(partition, rows, row, [*old, [st, op, x]])
        # windows that now hold an update: ts's left window, the right windows of the
        # updates just before ts, and ts's own right window if later updates exist
        candidates = [(ts - d, ts)]
        low = bisect.bisect_left(times, ts - d - 1)
        for r in times[low : bisect.bisect_left(times, ts)]:
            candidates.append((r + 1, r + 1 + d))
        after = bisect.bisect_right(times, ts)
        if after < len(times) and times[after] <= ts + 1 + d:
            candidates.append((ts + 1, ts + 1 + d))
        self._queue_sliding(partition, key, candidates, st)
        return True

    def _queue_sliding(
        self, partition: int, key: Any, bounds: list[tuple[int, int]], st: int
    ) -> None:
        pending = self._pending[partition]
        for start, end in bounds:
            close_at = self._close_at(start, end)
            what = (start, end, key)
            if close_at > st and what not in pending:
                pending.add(what)
                self._due[partition].add(close_at, what)

    def _late(self, event: Event, ts: int, st: int) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning(
                "windowed table %s: dropped a late update (event time %d ms, stream time %d "
                "ms, grace %d ms) from %s[%d]@%d; %d dropped so far",
                self.spec.name,
                ts,
                st,
                self.window.grace,
                event.topic,
                event.partition,
                event.offset,
                self.dropped,
            )
        topic = self.dead_letter_topic
        if topic is not None and self.produce is not None:
            self.produce(
                topic.name,
                None if event.value is None else topic.value.encode(event.value),
                None if event.key is None else topic.key.encode(event.key),
                timestamp=event.timestamp,
            )

    # --- closing and expiry -------------------------------------------------------------

    def _close(self, partition: int, st: int) -> None:
        """Close every window the stream time passed: send its final result, and remove
        it (or schedule its removal) from the table."""
        rows = self.partitions[partition]
        schedule = self._due[partition]
        if self._timed:
            self._close_timed(partition, rows, schedule, st)
            return
        closed = set()  # a row deleted and re-created is scheduled twice, at the same time
        for what in schedule.pop_due(st):
            if type(what) is _Expire:
                if what.row in rows:
                    self._remove(partition, rows, what.row)
                continue
            if what in closed:
                continue
            closed.add(what)
            if self.window.kind == "sliding":
                self._pending[partition].discard(what)
                start, end, key = what
                value = self._sliding_value(partition, key, start, end)
                if value is not MISSING:
                    self._emit(key, start, end, value)
                continue
            if what not in rows:
                continue  # merged into a larger session
            self._emit(what[3], what[1], what[2], rows[what])
            expire_at = self._expire_at(what[1], what[2])
            if expire_at <= st:
                self._remove(partition, rows, what)
            else:
                schedule.add(expire_at, _Expire(what))

    def _close_timed(
        self, partition: int, rows: dict[Any, Any], schedule: _Schedule, st: int
    ) -> None:
        """_close for time windows: every key's window of a start closes at once (hot)."""
        undo = self.undo.get(partition)
        if undo is None:
            undo = self.undo[partition] = {}
        emit = self.emit_topic is not None and self.produce is not None
        expires = self.window.expires
        closed = set()  # a row deleted and re-created is scheduled twice, at the same time
        for what in schedule.pop_due(st):
            if type(what) is _Expire:
                value = rows.pop(what.row, MISSING)
                if value is not MISSING:
                    undo.setdefault(what.row, value)
                continue
            if what in closed:
                continue
            closed.add(what)
            value = rows.get(what, MISSING)
            if value is MISSING:
                continue
            if emit:
                self._emit(what[3], what[1], what[2], value)
            if what[2] + expires <= st:  # expired (_expire_at)
                undo.setdefault(what, value)
                del rows[what]
            else:
                schedule.add(what[2] + expires, _Expire(what))

    def _emit(self, key: Any, start: int, end: int, value: Any) -> None:
        topic = self.emit_topic
        if topic is None or self.produce is None:
            return
        result = {"key": key, "start": start / 1000, "end": end / 1000, "value": value}
        try:
            data = topic.value.encode(result)
        except TypeError:  # a typed results topic (value_type=streams.WindowResult): same JSON
            data = topic.value.encode(WindowResult(**result))
        self.produce(
            topic.name,
            data,
            None if key is None else topic.key.encode(key),
            timestamp=end,
        )
        self.emitted += 1

    def idle_due(self, now: float) -> bool:
        """Whether some owned partition, idle for `idle_close`, has windows to close now."""
        return any(self._idle_time(p, now) is not None for p in self.partitions)

    def close_idle(self, now: float) -> None:
        """Advance the stream time of idle partitions by the wall-clock time they were idle,
        closing what it passes (the caller has a transaction open)."""
        for partition in list(self.partitions):
            st = self._idle_time(partition, now)
            if st is not None:
                self._advance(partition, st)
                self._close(partition, self.stream_time[partition])

    def _idle_time(self, partition: int, now: float, due_only: bool = True) -> int | None:
        """The stream time of a partition idle for `idle_close` or more: its stream time at
        its last update plus the wall-clock time since. With `due_only`, only if that closes
        some window (else there is nothing to do before the next update)."""
        idle = self.window.idle_close
        if idle is None or partition not in self._last_update:
            return None
        since, st = self._last_update[partition]
        if (now - since) * 1000 < idle or st == NO_TIME:
            return None
        advanced = st + round((now - since) * 1000)
        if not due_only:
            return advanced
        due = self._due[partition].times
        return advanced if due and due[0] <= advanced else None

    # --- reads --------------------------------------------------------------------------

    def value_at(self, key: Any, ts: int) -> Any:
        partition, rows = self._owned(key)
        w = self.window
        value: Any = MISSING
        if w.kind in ("tumbling", "hopping"):
            start = ts // w.step * w.step
            value = rows.get((WINDOW, start, start + w.size, key), MISSING)
        elif w.kind == "session":
            for row in self._by_key[partition].get(key, []):
                if row[1] <= ts <= row[2]:
                    value = rows[row]
        elif self._expire_at(ts - w.size, ts) > self.stream_time[partition]:
            value = self._sliding_value(partition, key, ts - w.size, ts)
        if value is MISSING:
            if self.spec.default is None:
                raise KeyError(key)
            return self.spec.default()
        return value

    def _sliding_value(self, partition: int, key: Any, start: int, end: int) -> Any:
        times = self._by_key[partition].get(key, [])
        rows = self.partitions[partition]
        inside = times[bisect.bisect_left(times, start) : bisect.bisect_right(times, end)]
        entries = [(t, rows[(UPDATES, t, t, key)]) for t in inside]
        default = MISSING if self.spec.default is None else self.spec.default()
        return sliding_fold(entries, start, end, self._close_at(start, end), default)

    def windows(self, key: Any) -> list[Window]:
        """The live windows of `key` (not expired), oldest first."""
        partition, rows = self._owned(key)
        if self.window.kind != "sliding":
            found = sorted(self._rows_of(partition, key))
            return [Window(r[1] / 1000, r[2] / 1000, rows[r]) for r in found]
        out = []
        st = self.stream_time[partition]
        for start, end in self._sliding_windows(partition, key):
            if self._expire_at(start, end) <= st:
                continue  # expired (its updates are kept for later windows)
            value = self._sliding_value(partition, key, start, end)
            if value is not MISSING:
                out.append(Window(start / 1000, end / 1000, value))
        return out

    def _rows_of(self, partition: int, key: Any) -> list[Any]:
        """The rows of `key`: sessions from the index; time windows by trying every start a
        live window can have (few), or by a scan when there are many."""
        if not self._timed:
            return list(self._by_key[partition].get(key, []))
        rows, w = self.partitions[partition], self.window
        st = self.stream_time[partition]
        lowest = max(0, st - w.size - w.expires + 1)
        starts = range((lowest + w.step - 1) // w.step * w.step, st + 1, w.step)
        if len(starts) > 10_000:
            return [r for r in rows if r[3] == key and r[0] == WINDOW]
        return [r for s in starts if (r := (WINDOW, s, s + w.size, key)) in rows]

    def _keys(self, partition: int) -> list[Any]:
        if self._timed:
            return list(dict.fromkeys(r[3] for r in self.partitions[partition]))
        return list(self._by_key[partition])

    def _sliding_windows(self, partition: int, key: Any) -> list[tuple[int, int]]:
        """Bounds of the sliding windows of `key` that may hold updates: each update time's
        left window, and the right window of each update followed by another within d."""
        d = self.window.size
        times = self._by_key[partition].get(key, [])
        rows = self.partitions[partition]
        bounds = {  # a left window exists if the update at its end was in time for it
            (t - d, t)
            for t in times
            if any(at < self._close_at(t - d, t) for at, _, _ in rows[(UPDATES, t, t, key)])
        }
        for t, later in itertools.pairwise(times):
            if later <= t + 1 + d:
                bounds.add((t + 1, t + 1 + d))
        return sorted(bounds)

    def get(self, key: Any, default: Any = MISSING) -> Any:
        """`table[key]`: the key's WindowSet (an unowned key fails when it is used)."""
        try:
            return self._sets[key]
        except KeyError:
            if len(self._sets) >= PARTITION_CACHE_SIZE:
                self._sets.clear()
            window_set = self._sets[key] = WindowSet(self, key)
            return window_set
        except TypeError:
            return WindowSet(self, key)  # unhashable: fails when it is used

    def contains(self, key: Any) -> bool:
        partition, _ = self._owned(key)
        return bool(self._rows_of(partition, key))

    def set(self, key: Any, value: Any) -> None:
        if isinstance(value, WindowSet):
            if value.key == key and value.state is self:
                return  # `table[key] += 1`: the in-place operator already applied it
            raise TypeError("assign a value to a window, not another key's windows")
        self.update(key, "set", value)

    def delete(self, key: Any) -> None:
        partition, rows = self._owned(key)
        found = self._rows_of(partition, key)
        if not found:
            raise KeyError(key)
        for item in found:
            row = (UPDATES, item, item, key) if self.window.kind == "sliding" else item
            self._remove(partition, rows, row)

    def items(self) -> Iterator[tuple[Any, Any]]:
        """((key, start, end), value) of every live window, bounds in seconds."""
        for partition in self.partitions:
            for key in self._keys(partition):
                for w in self.windows(key):
                    yield (key, w.start, w.end), w.value

    def __len__(self) -> int:
        return sum(1 for _ in self.items())

    # --- the commit cycle ---------------------------------------------------------------

    def encoded_changes(self) -> Iterator[tuple[int, bytes, bytes | None]]:
        encode_row, encode_value = self._encode_row, self.spec.value.encode
        slot_heads, key_bytes = self._slot_heads, self._key_bytes
        size, expires, ring_ms = self.window.size, self.window.expires, self._ring_ms
        self._stale_plan = plan = []
        for partition, undo in self.undo.items():  # TableState.changes(), inlined: hot
            rows = self.partitions.get(partition)
            if rows is None:
                continue
            st = self.stream_time[partition]
            stale = self._stale[partition]
            expired: list[bytes] = []  # slots whose window expired this cycle
            written: list[bytes] = []  # slots stale before this cycle, written again
            for row, before in undo.items():
                after = rows.get(row, MISSING)
                tag, start, end, key = row
                if tag == WINDOW:  # keyed by slot (the module docstring)
                    head = slot_heads.get(start)
                    if head is None:
                        head = self._slot_head(start, end)
                    kb = key_bytes.get(key)
                    slot_key = head[0] + (self._encode_key(key) if kb is None else kb)
                    if after is not MISSING:
                        if slot_key in stale:
                            written.append(slot_key)
                        yield partition, slot_key, head[1] + encode_value(after)
                    elif before is MISSING:
                        continue  # created and removed in this cycle: never written
                    elif end + expires <= st:  # expired: no tombstone (see _sweep)
                        later = start + ring_ms  # the next window in its slot, if written
                        if (WINDOW, later, later + size, key) not in rows:
                            expired.append(slot_key)
                    else:
                        yield partition, slot_key, None  # deleted before it expired
                elif after is MISSING:
                    if before is not MISSING:
                        yield partition, encode_row(row), None
                elif tag == UPDATES:
                    yield partition, encode_row(row), orjson.dumps(after)
                else:
                    yield partition, encode_row(row), encode_value(after)
            plan.append((partition, 0, expired, written))
        for partition in self._migration:
            yield from self._migrate(partition)
        for partition, before in self._time_undo.items():
            now = self.stream_time.get(partition)
            if now is not None and now != before and partition not in self._migration:
                yield partition, self._encode_row(META_KEY), self._meta(now)
        yield from self._sweep()

    def _meta(self, st: int) -> bytes:
        return orjson.dumps([st, self._ring, self.window.step])

    def _migrate(self, partition: int) -> Iterator[tuple[int, bytes, Any]]:
        """The records that move a partition restored with another (ring, step) to the
        present one: every window under its slot, tombstones for the old keys, the layout;
        none for a key the cycle's own records have (each key once per commit)."""
        rows, encode_value = self.partitions[partition], self.spec.value.encode
        seen = {self._slot_key(row)[0] for row in self.undo.get(partition, ()) if row[0] == WINDOW}
        for row, value in rows.items():
            if row[0] == WINDOW:
                slot_key, bounds = self._slot_key(row)
                if slot_key not in seen:
                    seen.add(slot_key)
                    yield partition, slot_key, bounds + encode_value(value)
        for old_key in self._migration[partition]:
            if old_key not in seen:
                seen.add(old_key)
                yield partition, old_key, None
        yield partition, self._encode_row(META_KEY), self._meta(self.stream_time[partition])

    def _sweep(self) -> Iterator[tuple[int, bytes, None]]:
        """Tombstones for slots no window has written for a ring since their window
        expired (a key that went idle); planned, and forgotten once the commit succeeds."""
        written_now = {
            k for _, _, expired, written in self._stale_plan for k in (*expired, *written)
        }
        for partition, tombs in self._tombs.items():
            st = self.stream_time[partition]
            stale = self._stale[partition]
            due = 0
            for at, slot_key, since in tombs:
                if at > st:
                    break
                due += 1
                if stale.get(slot_key) == since and slot_key not in written_now:
                    yield partition, slot_key, None
            if due:
                self._stale_plan.append((partition, due, [], []))

    def _slot_key(self, row: Any) -> tuple[bytes, bytes]:
        """A time window's changelog key and its encoded bounds (encoded_changes inlines
        this: hot)."""
        head = self._slot_heads.get(row[1]) or self._slot_head(row[1], row[2])
        key_bytes = self._key_bytes.get(row[3])
        return head[0] + (self._encode_key(row[3]) if key_bytes is None else key_bytes), head[1]

    def _slot_head(self, start: int, end: int) -> tuple[bytes, bytes]:
        """A time window's changelog key prefix (tag and slot) and its encoded bounds."""
        if len(self._slot_heads) > 10_000:
            self._slot_heads.clear()
        slot = start // self.window.step % self._ring
        head = self._slot_heads[start] = (b"w" + _SLOT.pack(slot), _BOUNDS.pack(start, end))
        return head

    def _encode_row(self, row: Any) -> bytes:
        tag, start, end, key = row
        head = self._heads.get((tag, start, end))
        if head is None:
            if len(self._heads) > 10_000:
                self._heads.clear()
            head = self._heads[(tag, start, end)] = tag.encode() + _BOUNDS.pack(start, end)
        if tag == META:
            return head
        key_bytes = self._key_bytes.get(key)
        return head + (self._encode_key(key) if key_bytes is None else key_bytes)

    def _encode_key(self, key: Any) -> bytes:
        key_bytes = bytes(self.spec.key.encode(key))
        if len(self._key_bytes) > 200_000:
            self._key_bytes.clear()
        self._key_bytes[key] = key_bytes
        return key_bytes

    def committed(self) -> None:
        super().committed()
        self._time_undo.clear()
        self._migration.clear()
        for partition, swept, expired, written in self._stale_plan:
            stale, tombs = self._stale.get(partition), self._tombs.get(partition)
            if stale is None or tombs is None:
                continue
            for _ in range(swept):
                _, slot_key, since = tombs.popleft()
                if stale.get(slot_key) == since:
                    del stale[slot_key]
            st = self.stream_time[partition]
            for slot_key in expired:
                stale[slot_key] = st
                tombs.append((st + self._ring_ms, slot_key, st))
            for slot_key in written:
                stale.pop(slot_key, None)
        self._stale_plan = []

    def rollback(self) -> None:
        super().rollback()
        self._stale_plan = []
        for partition, before in self._time_undo.items():
            if partition in self.stream_time:
                self.stream_time[partition] = before
        self._time_undo.clear()
        for partition in self.partitions:
            self._reindex(partition)

    # --- assignment and restore ---------------------------------------------------------

    def attach(self, partition: int, rows: dict[bytes, bytes]) -> None:
        self.partitions[partition] = {}
        self.stream_time[partition] = NO_TIME
        self._stale[partition], self._tombs[partition] = {}, collections.deque()
        self._slot_rows[partition] = ({}, {})  # until restored()
        self._apply_rows(partition, rows.items())
        self._reindex(partition)

    def apply_changelog(self, partition: int, records: list[Record]) -> None:
        """Replay changelog records; `restored()` rebuilds the indexes once at the end."""
        self._apply_rows(partition, ((r.key, r.value) for r in records if r.key is not None))

    def restored(self, partition: int) -> None:
        self._reindex(partition, restored=True)

    def _apply_rows(self, partition: int, rows: Any) -> None:
        table = self.partitions[partition]
        decode_key, decode_value = self.spec.key.decode, self.spec.value.decode
        slots, owner = self._slot_rows[partition]  # a window record replaces its slot's window
        for key_bytes, value_bytes in rows:
            tag = key_bytes[:1].decode()
            if tag == META:
                if value_bytes is not None:
                    meta = orjson.loads(value_bytes)
                    self.stream_time[partition], ring, step = meta
                    self._layout[partition] = (ring, step)
                continue
            if tag == WINDOW:
                (slot,) = _SLOT.unpack_from(key_bytes, 1)
                key = decode_key(key_bytes[9:])
                replaced = slots.pop((key, slot), None)
                if replaced is not None:
                    del table[replaced], owner[replaced]
                if value_bytes is not None:
                    start, end = _BOUNDS.unpack_from(value_bytes)
                    row = slots[(key, slot)] = (WINDOW, start, end, key)
                    moved = owner.get(row)  # the window had another slot (another layout)
                    if moved is not None:
                        del slots[moved]
                    owner[row] = (key, slot)
                    table[row] = decode_value(value_bytes[16:])
                continue
            start, end = _BOUNDS.unpack_from(key_bytes, 1)
            row = (tag, start, end, decode_key(key_bytes[17:]))
            if value_bytes is None:
                table.pop(row, None)
            elif tag == UPDATES:
                table[row] = orjson.loads(value_bytes)
            else:
                table[row] = decode_value(value_bytes)

    def _reindex(self, partition: int, restored: bool = False) -> None:
        """Rebuild the partition's indexes from its rows and stream time (after a restore
        or an abort): nothing in them is state of its own. After a restore, time windows
        that have expired are dropped, their slots stale (see the module docstring), and a
        partition written with another layout is moved to the present one."""
        rows = self.partitions[partition]
        st = self.stream_time[partition]
        due = self._due[partition] = _Schedule()
        by_key: dict[Any, list[Any]] = {}
        self._by_key[partition], self._pending[partition] = by_key, set()
        expired = []
        for row in rows:
            tag, start, end, key = row
            if tag == UPDATES:
                bisect.insort(by_key.setdefault(key, []), start)
                due.add(self._updates_expire_at(start), _Expire(row))
                continue
            if not self._timed:
                by_key.setdefault(key, []).append(row)
            if self._close_at(start, end) > st:
                due.add(self._close_at(start, end), row)
            elif restored and self._timed and self._expire_at(start, end) <= st:
                expired.append(row)
            else:  # closed (its result is out): kept for reads until it expires
                due.add(self._expire_at(start, end), _Expire(row))
        if restored:
            self._slot_rows.pop(partition, None)
        layout = self._layout.pop(partition, None) if restored else None
        migrating = False
        if self._timed and layout is not None and layout != (self._ring, self.window.step):
            self._plan_migration(partition, layout)  # the old keys of every window, expired too
            migrating = True
        stale, tombs = self._stale[partition], self._tombs[partition]
        for row in expired:
            del rows[row]
            if not migrating:
                slot_key = self._slot_key(row)[0]
                stale[slot_key] = st
                tombs.append((st + self._ring_ms, slot_key, st))
        if expired and not migrating:
            self._tombs[partition] = collections.deque(sorted(tombs, key=operator.itemgetter(0)))
        if self.window.kind == "sliding":
            for key in by_key:
                self._queue_sliding(partition, key, self._sliding_windows(partition, key), st)
        self._last_update[partition] = (time.monotonic(), st)

    def _plan_migration(self, partition: int, layout: tuple[int, int]) -> None:
        """The partition was written with another (ring, step): the next commit tombstones
        its windows' old keys and rewrites the live ones under their present slots."""
        ring, step = layout
        self._migration[partition] = [
            b"w" + _SLOT.pack(row[1] // step % ring) + self._encode_key(row[3])
            for row in self.partitions[partition]
            if row[0] == WINDOW
        ]
        log.info(
            "windowed table %s[%d]: restored with ring %d / step %d ms, now %d / %d: its "
            "windows move to their new changelog slots at the next commit",
            self.spec.name,
            partition,
            ring,
            step,
            self._ring,
            self.window.step,
        )

    def detach(self, partition: int) -> None:
        super().detach(partition)
        for index in (
            self.stream_time,
            self._time_undo,
            self._due,
            self._by_key,
            self._pending,
            self._last_update,
            self._stale,
            self._tombs,
            self._slot_rows,
            self._layout,
            self._migration,
        ):
            index.pop(partition, None)
