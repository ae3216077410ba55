"""Windowed tables: tumbling, hopping, sliding and session windows against a brute-force model
(tests/streams/window_reference.py), the window edges of kafka-semantics.md section 5 and
section 6 item 11, final results exactly once across crashes, expiry, and bad declarations."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import os
import random
import struct
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import streams
from runtime.transport import connect
from runtime.worker import STEPS
from runtime.worker.windowing import Window
from tests.streams.window_reference import Model

KEYS = ["a", "b", "c"]


# --- helpers ------------------------------------------------------------------------------------


def declare(
    table: streams.Table, kind: str, size: int, step: int, grace: int, expires: int, **options: Any
) -> streams.Table:
    """Give `table` windows; times in ms here, in seconds for the API."""
    s = lambda ms: ms / 1000  # noqa: E731
    if kind == "tumbling":
        return table.tumbling(s(size), grace=s(grace), expires=s(expires), **options)
    if kind == "hopping":
        return table.hopping(s(size), s(step), grace=s(grace), expires=s(expires), **options)
    if kind == "sliding":
        return table.sliding(s(size), grace=s(grace), expires=s(expires), **options)
    return table.session(s(size), grace=s(grace), expires=s(expires), **options)


def model_app(kind: str, size: int, step: int, grace: int, expires: int) -> streams.App:
    """Events {"k": key, "n": id} update two tables with the same windows: `counts`
    (`+= 1`) and `seen` (`+= [n]`, late events to the topic `late`); both emit final results.
    After each update the agent yields what seen[k].current() reads to the topic `reads`."""
    app = streams.App(f"win-{kind}", default_partitions=1)
    events = app.topic("events", partitions=1)
    counts = declare(app.table("counts", default=int), kind, size, step, grace, expires)
    counts.emit_final(to=app.topic("count-finals", partitions=1))
    seen = declare(
        app.table("seen", default=list), kind, size, step, grace, expires, dead_letter="late"
    )
    seen.emit_final(to=app.topic("seen-finals", partitions=1))

    @app.stream(events, sink=[app.topic("reads", partitions=1)])
    async def update(stream: streams.Stream) -> Any:
        async for event in stream:
            counts[event["k"]] += 1
            seen[event["k"]] += [event["n"]]
            yield {"n": event["n"], "current": seen[event["k"]].current()}

    return app


async def send_timed(run: Any, topic: str, records: list[tuple[Any, Any, int]]) -> None:
    """Send (key, value, timestamp ms) records in one batch."""
    declared = run.app.topics[topic]
    producer = run.transport.producer()
    for key, value, ts in records:
        key_bytes, value_bytes = declared.encode(key, value)
        producer.produce(declared.name, value_bytes, key_bytes, timestamp=ts)
    await producer.close()


def finals(events: list[streams.Event]) -> list[tuple[Any, float, float, Any]]:
    out = []
    for e in events:
        assert e.key == e.value["key"]
        out.append((e.value["key"], e.value["start"], e.value["end"], e.value["value"]))
    return out


def multiset(rows: list[tuple[Any, float, float, Any]]) -> collections.Counter[Any]:
    return collections.Counter(
        (k, s, e, tuple(v) if isinstance(v, list) else v) for k, s, e, v in rows
    )


# --- property tests against the model -----------------------------------------------------------

RESTARTS = ["none", "none", "restart", "crash", "abort"]  # what happens after each batch


@st.composite
def scenarios(draw: Any, kind: str) -> dict[str, Any]:
    """A window declaration and a stream of events (ms), with late, out-of-order and
    duplicate times, cut into batches; after a batch the worker may be restarted, crash
    halfway through the next batch, or have the commit of the next batch fail (and redo
    it). `unit` 125 ms gives sub-second hops (size 1 s, step 0.25 s, ...); `unit` 1 ms puts
    many events on and next to window edges."""
    unit = draw(st.sampled_from([1, 1, 125]))
    size_u = draw(st.integers(1, 8))
    step_u = draw(st.integers(1, size_u)) if kind == "hopping" else size_u
    grace_u = draw(st.integers(0, 6))
    expires_u = grace_u + draw(st.sampled_from([0, 0, 1, 3, 8]))
    keys = KEYS[: draw(st.integers(1, 3))]
    if draw(st.booleans()):  # a random walk: mostly forward, sometimes back
        steps = draw(st.lists(st.integers(-(size_u + grace_u + 2), size_u + 1), max_size=30))
        times, now = [], draw(st.integers(0, size_u))
        for delta in steps:
            now = max(0, now + delta)
            times.append(now)
    else:
        times = draw(st.lists(st.integers(0, 4 * size_u + 2 * grace_u + 4), max_size=30))
    jitter = st.sampled_from([0, 0, 0, -1, 1]) if unit > 1 else st.just(0)
    base = draw(st.sampled_from([0, 0, 1_700_000_000_000]))  # near 0, or epoch-like times
    events = [(draw(st.sampled_from(keys)), base + max(0, t * unit + draw(jitter))) for t in times]
    cuts = sorted(draw(st.lists(st.integers(0, len(events)), max_size=3)))
    return {
        "kind": kind,
        "size": size_u * unit,
        "step": step_u * unit,
        "grace": grace_u * unit,
        "expires": expires_u * unit,
        "events": events,
        "cuts": cuts,
        "restarts": draw(st.lists(st.sampled_from(RESTARTS), min_size=4, max_size=4)),
    }


class Runs:
    """Test runs of one app on one in-memory broker, restarted or crashed at will (the
    state store is in memory too: a new run restores the tables from the changelogs)."""

    def __init__(self, app: streams.App) -> None:
        self.app = app
        self.broker = f"memory://{app.id}-{uuid.uuid4().hex}"
        self.holder = connect(self.broker)  # keeps the broker alive between runs
        self.run: Any = None

    async def start(self, **settings: Any) -> Any:
        self.run = self.app.testing(broker=self.broker, **settings)
        await self.run.start()
        return self.run

    async def close(self, clean: bool = True) -> None:
        try:
            if self.run is not None and self.run.worker.started:
                await self.run.stop(clean=clean)
        finally:
            await self.holder.close()

    async def __aenter__(self) -> Runs:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        await self.close(clean=exc is None)


class FailNextCommit:
    """A fault hook that, once armed, fails the next commit with a StreamsError: the worker
    aborts it, rolls its tables back and goes on (the test drains again)."""

    def __init__(self) -> None:
        self.armed = False

    def __call__(self, at: str) -> None:
        if self.armed and at == "after_changelog":
            self.armed = False
            raise streams.StreamsError("injected commit failure")


async def check_against_model(sc: dict[str, Any]) -> None:
    kind, size, step, grace, expires = (sc[k] for k in ("kind", "size", "step", "grace", "expires"))
    app = model_app(kind, size, step, grace, expires)
    model = Model(kind, size, step, grace, expires)
    events = [(key, {"k": key, "n": n}, ts) for n, (key, ts) in enumerate(sc["events"])]
    bounds = [0, *sc["cuts"], len(events)]
    fault = FailNextCommit()
    options = {"commit_interval": 3600, "max_poll_records": 4, "fault": fault}
    async with Runs(app) as runs:
        run = await runs.start(**options)
        dropped_before: int | None = 0  # `dropped` counts this run's drops (None: replays)
        currents: list[list[int] | None] = []  # what current() reads after each update
        for i, (lo, hi) in enumerate(itertools.pairwise(bounds)):
            batch = events[lo:hi]
            await send_timed(run, "events", batch)
            action = sc["restarts"][i]
            if action == "crash":  # process part of the batch, then die before committing
                await run.worker.poll(timeout=0.01)
                await run.stop(clean=False)
                run = await runs.start(**options)
                dropped_before = len(model.dropped)
            if action == "abort" and batch:  # the batch's commit fails: redone at once
                fault.armed = True
                with pytest.raises(streams.StreamsError, match="injected"):
                    await run.drain()
                dropped_before = None
            await run.drain()
            for key, value, ts in batch:
                model.update(key, ts, value["n"])
                currents.append(model.current(key, ts))
            if action == "restart":
                await run.stop()
                run = await runs.start(**options)
                await run.drain()
                dropped_before = len(model.dropped)
            live = model.live()
            assert run.table("seen") == live
            assert run.table("counts") == {w: len(ids) for w, ids in live.items()}
            if dropped_before is not None:
                assert app.tables["seen"].dropped == len(model.dropped) - dropped_before
                assert app.tables["counts"].dropped == len(model.dropped) - dropped_before
        seen_finals = finals(await run.read("seen-finals"))
        count_finals = finals(await run.read("count-finals"))
        late = [e.value["n"] for e in await run.read("late")]
        reads = [e.value for e in await run.read("reads")]
    assert [r["n"] for r in reads] == list(range(len(events)))  # once each, in order
    for read, current in zip(reads, currents, strict=True):
        if current is not None:
            assert read["current"] == current, read["n"]
    assert multiset(seen_finals) == multiset(model.finals)
    assert multiset(count_finals) == multiset(
        [(k, s, e, len(ids)) for k, s, e, ids in model.finals]
    )
    assert late == model.dropped


SLIDING_2MS = {
    "kind": "sliding",
    "size": 2,
    "step": 2,
    "grace": 0,
    "expires": 0,
    "cuts": [],
    "restarts": ["none"] * 4,
}

PROPERTY = settings(  # STREAMS_PROPERTY_EXAMPLES=500 for a longer search
    max_examples=int(os.environ.get("STREAMS_PROPERTY_EXAMPLES", "50")),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@PROPERTY
@given(scenarios("tumbling"))
def test_tumbling_windows_match_the_model(sc: dict[str, Any]) -> None:
    asyncio.run(check_against_model(sc))


@PROPERTY
@given(scenarios("hopping"))
def test_hopping_windows_match_the_model(sc: dict[str, Any]) -> None:
    asyncio.run(check_against_model(sc))


@PROPERTY
@given(scenarios("sliding"))
@example(  # a window listed that does not exist (see the sliding edge tests below)
    {**SLIDING_2MS, "events": [("a", 0), ("a", 2), ("a", 1)]}
)
@example(  # a right window never sent (see the sliding edge tests below)
    {**SLIDING_2MS, "events": [("a", 0), ("b", 3), ("a", 2), ("b", 4)]}
)
@example(  # a right window lost by a restart (see the sliding edge tests below)
    {
        **SLIDING_2MS,
        "events": [("a", 0), ("a", 1), ("b", 3), ("b", 4)],
        "cuts": [3],
        "restarts": ["restart", "none", "none", "none"],
    }
)
def test_sliding_windows_match_the_model(sc: dict[str, Any]) -> None:
    asyncio.run(check_against_model(sc))


@PROPERTY
@given(scenarios("session"))
def test_session_windows_match_the_model(sc: dict[str, Any]) -> None:
    asyncio.run(check_against_model(sc))


# --- deterministic edges (kafka-semantics.md section 5, section 6 item 11) ---------------------


def edge_app(
    configure: Callable[[streams.Table], Any],
    *,
    partitions: int = 1,
    delta: float = 1.0,
    app_id: str = "win-edge",
) -> tuple[streams.App, streams.Table]:
    """Events {"k": key, "n": id} do `t[k] += [n]` on the table `t` that `configure`
    windows (topics `finals` and `late` are declared for it); the agent yields what
    t[k].current() and t[k].delta(delta) read after the update to the topic `reads`."""
    app = streams.App(app_id, default_partitions=partitions)
    events = app.topic("events", partitions=partitions)
    app.topic("finals", partitions=partitions)
    app.topic("late", partitions=partitions)
    table = app.table("t", default=list)
    configure(table)

    @app.stream(events, sink=[app.topic("reads", partitions=partitions)])
    async def agent(stream: streams.Stream) -> Any:
        async for event in stream:
            table[event["k"]] += [event["n"]]
            window = table[event["k"]]
            yield {"n": event["n"], "current": window.current(), "delta": window.delta(delta)}

    return app, table


class Feeder:
    """`await feed(("a", 999), ("b", 1500))`: send events (key, event time ms) with the next
    ids 0, 1, 2... and drain."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self.n = 0

    async def __call__(self, *events: tuple[Any, int]) -> None:
        batch = []
        for key, ts in events:
            batch.append((key, {"k": key, "n": self.n}, ts))
            self.n += 1
        await send_timed(self.run, "events", batch)
        await self.run.drain()


