"""Sticky partition assignment: balanced to within one partition, moving as few as possible.

    sticky_assign({"a": ({"words"}, set()), "b": ({"words"}, set())}, {"words": 4})
    # {"a": {("words", 0), ("words", 2)}, "b": {("words", 1), ("words", 3)}}

Members are given in join order (older members keep ties). A member only gets partitions of the
topics it subscribed to.
"""

from __future__ import annotations

from collections.abc import Mapping, Set

TP = tuple[str, int]


def sticky_assign(
    members: Mapping[str, tuple[Set[str], Set[TP]]],
    partitions: Mapping[str, int],
) -> dict[str, set[TP]]:
    """`members` maps member id -> (subscribed topics, partitions it holds now);
    `partitions` maps topic -> partition count. Returns member id -> partitions."""
    order = list(members)
    rank = {member: i for i, member in enumerate(order)}
    eligible: dict[str, list[str]] = {}
    for member in order:
        for topic in members[member][0]:
            if topic in partitions:
                eligible.setdefault(topic, []).append(member)
    result: dict[str, set[TP]] = {member: set() for member in order}
    taken: set[TP] = set()
    for member in order:
        topics, current = members[member]
        for topic, partition in sorted(current):
            tp = (topic, partition)
            if topic in topics and 0 <= partition < partitions.get(topic, 0) and tp not in taken:
                result[member].add(tp)
                taken.add(tp)

    def load(member: str) -> tuple[int, int]:
        return (len(result[member]), rank[member])

    for topic in sorted(eligible):
        for partition in range(partitions[topic]):
            tp = (topic, partition)
            if tp not in taken:
                result[min(eligible[topic], key=load)].add(tp)
                taken.add(tp)

    # Move partitions from the most to the least loaded eligible member until balanced.
    moved = True
    while moved:
        moved = False
        for giver in sorted(order, key=load, reverse=True):
            for tp in sorted(result[giver], reverse=True):
                taker = min(eligible[tp[0]], key=load)
                if len(result[giver]) - len(result[taker]) >= 2:
                    result[giver].remove(tp)
                    result[taker].add(tp)
                    moved = True
                    break
            if moved:
                break
    return result


def copartitioned_assign(
    members: Mapping[str, tuple[Set[str], Set[TP]]],
    partitions: Mapping[str, int],
) -> dict[str, set[TP]]:
    """Like `sticky_assign`, but partition p of co-partitioned topics (same partition count,
    same subscribers) always goes to one member, as Kafka Streams assigns tasks: a worker
    that owns partition p of a stream owns partition p of its repartition topic and tables.

    Balance (within one unit) and stickiness hold within each co-partitioned group."""
    subscribers: dict[str, tuple[str, ...]] = {
        topic: tuple(m for m in members if topic in members[m][0]) for topic in partitions
    }
    units: dict[tuple[int, tuple[str, ...]], list[str]] = {}
    for topic in sorted(partitions):
        if subscribers[topic]:
            units.setdefault((partitions[topic], subscribers[topic]), []).append(topic)
    # One pseudo-topic per co-partitioned group; its partition p stands for p of each topic.
    pseudo = {f"group-{i}": topics for i, topics in enumerate(units.values())}
    group_of = {topic: name for name, topics in pseudo.items() for topic in topics}
    pseudo_members = {
        member: (
            {group_of[t] for t in topics if t in group_of},
            {(group_of[t], p) for t, p in held if t in group_of},
        )
        for member, (topics, held) in members.items()
    }
    result: dict[str, set[TP]] = {member: set() for member in members}
    for name, topics in pseudo.items():  # balanced within each group, like Kafka's range
        units_held = sticky_assign(pseudo_members, {name: partitions[topics[0]]})
        for member, held in units_held.items():
            result[member] |= {(topic, p) for _, p in held for topic in topics}
    return result


ASSIGNORS = {"sticky": sticky_assign, "copartitioned": copartitioned_assign}


def assign_standbys(
    targets: Mapping[str, Set[TP]],
    previous: Mapping[str, Set[TP]],
    replicas: int,
) -> dict[str, set[TP]]:
    """Standby replicas: for each unit (the partitions with one number that one member owns),
    `replicas` other members keep a warm copy of its tables. Balanced by count, and sticky: a
    member that was a standby for the unit stays one (its copy is warm)."""
    order = list(targets)
    result: dict[str, set[TP]] = {member: set() for member in order}
    load = dict.fromkeys(order, 0)
    units: dict[tuple[str, int], set[TP]] = {}
    for owner, tps in targets.items():
        for topic, partition in tps:
            units.setdefault((owner, partition), set()).add((topic, partition))
    for (owner, _), tps in sorted(units.items(), key=lambda kv: (kv[0][1], order.index(kv[0][0]))):
        chosen: list[str] = []
        for _ in range(min(replicas, len(order) - 1)):
            free = [m for m in order if m != owner and m not in chosen]
            warm = [m for m in free if previous.get(m, set()) & tps]
            pick = min(warm or free, key=lambda m: (load[m], order.index(m)))
            chosen.append(pick)
            load[pick] += 1
            result[pick] |= tps
    return result
