"""Stream operators: filter, map, their chains, take(n, within=...), group_by, flat_map, peek,
through and branch."""

from __future__ import annotations

import collections
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

import streams
from runtime.partitioner import partition_for_key
from streams.testing import TestRun


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


# --- exactly-once through an abort and a crash --------------------------------------------------


class Crash(Exception):
    """A simulated process death (not a StreamsError: nothing catches and aborts it)."""


def abort_then_crash() -> Callable[[str], None]:
    """A fault hook: a broker error in the 2nd commit (the worker aborts, rewinds and goes on),
    then a crash after the offsets of the 5th (the worker is abandoned, its transaction open)."""
    seen: collections.Counter[str] = collections.Counter()

    def fault(step: str) -> None:
        seen[step] += 1
        if step == "after_outputs" and seen[step] == 2:
            raise streams.StreamsError("injected: the commit fails, the cycle aborts")
        if step == "after_offsets" and seen[step] == 5:
            raise Crash("injected: the process dies before the commit")

    return fault


async def committed_after_abort_and_crash(
    app: streams.App,
    tmp_path: Path,
    send: Callable[[TestRun], Awaitable[Any]],
    outputs: list[str],
    guarantee: str = "exactly_once",
) -> dict[str, list[streams.Event]]:
    """Run `app` on files through an aborted commit and a crash, finish with a new worker, and
    return the committed records of `outputs`."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {
        "broker": f"sqlite:///{tmp_path}/broker.db",
        "state_dir": str(tmp_path / "state"),
        "processing_guarantee": guarantee,
        "commit_every": 4,  # many commits: the faults find committed work behind them
        "max_poll_records": 3,
    }
    first = app.testing(**settings, fault=abort_then_crash())
    await first.start()
    await send(first)
    with pytest.raises(streams.StreamsError, match="injected"):
        await first.drain()  # aborted: the same worker rewinds and goes on
    with pytest.raises(Crash):
        await first.drain()
    await first.stop(clean=False)
    async with app.testing(**settings) as final:
        await final.drain()
        return {name: await final.read(name) for name in outputs}


# --- flat_map -----------------------------------------------------------------------------------


async def test_flat_map_gives_each_element_in_order_with_its_events_key_and_offset() -> None:
    """flat_map(fn): every element of fn(value), in order; the values of one event carry its
    key and offset; an empty result drops the event."""
    app = streams.App("ops")
    lines = app.topic("lines", partitions=1, value_type=str)
    seen: list[tuple[Any, Any, int]] = []

    @app.stream(lines)
    async def words(stream: streams.Stream) -> None:
        async for event in stream.flat_map(str.split).events():
            seen.append((event.key, event.value, event.offset))

    async with app.testing() as t:
        await t.send("lines", "the quick fox", key="a")
        await t.send("lines", "", key="b")  # no words: nothing
        await t.send("lines", "jumps over", key="c")
        await t.drain()
    assert seen == [
        ("a", "the", 0),
        ("a", "quick", 0),
        ("a", "fox", 0),
        ("c", "jumps", 2),
        ("c", "over", 2),
    ]


async def test_flat_map_runs_the_rest_of_the_chain_depth_first() -> None:
    """After a flat_map, each element goes through the rest of the chain, and reaches the
    agent, before the next element is taken (as in Kafka Streams)."""
    app = streams.App("ops")
    numbers = app.topic("numbers", partitions=1)
    trace: list[str] = []

    @app.stream(numbers)
    async def agent(stream: streams.Stream) -> None:
        chain = (
            stream.flat_map(lambda n: [n, n + 1])
            .peek(lambda n: trace.append(f"peek {n}"))
            .filter(lambda n: n != 11)
            .map(lambda n: n * 2)
        )
        async for n in chain:
            trace.append(f"agent {n}")

    async with app.testing() as t:
        await t.send_many("numbers", [10, 20])
        await t.drain()
    assert trace == [
        "peek 10",
        "agent 20",
        "peek 11",  # filtered out after the peek
        "peek 20",
        "agent 40",
        "peek 21",
        "agent 42",
    ]


async def test_flat_map_before_group_by_rekeys_each_element() -> None:
    """flat_map before group_by runs in the repartition step: each element is re-keyed and
    reaches the worker owning its key, so a word count over sentences is right per word."""
    app = streams.App("ops")
    sentences = app.topic("sentences", partitions=4, value_type=str)
    counts = app.table("counts", default=int)

    @app.stream(sentences)
    async def count(stream: streams.Stream) -> None:
        words = stream.flat_map(str.split).group_by(lambda w: w, name="by-word")
        async for word in words:
            counts[word] += 1

    sent = [f"w{i % 5} w{i % 3} w{i % 7}" for i in range(40)]
    async with app.testing() as t:
        for i, sentence in enumerate(sent):
            await t.send("sentences", sentence, key=i)  # sentences on every partition
        await t.drain()
        assert t.table("counts") == Counter(w for s in sent for w in s.split())
        assert app.topics["ops-by-word-repartition"].value.name == "json"


async def test_flat_map_then_take_gives_every_value_once() -> None:
    """take(n) after a flat_map: lists of at most n, every value once, in order, also when an
    event's values straddle two lists."""
    app = streams.App("ops")
    numbers = app.topic("numbers", partitions=1)
    out = app.topic("out", partitions=1)

    @app.stream(numbers, sink=[out])
    async def batches(stream: streams.Stream) -> Any:
        async for batch in stream.flat_map(lambda n: [n] * (n % 4)).take(3, within=60.0):
            yield batch

    async with app.testing(max_poll_records=5) as t:
        await t.send_many("numbers", range(30))
        await t.drain()
        lists = values(await t.read("out"))
    assert all(1 <= len(batch) <= 3 for batch in lists)
    assert [v for batch in lists for v in batch] == [n for n in range(30) for _ in range(n % 4)]