async def test_tumbling_end_is_exclusive_and_closes_the_window() -> None:
    """ts = end - 1 is in [start, end); ts = end starts the next window and, with grace 0,
    moves the stream time to end + grace: the first window closes (one final result)."""
    app, t = edge_app(lambda t: t.tumbling(1, expires=5).emit_final(to="finals"))
    async with app.testing() as run:
        feed = Feeder(run)
        await feed(("a", 999))
        assert t.windows("a") == [Window(0.0, 1.0, [0])]
        assert await run.read("finals") == []
        await feed(("a", 1000))
        assert t.windows("a") == [Window(0.0, 1.0, [0]), Window(1.0, 2.0, [1])]
        assert finals(await run.read("finals")) == [("a", 0.0, 1.0, [0])]
        assert run.table("t") == {("a", 0.0, 1.0): [0], ("a", 1.0, 2.0): [1]}
        assert t.dropped == 0


async def test_grace_accepts_at_end_plus_grace_minus_one_and_drops_at_end_plus_grace() -> None:
    """Window [0, 1 s), grace 0.5 s: an update of it is accepted at stream time 1499 and
    dropped at 1500, where the window closes; the dropped event goes to the dead letter."""
    app, t = edge_app(
        lambda t: t.tumbling(1, grace=0.5, dead_letter="late").emit_final(to="finals")
    )
    async with app.testing() as run:
        feed = Feeder(run)
        await feed(("a", 100), ("b", 1499), ("a", 200))  # ids 0, 1, 2
        assert t.windows("a") == [Window(0.0, 1.0, [0, 2])]
        assert await run.read("finals") == []
        await feed(("b", 1500))  # id 3: stream time 1500 = end + grace
        assert finals(await run.read("finals")) == [("a", 0.0, 1.0, [0, 2])]
        await feed(("a", 300))  # id 4: late
        assert t.dropped == 1
        assert [e.value["n"] for e in await run.read("late")] == [4]
        assert t.windows("a") == []  # closed and (expires = grace) removed
        assert t.windows("b") == [Window(1.0, 2.0, [1, 3])]
        assert len(await run.read("finals")) == 1


async def test_hopping_update_is_dropped_only_when_no_window_takes_it() -> None:
    """Hopping 1 s / 0.5 s, grace 0: at stream time 1000 window [0, 1) is closed, [0.5, 1.5)
    is open. An update at 800 still goes to [0.5, 1.5); one at 400 (whose only window with a
    start >= 0 is [0, 1)) is dropped."""
    app, t = edge_app(lambda t: t.hopping(1, 0.5, dead_letter="late").emit_final(to="finals"))
    async with app.testing() as run:
        feed = Feeder(run)
        await feed(("a", 700))  # 0: [0, 1) and [0.5, 1.5)
        assert t.windows("a") == [Window(0.0, 1.0, [0]), Window(0.5, 1.5, [0])]
        await feed(("b", 1000))  # 1: closes [0, 1)
        assert finals(await run.read("finals")) == [("a", 0.0, 1.0, [0])]
        await feed(("a", 800), ("a", 400))  # 2: accepted by [0.5, 1.5); 3: dropped
        assert t.windows("a") == [Window(0.5, 1.5, [0, 2])]
        assert t.dropped == 1
        assert [e.value["n"] for e in await run.read("late")] == [3]


async def test_sub_second_hops_put_an_event_in_size_over_step_windows() -> None:
    """Size 1 s, step 0.1 s: an event at 5 s is in the 10 windows starting 4.1 s ... 5.0 s;
    an event at 0.05 s is only in [0, 1) (no window starts before 0)."""
    app, t = edge_app(lambda t: t.hopping(1, 0.1, expires=1))
    async with app.testing() as run:
        feed = Feeder(run)
        await feed(("b", 50))
        assert t.windows("b") == [Window(0.0, 1.0, [0])]
        await feed(("a", 5000), ("c", 5150))
        assert t.windows("a") == [
            Window(s / 1000, (s + 1000) / 1000, [1]) for s in range(4100, 5001, 100)
        ]
        assert len(t.windows("c")) == 10
        assert t.windows("c")[0].start == 4.2 and t.windows("c")[-1].start == 5.1
        assert t.dropped == 0


