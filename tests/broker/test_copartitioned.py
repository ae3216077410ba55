"""The co-partitioned assignor: partition p of co-partitioned topics goes to one member."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.broker import Broker
from runtime.broker.assignor import copartitioned_assign


@st.composite
def apps(draw: st.DrawFn) -> tuple[dict, dict[str, int]]:
    """Members subscribed to the same topics, some co-partitioned (an app's sources, its
    repartition topics), currently holding arbitrary partitions."""
    partitions = draw(st.integers(1, 8))
    counts = {f"t{i}": partitions for i in range(draw(st.integers(1, 3)))}
    if draw(st.booleans()):
        counts["other"] = draw(st.integers(1, 8))
    members = {
        f"m{i}": (
            frozenset(counts),
            draw(
                st.sets(st.tuples(st.sampled_from(sorted(counts)), st.integers(0, 8)), max_size=6)
            ),
        )
        for i in range(draw(st.integers(1, 5)))
    }
    return members, counts


@settings(max_examples=200, deadline=None)
@given(apps())
def test_partition_numbers_of_copartitioned_topics_stay_together(app: tuple) -> None:
    members, counts = app
    result = copartitioned_assign(members, counts)
    owned = [tp for tps in result.values() for tp in tps]
    assert sorted(owned) == sorted((t, p) for t, n in counts.items() for p in range(n))
    same = [t for t in counts if counts[t] == counts["t0"]]
    for tps in result.values():
        numbers = {p for t, p in tps if t in same}
        assert {(t, p) for t in same for p in numbers} <= tps  # whole units only
    loads = Counter({m: len({p for t, p in tps if t == "t0"}) for m, tps in result.items()})
    assert max(loads.values()) - min(loads.values()) <= 1  # balanced per unit
    again = copartitioned_assign({m: (members[m][0], result[m]) for m in members}, counts)
    assert again == result  # sticky


def test_two_workers_of_an_app_own_whole_partition_numbers() -> None:
    broker = Broker()
    broker.create_topic("words", 4)
    broker.create_topic("app-by-word-repartition", 4)
    topics = ["words", "app-by-word-repartition"]
    one, _ = broker.join_group("app", topics, assignor="copartitioned")
    two, _ = broker.join_group("app", topics, assignor="copartitioned")
    first = broker.heartbeat("app", one)
    broker.heartbeat("app", one, released=first.revoking)
    second = broker.heartbeat("app", two)
    owned_one = broker.heartbeat("app", one).assignment
    for owned in (owned_one, second.assignment):
        numbers = {p for _, p in owned}
        assert owned == {(t, p) for t in topics for p in numbers}
    assert len(owned_one) == len(second.assignment) == 4