@pytest.mark.parametrize("where", ["in the agent", "before group_by"])
async def test_a_failing_flat_map_names_its_event(where: str) -> None:
    """A flat_map whose function (or the iterable it returns) raises stops the worker with an
    AgentError naming the event, in the agent or in the repartition step; nothing commits."""
    app = streams.App("ops")
    numbers = app.topic("numbers", partitions=1)
    out = app.topic("out", partitions=1)

    def digits(n: int) -> Any:
        yield n
        if n == 3:
            raise ValueError("no three")

    @app.stream(numbers, sink=[out])
    async def agent(stream: streams.Stream) -> Any:
        chain = stream.flat_map(digits)
        if where == "before group_by":
            chain = chain.group_by(lambda n: n % 2, name="by-parity")
        async for n in chain:
            yield n

    async with app.testing() as t:
        await t.send_many("numbers", range(5))
        with pytest.raises(streams.AgentError, match=r"numbers\[0\]@3.*no three"):
            await t.drain()
        assert await t.read("out") == []
        await t.stop(clean=False)


async def test_flat_map_is_exactly_once_through_an_abort_and_a_crash(tmp_path: Path) -> None:
    """The values of an event are committed with its offset: after an aborted commit and a
    crash, every value is in the output once; under at-least-once the same faults repeat
    some (so this check does see duplicates)."""

    def make_app() -> streams.App:
        app = streams.App("ops")
        lines = app.topic("lines", partitions=2, value_type=str)
        out = app.topic("out", partitions=2, value_type=str)

        @app.stream(lines, sink=[out])
        async def words(stream: streams.Stream) -> Any:
            async for word in stream.flat_map(str.split):
                yield word

        return app

    sent = [" ".join(f"{i}.{j}" for j in range(i % 4 + 1)) for i in range(40)]
    expected = sorted(w for line in sent for w in line.split())

    async def send(t: TestRun) -> None:
        await t.send_many("lines", sent, key="k")

    out = await committed_after_abort_and_crash(make_app(), tmp_path / "eos", send, ["out"])
    assert sorted(values(out["out"])) == expected
    assert values(out["out"]) == [w for line in sent for w in line.split()]  # one key: in order
    alo = await committed_after_abort_and_crash(
        make_app(), tmp_path / "alo", send, ["out"], guarantee="at_least_once"
    )
    assert len(alo["out"]) > len(expected)


# --- peek ---------------------------------------------------------------------------------------


async def test_peek_sees_each_value_and_passes_it_on_unchanged() -> None:
    """peek(fn) calls fn with each value, before and after group_by; values are unchanged."""
    app = streams.App("ops")
    orders = app.topic("orders", partitions=2)
    out = app.topic("out", partitions=2)
    before: list[Any] = []
    after: list[Any] = []

    @app.stream(orders, sink=[out])
    async def agent(stream: streams.Stream) -> Any:
        chain = (
            stream.peek(before.append)
            .group_by(lambda o: o["sku"], name="by-sku")
            .peek(after.append)
            .map(lambda o: o["qty"])
        )
        async for qty in chain:
            yield qty

    sent = [{"sku": f"s{i % 3}", "qty": i} for i in range(12)]
    async with app.testing() as t:
        for order in sent:
            await t.send("orders", order)
        await t.drain()
        out_events = await t.read("out")
    assert sorted(before, key=lambda o: o["qty"]) == sent
    assert sorted(after, key=lambda o: o["qty"]) == sent
    expected = sorted((o["sku"], o["qty"]) for o in sent)
    assert sorted((e.key, e.value) for e in out_events) == expected


