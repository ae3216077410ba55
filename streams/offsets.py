"""Moving a consumer group's committed offsets, as `kafka-consumer-groups --reset-offsets`.

    changes = await plan_reset(transport, "wordcount", ["words:0,1"], Reset("datetime", ms))
    await apply_reset(transport, "wordcount", changes)     # refused while the group has members

Every target is clamped to the partition's log, [log start, high watermark], as Kafka does.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import NamedTuple

from runtime.errors import ConfigurationError, GroupNotEmptyError
from runtime.transport import Transport
from runtime.types import TopicPartition

MODES = ("earliest", "latest", "offset", "datetime", "shift")


class Reset(NamedTuple):
    """Where to move: "earliest", "latest", "offset" (value = N), "datetime" (value = ms since
    the epoch) or "shift" (value = N, added to the committed offset; negative moves back)."""

    mode: str
    value: int = 0


class OffsetChange(NamedTuple):
    tp: TopicPartition
    old: int | None  # None: the group has no committed offset there
    new: int


def parse_datetime(text: str, option: str = "--to-datetime") -> int:
    """An ISO 8601 time as ms since the epoch; without a zone, local time (as Kafka's tool).

    >>> parse_datetime("2026-12-02T10:00:00Z")
    1796205600000
    """
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigurationError(
            f"bad {option} {text!r}: use ISO 8601, e.g. 2026-12-02T10:00:00Z"
        ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()
    return int(moment.timestamp() * 1000)


async def partitions_of(transport: Transport, specs: Sequence[str]) -> list[TopicPartition]:
    """`TOPIC` (every partition) or `TOPIC:0,2` (those partitions), each checked to exist."""
    out: list[TopicPartition] = []
    for spec in specs:
        name, colon, numbers = spec.partition(":")
        count = (await transport.describe_topic(name)).partitions  # UnknownTopicError
        if not colon:
            out.extend(TopicPartition(name, p) for p in range(count))
            continue
        try:
            chosen = [int(n) for n in numbers.split(",")]
        except ValueError:
            raise ConfigurationError(
                f"bad --topic {spec!r}: use TOPIC or TOPIC:PARTITION[,PARTITION...]"
            ) from None
        wrong = [p for p in chosen if not 0 <= p < count]
        if wrong:
            raise ConfigurationError(
                f"topic {name!r} has partitions 0..{count - 1}, not {wrong[0]}"
            )
        out.extend(TopicPartition(name, p) for p in chosen)
    return sorted(set(out))


async def plan_reset(
    transport: Transport, group_id: str, topics: Sequence[str], reset: Reset
) -> list[OffsetChange]:
    """The new committed offset of each partition of `topics` (none: every topic the group
    has committed offsets for); GroupNotEmptyError while the group has live members (even
    for a dry run: the plan would be stale at once)."""
    if reset.mode not in MODES:
        raise ConfigurationError(f"unknown reset mode {reset.mode!r}: use one of {MODES}")
    group = await transport.describe_group(group_id)
    if not topics:  # --all-topics: those the group committed offsets for
        topics = sorted({tp.topic for tp in group.offsets})
        if not topics:
            raise ConfigurationError(f"group {group_id!r} has no committed offsets: name --topic")
    tps = await partitions_of(transport, topics)
    if group.members:
        raise GroupNotEmptyError(
            f"cannot reset the offsets of group {group_id!r}: it has {len(group.members)} live "
            "member(s); stop its workers first (see `streams groups describe`)"
        )
    committed: dict[TopicPartition, int] = dict(group.offsets)
    missing = [tp for tp in tps if tp not in committed]
    if reset.mode == "shift" and missing:
        tp = missing[0]
        raise ConfigurationError(
            f"cannot shift {tp.topic}[{tp.partition}]: group {group_id!r} has no committed "
            "offset there; use --to-earliest, --to-latest, --to-offset or --to-datetime"
        )
    by_time = await transport.offsets_for_time(tps, reset.value) if reset.mode == "datetime" else {}
    changes = []
    for tp in tps:
        info = await transport.partition_info(tp.topic, tp.partition)
        target = {
            "earliest": info.log_start,
            "latest": info.high_watermark,
            "offset": reset.value,
            "datetime": by_time.get(tp, info.high_watermark),
            "shift": committed.get(tp, 0) + reset.value,
        }[reset.mode]
        new = min(max(target, info.log_start), info.high_watermark)
        changes.append(OffsetChange(tp, committed.get(tp), new))
    return changes


async def apply_reset(transport: Transport, group_id: str, changes: Sequence[OffsetChange]) -> None:
    """Commit the planned offsets (the broker refuses again if a member joined meanwhile)."""
    await transport.alter_group_offsets(group_id, {c.tp: c.new for c in changes})