async def test_stream_time_is_per_table_partition() -> None:
    """A late stream time in one partition does not close the windows of another."""
    from runtime.partitioner import partition_for_key

    def key_in(partition: int) -> str:
        return next(
            k
            for k in (f"key-{i}" for i in range(1000))
            if partition_for_key(orjson.dumps(k), 2) == partition
        )

    x, y = key_in(0), key_in(1)
    app, t = edge_app(lambda t: t.tumbling(1).emit_final(to="finals"), partitions=2)
    async with app.testing() as run:
        feed = Feeder(run)
        await feed((x, 100), (y, 10_000))
        assert await run.read("finals") == []  # partition 0's stream time is still 100
        await feed((x, 200))  # partition 0's stream time is 200: accepted
        assert t.windows(x) == [Window(0.0, 1.0, [0, 2])]
        await feed((x, 1000))
        assert finals(await run.read("finals")) == [(x, 0.0, 1.0, [0, 2])]
        assert t.dropped == 0


async def test_session_merges_exactly_at_the_gap_and_not_one_ms_beyond() -> None:
    """Gap 1 s: events at 0 and 1000 share a session [0, 1]; at 0 and 1001 they do not."""
    app, t = edge_app(lambda t: t.session(1, expires=10).emit_final(to="finals"))
    async with app.testing() as run:
        feed = Feeder(run)
        await feed(("a", 0), ("a", 1000), ("b", 0), ("b", 1001))
        assert t.windows("a") == [Window(0.0, 1.0, [0, 1])]
        assert t.windows("b") == [Window(0.0, 0.0, [2]), Window(1.001, 1.001, [3])]
        # closed when stream time > end + gap + grace: b's [0, 0] at 1001 already
        assert finals(await run.read("finals")) == [("b", 0.0, 0.0, [2])]
        await feed(("c", 2000))  # 4: closes nothing ([0, 1] closes at 2001)
        assert len(await run.read("finals")) == 1
        await feed(("c", 2001))  # 5
        assert sorted(finals(await run.read("finals"))) == [
            ("a", 0.0, 1.0, [0, 1]),
            ("b", 0.0, 0.0, [2]),
        ]


async def test_a_bridging_event_merges_two_sessions_in_start_order() -> None:
    """Sessions [0, 0] and [2, 2] (gap 1 s) are both within the gap of an event at 1 s: it
    merges them into [0, 2], values combined with `+` in start order, then updated."""
    app, t = edge_app(lambda t: t.session(1, grace=5).emit_final(to="finals"))
    async with app.testing() as run:
        feed = Feeder(run)
        await feed(("a", 2000), ("a", 0))  # 0, 1: two sessions
        assert t.windows("a") == [Window(0.0, 0.0, [1]), Window(2.0, 2.0, [0])]
        await feed(("a", 1000))  # 2: bridges them
        assert t.windows("a") == [Window(0.0, 2.0, [1, 0, 2])]
        await feed(("b", 2000 + 1000 + 5000 + 1))  # past end + gap + grace
        assert finals(await run.read("finals")) == [("a", 0.0, 2.0, [1, 0, 2])]


async def test_session_merge_function_combines_merged_values() -> None:
    """merge= replaces `+` when sessions merge (here: max of the counts, then += 1)."""
    app = streams.App("win-merge", default_partitions=1)
    events = app.topic("events", partitions=1)
    t = app.table("t", default=int).session(1, grace=5, merge=max)

    @app.stream(events)
    async def agent(stream: streams.Stream) -> None:
        async for event in stream:
            t[event["k"]] += event["v"]

    async with app.testing() as run:
        await send_timed(
            run,
            "events",
            [
                ("a", {"k": "a", "v": 5}, 0),
                ("a", {"k": "a", "v": 7}, 2000),
                ("a", {"k": "a", "v": 1}, 1000),
            ],
        )
        await run.drain()
        assert run.table("t") == {("a", 0.0, 2.0): 8}  # max(5, 7) + 1, not 5 + 7 + 1


async def test_session_late_rules() -> None:
    """Gap 1 s, grace 0, expires 5 s. Dropped: an update whose merged session ends before
    stream time - grace - gap, and one that would merge into a closed session (its final
    result is out). Accepted: a new session within the gap of nothing."""
    app, t = edge_app(lambda t: t.session(1, expires=5, dead_letter="late").emit_final(to="finals"))
    async with app.testing() as run:
        feed = Feeder(run)
        await feed(("a", 0), ("b", 1001))  # 0, 1: a's [0, 0] closes at 1001 (kept 5 s)
        assert finals(await run.read("finals")) == [("a", 0.0, 0.0, [0])]
        await feed(("a", 1000))  # 2: would merge with the closed [0, 0]: dropped
        await feed(("c", 0))  # 3: ends at 0 < 1001 - 0 - 1000 = 1: dropped
        await feed(("c", 1))  # 4: ends at 1 >= 1: a new session
        assert [e.value["n"] for e in await run.read("late")] == [2, 3]
        assert t.dropped == 2
        assert t.windows("a") == [Window(0.0, 0.0, [0])]
        assert t.windows("c") == [Window(0.001, 0.001, [4])]


async def test_sliding_left_and_right_windows() -> None:
    """Difference 1 s: updates at 0 and 500 make the left windows [-1, 0] and [-0.5, 0.5]
    and the right window [0.001, 1.001] of 0 (it holds 500). A right window of t that is
    also the left window of t + 1 + d is one window; at t + 2 + d there is no right window."""
    app, t = edge_app(lambda t: t.sliding(1, expires=10).emit_final(to="finals"))
    async with app.testing() as run:
        feed = Feeder(run)
        await feed(("a", 0), ("a", 500))
        assert t.windows("a") == [
            Window(-1.0, 0.0, [0]),
            Window(-0.5, 0.5, [0, 1]),
            Window(0.001, 1.001, [1]),
        ]
        await feed(("b", 10_000), ("b", 11_001))
        assert t.windows("b") == [Window(9.0, 10.0, [2]), Window(10.001, 11.001, [3])]
        await feed(("c", 20_000), ("c", 21_002))
        assert t.windows("c") == [Window(19.0, 20.0, [4]), Window(20.002, 21.002, [5])]
        await feed(("d", 30_000))  # closes them all
        assert multiset(finals(await run.read("finals"))) == multiset(
            [
                ("a", -1.0, 0.0, [0]),
                ("a", -0.5, 0.5, [0, 1]),
                ("a", 0.001, 1.001, [1]),
                ("b", 9.0, 10.0, [2]),
                ("b", 10.001, 11.001, [3]),
                ("c", 19.0, 20.0, [4]),
                ("c", 20.002, 21.002, [5]),
            ]
        )


async def test_sliding_window_closes_only_after_end_plus_grace() -> None:
    """Sliding windows include their end: closed when stream time > end + grace."""
    app, t = edge_app(lambda t: t.sliding(1, grace=0.5).emit_final(to="finals"))
    async with app.testing() as run:
        feed = Feeder(run)
        await feed(("a", 1000), ("b", 1500))  # a's [0, 1] closes at 1501
        assert await run.read("finals") == []
        await feed(("a", 500))  # 2: stream time 1500: still in time for [0, 1]
        by_bounds = {(w.start, w.end): w.value for w in t.windows("a")}
        assert by_bounds[(0.0, 1.0)] == [2, 0]  # folded in event-time order
        await feed(("b", 1501))
        assert finals(await run.read("finals")) == [("a", 0.0, 1.0, [2, 0])]


