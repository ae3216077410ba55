"""Stream operators: filter, map, their chains, take(n, within=...) and group_by."""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
import pytest

import streams
from runtime.partitioner import partition_for_key


def values(events: list[streams.Event]) -> list[Any]:
    return [e.value for e in events]


# --- filter and map -----------------------------------------------------------------------------


async def test_filter_keeps_only_matching_values() -> None:
    """`stream.filter(pred)` passes the values for which pred is true, in order."""
    app = streams.App("ops")
    numbers = app.topic("numbers", partitions=1)
    out = app.topic("out", partitions=1)

    @app.stream(numbers, sink=[out])
    async def evens(stream: streams.Stream) -> Any:
        async for n in stream.filter(lambda n: n % 2 == 0):
            yield n

    async with app.testing() as t:
        await t.send_many("numbers", range(20))
        await t.drain()
        assert values(await t.read("out")) == list(range(0, 20, 2))


async def test_map_transforms_each_value_and_keeps_the_key() -> None:
    """`stream.map(fn)` gives fn(value) for each value; items() still carries the event's key."""
    app = streams.App("ops")
    words = app.topic("words", partitions=4, value_type=str)
    seen: list[tuple[Any, Any]] = []

    @app.stream(words)
    async def upper(stream: streams.Stream) -> None:
        async for key, word in stream.map(str.upper).items():
            seen.append((key, word))

    sent = [(f"k{i}", f"word{i}") for i in range(12)]
    async with app.testing() as t:
        for key, word in sent:
            await t.send("words", value=word, key=key)
        await t.drain()
    assert sorted(seen) == sorted((k, w.upper()) for k, w in sent)


async def test_filter_and_map_chain_in_declaration_order() -> None:
    """filter → map → filter → map apply in the order written."""
    app = streams.App("ops")
    numbers = app.topic("numbers", partitions=1)
    out = app.topic("out", partitions=1)

    @app.stream(numbers, sink=[out])
    async def chain(stream: streams.Stream) -> Any:
        pipeline = (
            stream.filter(lambda n: n % 3 != 0)
            .map(lambda n: n * 10)
            .filter(lambda n: n > 50)
            .map(lambda n: {"n": n})
        )
        async for value in pipeline:
            yield value

    async with app.testing() as t:
        await t.send_many("numbers", range(12))
        await t.drain()
        out_values = values(await t.read("out"))
    expected = [{"n": n * 10} for n in range(12) if n % 3 != 0 and n * 10 > 50]
    assert out_values == expected


async def test_filter_applies_to_events_too() -> None:
    """`stream.filter(pred).events()` yields only the events whose value passes."""
    app = streams.App("ops")
    numbers = app.topic("numbers", partitions=1)
    offsets: list[int] = []

    @app.stream(numbers)
    async def agent(stream: streams.Stream) -> None:
        async for event in stream.filter(lambda n: n >= 7).events():
            offsets.append(event.offset)

    async with app.testing() as t:
        await t.send_many("numbers", range(10))
        await t.drain()
    assert offsets == [7, 8, 9]


# --- take ---------------------------------------------------------------------------------------


async def run_take(
    n: int, sent: list[Any], *, within: float | None = None, **settings: Any
) -> list[list[Any]]:
    """The lists an agent gets from `stream.take(n, within=within)`, as committed to a sink."""
    app = streams.App("take", **settings)
    numbers = app.topic("numbers", partitions=1)
    out = app.topic("out", partitions=1)

    @app.stream(numbers, sink=[out])
    async def batches(stream: streams.Stream) -> Any:
        async for batch in stream.take(n, within=within):
            yield batch

    async with app.testing() as t:
        await t.send_many("numbers", sent)
        await t.drain()
        return values(await t.read("out"))


async def test_take_gives_lists_of_at_most_n_with_every_event_once() -> None:
    """take(n) yields non-empty lists of at most n values, together the whole stream in order."""
    lists = await run_take(5, list(range(53)), max_poll_records=7)
    assert all(1 <= len(batch) <= 5 for batch in lists)
    assert [v for batch in lists for v in batch] == list(range(53))


