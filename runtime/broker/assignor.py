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