async def test_sliding_lists_no_window_its_end_update_was_too_late_for() -> None:
    """d 1 s, grace 0. a@0, then stream time 1000, then a@500: accepted (500 + d >= 1000)
    but too late for its own left window [-0.5, 0.5] (closed at 501), so that window does not
    exist: it is neither emitted nor listed, although a@0 lies inside it. a@500 does land in
    the right window [0.001, 1.001] of 0 (open until 1002)."""
    app, t = edge_app(lambda t: t.sliding(1).emit_final(to="finals"))
    async with app.testing() as run:
        feed = Feeder(run)
        await feed(("a", 0), ("b", 1000), ("a", 500))
        await feed(("c", 10_000))
        assert multiset(finals(await run.read("finals"))) == multiset(
            [("a", -1.0, 0.0, [0]), ("a", 0.001, 1.001, [2]), ("b", 0.0, 1.0, [1])]
        )
    app, t = edge_app(lambda t: t.sliding(1, expires=5), app_id="win-edge-phantom")
    async with app.testing() as run:
        feed = Feeder(run)
        await feed(("a", 0), ("b", 1000), ("a", 500))
        assert t.windows("a") == [Window(-1.0, 0.0, [0]), Window(0.001, 1.001, [2])]


async def test_sliding_right_window_of_an_update_whose_row_expired_is_still_emitted() -> None:
    """d 1 s, grace 0, expires 0 (the default). a@0's right window [0.001, 1.001] closes when
    stream time > 1001 + grace, i.e. at 1002. At stream time 1001 (a@0's update row is
    removed: 0 + d + expires + 1), a@500 arrives: in time for that right window (and only
    for it), so its final result [0.001, 1.001] = [a@500] must be sent."""
    app, t = edge_app(lambda t: t.sliding(1, dead_letter="late").emit_final(to="finals"))
    async with app.testing() as run:
        feed = Feeder(run)
        await feed(("a", 0), ("b", 1001), ("a", 500))  # ids 0, 1, 2
        assert t.dropped == 0
        await feed(("c", 10_000))
        assert multiset(finals(await run.read("finals"))) == multiset(
            [("a", -1.0, 0.0, [0]), ("a", 0.001, 1.001, [2]), ("b", 0.001, 1.001, [1])]
        )


@pytest.mark.parametrize("interruption", ["none", "restart", "abort"])
async def test_sliding_right_window_survives_a_restart_or_an_abort(interruption: str) -> None:
    """d 1 s, grace 0, expires 0 (the default): a@0 and a@500 make a@0's right window
    [0.001, 1.001] (holding a@500), open until stream time 1002. At stream time 1001 a@0's
    update row is removed (0 + d + expires + 1), while that window is still open. A restart
    (tables restored from the changelog) or an aborted commit (tables rolled back) at that
    point must not lose the window's final result."""
    app, _ = edge_app(lambda t: t.sliding(1).emit_final(to="finals"))
    fault = FailNextCommit()
    async with Runs(app) as runs:
        run = await runs.start(fault=fault)
        feed = Feeder(run)
        await feed(("a", 0), ("a", 500), ("b", 1001))  # ids 0, 1, 2
        if interruption == "restart":
            await run.stop()
            run = await runs.start()
            feed.run = run
        if interruption == "abort":
            fault.armed = True
            await send_timed(run, "events", [("c", {"k": "c", "n": 3}, 5000)])
            with pytest.raises(streams.StreamsError, match="injected"):
                await run.drain()  # c@5000 closed the windows; the commit is aborted
            await run.drain()  # and redone
        else:
            await feed(("c", 5000))  # closes every window of a and b
        assert multiset(finals(await run.read("finals"))) == multiset(
            [
                ("a", -1.0, 0.0, [0]),
                ("a", -0.5, 0.5, [0, 1]),
                ("a", 0.001, 1.001, [1]),
                ("b", 0.001, 1.001, [2]),
            ]
        )


async def test_sliding_update_acceptance_edge() -> None:
    """Accepted iff t + d >= stream time - grace (d 1 s, grace 0.5 s, stream time 2 s)."""
    app, t = edge_app(lambda t: t.sliding(1, grace=0.5, dead_letter="late"))
    async with app.testing() as run:
        feed = Feeder(run)
        await feed(("b", 2000), ("a", 500), ("a", 499))
        assert t.dropped == 1
        assert [e.value["n"] for e in await run.read("late")] == [2]


# --- reads ---------------------------------------------------------------------------------------


async def test_current_and_delta_read_windows_of_the_event_time() -> None:
    """In the agent, current() reads the (latest) window holding the event's time and
    delta(s) the one holding that time minus s; value(at=) reads any time."""
    app, t = edge_app(lambda t: t.hopping(1, 0.5, expires=10), delta=0.5)
    async with app.testing() as run:
        feed = Feeder(run)
        await feed(("a", 700), ("a", 400), ("a", 1200))
        reads = [e.value for e in await run.read("reads")]
        assert reads == [
            {"n": 0, "current": [0], "delta": [0]},  # [0.5, 1.5); 0.2 s is in [0, 1)
            {"n": 1, "current": [0, 1], "delta": []},  # [0, 1); -0.1 s: no window
            {"n": 2, "current": [2], "delta": [0, 2]},  # [1, 2); [0.5, 1.5)
        ]
        assert t["a"].value(at=0.2) == [0, 1]
        assert t["a"].value(at=0.6) == [0, 2]
        assert t["a"].value(at=100) == []  # no window: the default
        assert t["nobody"].value(at=0.2) == []
        with pytest.raises(streams.AppError, match="no current event"):
            t["a"].current()


async def test_current_reads_sliding_and_session_windows() -> None:
    """Sliding: current() is the window [t - d, t]; session: the session holding t."""
    app, _ = edge_app(lambda t: t.sliding(1, grace=1))
    async with app.testing() as run:
        await Feeder(run)(("a", 1000), ("a", 600), ("a", 1500))
        reads = [e.value["current"] for e in await run.read("reads")]
    assert reads == [[0], [1], [1, 0, 2]]  # [0.5, 1.5] folds 600, 1000, 1500 in time order
    app, _ = edge_app(lambda t: t.session(1, grace=1), app_id="win-edge-s")
    async with app.testing() as run:
        await Feeder(run)(("a", 0), ("a", 2000), ("a", 1000))
        reads = [e.value["current"] for e in await run.read("reads")]
    assert reads == [[0], [1], [0, 1, 2]]


async def test_now_reads_the_window_holding_the_wall_clock() -> None:
    app, t = edge_app(lambda t: t.tumbling(10**6))
    async with app.testing() as run:
        await Feeder(run)(("a", round(time.time() * 1000)))
        assert t["a"].now() == [0]
        assert t["b"].now() == []
        assert "a" in t and "b" not in t
        assert len(t) == 1


async def test_timestamp_option_takes_the_event_time_from_the_value() -> None:
    """timestamp= gives seconds from the value; the record timestamp is then ignored."""
    app = streams.App("win-ts", default_partitions=1)
    events = app.topic("events", partitions=1)
    t = app.table("t", default=int).tumbling(10, timestamp=lambda v: v["at"])

    @app.stream(events)
    async def agent(stream: streams.Stream) -> None:
        async for event in stream:
            t[event["k"]] += 1

    async with app.testing() as run:
        await send_timed(
            run,
            "events",
            [("a", {"k": "a", "at": 25.5}, 0), ("a", {"k": "a", "at": 29.999}, 999_999)],
        )
        await run.drain()
        assert run.table("t") == {("a", 20.0, 30.0): 2}


async def test_timestamp_option_names_a_field_of_the_value() -> None:
    """timestamp="at": the field of a dict value (or an attribute of a dataclass)."""
    app = streams.App("win-ts-field", default_partitions=1)
    events = app.topic("events", partitions=1)
    t = app.table("t", default=int).tumbling(10, timestamp="at")

    @app.stream(events)
    async def agent(stream: streams.Stream) -> None:
        async for event in stream:
            t[event["k"]] += 1

    async with app.testing() as run:
        await send_timed(run, "events", [("a", {"k": "a", "at": 25.5}, 0)])
        await run.drain()
        assert run.table("t") == {("a", 20.0, 30.0): 1}


# --- idle close ----------------------------------------------------------------------------------