async def test_take_fills_lists_of_exactly_n_within_a_batch() -> None:
    """When a poll brings more than n events, take(n) yields full lists of n."""
    lists = await run_take(10, list(range(100)))
    assert [len(batch) for batch in lists] == [10] * 10
    assert [v for batch in lists for v in batch] == list(range(100))


async def test_take_within_flushes_partial_lists_before_the_commit() -> None:
    """take(n, within=s) with n never reached: the held values are processed before committing."""
    lists = await run_take(1000, list(range(25)), within=60.0)
    assert [v for batch in lists for v in batch] == list(range(25))
    assert all(len(batch) <= 1000 for batch in lists)


async def test_take_within_across_polls_keeps_every_event_once() -> None:
    """take(n, within=s) over many small polls: lists of at most n, every event exactly once."""
    lists = await run_take(8, list(range(61)), within=0.01, max_poll_records=3)
    assert all(1 <= len(batch) <= 8 for batch in lists)
    assert [v for batch in lists for v in batch] == list(range(61))


async def test_take_on_a_filtered_stream_processes_held_values_before_the_commit() -> None:
    """filter(...).take(n): values taken before a filtered-out tail event reach the sink."""
    app = streams.App("take")
    numbers = app.topic("numbers", partitions=1)
    out = app.topic("out", partitions=1)

    @app.stream(numbers, sink=[out])
    async def batches(stream: streams.Stream) -> Any:
        async for batch in stream.filter(lambda n: n % 2 == 0).take(10, within=60.0):
            yield batch

    async with app.testing() as t:
        await t.send_many("numbers", [0, 1, 2, 3])  # the last event is filtered out
        await t.drain()
        lists = values(await t.read("out"))
    assert [v for batch in lists for v in batch] == [0, 2]


async def test_take_needs_a_positive_n() -> None:
    """take(0) is a ConfigurationError when the app starts."""
    app = streams.App("take")

    @app.stream(app.topic("numbers"))
    async def agent(stream: streams.Stream) -> None:
        async for _ in stream.take(0):
            pass

    with pytest.raises(streams.ConfigurationError, match="n >= 1"):
        async with app.testing():
            pass


# --- group_by -----------------------------------------------------------------------------------


async def test_group_by_rekeys_events_and_partitions_them_by_the_new_key() -> None:
    """After group_by, event.key is key_fn(value), on its partition of the repartition topic."""
    app = streams.App("grp")
    clicks = app.topic("clicks", partitions=4)
    seen: list[streams.Event] = []

    @app.stream(clicks)
    async def agent(stream: streams.Stream) -> None:
        async for event in stream.group_by(lambda c: c["user"], name="by-user").events():
            seen.append(event)

    sent = [{"user": f"u{i % 7}", "click": i} for i in range(70)]
    async with app.testing() as t:
        for click in sent:
            await t.send("clicks", value=click, key=f"click-{click['click']}")
        await t.drain()
        assert "grp-by-user-repartition" in app.topics
        assert app.topics["grp-by-user-repartition"].partitions == 4
    assert sorted(e.value["click"] for e in seen) == list(range(70))
    for event in seen:
        assert event.key == event.value["user"]
        assert event.topic == "grp-by-user-repartition"
        assert event.partition == partition_for_key(orjson.dumps(event.key), 4)


async def test_group_by_keeps_the_order_of_a_source_partition() -> None:
    """Events of one source partition and one new key reach the agent in their original order."""
    app = streams.App("grp")
    clicks = app.topic("clicks", partitions=1)
    seen: list[tuple[str, int]] = []

    @app.stream(clicks)
    async def agent(stream: streams.Stream) -> None:
        async for key, click in stream.group_by(lambda c: c["user"], name="by-user").items():
            seen.append((key, click["n"]))

    async with app.testing() as t:
        await t.send_many("clicks", [{"user": f"u{i % 3}", "n": i} for i in range(60)])
        await t.drain()
    for user in ("u0", "u1", "u2"):
        mine = [n for key, n in seen if key == user]
        assert mine == sorted(mine) and len(mine) == 20