async def test_peek_is_exactly_once_for_outputs_and_may_repeat_its_side_effects(
    tmp_path: Path,
) -> None:
    """peek's values reach the sink once through an abort and a crash; its function is called
    again for events processed again (a side effect outside the transaction, as documented)."""
    peeked: list[int] = []
    app = streams.App("ops")
    numbers = app.topic("numbers", partitions=1)
    out = app.topic("out", partitions=1)

    @app.stream(numbers, sink=[out])
    async def agent(stream: streams.Stream) -> Any:
        async for n in stream.peek(peeked.append).map(lambda n: n * 3):
            yield n

    async def send(t: TestRun) -> None:
        await t.send_many("numbers", range(30))

    out_events = (await committed_after_abort_and_crash(app, tmp_path, send, ["out"]))["out"]
    assert values(out_events) == [n * 3 for n in range(30)]
    assert set(peeked) == set(range(30)) and len(peeked) > 30  # replayed events peeked again


# --- through ------------------------------------------------------------------------------------


async def test_through_forwards_to_the_topic_and_reads_on_from_it() -> None:
    """through(topic): each value (after the operations before it) is written to the topic,
    keyed as its event; the agent then reads that topic's records, on its partitions."""
    app = streams.App("ops")
    clicks = app.topic("clicks", partitions=4)
    audited = app.topic("audited", partitions=4)
    seen: list[streams.Event] = []

    @app.stream(clicks)
    async def agent(stream: streams.Stream) -> None:
        chain = stream.filter(lambda c: c["n"] % 2 == 0).through(audited).map(lambda c: c["n"])
        async for event in chain.events():
            seen.append(event)

    async with app.testing() as t:
        for i in range(20):
            await t.send("clicks", {"n": i}, key=f"user{i % 5}")
        await t.send("clicks", {"n": 100})  # no key: forwarded without one
        await t.drain()
        forwarded = await t.read("audited")
    assert sorted(e.value["n"] for e in forwarded) == [*range(0, 20, 2), 100]
    assert {(e.key, e.value["n"]) for e in forwarded} == {
        (f"user{i % 5}", i) for i in range(0, 20, 2)
    } | {(None, 100)}
    assert sorted(e.value for e in seen) == [*range(0, 20, 2), 100]
    for event in seen:
        assert event.topic == "audited"
        if event.key is not None:
            assert event.partition == partition_for_key(orjson.dumps(event.key), 4)
    assert "ops-audited-repartition" not in app.topics  # the user's topic, no internal one


async def test_through_a_topic_name_declares_it_and_refuses_its_own_source() -> None:
    """through("name") declares the topic; through the agent's own source is refused."""
    app = streams.App("ops")

    @app.stream(app.topic("orders"))
    async def agent(stream: streams.Stream) -> None:
        async for _ in stream.through("orders-copy"):
            pass

    async with app.testing():
        assert "orders-copy" in app.topics

    looping = streams.App("ops")

    @looping.stream(looping.topic("orders"))
    async def loop(stream: streams.Stream) -> None:
        async for _ in stream.through("orders"):
            pass

    with pytest.raises(streams.ConfigurationError, match="its own output forever"):
        async with looping.testing():
            pass


async def test_through_and_group_by_together_are_refused() -> None:
    """One repartition step per agent: group_by after through is a ConfigurationError."""
    app = streams.App("ops")

    @app.stream(app.topic("orders"))
    async def agent(stream: streams.Stream) -> None:
        async for _ in stream.through("copy").group_by(len, name="by-len"):
            pass

    with pytest.raises(streams.ConfigurationError, match="one group_by or through"):
        async with app.testing():
            pass


async def test_through_is_exactly_once_through_an_abort_and_a_crash(tmp_path: Path) -> None:
    """The forwarded records and the agent's outputs from them are each committed once."""
    app = streams.App("ops")
    numbers = app.topic("numbers", partitions=2)
    copy = app.topic("copy", partitions=2)
    out = app.topic("out", partitions=2)

    @app.stream(numbers, sink=[out])
    async def agent(stream: streams.Stream) -> Any:
        async for n in stream.through(copy).map(lambda n: -n):
            yield n

    async def send(t: TestRun) -> None:
        for i in range(30):
            await t.send("numbers", i, key=f"k{i % 3}")

    got = await committed_after_abort_and_crash(app, tmp_path, send, ["copy", "out"])
    assert sorted(values(got["copy"])) == list(range(30))
    assert sorted(values(got["out"])) == sorted(-n for n in range(30))
    for key in ("k0", "k1", "k2"):  # in order per key
        assert [e.value for e in got["out"] if e.key == key] == [
            -n for n in range(30) if f"k{n % 3}" == key
        ]