async def poll_for(run: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await run.worker.poll(timeout=0.02)


async def test_idle_close_emits_after_wall_clock_idleness() -> None:
    """idle_close=0.2: a partition without updates for 0.2 s advances its stream time by the
    wall-clock time since its last update and closes what that passes: with stream time
    0.9 s, window [0, 1) closes after 0.2 s of idleness, once, and is committed."""
    app, t = edge_app(lambda t: t.tumbling(1).emit_final(to="finals", idle_close=0.2))
    async with app.testing() as run:
        await Feeder(run)(("a", 900), ("b", 100))
        assert await run.read("finals") == []
        await poll_for(run, 1.0)
        assert sorted(finals(await run.read("finals"))) == [
            ("a", 0.0, 1.0, [0]),
            ("b", 0.0, 1.0, [1]),
        ]
        assert t.windows("a") == []
        await poll_for(run, 0.3)
        assert len(await run.read("finals")) == 2
        await Feeder(run)(("a", 950))  # stream time moved past 1 s: late
        assert t.dropped == 1


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("hopping", [("a", 0.0, 1.0, [0]), ("a", 0.5, 1.5, [0])]),
        ("sliding", [("a", -0.1, 0.9, [0])]),
        ("session", [("a", 0.9, 0.9, [0])]),
    ],
)
async def test_idle_close_for_each_kind(kind: str, expected: list[Any]) -> None:
    """An event at 0.9 s, then idleness: hopping [0, 1) and [0.5, 1.5) close after 0.1 and
    0.6 s, the sliding window [-0.1, 0.9] at once, the session [0.9, 0.9] (gap 0.3) after
    0.301 s; each once."""
    size = {"hopping": 1000, "sliding": 1000, "session": 300}[kind]
    app, t = edge_app(
        lambda t: declare(t, kind, size, 500, 0, 0).emit_final(to="finals", idle_close=0.1)
    )
    async with app.testing() as run:
        await Feeder(run)(("a", 900))
        await poll_for(run, 1.0)
        assert sorted(finals(await run.read("finals"))) == expected
        if kind != "sliding":  # (the sliding update row is kept until 1.901 s)
            assert t.windows("a") == []


async def test_idle_close_is_per_partition() -> None:
    """A partition that keeps getting updates does not close its windows by idleness while
    an idle one does."""
    from runtime.partitioner import partition_for_key

    def key_in(partition: int) -> str:
        return next(
            k
            for k in (f"key-{i}" for i in range(1000))
            if partition_for_key(orjson.dumps(k), 2) == partition
        )

    x, y = key_in(0), key_in(1)
    app, t = edge_app(lambda t: t.tumbling(1).emit_final(to="finals", idle_close=0.2), partitions=2)
    async with app.testing() as run:
        feed = Feeder(run)
        await feed((x, 900), (y, 100))
        deadline = time.monotonic() + 1.0
        ts = 100
        while time.monotonic() < deadline:
            ts += 1
            await feed((y, ts))  # y's partition is never idle for 0.2 s
            await poll_for(run, 0.05)
        assert finals(await run.read("finals")) == [(x, 0.0, 1.0, [0])]
        assert len(t.windows(y)[0].value) == feed.n - 1


async def test_idle_stream_time_keeps_advancing_with_the_wall_clock() -> None:
    """Per the idle_close rule, an idle partition's stream time is its last stream time plus
    the wall-clock time since its last update. After [0, 1) closed by idleness and 1.5 s
    more of idleness, stream time is past 2 s: an event at 1.5 s is late for [1, 2)."""
    app, t = edge_app(
        lambda t: t.tumbling(1, dead_letter="late").emit_final(to="finals", idle_close=0.2)
    )
    async with app.testing() as run:
        feed = Feeder(run)
        await feed(("a", 900))
        await poll_for(run, 0.5)
        assert finals(await run.read("finals")) == [("a", 0.0, 1.0, [0])]
        await poll_for(run, 1.5)  # idle: 900 ms + ~2 s of wall clock > 2000 ms
        await feed(("a", 1500))
        assert t.dropped == 1, "an event at 1.5 s, > 2 s of stream time later, was accepted"
        assert t.windows("a") == []


async def test_idle_close_does_not_close_what_the_wall_clock_has_not_passed() -> None:
    app, t = edge_app(lambda t: t.tumbling(10).emit_final(to="finals", idle_close=0.1))
    async with app.testing() as run:
        await Feeder(run)(("a", 0))
        await poll_for(run, 0.6)
        assert await run.read("finals") == []
        assert t.windows("a") == [Window(0.0, 10.0, [0])]


# --- value codecs --------------------------------------------------------------------------------


@dataclasses.dataclass
class Box:
    n: int


def _add_bytes(table: streams.Table, event: dict[str, Any]) -> None:
    table[event["k"]] += b"x"


def _set_box(table: streams.Table, event: dict[str, Any]) -> None:
    table[event["k"]] = Box(event["n"])


def _add_text(table: streams.Table, event: dict[str, Any]) -> None:
    table[event["k"]] += f"<{event['n']}>"


@pytest.mark.parametrize(
    ("kind", "value_type", "default", "write"),
    [
        *(
            (kind, value_type, default, write)
            for kind in ("tumbling", "hopping", "session")
            for value_type, default, write in [("raw", bytes, _add_bytes), (Box, None, _set_box)]
        ),
        # sliding windows store the updates themselves, as JSON (docs/windows.md: "the
        # operands must be JSON values"): a str codec and str operands
        ("sliding", str, str, _add_text),
    ],
)
async def test_window_values_use_the_table_codec_and_survive_a_restore(
    kind: str, value_type: Any, default: Any, write: Any
) -> None:
    """A windowed table stores values with its value codec (bytes with "raw", a dataclass
    with its codec): they are committed, and a new worker restores equal values."""
    app = streams.App("win-codec", default_partitions=1)
    events = app.topic("events", partitions=1)
    t = declare(app.table("t", default=default, value_type=value_type), kind, 1000, 500, 0, 10_000)

    @app.stream(events)
    async def agent(stream: streams.Stream) -> None:
        async for event in stream:
            write(t, event)

    async with Runs(app) as runs:
        run = await runs.start()
        await send_timed(
            run, "events", [("a", {"k": "a", "n": 1}, 100), ("a", {"k": "a", "n": 2}, 200)]
        )
        await run.drain()
        before = run.table("t")
        assert before and all(isinstance(v, bytes | Box | str) for v in before.values())
        await run.stop()
        run = await runs.start()
        await run.drain()
        assert run.table("t") == before
        if kind == "sliding":
            assert before == {
                ("a", -0.9, 0.1): "<1>",
                ("a", -0.8, 0.2): "<1><2>",
                ("a", 0.101, 1.101): "<2>",
            }


# --- deletes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tumbling", "hopping", "session", "sliding"])
async def test_deleting_a_key_then_updating_its_window_again_emits_it_once(kind: str) -> None:
    """`del t[k]` removes k's windows; updating the same window again and closing it sends
    one final result, with the value written after the delete (the closed window is kept
    for reads: expires > grace)."""
    app = streams.App("win-del", default_partitions=1)
    events = app.topic("events", partitions=1)
    app.topic("finals", partitions=1)
    t = declare(app.table("t", default=int), kind, 1000, 500, 0, 5000).emit_final(to="finals")

    @app.stream(events)
    async def agent(stream: streams.Stream) -> None:
        async for event in stream:
            if event.get("del"):
                del t[event["k"]]
            else:
                t[event["k"]] += 1

    async with app.testing() as run:
        await send_timed(
            run,
            "events",
            [
                ("a", {"k": "a"}, 100),
                ("a", {"k": "a", "del": True}, 100),
                ("a", {"k": "a"}, 100),
                ("b", {"k": "b"}, 1101),  # closes a's window (before it expires)
            ],
        )
        await run.drain()
        window = {
            "tumbling": (0.0, 1.0),
            "hopping": (0.0, 1.0),  # 100 ms is in no other window starting at >= 0
            "session": (0.1, 0.1),
            "sliding": (-0.9, 0.1),
        }[kind]
        assert finals(await run.read("finals")) == [("a", *window, 1)]


# --- final results exactly once across crashes ---------------------------------------------------


class Crash(Exception):
    """A simulated process death (not a StreamsError: nothing catches and aborts it)."""