async def test_group_by_feeds_a_table_correctly_per_key_with_4_partitions() -> None:
    """Counting per new key through group_by gives correct table rows and keyed outputs."""
    app = streams.App("grp")
    clicks = app.topic("clicks", partitions=4)
    totals = app.table("totals", default=int)
    out = app.topic("running-totals")

    @app.stream(clicks, sink=[out])
    async def count(stream: streams.Stream) -> Any:
        async for user, click in stream.group_by(lambda c: c["user"], name="by-user").items():
            totals[user] += click["amount"]
            yield totals[user]

    sent: list[dict[str, Any]] = [{"user": f"u{i % 9}", "amount": i} for i in range(200)]
    expected: Counter[str] = Counter()
    for click in sent:
        expected[click["user"]] += click["amount"]
    async with app.testing() as t:
        for i, click in enumerate(sent):
            await t.send("clicks", value=click, key=i)  # spread users over every partition
        await t.drain()
        assert t.table("totals") == dict(expected)
        state = t.worker.tables["totals"]
        out_events = await t.read("running-totals")
    assert len(out_events) == 200
    for user, total in expected.items():
        mine = [e for e in out_events if e.key == user]
        assert [e.value for e in mine] == sorted(e.value for e in mine)
        assert mine[-1].value == total
        assert {e.partition for e in mine} == {state.partition_of(user)}


async def test_filter_before_and_map_after_group_by() -> None:
    """Operations before group_by run before re-keying; those after run in the agent."""
    app = streams.App("grp")
    orders = app.topic("orders", partitions=2)
    out = app.topic("out", partitions=2)

    @app.stream(orders, sink=[out])
    async def agent(stream: streams.Stream) -> Any:
        regrouped = (
            stream.filter(lambda o: o["qty"] > 0)
            .group_by(lambda o: o["sku"], name="by-sku")
            .map(lambda o: o["qty"] * 2)
        )
        async for doubled in regrouped:
            yield doubled

    sent = [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 0}, {"sku": "a", "qty": 3}]
    async with app.testing() as t:
        for order in sent:
            await t.send("orders", value=order)
        await t.drain()
        out_events = await t.read("out")
    assert sorted((e.key, e.value) for e in out_events) == [("a", 2), ("a", 6)]


async def test_map_before_group_by_may_change_the_value_type() -> None:
    """A map before group_by may return another type than the source's (str → dict)."""
    app = streams.App("grp")
    lines = app.topic("lines", partitions=1, value_type=str)
    out = app.topic("out", partitions=1)

    @app.stream(lines, sink=[out])
    async def agent(stream: streams.Stream) -> Any:
        parsed = stream.map(lambda line: dict(zip(("user", "n"), line.split(":"), strict=True)))
        async for record in parsed.group_by(lambda r: r["user"], name="by-user"):
            yield int(record["n"])

    async with app.testing() as t:
        await t.send_many("lines", ["alice:1", "bob:2", "alice:3"])
        await t.drain()
        out_events = await t.read("out")
    assert sorted((e.key, e.value) for e in out_events) == [("alice", 1), ("alice", 3), ("bob", 2)]


async def test_group_by_twice_is_refused() -> None:
    """One group_by per agent: a second one is a ConfigurationError at start."""
    app = streams.App("grp")

    @app.stream(app.topic("orders"))
    async def agent(stream: streams.Stream) -> None:
        async for _ in stream.group_by(len, name="a").group_by(len, name="b"):
            pass

    with pytest.raises(streams.ConfigurationError, match="one group_by"):
        async with app.testing():
            pass


async def test_group_by_needs_a_name() -> None:
    """group_by(name="") is a ConfigurationError at start."""
    app = streams.App("grp")

    @app.stream(app.topic("orders"))
    async def agent(stream: streams.Stream) -> None:
        async for _ in stream.group_by(len, name=""):
            pass

    with pytest.raises(streams.ConfigurationError, match="name="):
        async with app.testing():
            pass
