"""A brute-force model of windowed tables, written from the semantics in
runtime/worker/windows.py (and kafka-semantics.md section 5), for the property tests of
test_windows.py. Obviously correct rather than fast: no heaps, no indexes; every step
re-examines everything.

Times are integer milliseconds. A table partition has one stream time: the largest event time
of the updates it got, advanced before the update is applied. Every update appends the event's
id `n` to the value (a list), so a value shows both which updates a window holds and in which
order they were folded; the count of a window is the length of that list.

    model = Model("hopping", size=1000, step=250, grace=500, expires=500)
    model.update("a", ts=1200, n=0)
    model.live()      # {("a", start_s, end_s): [ids]}
    model.finals      # [("a", start_s, end_s, [ids])], in emission order
    model.dropped     # ids of late updates
"""

from __future__ import annotations

import dataclasses
from typing import Any

Row = tuple[Any, float, float]  # (key, start seconds, end seconds), as run.table() lists rows


@dataclasses.dataclass
class Session:
    start: int
    end: int
    ids: list[int]
    emitted: bool = False


@dataclasses.dataclass(frozen=True)
class SlidingUpdate:
    key: Any
    ts: int
    arrived: int  # stream time when it arrived (after advancing)
    n: int


class Model:
    def __init__(self, kind: str, size: int, step: int, grace: int, expires: int) -> None:
        assert kind in ("tumbling", "hopping", "sliding", "session")
        assert 0 < step <= size and 0 <= grace <= expires
        self.kind, self.size, self.step = kind, size, step
        self.grace, self.expires = grace, expires
        self.st: int | None = None
        self.ids: list[int] = []  # every update, in order
        self.dropped: list[int] = []
        self.finals: list[tuple[Any, float, float, list[int]]] = []
        # tumbling / hopping: live windows (key, start, end) -> ids; every window emitted
        self.windows: dict[tuple[Any, int, int], list[int]] = {}
        self.emitted: set[tuple[Any, int, int]] = set()
        # session: key -> its live sessions
        self.sessions: dict[Any, list[Session]] = {}
        # sliding: every accepted update, in arrival order
        self.updates: list[SlidingUpdate] = []

    def _final(self, key: Any, start: int, end: int, ids: list[int]) -> None:
        self.finals.append((key, start / 1000, end / 1000, list(ids)))

    def update(self, key: Any, ts: int, n: int) -> None:
        self.ids.append(n)
        self.st = ts if self.st is None else max(self.st, ts)
        if self.kind in ("tumbling", "hopping"):
            self._update_time(key, ts, n)
        elif self.kind == "session":
            self._update_session(key, ts, n)
        else:
            self._update_sliding(key, ts, n)

    # --- tumbling and hopping: [start, start + size), starts are multiples of step >= 0 ----

    def _update_time(self, key: Any, ts: int, n: int) -> None:
        st, size, grace = self.st, self.size, self.grace
        assert st is not None
        accepted = False
        lowest = max(0, ts - size + 1)  # start <= ts < start + size, and start >= 0
        for start in range(-(-lowest // self.step) * self.step, ts + 1, self.step):
            end = start + size
            assert start % self.step == 0 and start <= ts < end
            if end + grace > st:
                assert (key, start, end) not in self.emitted  # open windows were not sent
                self.windows.setdefault((key, start, end), []).append(n)
                accepted = True
        if not accepted:
            self.dropped.append(n)
        for (k, start, end), ids in self.windows.items():
            if st >= end + grace and (k, start, end) not in self.emitted:
                self.emitted.add((k, start, end))
                self._final(k, start, end, ids)
        self.windows = {w: ids for w, ids in self.windows.items() if st < w[2] + self.expires}

    # --- sessions: [first, last], merged when an update is within gap of both -------------

    def _update_session(self, key: Any, ts: int, n: int) -> None:
        st, gap, grace = self.st, self.size, self.grace
        assert st is not None
        sessions = self.sessions.setdefault(key, [])
        merged = [s for s in sessions if s.end >= ts - gap and s.start <= ts + gap]
        start = min([ts, *(s.start for s in merged)])
        end = max([ts, *(s.end for s in merged)])
        if end < st - grace - gap or any(st >= s.end + gap + grace + 1 for s in merged):
            self.dropped.append(n)
        else:
            ids: list[int] = []
            for s in sorted(merged, key=lambda s: s.start):
                ids += s.ids
            ids.append(n)
            sessions[:] = [s for s in sessions if s not in merged]
            sessions.append(Session(start, end, ids))
        for k, of_key in self.sessions.items():
            for s in of_key:
                if st >= s.end + gap + grace + 1 and not s.emitted:
                    s.emitted = True
                    self._final(k, s.start, s.end, s.ids)
            of_key[:] = [s for s in of_key if st < s.end + gap + self.expires + 1]

    # --- sliding: [t - d, t] of each update time, [t + 1, t + 1 + d] when followed --------

    def _update_sliding(self, key: Any, ts: int, n: int) -> None:
        st, d, grace = self.st, self.size, self.grace
        assert st is not None
        if ts + d < st - grace:
            self.dropped.append(n)
        else:
            self.updates.append(SlidingUpdate(key, ts, st, n))
        for k, start, end in sorted(self._sliding_candidates(self.updates)):
            if st >= end + grace + 1 and (k, start, end) not in self.emitted:
                ids = self._sliding_value(self.updates, k, start, end)
                if ids is not None:
                    self.emitted.add((k, start, end))
                    self._final(k, start, end, ids)

    def _sliding_candidates(self, updates: list[SlidingUpdate]) -> set[tuple[Any, int, int]]:
        d = self.size
        out = set()
        for u in updates:
            out.add((u.key, u.ts - d, u.ts))
            out.add((u.key, u.ts + 1, u.ts + 1 + d))
        return out

    def _sliding_value(
        self, updates: list[SlidingUpdate], key: Any, start: int, end: int
    ) -> list[int] | None:
        """The ids folded into window [start, end] of `key`, or None if it does not exist:
        it needs a contributing update (inside, arrived before the window closed) and to be
        the left window of a time with a contributing update, or the right window of an
        update time (start - 1)."""
        close_at = end + self.grace + 1
        inside = [
            u for u in updates if u.key == key and start <= u.ts <= end and u.arrived < close_at
        ]
        if not inside:
            return None
        is_left = any(u.ts == end for u in inside)
        is_right = any(u.key == key and u.ts == start - 1 for u in updates)
        if not (is_left or is_right):
            return None
        return [u.n for u in sorted(inside, key=lambda u: (u.ts, u.n))]

    # --- reads -------------------------------------------------------------------------------

    def current(self, key: Any, ts: int) -> list[int] | None:
        """What `table[key].current()` reads right after the update of `key` at `ts`: the
        latest window holding ts (the session holding ts; the sliding window [ts - d, ts]),
        or the default []. None where the model does not say: a sliding window ending at
        ts that this update was too late for."""
        if self.kind in ("tumbling", "hopping"):
            start = ts // self.step * self.step
            return list(self.windows.get((key, start, start + self.size), []))
        if self.kind == "session":
            held = [s for s in self.sessions.get(key, []) if s.start <= ts <= s.end]
            return list(held[0].ids) if held else []
        assert self.st is not None
        if self.st > ts + self.grace:  # not in time for its own left window
            return None
        return self._sliding_value(self.updates, key, ts - self.size, ts) or []

    # --- the live windows -------------------------------------------------------------------

    def live(self) -> dict[Row, list[int]]:
        """{(key, start_s, end_s): ids} of every window not yet removed (closed or not)."""
        st = self.st
        if st is None:
            return {}
        if self.kind in ("tumbling", "hopping"):
            return {(k, s / 1000, e / 1000): list(ids) for (k, s, e), ids in self.windows.items()}
        if self.kind == "session":
            return {
                (k, s.start / 1000, s.end / 1000): list(s.ids)
                for k, of_key in self.sessions.items()
                for s in of_key
            }
        out = {}
        for k, start, end in self._sliding_candidates(self.updates):
            if st >= end + self.expires + 1:
                continue  # expired: removed
            ids = self._sliding_value(self.updates, k, start, end)
            if ids is not None:
                out[(k, start / 1000, end / 1000)] = ids
        return out