class CrashOnFinal:
    """A fault hook: raises Crash at `step` of the first commit that carries a final result
    (one emitted since the last completed commit)."""

    def __init__(self, step: str) -> None:
        self.step = step
        self.run: Any = None
        self.emitted_before = 0
        self.fired = False

    def __call__(self, at: str) -> None:
        emitted = self.run.worker.tables["seen"].emitted
        if not self.fired and at == self.step and emitted > self.emitted_before:
            self.fired = True
            raise Crash(f"{at}, with {emitted - self.emitted_before} final results in the commit")
        if at == STEPS[-1]:
            self.emitted_before = emitted


def crash_events(seed: int, count: int = 120) -> list[tuple[Any, dict[str, Any], int]]:
    """Events over ~20 windows of 1 s for 3 keys: mostly in order, some late."""
    rng = random.Random(seed)
    out, now = [], 0
    for n in range(count):
        now += rng.randint(0, 300)
        key = rng.choice(KEYS)
        ts = now - rng.randint(0, 2500) if rng.random() < 0.2 else now
        out.append((key, {"k": key, "n": n}, max(0, ts)))
    return out


def file_run(app: streams.App, tmp_path: Path, state: str = "state", **options: Any) -> Any:
    settings = {
        "broker": f"sqlite:///{tmp_path}/broker.db",
        "state_dir": str(tmp_path / state),
        "processing_guarantee": "exactly_once",
        "commit_every": 8,  # many commits: a crash finds committed work behind it
        "max_poll_records": 4,
    }
    return app.testing(**(settings | options))


def expected(kind: str, events: list[tuple[Any, dict[str, Any], int]], **window: int) -> Model:
    model = Model(kind, **window)
    for key, value, ts in events:
        model.update(key, ts, value["n"])
    return model


async def assert_exactly_once(run: Any, model: Model) -> None:
    """Every (key, window) final result once, with the model's value; the table as the
    model's live windows; every late event in the dead letter once."""
    got = finals(await run.read("seen-finals"))
    windows = collections.Counter((k, s, e) for k, s, e, _ in got)
    assert [w for w, n in windows.items() if n > 1] == []  # no duplicates
    assert multiset(got) == multiset(model.finals)  # none lost, values right
    counted = finals(await run.read("count-finals"))
    assert multiset(counted) == multiset([(k, s, e, len(v)) for k, s, e, v in model.finals])
    assert run.table("seen") == model.live()
    assert sorted(e.value["n"] for e in await run.read("late")) == sorted(model.dropped)
    reads = [e.value["n"] for e in await run.read("reads")]  # the agent's outputs
    assert reads == model.ids  # each once, in order


WINDOW_MS = {
    "tumbling": {"size": 1000, "step": 1000, "grace": 500, "expires": 500},
    "hopping": {"size": 1000, "step": 250, "grace": 500, "expires": 1500},
    "sliding": {"size": 1000, "step": 1000, "grace": 500, "expires": 500},
    "session": {"size": 400, "step": 400, "grace": 500, "expires": 1000},
}


async def test_crash_in_the_middle_of_windows_loses_and_repeats_no_final_result(
    tmp_path: Path,
) -> None:
    """Drain, then process part of the next events and die before committing; a new run on
    the same broker and state directory finishes: each final result exactly once."""
    w = WINDOW_MS["tumbling"]
    app = model_app("tumbling", **w)
    events = crash_events(seed=1)
    first = file_run(app, tmp_path, commit_every=10_000, commit_interval=3600)
    await first.start()
    await send_timed(first, "events", events[:50])
    await first.drain()
    await send_timed(first, "events", events[50:80])
    for _ in range(3):
        await first.worker.poll(timeout=0.01)
    assert first.worker.cycle.open  # processed, not committed
    assert first.worker.tables["seen"].emitted > 0
    await first.stop(clean=False)
    async with file_run(app, tmp_path) as second:
        await second.drain()
        await send_timed(second, "events", events[80:])
        await second.drain()
        await assert_exactly_once(second, expected("tumbling", events, **w))


@pytest.mark.parametrize("step", STEPS)
async def test_crash_at_each_commit_step_of_a_final_result(tmp_path: Path, step: str) -> None:
    """Crash at each step of the first commit carrying a final result: before the commit
    the result is aborted and sent again by the next run; after it, it is not sent again."""
    w = WINDOW_MS["tumbling"]
    app = model_app("tumbling", **w)
    events = crash_events(seed=2)
    fault = CrashOnFinal(step)
    first = fault.run = file_run(app, tmp_path, fault=fault)
    await first.start()
    await send_timed(first, "events", events[:60])
    with pytest.raises(Crash):
        await first.drain()
    await first.stop(clean=False)
    async with file_run(app, tmp_path) as second:
        await second.drain()
        assert await second.read("seen-finals") != []  # committed before, or sent again
        await send_timed(second, "events", events[60:])
        await second.drain()
        await assert_exactly_once(second, expected("tumbling", events, **w))


@pytest.mark.parametrize("kind", ["tumbling", "session"])
async def test_a_crash_at_every_step_in_successive_runs(tmp_path: Path, kind: str) -> None:
    """Five runs each die at a different commit step of their first commit carrying a final
    result (each restoring what the previous ones committed); a sixth finishes."""
    w = WINDOW_MS[kind]
    app = model_app(kind, **w)
    events = crash_events(seed=4, count=200)
    to_send = True
    for step in STEPS:
        fault = CrashOnFinal(step)
        attempt = fault.run = file_run(app, tmp_path, fault=fault)
        await attempt.start()
        if to_send:
            await send_timed(attempt, "events", events)
            to_send = False
        with pytest.raises(Crash):
            await attempt.drain()
        await attempt.stop(clean=False)
    async with file_run(app, tmp_path) as last:
        await last.drain()
        await assert_exactly_once(last, expected(kind, events, **w))


class FailOnFinal(CrashOnFinal):
    """Like CrashOnFinal, but raises a StreamsError: the worker aborts the transaction and
    rolls its tables (rows and stream time) back, and goes on with the same state."""

    def __call__(self, at: str) -> None:
        try:
            super().__call__(at)
        except Crash as crash:
            raise streams.StreamsError(str(crash)) from None


@pytest.mark.parametrize("kind", ["tumbling", "hopping", "sliding", "session"])
@pytest.mark.parametrize("step", ["after_outputs", "after_changelog", "after_offsets"])
async def test_an_aborted_commit_of_final_results_is_redone_by_the_same_worker(
    kind: str, step: str
) -> None:
    """A commit carrying final results fails and is aborted: the same worker rolls back
    the windows and the stream time, re-processes the events, and sends each final result
    once."""
    w = WINDOW_MS[kind]
    app = model_app(kind, **w)
    events = crash_events(seed=5)
    fault = FailOnFinal(step)
    async with app.testing(commit_every=8, max_poll_records=4, fault=fault) as run:
        fault.run = run
        await send_timed(run, "events", events)
        with pytest.raises(streams.StreamsError):
            await run.drain()
        assert fault.fired
        await run.drain()
        model = expected(kind, events, **w)
        assert app.tables["seen"].dropped >= len(model.dropped)  # counted again after the abort
        await assert_exactly_once(run, model)


@pytest.mark.parametrize("kind", ["hopping", "sliding", "session"])
@pytest.mark.parametrize("step", ["after_changelog", "after_commit"])
async def test_crash_around_the_commit_of_a_final_result_for_each_kind(
    tmp_path: Path, kind: str, step: str
) -> None:
    w = WINDOW_MS[kind]
    app = model_app(kind, **w)
    events = crash_events(seed=3)
    fault = CrashOnFinal(step)
    first = fault.run = file_run(app, tmp_path, fault=fault)
    await first.start()
    await send_timed(first, "events", events[:60])
    with pytest.raises(Crash):
        await first.drain()
    await first.stop(clean=False)
    async with file_run(app, tmp_path) as second:
        await second.drain()
        await send_timed(second, "events", events[60:])
        await second.drain()
        await assert_exactly_once(second, expected(kind, events, **w))


