"""Records that cannot be processed: on_error="fail" | "skip" | "dead_letter", per app and per
agent, for decode errors, group_by, agents and sink encoding, under the exactly-once cycle.

The failing agent below writes the table and yields an output for a bad order before it
raises: neither may be committed (the worker redoes the cycle without the record), and the
good orders must each be processed exactly once.
"""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import streams
from runtime.errors import EXIT_DATAERR, exit_code
from runtime.types import TopicPartition
from runtime.worker import STEPS

DEAD = "shop-dead-letter"


def shop(**agent_options: Any) -> streams.App:
    """Orders {"id", "qty"} keyed by customer; the agent adds qty to the customer's revenue,
    yields two outputs per order, and divides by qty between them: qty 0 fails the order
    after a table write and an output."""
    app = streams.App("shop")
    orders = app.topic("orders", partitions=2)
    totals = app.topic("totals", partitions=2)
    revenue = app.table("revenue", default=int, partitions=2)

    @app.stream(orders, sink=[totals], **agent_options)
    async def total(stream: streams.Stream) -> Any:
        async for customer, order in stream.items():
            revenue[customer] += order["qty"]
            yield {"id": order["id"], "step": 1}
            yield {"id": order["id"], "step": 2, "share": 100 // order["qty"]}

    return app


async def send_orders(t: Any, orders: list[tuple[str, int]]) -> None:
    for i, (customer, qty) in enumerate(orders):
        await t.send("orders", {"id": i, "qty": qty}, key=customer)


def expected(orders: list[tuple[str, int]]) -> tuple[dict[str, list[Any]], dict[str, int]]:
    """The reference model: per customer, the outputs of its good orders in order; and the
    revenue per customer counting good orders only."""
    outputs: dict[str, list[Any]] = collections.defaultdict(list)
    revenue: dict[str, int] = {}
    for i, (customer, qty) in enumerate(orders):
        if qty == 0:
            continue
        outputs[customer] += [{"id": i, "step": 1}, {"id": i, "step": 2, "share": 100 // qty}]
        revenue[customer] = revenue.get(customer, 0) + qty
    return dict(outputs), revenue


def per_key(events: list[Any]) -> dict[str, list[Any]]:
    grouped: dict[str, list[Any]] = collections.defaultdict(list)
    for event in events:  # sorted by (partition, offset): a key's outputs in order
        grouped[event.key].append(event.value)
    return dict(grouped)


def header(record: Any, name: str) -> bytes:
    values = [v for k, v in record.headers or () if k == f"streams.error.{name}"]
    assert len(values) == 1, (name, record.headers)
    return values[0]


async def committed(t: Any, topic: str, partitions: int) -> int:
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    return sum((await t.worker.consumer.committed(tps)).values())


# --- agent exceptions ---------------------------------------------------------------------------


async def test_skip_drops_the_failed_orders_effects_and_goes_on() -> None:
    """on_error="skip": the bad order's table write and first output are not committed, the
    good orders are processed exactly once, the bad one is counted and its offset committed."""
    app = shop()
    orders = [("ada", 2), ("bob", 1), ("ada", 0), ("bob", 4), ("ada", 5), ("bob", 0)]
    async with app.testing(on_error="skip") as t:
        await send_orders(t, orders)
        await t.drain()
        outputs, revenue = expected(orders)
        assert per_key(await t.read("totals")) == outputs
        assert t.table("revenue") == revenue
        assert t.worker.skipped == 2
        assert await committed(t, "orders", 2) == len(orders)


async def test_dead_letter_sends_the_record_unchanged_with_where_and_why() -> None:
    """on_error="dead_letter": the bad record goes to <app>-dead-letter as it was written,
    with its headers, in its source partition, with streams.error.* headers."""
    app = shop()
    async with app.testing(on_error="dead_letter") as t:
        await t.send("orders", {"id": 0, "qty": 3}, key="ada")
        await t.send("orders", {"id": 1, "qty": 0}, key="ada", headers=[("trace", b"x1")])
        await t.drain()
        source = [r async for r in t.transport.committed_records("orders", 2)]
        bad = next(r for r in source if orjson.loads(r.value)["id"] == 1)
        dead = [r async for r in t.transport.committed_records(DEAD, 2)]
        assert len(dead) == 1
        letter = dead[0]
        assert (letter.key, letter.value, letter.timestamp) == (bad.key, bad.value, bad.timestamp)
        assert letter.partition == bad.partition
        assert letter.headers[0] == ("trace", b"x1")  # the record's own headers first
        assert header(letter, "topic") == b"orders"
        assert header(letter, "partition") == str(bad.partition).encode()
        assert header(letter, "offset") == str(bad.offset).encode()
        assert header(letter, "agent") == b"total"
        assert header(letter, "stage") == b"agent"
        assert header(letter, "exception") == b"ZeroDivisionError"
        assert header(letter, "message") == b"integer division or modulo by zero"
        assert per_key(await t.read("totals")) == {
            "ada": [{"id": 0, "step": 1}, {"id": 0, "step": 2, "share": 33}]
        }
        assert t.table("revenue") == {"ada": 3}
        assert t.worker.dead_letters == 1


async def test_fail_stops_with_one_line_naming_the_record_and_exit_code_65() -> None:
    """on_error="fail" (the default): RecordError whose one-line message ends with where and
    why; nothing commits; the worker process would exit with EXIT_DATAERR."""
    app = shop()
    async with app.testing() as t:
        await send_orders(t, [("ada", 1), ("ada", 0)])
        with pytest.raises(streams.RecordError) as failure:
            await t.drain()
        message = str(failure.value)
        assert "\n" not in message
        assert message.startswith("agent 'total' failed at orders[")
        assert message.endswith(
            "]@1 (key 'ada'): ZeroDivisionError('integer division or modulo by zero')"
        )
        assert isinstance(failure.value, streams.AgentError)
        assert exit_code(failure.value) == EXIT_DATAERR == 65
        assert await t.read("totals") == []
        assert await committed(t, "orders", 2) == 0


async def test_per_agent_on_error_overrides_the_apps() -> None:
    """@app.stream(..., on_error="skip") in an app whose on_error is "fail": that agent skips,
    another agent on the same topic still sees every record."""
    app = shop(on_error="skip")
    seen: list[int] = []

    @app.stream("orders")
    async def audit(stream: streams.Stream) -> None:
        async for order in stream:
            seen.append(order["id"])

    orders = [("ada", 1), ("ada", 0), ("ada", 2)]
    async with app.testing() as t:
        assert t.settings.on_error == "fail"
        await send_orders(t, orders)
        await t.drain()
        assert per_key(await t.read("totals")) == expected(orders)[0]
        assert t.worker.skipped == 1
    assert sorted(seen) == [0, 1, 2]  # the audit agent is restarted, never skips


async def test_per_agent_dead_letter_topic() -> None:
    """dead_letter="bad-orders" on an agent: its failures go there (implying dead_letter)."""
    app = shop(dead_letter="bad-orders")
    async with app.testing() as t:
        await send_orders(t, [("ada", 0), ("bob", 7)])
        await t.drain()
        letters = await t.read("bad-orders")
        assert [orjson.loads(e.value) for e in letters] == [{"id": 0, "qty": 0}]
        assert DEAD not in app.topics
    with pytest.raises(streams.ConfigurationError, match="on_error"):
        shop(on_error="ignore")
    with pytest.raises(streams.ConfigurationError, match="dead_letter"):
        shop(on_error="skip", dead_letter="bad-orders")


async def test_errors_of_the_topology_are_not_skipped() -> None:
    """A table key of a partition the worker does not own is the app's mistake, not the
    record's: it stops the worker under any policy."""
    app = streams.App("shop")
    orders = app.topic("orders", partitions=2)
    revenue = app.table("revenue", default=int, partitions=2)

    @app.stream(orders, on_error="skip")
    async def total(stream: streams.Stream) -> None:
        async for order in stream:
            revenue[order["customer"]] += 1  # not re-keyed by customer

    async with app.testing() as t:
        await t.drain()  # partitions assigned and restored
        state = t.worker.tables["revenue"]
        state.detach(1)  # as if another worker owned partition 1 of the table
        customer = next(c for c in map(str, range(100)) if state.partition_of(c) == 1)
        await t.send("orders", {"customer": customer}, partition=0)
        with pytest.raises(streams.AgentError, match="TableKeyNotOwnedError"):
            await t.drain()


# --- decode errors ------------------------------------------------------------------------------


async def write_raw(t: Any, topic: str, *records: tuple[bytes | None, bytes | None]) -> None:
    producer = t.transport.producer()
    for key, value in records:
        await producer.send(topic, value, key, partition=0)
    await producer.close()


def copying_app(**agent_options: Any) -> tuple[streams.App, list[Any]]:
    app = streams.App("shop")
    source = app.topic("in", partitions=1, key_type=str)
    sink = app.topic("out", partitions=1, key_type=str)
    seen: list[Any] = []

    @app.stream(source, sink=[sink], **agent_options)
    async def copy(stream: streams.Stream) -> Any:
        async for value in stream:
            seen.append(value)
            yield value

    return app, seen


async def test_undecodable_key_and_value_are_dead_lettered() -> None:
    """A key (`streams send --key ada` to a JSON... here a str-keyed topic given bad UTF-8)
    or value the codecs cannot decode goes to the dead-letter topic unchanged; stage decode."""
    app, seen = copying_app()
    async with app.testing(on_error="dead_letter") as t:
        await write_raw(t, "in", (b"k", b"1"), (b"\xff", b"2"), (b"k", b"{no"), (b"k", b"4"))
        await t.drain()
        dead = await t.read(DEAD)
        assert [(e.key, e.value, e.offset) for e in dead] == [(b"\xff", b"2", 0), (b"k", b"{no", 1)]
        assert [header(e, "offset") for e in dead] == [b"1", b"2"]
        assert {header(e, "stage") for e in dead} == {b"decode"}
        assert header(dead[1], "exception") == b"streams.codecs.DecodeError"
        assert b"not JSON" in header(dead[1], "message")
        assert [e.value for e in await t.read("out")] == [1, 4]
        assert (t.worker.decode_errors, t.worker.dead_letters) == (2, 2)
    assert seen == [1, 4]


async def test_on_decode_error_overrides_on_error_for_decode_errors() -> None:
    """on_error="dead_letter", on_decode_error="skip": decode errors are skipped, agent
    errors dead-lettered; on_decode_error="stop" is on_error "fail" for decode errors."""
    app = shop()
    async with app.testing(on_error="dead_letter", on_decode_error="skip") as t:
        await send_orders(t, [("ada", 0)])
        await write_raw(t, "orders", (b'"ada"', b"{no"))
        await t.drain()
        assert [header(e, "stage") for e in await t.read(DEAD)] == [b"agent"]
        assert (t.worker.skipped, t.worker.decode_errors) == (1, 1)
    async with app.testing(on_error="skip", on_decode_error="stop") as t:
        await send_orders(t, [("ada", 0)])
        await write_raw(t, "orders", (b'"ada"', b"{no"))
        with pytest.raises(
            streams.RecordDecodeError,
            match=r"cannot decode the value \(codec json\) at orders\[0\]@0: not JSON",
        ):
            await t.drain()


async def test_on_error_skip_covers_decode_errors() -> None:
    """Without on_decode_error, on_error="skip" skips undecodable records too."""
    app, seen = copying_app()
    async with app.testing(on_error="skip") as t:
        await write_raw(t, "in", (b"k", b"{no"), (b"k", b"2"))
        await t.drain()
        assert (t.worker.decode_errors, t.worker.skipped) == (1, 1)
    assert seen == [2]


# --- group_by, sinks and take() -----------------------------------------------------------------


def regrouping_app(**agent_options: Any) -> streams.App:
    """group_by a customer field after a map that needs "qty": a missing field fails the map,
    a missing customer the key function."""
    app = streams.App("shop")
    orders = app.topic("orders", partitions=2)
    out = app.topic("out", partitions=2)
    revenue = app.table("revenue", default=int, partitions=2)

    @app.stream(orders, sink=[out], **agent_options)
    async def total(stream: streams.Stream) -> Any:
        doubled = stream.map(lambda o: {**o, "qty": o["qty"] * 2})
        async for order in doubled.group_by(lambda o: o["customer"], name="by-customer"):
            revenue[order["customer"]] += order["qty"]
            yield order["qty"]

    return app


@pytest.mark.parametrize("policy", ["skip", "dead_letter"])
async def test_group_by_failures_follow_the_agents_policy(policy: str) -> None:
    """A map before group_by or the key function raising: the source record is skipped or
    dead-lettered (stage group_by); the rest is re-keyed and processed once."""
    app = regrouping_app(on_error=policy)
    async with app.testing() as t:
        await t.send("orders", {"customer": "ada", "qty": 1}, key="x")
        await t.send("orders", {"customer": "ada"}, key="x")  # no qty: the map raises
        await t.send("orders", {"qty": 3}, key="x")  # no customer: the key function raises
        await t.send("orders", {"customer": "ada", "qty": 4}, key="x")
        await t.drain()
        assert t.table("revenue") == {"ada": 10}
        assert [e.value for e in await t.read("out")] == [2, 8]
        if policy == "skip":
            assert t.worker.skipped == 2
        else:
            dead = [r async for r in t.transport.committed_records(DEAD, 2)]
            assert [orjson.loads(r.value) for r in dead] == [{"customer": "ada"}, {"qty": 3}]
            assert {header(r, "stage") for r in dead} == {b"group_by"}
            assert {header(r, "topic") for r in dead} == {b"orders"}
            assert [header(r, "exception") for r in dead] == [b"KeyError", b"KeyError"]


async def test_group_by_failure_under_fail_names_the_source_record() -> None:
    app = regrouping_app()
    async with app.testing() as t:
        await t.send("orders", {"qty": 3}, key="x", partition=1)
        with pytest.raises(
            streams.AgentError,
            match=r"^agent 'total': its group_by failed at orders\[1\]@0: KeyError\('customer'\)$",
        ):
            await t.drain()


async def test_an_output_the_sink_cannot_encode_drops_the_events_outputs() -> None:
    """The sink's codec rejects the second output of an event: under skip, its first output
    and its table write are not committed either (stage sink in the dead letter)."""
    app = streams.App("shop")
    orders = app.topic("orders", partitions=1)
    texts = app.topic("texts", partitions=1, value_type=str)
    seen = app.table("seen", default=int, partitions=1)

    @app.stream(orders, sink=[texts], on_error="dead_letter")
    async def describe(stream: streams.Stream) -> Any:
        async for key, value in stream.items():
            seen[key] += 1
            yield f"order {value}"
            yield value if isinstance(value, str) else {"not": "text"}

    async with app.testing() as t:
        await t.send("orders", "a", key="k")
        await t.send("orders", 5, key="k")
        await t.send("orders", "c", key="k")
        await t.drain()
        assert [e.value for e in await t.read("texts")] == ["order a", "a", "order c", "c"]
        assert t.table("seen") == {"k": 2}
        dead = await t.read(DEAD)
        assert [(e.value, header(e, "stage")) for e in dead] == [(b"5", b"sink")]


async def test_a_failing_take_list_fails_each_of_its_events() -> None:
    """take(): if the agent raises on a list, every event of that list is skipped or
    dead-lettered (one dead letter each); the other lists are processed once."""
    app = streams.App("shop")
    numbers = app.topic("numbers", partitions=1)
    sums = app.topic("sums", partitions=1)

    @app.stream(numbers, sink=[sums], on_error="dead_letter")
    async def add(stream: streams.Stream) -> Any:
        async for values in stream.take(3):
            if 13 in values:
                raise ValueError("unlucky")
            yield sum(values)

    async with app.testing(max_poll_records=3) as t:
        await t.send_many("numbers", range(10, 19), key="k")
        await t.drain()
        assert [e.value for e in await t.read("sums")] == [33, 51]
        dead = await t.read(DEAD)
        assert [int(e.value) for e in dead] == [13, 14, 15]
        assert [header(e, "offset") for e in dead] == [b"3", b"4", b"5"]


# --- properties and crashes ---------------------------------------------------------------------

order_lists = st.lists(
    st.tuples(st.sampled_from(["ada", "bob", "cy"]), st.integers(min_value=0, max_value=3)),
    max_size=40,
)


async def run_and_check(
    app: streams.App, orders: list[tuple[str, int]], policy: str, **overrides: Any
) -> None:
    async with app.testing(on_error=policy, **overrides) as t:
        await send_orders(t, orders)
        await t.drain()
        outputs, revenue = expected(orders)
        assert per_key(await t.read("totals")) == outputs
        assert t.table("revenue") == revenue
        bad = sorted(i for i, (_, qty) in enumerate(orders) if qty == 0)
        if policy == "dead_letter":
            dead = [orjson.loads(e.value)["id"] for e in await t.read(DEAD)]
            assert sorted(dead) == bad and t.worker.dead_letters == len(bad)
        else:
            assert DEAD not in t.worker.spec.topics and t.worker.skipped == len(bad)
        assert await committed(t, "orders", 2) == len(orders)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    orders=order_lists,
    policy=st.sampled_from(["skip", "dead_letter"]),
    max_poll_records=st.integers(min_value=1, max_value=30),
    commit_every=st.integers(min_value=1, max_value=50),
)
def test_outputs_and_table_match_the_model_wherever_the_bad_records_are(
    orders: list[tuple[str, int]], policy: str, max_poll_records: int, commit_every: int
) -> None:
    """Random bad records at random places, random batch and commit sizes: the committed
    outputs, table and dead letters are those of the good and bad records, once each."""
    asyncio.run(
        run_and_check(
            shop(),
            orders,
            policy,
            max_poll_records=max_poll_records,
            commit_every=commit_every,
        )
    )


class Crash(Exception):
    """A simulated process death (not a StreamsError: nothing catches and aborts it)."""


def crash_at(step: str, commit: int) -> Any:
    seen = collections.Counter[str]()

    def fault(at: str) -> None:
        seen[at] += 1
        if at == step and seen[at] == commit:
            raise Crash(f"{step} of commit {commit}")

    return fault


@pytest.mark.parametrize("step", STEPS)
async def test_dead_letters_are_exactly_once_across_a_crash_at_each_step(
    tmp_path: Path, step: str
) -> None:
    """A worker dies at a commit step (its transaction left open), a new one finishes on the
    same files: every bad record once in the dead-letter topic, every good one's outputs
    once, the table exact."""
    app = shop()
    orders = [("ada", 1 + i % 3) if i % 7 else ("bob", 0) for i in range(60)]

    def run(fault: Any = None) -> Any:
        return app.testing(
            broker=f"sqlite:///{tmp_path}/broker.db",
            state_dir=str(tmp_path / "state"),
            on_error="dead_letter",
            commit_every=5,
            max_poll_records=4,
            fault=fault,
        )

    attempt = run(crash_at(step, 3))
    await attempt.start()
    await send_orders(attempt, orders)
    with pytest.raises(Crash):
        await attempt.drain()
    await attempt.stop(clean=False)
    async with run() as final:
        await final.drain()
        outputs, revenue = expected(orders)
        assert per_key(await final.read("totals")) == outputs
        assert final.table("revenue") == revenue
        dead = [orjson.loads(e.value)["id"] for e in await final.read(DEAD)]
        assert sorted(dead) == [i for i, (_, qty) in enumerate(orders) if qty == 0]


async def test_at_least_once_skips_too() -> None:
    """Under at-least-once the failed order is skipped the same way: the table counts good
    orders only and every good output is there (outputs written before the abort may be
    there twice, and the failed order's first output may be there: at-least-once writes as
    it goes, as the docs say)."""
    app = shop()
    orders = [("ada", 2), ("ada", 0), ("bob", 3), ("ada", 1)]
    async with app.testing(on_error="skip", processing_guarantee="at_least_once") as t:
        await send_orders(t, orders)
        await t.drain()
        outputs, revenue = expected(orders)
        assert t.table("revenue") == revenue
        written = per_key(await t.read("totals"))
        for customer, values in outputs.items():
            assert all(value in written[customer] for value in values)
        assert t.worker.skipped == 1


async def test_dead_letter_topic_given_as_a_topic_keeps_its_codecs_for_readers() -> None:
    """dead_letter=<Topic> (declared with JSON values): the record's bytes go there unchanged,
    so the app reads them back with that topic's codec; on_decode_error="dead_letter" alone
    (on_error "fail") dead-letters decode errors and still stops at an agent error."""
    app = streams.App("shop")
    orders = app.topic("orders", partitions=1)
    rejected = app.topic("rejected", partitions=1)

    @app.stream(orders, dead_letter=rejected)
    async def check(stream: streams.Stream) -> None:
        async for order in stream:
            if order["qty"] < 0:
                raise ValueError("negative")

    async with app.testing() as t:
        await t.send("orders", {"qty": -1})
        await t.drain()
        assert [e.value for e in await t.read(rejected)] == [{"qty": -1}]

    app = shop()
    async with app.testing(on_decode_error="dead_letter") as t:
        await write_raw(t, "orders", (b'"ada"', b"{no"))
        await send_orders(t, [("bob", 1)])
        await t.drain()
        assert [e.value for e in await t.read(DEAD)] == [b"{no"]
        await send_orders(t, [("bob", 0)])
        with pytest.raises(streams.AgentError, match="ZeroDivisionError"):
            await t.drain()


record_kinds = st.lists(
    st.tuples(
        st.sampled_from(["good", "not json", "no customer", "no total"]),
        st.sampled_from(["ada", "bob", "cy", "dee"]),
    ),
    max_size=30,
)


def order_bytes(i: int, kind: str, customer: str) -> bytes:
    if kind == "not json":
        return b"{order %d" % i
    order: dict[str, Any] = {"id": i, "customer": customer, "total": i % 4 + 1}
    if kind == "no customer":
        del order["customer"]
    elif kind == "no total":
        del order["total"]
    return orjson.dumps(order)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=record_kinds,
    max_poll_records=st.integers(min_value=1, max_value=20),
    commit_every=st.integers(min_value=1, max_value=30),
)
def test_every_kind_of_bad_record_once_in_the_dead_letters(
    records: list[tuple[str, str]], max_poll_records: int, commit_every: int
) -> None:
    """Undecodable records, group_by failures and agent failures at random places, with
    random batch and commit sizes: each bad record is dead-lettered once with its stage, each
    good one billed once, the tables hold the good ones only."""
    app = streams.App("shop", on_error="dead_letter")
    orders = app.topic("orders", partitions=2)
    bills = app.topic("bills", partitions=2)
    count = app.table("count", default=int, partitions=2)
    revenue = app.table("revenue", default=int, partitions=2)

    @app.stream(orders, sink=[bills])
    async def bill(stream: streams.Stream) -> Any:
        async for order in stream.group_by(lambda o: o["customer"], name="by-customer"):
            count[order["customer"]] += 1  # before the failure: must be rolled back
            revenue[order["customer"]] += order["total"]
            yield order["id"]

    async def run() -> None:
        async with app.testing(max_poll_records=max_poll_records, commit_every=commit_every) as t:
            producer = t.transport.producer()
            for i, (kind, customer) in enumerate(records):
                producer.produce("orders", order_bytes(i, kind, customer), orjson.dumps(customer))
            await producer.close()
            await t.drain()
            good = [(i, c) for i, (kind, c) in enumerate(records) if kind == "good"]
            assert sorted(e.value for e in await t.read("bills")) == [i for i, _ in good]
            expected_count: dict[str, int] = {}
            expected_revenue: dict[str, int] = {}
            for i, customer in good:
                expected_count[customer] = expected_count.get(customer, 0) + 1
                expected_revenue[customer] = expected_revenue.get(customer, 0) + i % 4 + 1
            assert t.table("count") == expected_count
            assert t.table("revenue") == expected_revenue
            stages = {"not json": b"decode", "no customer": b"group_by", "no total": b"agent"}
            letters = sorted(
                (header(e, "stage"), e.value) for e in await t.read("shop-dead-letter")
            )
            bad = [(i, kind) for i, (kind, _) in enumerate(records) if kind != "good"]
            assert len(letters) == len(bad)
            for i, kind in bad:  # the agent's dead letter is the repartition record
                value = orjson.dumps({"id": i, "customer": records[i][1]})
                original = order_bytes(i, kind, records[i][1])
                assert (stages[kind], value if kind == "no total" else original) in letters

    asyncio.run(run())


@pytest.mark.parametrize("policy", ["skip", "dead_letter"])
async def test_a_flat_map_before_group_by_failing_midway_leaves_nothing_of_its_event(
    policy: str,
) -> None:
    """The repartition step encodes every value an event becomes before producing any: an
    event whose flat_map fails on its second element has none of its elements forwarded."""
    app = streams.App("split", on_error=policy)
    numbers = app.topic("numbers", partitions=1)
    out = app.topic("out", partitions=1)

    def twice(n: int) -> Any:
        yield n
        if n == 3:
            raise ValueError("no second three")
        yield n

    @app.stream(numbers, sink=[out])
    async def agent(stream: streams.Stream) -> Any:
        async for n in stream.flat_map(twice).group_by(lambda n: n % 2, name="by-parity"):
            yield n

    async with app.testing() as t:
        await t.send_many("numbers", range(5))
        await t.drain()
        forwarded = sorted(e.value for e in await t.read("out"))
    assert forwarded == [0, 0, 1, 1, 2, 2, 4, 4]