# --- branch -------------------------------------------------------------------------------------


def branching_app(default: bool) -> streams.App:
    """Orders split into large, refunds and (with `default`) the rest; large orders are then
    processed by an agent of their own, which keeps a table."""
    app = streams.App("shop")
    orders = app.topic("orders", partitions=2)
    large = app.topic("large", partitions=2)
    refunds = app.topic("refunds", partitions=2)
    rest = app.topic("rest", partitions=2)
    alerts = app.topic("alerts", partitions=2)
    large_total = app.table("large-total", default=float, partitions=2)

    @app.stream(orders)
    async def route(stream: streams.Stream) -> None:
        await stream.branch(
            {large: lambda o: o["total"] >= 100, refunds: lambda o: o["total"] < 0},
            default=rest if default else None,
        )

    @app.stream(large, sink=[alerts])
    async def on_large(stream: streams.Stream) -> Any:
        async for customer, order in stream.items():
            large_total[customer] += order["total"]
            yield {"customer": customer, "total": order["total"]}

    return app


ORDERS = [{"n": i, "total": t} for i, t in enumerate([150, 20, -5, 100, 99.5, -1, 300, 0])]


async def send_orders(t: TestRun) -> None:
    for order in ORDERS:
        await t.send("orders", order, key=f"c{order['n'] % 3}")


async def test_branch_sends_each_value_to_the_first_matching_topic_or_the_default() -> None:
    """branch({topic: predicate}, default=topic): each value goes to exactly one topic, the
    first whose predicate matches, keyed as its event; a branch is a stream of its own."""
    app = branching_app(default=True)
    async with app.testing() as t:
        await send_orders(t)
        await t.drain()
        got = {name: await t.read(name) for name in ("large", "refunds", "rest", "alerts")}
        table = t.table("large-total")
    by_n = {name: sorted(e.value["n"] for e in got[name]) for name in ("large", "refunds", "rest")}
    assert by_n == {"large": [0, 3, 6], "refunds": [2, 5], "rest": [1, 4, 7]}
    assert sorted(values(got["alerts"]), key=lambda a: a["total"]) == [
        {"customer": "c0", "total": 100},
        {"customer": "c0", "total": 150},
        {"customer": "c0", "total": 300},
    ]
    assert {e.key for e in got["large"]} == {"c0"}
    assert table == {"c0": 550.0}


async def test_branch_without_a_default_drops_unmatched_values() -> None:
    """Values no predicate matches go nowhere when there is no default."""
    app = branching_app(default=False)
    async with app.testing() as t:
        await send_orders(t)
        await t.drain()
        assert sorted(e.value["n"] for e in await t.read("large")) == [0, 3, 6]
        assert sorted(e.value["n"] for e in await t.read("refunds")) == [2, 5]
        assert await t.read("rest") == []


async def test_branch_needs_topics_and_predicates() -> None:
    """An empty branch(), a predicate that is not callable or another app's topic are
    ConfigurationErrors when the app starts."""
    other = streams.App("other").topic("elsewhere")
    cases: list[tuple[Any, str]] = [
        ({}, "at least one"),
        ({"big": "not callable"}, "not callable"),
        ({other: bool}, "not a topic of app"),
    ]
    for branches, message in cases:
        app = streams.App("ops")

        @app.stream(app.topic("orders"))
        async def agent(stream: streams.Stream, branches: Any = branches) -> None:
            await stream.branch(branches)

        with pytest.raises(streams.ConfigurationError, match=message):
            async with app.testing():
                pass


async def test_branch_is_exactly_once_through_an_abort_and_a_crash(tmp_path: Path) -> None:
    """Each order reaches one branch topic once, and the large-order agent's outputs and table
    count each large order once, through an aborted commit and a crash."""
    app = branching_app(default=True)
    many = [{"n": i, "total": (i * 37) % 250 - 50} for i in range(40)]

    async def send(t: TestRun) -> None:
        for order in many:
            await t.send("orders", order, key=f"c{order['n'] % 3}")

    got = await committed_after_abort_and_crash(
        app, tmp_path, send, ["large", "refunds", "rest", "alerts"]
    )
    large = [o for o in many if o["total"] >= 100]
    refunds = [o for o in many if o["total"] < 0]
    rest = [o for o in many if 0 <= o["total"] < 100]
    assert sorted(e.value["n"] for e in got["large"]) == [o["n"] for o in large]
    assert sorted(e.value["n"] for e in got["refunds"]) == [o["n"] for o in refunds]
    assert sorted(e.value["n"] for e in got["rest"]) == [o["n"] for o in rest]
    assert sorted(e.value["total"] for e in got["alerts"]) == sorted(o["total"] for o in large)