@pytest.mark.parametrize("step", ["after_outputs", "after_commit"])
async def test_crash_around_an_idle_close_emits_once(tmp_path: Path, step: str) -> None:
    """A final result sent by idle_close, crashed before or after its commit: the next run
    (idle again) sends it if it was lost, and not again if it was committed."""
    app = streams.App("win-idle", default_partitions=1)
    events = app.topic("events", partitions=1)
    app.topic("seen-finals", partitions=1)
    seen = app.table("seen", default=list).tumbling(1).emit_final(to="seen-finals", idle_close=0.1)

    @app.stream(events)
    async def agent(stream: streams.Stream) -> None:
        async for event in stream:
            seen[event["k"]] += [event["n"]]

    fault = CrashOnFinal(step)
    first = fault.run = file_run(app, tmp_path, fault=fault)
    await first.start()
    await send_timed(first, "events", [("a", {"k": "a", "n": 0}, 900)])
    await first.drain()
    with pytest.raises(Crash):
        await poll_for(first, 1.0)
    await first.stop(clean=False)
    async with file_run(app, tmp_path) as second:
        await poll_for(second, 0.6)
        assert finals(await second.read("seen-finals")) == [("a", 0.0, 1.0, [0])]
        assert second.table("seen") == {}


# --- expiry --------------------------------------------------------------------------------------


async def read_changelog(run: Any, table: streams.Table) -> list[tuple[bytes, bytes | None]]:
    """Committed (key, value) records of a table's changelog (value None: a tombstone)."""
    records = run.transport.committed_records(table.changelog_topic, table.partitions)
    return [(r.key, r.value) async for r in records]


@pytest.mark.parametrize("kind", ["tumbling", "hopping", "sliding", "session"])
async def test_expiry_keeps_the_table_bounded_and_a_rebuilt_table_equal(
    tmp_path: Path, kind: str
) -> None:
    """Over 300 windows, the live windows stay few (removed once stream time passes their end
    + expires), every final result is sent once, the compacted changelog stays small (session
    and sliding rows get tombstones; a time window's record is overwritten by its key's next
    window in the same slot), and a new worker with an empty state directory rebuilds the
    same table from the changelog."""
    w = {
        "tumbling": {"size": 1000, "step": 1000, "grace": 200, "expires": 2000},
        "hopping": {"size": 1000, "step": 500, "grace": 200, "expires": 2000},
        "sliding": {"size": 1000, "step": 1000, "grace": 200, "expires": 2000},
        "session": {"size": 300, "step": 300, "grace": 200, "expires": 2000},
    }[kind]
    app = model_app(kind, **w)
    events = [
        (key, {"k": key, "n": 3 * i + j}, i * 500 + j * 100)
        for i in range(600)
        for j, key in enumerate(KEYS)
    ]
    model = Model(kind, **w)
    sizes = []
    async with file_run(app, tmp_path, commit_every=20, max_poll_records=20) as run:
        for start in range(0, len(events), 150):
            batch = events[start : start + 150]
            await send_timed(run, "events", batch)
            await run.drain()
            sizes.append(len(run.table("seen")))
            assert len(app.tables["counts"]) == sizes[-1]
        for key, value, ts in events:
            model.update(key, ts, value["n"])
        await assert_exactly_once(run, model)
        assert len(model.finals) > 300
        assert max(sizes) <= 40  # a few windows per key, not hundreds
        before = run.table("seen")
        stream_time = dict(run.worker.tables["seen"].stream_time)
        log = await read_changelog(run, app.tables["seen"])
    latest = dict(log)  # the changelog, compacted: the rows it restores
    if kind in ("tumbling", "hopping"):  # every key stays active: its slots are reused
        ring = -(-(w["size"] + w["expires"]) // w["step"])
        assert len(latest) <= ring * len(KEYS) + 1  # + stream time
        assert len(log) > 10 * len(latest)
    else:
        assert sum(1 for v in latest.values() if v is None) > 100  # removals wrote tombstones
        assert sum(1 for v in latest.values() if v is not None) <= 3 * 12 + 1  # + stream time
    async with file_run(app, tmp_path, state="fresh-state") as rebuilt:
        await rebuilt.drain()
        assert rebuilt.worker.restored_records > 0
        assert rebuilt.table("seen") == before
        assert rebuilt.worker.tables["seen"].stream_time == stream_time
        late = [(key, {"k": key, "n": 10_000 + j}, 400_000 + j) for j, key in enumerate(KEYS)]
        await send_timed(rebuilt, "events", late)
        await rebuilt.drain()
        for key, value, ts in late:
            model.update(key, ts, value["n"])
        await assert_exactly_once(rebuilt, model)


@pytest.mark.parametrize("kind", ["tumbling", "hopping"])
async def test_a_key_that_goes_idle_has_its_time_windows_tombstoned_a_ring_after_expiry(
    tmp_path: Path, kind: str
) -> None:
    """A time window's changelog record waits for its key's next window in the same slot;
    a key that writes no window for a whole ring after its windows expired gets tombstones,
    so an idle key leaves nothing in the compacted changelog or the store."""
    w = {"size": 1000, "step": 1000 if kind == "tumbling" else 500, "grace": 0, "expires": 1000}
    ring = -(-(w["size"] + w["expires"]) // w["step"])
    app = model_app(kind, **w)
    events = [("a", {"k": "a", "n": 0}, 100)]  # "a" goes idle after its first window
    events += [("b", {"k": "b", "n": i}, 100 + 250 * i) for i in range(1, 41)]  # 10 s of "b"
    async with file_run(app, tmp_path, commit_every=5, max_poll_records=5) as run:
        await send_timed(run, "events", events)
        await run.drain()
        log = await read_changelog(run, app.tables["seen"])
        stored = await run.worker.store.load("seen", 0)
    latest = dict(log)
    live = {k: v for k, v in latest.items() if v is not None}
    a_key = app.tables["seen"].spec().key.encode("a")
    assert not [k for k in live if k.endswith(a_key)]  # "a": tombstoned
    assert [k for k, v in latest.items() if k.endswith(a_key) and v is None]
    assert not [k for k in stored[0] if k.endswith(a_key)]  # and gone from the store
    assert 1 <= len(live) - 1 <= ring  # "b": one record per slot, + stream time
    model = expected(kind, events, **w)
    async with file_run(app, tmp_path, state="fresh-state") as rebuilt:
        await rebuilt.drain()
        await assert_exactly_once(rebuilt, model)


@pytest.mark.parametrize("kind", ["tumbling", "hopping"])
async def test_changing_expires_between_runs_moves_windows_to_their_new_slots(
    tmp_path: Path, kind: str
) -> None:
    """A new `expires=` changes the ring of changelog slots. A worker restored from the old
    layout (from its store, or from the changelog alone) keeps every window, the first commit
    moves them to their new slots and tombstones the old records, and later restores (either
    way) read the same table: no window lost, duplicated, or brought back with an old value."""
    size, step = 1000, 1000 if kind == "tumbling" else 500

    def app_with(expires: int) -> streams.App:
        return model_app(kind, size, step, 0, expires)

    def events(ns: range, start: int) -> list[tuple[Any, dict[str, Any], int]]:
        return [(KEYS[n % 3], {"k": KEYS[n % 3], "n": n}, start + 100 * (n - ns[0])) for n in ns]

    first = events(range(0, 15), 0)  # 0 .. 1.4 s: nothing expires yet under either layout
    second = events(range(15, 90), 1500)  # 1.5 .. 8.9 s
    third = events(range(90, 93), 9000)
    wide = expected(kind, first + second, size=size, step=step, grace=0, expires=3000)
    async with file_run(app_with(1000), tmp_path) as run:  # ring: (size + 1000) / step
        await send_timed(run, "events", first)
        await run.drain()
    async with file_run(app_with(3000), tmp_path) as run:  # a wider ring, from the store
        await run.drain()
        await send_timed(run, "events", second)
        await run.drain()
        await assert_exactly_once(run, wide)
    narrow = expected(kind, first + second + third, size=size, step=step, grace=0, expires=1000)
    for state in ("rebuilt", "rebuilt", "state"):  # from the changelog, then stores, narrow ring
        async with file_run(app_with(1000), tmp_path, state=state) as run:
            await run.drain()
            if third:
                await send_timed(run, "events", third)
                await run.drain()
                third = []
            await assert_exactly_once(run, narrow)
            log = dict(await read_changelog(run, app_with(1000).tables["seen"]))
    ring = (size + 1000) // step
    slots = [struct.unpack(">q", k[1:9])[0] for k, v in log.items() if k[:1] == b"w" and v]
    assert slots and max(slots) < ring  # the wide ring's records are gone
    bounds = [(k[9:], v[:16]) for k, v in log.items() if k[:1] == b"w" and v]
    assert len(bounds) == len(set(bounds))  # one record per window


@pytest.mark.parametrize("kind", ["tumbling", "hopping", "session", "sliding"])
async def test_a_window_deleted_before_it_expires_stays_deleted_after_a_restore(
    tmp_path: Path, kind: str
) -> None:
    app = streams.App("win-del-restore", default_partitions=1)
    events = app.topic("events", partitions=1)
    t = declare(app.table("t", default=int), kind, 1000, 500, 0, 60_000)

    @app.stream(events)
    async def agent(stream: streams.Stream) -> None:
        async for event in stream:
            if event.get("del"):
                del t[event["k"]]
            else:
                t[event["k"]] += 1

    records = [("a", {"k": "a"}, 100), ("b", {"k": "b"}, 100), ("a", {"k": "a"}, 200)]
    async with file_run(app, tmp_path) as run:
        await send_timed(run, "events", records)
        await run.drain()
        await send_timed(run, "events", [("a", {"k": "a", "del": True}, 300)])
        await run.drain()
        assert [key for (key, _, _), _ in run.worker.tables["t"].items()] == ["b"]
    async with file_run(app, tmp_path, state="fresh-state") as rebuilt:
        await rebuilt.drain()
        assert rebuilt.worker.restored_records > 0
        assert [key for (key, _, _), _ in rebuilt.worker.tables["t"].items()] == ["b"]


# --- bad declarations and bad event times --------------------------------------------------------


@pytest.mark.parametrize(
    ("declare_windows", "message"),
    [
        (lambda t: t.hopping(1, 2), "step"),
        (lambda t: t.hopping(1, 0), "step"),
        (lambda t: t.tumbling(0), "size"),
        (lambda t: t.tumbling(-1), "size"),
        (lambda t: t.tumbling("60"), "seconds"),
        (lambda t: t.tumbling(float("nan")), "finite"),
        (lambda t: t.tumbling(1, grace=-1), "grace"),
        (lambda t: t.sliding(1, grace=-0.5), "grace"),
        (lambda t: t.session(1, grace=2, expires=1), "expires"),
        (lambda t: t.tumbling(1, grace=1, expires=0.5), "expires"),
        (lambda t: t.sliding(1, timestamp=42), "timestamp"),
        (lambda t: t.session(1, merge="+"), "merge"),
        (lambda t: t.emit_final(to="out"), "needs a window"),
        (lambda t: t.tumbling(1).tumbling(2), "already has windows"),
        (lambda t: t.tumbling(1).session(2), "already has windows"),
        (lambda t: t.tumbling(1).emit_final(to="out", idle_close=0), "idle_close"),
        (lambda t: t.tumbling(1).emit_final(to="out", idle_close="soon"), "idle_close"),
        (lambda t: t.tumbling(1).emit_final(to=streams.App("other").topic("x")), "not a topic"),
    ],
)
def test_bad_window_declarations_raise_configuration_error(
    declare_windows: Callable[[streams.Table], Any], message: str
) -> None:
    app = streams.App("win-bad")
    with pytest.raises(streams.ConfigurationError, match=message):
        declare_windows(app.table("t", default=int))


async def test_timestamp_returning_a_string_fails_the_agent_clearly() -> None:
    """timestamp= giving a string: the agent fails with an AppError naming the table, the
    option and the event's position; nothing is committed."""
    app = streams.App("win-bad-ts", default_partitions=1)
    events = app.topic("events", partitions=1)
    t = app.table("t", default=int).tumbling(1, timestamp=lambda v: v["at"])

    @app.stream(events)
    async def agent(stream: streams.Stream) -> None:
        async for event in stream:
            t[event["k"]] += 1

    async with app.testing() as run:
        await run.send("events", {"k": "a", "at": 1.5}, key="a")
        await run.send("events", {"k": "a", "at": "2024-01-01"}, key="a")
        with pytest.raises(streams.AgentError) as failure:
            await run.drain()
        cause = failure.value.__cause__
        assert isinstance(cause, streams.AppError)
        assert "timestamp=" in str(cause) and "'t'" in str(cause) and "events[0]@1" in str(cause)
        assert run.table("t") == {}  # the batch was rolled back


async def test_windows_on_a_plain_table_and_writes_outside_agents_are_refused() -> None:
    app = streams.App("win-bad-use", default_partitions=1)
    events = app.topic("events", partitions=1)
    plain = app.table("plain", default=int)
    t = app.table("t", default=int).tumbling(1)

    @app.stream(events)
    async def agent(stream: streams.Stream) -> None:
        async for event in stream:
            t[event["k"]] += 1

    async with app.testing() as run:
        await run.drain()
        with pytest.raises(streams.AppError, match="no windows"):
            plain.windows("a")
        with pytest.raises(streams.TableWriteOutsideAgentError):
            t["a"] += 1
        with pytest.raises(streams.TableWriteOutsideAgentError):
            t["a"] = 5
        assert t.windows("a") == []


# --- bounds as datetimes ------------------------------------------------------------------------

NOON = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def at(seconds: float) -> int:
    """The record timestamp (ms) `seconds` after NOON."""
    return round((NOON.timestamp() + seconds) * 1000)


async def test_window_bounds_are_utc_datetimes_too() -> None:
    """table.windows(key) rows give start_time/end_time, aware UTC datetimes exact to the
    millisecond, beside start/end in seconds (unchanged)."""
    app = streams.App("win-dt", default_partitions=1)
    events = app.topic("events")
    per_minute = app.table("per-minute", default=int).tumbling(60, expires=600)
    sessions = app.table("sessions", default=int).session(5)
    rows: list[tuple[Window, Window]] = []

    @app.stream(events)
    async def agent(stream: streams.Stream) -> None:
        async for key, _ in stream.items():
            per_minute[key] += 1
            sessions[key] += 1
            rows.append((per_minute.windows(key)[-1], sessions.windows(key)[-1]))

    async with app.testing() as t:
        await t.send(events, {}, key="a", timestamp=at(30))
        await t.send(events, {}, key="a", timestamp=at(32.125))
        await t.drain()
    minute, session = rows[-1]
    assert (minute.start, minute.end) == (NOON.timestamp(), NOON.timestamp() + 60)
    assert (minute.start_time, minute.end_time) == (NOON, NOON + timedelta(seconds=60))
    assert session.start_time == NOON + timedelta(seconds=30)
    assert session.end_time == NOON + timedelta(seconds=32, milliseconds=125)
    assert session.end_time.tzinfo is UTC and session.value == 2


async def test_final_results_read_as_window_results_with_datetimes() -> None:
    """A results topic declared with value_type=streams.WindowResult reads the final results as
    WindowResult(key, start, end, value) with start_time/end_time; the records are the same
    JSON objects as on an untyped topic."""
    app = streams.App("win-dt", default_partitions=1)
    events = app.topic("events")
    typed = app.topic("typed-finals", value_type=streams.WindowResult)
    plain = app.topic("plain-finals")
    by_typed = app.table("a", default=int).tumbling(60).emit_final(to=typed)
    by_plain = app.table("b", default=int).tumbling(60).emit_final(to=plain)

    @app.stream(events)
    async def agent(stream: streams.Stream) -> None:
        async for key, _ in stream.items():
            by_typed[key] += 1
            by_plain[key] += 1

    async with app.testing() as t:
        for seconds in (1, 59.5, 61):
            await t.send(events, {}, key="k", timestamp=at(seconds))
        await t.drain()
        results = [e.value for e in await t.read(typed)]
        assert results == [streams.WindowResult("k", NOON.timestamp(), NOON.timestamp() + 60, 2)]
        assert results[0].start_time == NOON
        assert results[0].end_time == NOON + timedelta(minutes=1)
        assert [e.value for e in await t.read(plain)] == [
            {"key": "k", "start": NOON.timestamp(), "end": NOON.timestamp() + 60, "value": 2}
        ]
        assert t.transport is not None
        raw = [r.value async for r in t.transport.committed_records("typed-finals", 1)]
        assert raw == [r.value async for r in t.transport.committed_records("plain-finals", 1)]
