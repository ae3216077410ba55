"""Consumer groups: membership, sticky cooperative assignment, committed offsets.

There is no coordinator process: whichever client touches a group runs the coordinator's rules
inside its own SQLite transaction. The assignment is computed broker-side (as in Kafka's
KIP-848 protocol) and is cooperative: when a partition must move, its owner is asked to revoke
it and keeps it until it says it has released it (after committing or aborting its work), or
until its session or rebalance timeout expires. So a partition has at most one owner at any
moment, and only that owner can commit offsets for it.

    member_id, generation = groups.join("wordcount", ["words"], "worker-1", 10_000, 60_000, now)
    state = groups.heartbeat("wordcount", member_id, released=[], now=now)
    state.assignment, state.revoking
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import orjson

from runtime.broker.assignor import ASSIGNORS, assign_standbys, sticky_assign
from runtime.errors import (
    GroupIdNotFoundError,
    GroupNotEmptyError,
    IllegalGenerationError,
    InvalidRequestError,
    UnknownMemberIdError,
    UnstableOffsetCommitError,
)
from runtime.types import GroupMetadata, TopicPartition

MEMBER_COLUMNS = (
    "member_id, client_id, topics, session_timeout_ms, rebalance_timeout_ms, joined_ms,"
    " last_seen_ms, generation, assignment, target, revoke_since_ms, assignor, instance_id,"
    " standby_replicas, standby"
)


class Member(NamedTuple):
    member_id: str
    client_id: str
    topics: frozenset[str]
    session_timeout_ms: int
    rebalance_timeout_ms: int
    joined_ms: int
    last_seen_ms: int
    generation: int
    assignment: frozenset[TopicPartition]
    target: frozenset[TopicPartition]
    revoke_since_ms: int | None
    assignor: str
    instance_id: str | None
    standby_replicas: int
    standby: frozenset[TopicPartition]  # partitions whose tables this member keeps warm
    acquired: dict[TopicPartition, int]  # generation at which each owned partition was granted


class MemberState(NamedTuple):
    """What a heartbeat tells a member: what it owns, what it must give up, whether
    partitions it should get are still held by another member."""

    generation: int
    assignment: frozenset[TopicPartition]
    revoking: frozenset[TopicPartition]
    pending: bool
    standby: frozenset[TopicPartition] = frozenset()


class GroupDescription(NamedTuple):
    group_id: str
    generation: int
    members: list[Member]
    offsets: dict[TopicPartition, int]
    pending_offsets: dict[TopicPartition, int]


def _tps(blob: bytes) -> frozenset[TopicPartition]:
    return frozenset(TopicPartition(t, p) for t, p, *_ in orjson.loads(blob))


def _acquired(blob: bytes) -> dict[TopicPartition, int]:
    """An assignment blob's partitions with the generation each was granted in."""
    return {TopicPartition(t, p): rest[0] if rest else 0 for t, p, *rest in orjson.loads(blob)}


def _assignment_blob(acquired: dict[TopicPartition, int]) -> bytes:
    return orjson.dumps(sorted([t, p, g] for (t, p), g in acquired.items()))


def _blob(tps: Iterable[tuple[str, int]]) -> bytes:
    return orjson.dumps(sorted([t, p] for t, p in tps))


def _member(row: tuple) -> Member:  # type: ignore[type-arg]
    return Member(
        row[0],
        row[1],
        frozenset(orjson.loads(row[2])),
        row[3],
        row[4],
        row[5],
        row[6],
        row[7],
        _tps(row[8]),
        _tps(row[9]),
        row[10],
        row[11],
        row[12],
        row[13],
        _tps(row[14]),
        _acquired(row[8]),
    )


class Groups:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    # --- membership ---------------------------------------------------------------------

    def join(
        self,
        group_id: str,
        topics: Iterable[str],
        client_id: str,
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        now: int,
        assignor: str = "sticky",
        instance_id: str | None = None,
        standby_replicas: int = 0,
    ) -> tuple[str, int]:
        """Add a member. With a static `instance_id` (Kafka's group.instance.id), a member
        with the same id is replaced at once: the newcomer takes over its partitions with no
        rebalance, and the predecessor is fenced (its commits get UnknownMemberIdError)."""
        if not isinstance(group_id, str) or not group_id:
            raise InvalidRequestError("group_id must be a non-empty string")
        if type(standby_replicas) is not int or standby_replicas < 0:
            raise InvalidRequestError("standby_replicas must be a non-negative integer")
        if assignor not in ASSIGNORS:
            raise InvalidRequestError(
                f"unknown assignor {assignor!r}: use one of {sorted(ASSIGNORS)}"
            )
        topic_list = sorted(set(topics))
        if not all(isinstance(t, str) for t in topic_list):
            raise InvalidRequestError("subscribed topics must be strings")
        for label, value in (
            ("session_timeout_ms", session_timeout_ms),
            ("rebalance_timeout_ms", rebalance_timeout_ms),
        ):
            if type(value) is not int or value <= 0:
                raise InvalidRequestError(f"{label} must be a positive integer")
        member_id = f"{client_id}-{uuid.uuid4().hex[:12]}"
        self.conn.execute("INSERT OR IGNORE INTO groups VALUES (?, 0, ?)", (group_id, now))
        if instance_id is not None:
            previous = self.conn.execute(
                "SELECT member_id, topics FROM members WHERE group_id = ? AND instance_id = ?",
                (group_id, instance_id),
            ).fetchone()
            if previous is not None:
                self.conn.execute(
                    "UPDATE members SET member_id = ?, client_id = ?, topics = ?,"
                    " session_timeout_ms = ?, rebalance_timeout_ms = ?, last_seen_ms = ?,"
                    " revoke_since_ms = NULL, assignor = ? WHERE group_id = ? AND member_id = ?",
                    (
                        member_id,
                        client_id,
                        orjson.dumps(topic_list),
                        session_timeout_ms,
                        rebalance_timeout_ms,
                        now,
                        assignor,
                        group_id,
                        previous[0],
                    ),
                )
                if orjson.loads(previous[1]) != topic_list:
                    return member_id, self._rebalance(group_id, now)
                return member_id, self._generation(group_id)
        self.conn.execute(
            f"INSERT INTO members (group_id, {MEMBER_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, NULL, ?, ?, ?, '[]')",
            (
                group_id,
                member_id,
                client_id,
                orjson.dumps(topic_list),
                session_timeout_ms,
                rebalance_timeout_ms,
                now,
                now,
                b"[]",
                b"[]",
                assignor,
                instance_id,
                standby_replicas,
            ),
        )
        generation = self._rebalance(group_id, now)
        return member_id, generation

    def heartbeat(
        self, group_id: str, member_id: str, released: Iterable[TopicPartition], now: int
    ) -> MemberState:
        members = self._live_members(group_id, now)
        me = members.get(member_id)
        if me is None:
            raise UnknownMemberIdError(
                f"member {member_id!r} is not in group {group_id!r} (its session timed out or "
                "it left): join again"
            )
        generation = self._generation(group_id)
        if self._topology_changed(group_id, members):
            generation = self._rebalance(group_id, now)
            members = self._live_members(group_id, now)
            me = members[member_id]
        held_by_others: set[TopicPartition] = set()
        for other in members.values():
            if other.member_id != member_id:
                held_by_others |= other.assignment
        gone = set(released)
        acquired = {tp: g for tp, g in me.acquired.items() if tp not in gone}
        for tp in me.target - held_by_others - set(acquired):
            acquired[tp] = generation  # granted now: commits must come from this generation on
        assignment = set(acquired)
        revoking = frozenset(assignment - me.target)
        revoke_since = (me.revoke_since_ms or now) if revoking else None
        member_generation = me.generation if assignment == me.assignment else generation
        self.conn.execute(
            "UPDATE members SET last_seen_ms = ?, assignment = ?, generation = ?,"
            " revoke_since_ms = ? WHERE group_id = ? AND member_id = ?",
            (now, _assignment_blob(acquired), member_generation, revoke_since, group_id, member_id),
        )
        pending = bool(me.target - assignment)
        return MemberState(generation, frozenset(assignment), revoking, pending, me.standby)

    def leave(self, group_id: str, member_id: str, now: int) -> None:
        cursor = self.conn.execute(
            "DELETE FROM members WHERE group_id = ? AND member_id = ?", (group_id, member_id)
        )
        if cursor.rowcount:
            self._rebalance(group_id, now)

    def _generation(self, group_id: str) -> int:
        row = self.conn.execute(
            "SELECT generation FROM groups WHERE group_id = ?", (group_id,)
        ).fetchone()
        return 0 if row is None else int(row[0])

    def _members(self, group_id: str) -> dict[str, Member]:
        rows = self.conn.execute(
            f"SELECT {MEMBER_COLUMNS} FROM members WHERE group_id = ? ORDER BY joined_ms,"
            " member_id",
            (group_id,),
        ).fetchall()
        return {row[0]: _member(row) for row in rows}

    def _live_members(self, group_id: str, now: int) -> dict[str, Member]:
        """Members of the group, after removing those whose session expired or who held on
        to revoked partitions past their rebalance timeout."""
        members = self._members(group_id)
        dead = [
            m.member_id
            for m in members.values()
            if m.last_seen_ms + m.session_timeout_ms < now
            or (m.revoke_since_ms is not None and m.revoke_since_ms + m.rebalance_timeout_ms < now)
        ]
        if dead:
            self.conn.executemany(
                "DELETE FROM members WHERE group_id = ? AND member_id = ?",
                [(group_id, member_id) for member_id in dead],
            )
            self._rebalance(group_id, now)
            members = self._members(group_id)
        return members

    def _partition_counts(self, topics: Iterable[str]) -> dict[str, int]:
        names = sorted(set(topics))
        if not names:
            return {}
        rows = self.conn.execute(
            f"SELECT name, partitions FROM topics WHERE name IN ({','.join('?' * len(names))})",
            names,
        ).fetchall()
        return dict(rows)

    def _topology_changed(self, group_id: str, members: Mapping[str, Member]) -> bool:
        """True when the target assignment no longer covers exactly the existing partitions
        of the subscribed topics (a topic was created, deleted or re-created)."""
        counts = self._partition_counts(t for m in members.values() for t in m.topics)
        expected = {TopicPartition(t, p) for t, n in counts.items() for p in range(n)}
        targeted: set[TopicPartition] = set()
        for m in members.values():
            targeted |= m.target
        return expected != targeted

    def _rebalance(self, group_id: str, now: int) -> int:
        """Compute new targets for every member; returns the new generation."""
        members = self._members(group_id)
        counts = self._partition_counts(t for m in members.values() for t in m.topics)
        # The group's oldest member chooses the strategy (Kafka: the leader's choice).
        assign = ASSIGNORS[next(iter(members.values())).assignor] if members else sticky_assign
        targets = assign(
            {m.member_id: (m.topics, {(t, p) for t, p in m.target}) for m in members.values()},
            counts,
        )
        self.conn.execute(
            "UPDATE groups SET generation = generation + 1, updated_ms = ? WHERE group_id = ?",
            (now, group_id),
        )
        self.conn.executemany(
            "UPDATE members SET target = ? WHERE group_id = ? AND member_id = ?",
            [(_blob(target), group_id, member_id) for member_id, target in targets.items()],
        )
        replicas = next(iter(members.values())).standby_replicas if members else 0
        standbys = assign_standbys(
            targets,
            {m.member_id: {(t, p) for t, p in m.standby} for m in members.values()},
            replicas,
        )
        self.conn.executemany(
            "UPDATE members SET standby = ? WHERE group_id = ? AND member_id = ?",
            [(_blob(tps), group_id, member_id) for member_id, tps in standbys.items()],
        )
        return self._generation(group_id)

    # --- offsets ------------------------------------------------------------------------

    def check_owner(
        self, group: GroupMetadata, tps: Iterable[TopicPartition], now: int
    ) -> Member | None:
        """Fence commits: the member must be alive and own every partition it commits.
        Generation -1 with no member id is accepted only for a group with no members (tools
        resetting offsets), never inside a transaction (checked by the caller)."""
        members = self._live_members(group.group_id, now)
        if not group.member_id and group.generation < 0:
            if members:
                raise IllegalGenerationError(
                    f"group {group.group_id!r} has active members: commit as one of them"
                )
            return None
        me = members.get(group.member_id)
        if me is None:
            raise UnknownMemberIdError(
                f"member {group.member_id!r} is not in group {group.group_id!r}: it was "
                "removed (session timeout) or left; its commit is rejected"
            )
        generation = self._generation(group.group_id)
        stray = sorted(set(tps) - me.assignment)
        if stray:
            raise IllegalGenerationError(
                f"member {group.member_id!r} (generation {group.generation}) does not own "
                f"{', '.join(f'{t}[{p}]' for t, p in stray)} in generation "
                f"{generation} of group {group.group_id!r}"
            )
        stale = sorted(tp for tp in tps if me.acquired[tp] > group.generation)
        if stale or group.generation > generation:
            raise IllegalGenerationError(
                f"member {group.member_id!r} commits with generation {group.generation}, older "
                f"than its ownership of {', '.join(f'{t}[{p}]' for t, p in stale)} "
                f"(group generation {generation}): the commit belongs to a previous ownership"
                if stale
                else f"generation {group.generation} is ahead of group {group.group_id!r} "
                f"(generation {generation})"
            )
        return me

    def commit(self, group: GroupMetadata, offsets: Mapping[TopicPartition, int], now: int) -> None:
        self.check_owner(group, offsets, now)
        self.conn.executemany(
            "INSERT OR REPLACE INTO offsets VALUES (?, ?, ?, ?, NULL, ?)",
            [(group.group_id, tp.topic, tp.partition, off, now) for tp, off in offsets.items()],
        )

    def committed(
        self, group_id: str, tps: Iterable[TopicPartition], require_stable: bool
    ) -> dict[TopicPartition, int]:
        result: dict[TopicPartition, int] = {}
        for tp in tps:
            if (
                require_stable
                and self.conn.execute(
                    "SELECT 1 FROM txn_offsets WHERE group_id = ? AND topic = ? AND partition = ?",
                    (group_id, tp.topic, tp.partition),
                ).fetchone()
            ):
                raise UnstableOffsetCommitError(
                    f"an open transaction holds offsets of {tp.topic}[{tp.partition}] for "
                    f"group {group_id!r}; retry when it ends"
                )
            row = self.conn.execute(
                "SELECT next_offset FROM offsets WHERE group_id = ? AND topic = ?"
                " AND partition = ?",
                (group_id, tp.topic, tp.partition),
            ).fetchone()
            if row is not None:
                result[tp] = row[0]
        return result

    def describe(self, group_id: str, now: int) -> GroupDescription:
        members = self._live_members(group_id, now)
        offsets = {
            TopicPartition(t, p): o
            for t, p, o in self.conn.execute(
                "SELECT topic, partition, next_offset FROM offsets WHERE group_id = ?"
                " ORDER BY topic, partition",
                (group_id,),
            )
        }
        pending = {
            TopicPartition(t, p): o
            for t, p, o in self.conn.execute(
                "SELECT topic, partition, next_offset FROM txn_offsets WHERE group_id = ?",
                (group_id,),
            )
        }
        return GroupDescription(
            group_id, self._generation(group_id), list(members.values()), offsets, pending
        )

    # --- administration (tools, with every member stopped) ---------------------------------

    def _check_empty(self, group_id: str, now: int, doing: str) -> None:
        members = self._live_members(group_id, now)
        if members:
            raise GroupNotEmptyError(
                f"cannot {doing} group {group_id!r}: it has {len(members)} live member(s) "
                f"({', '.join(sorted(members))}); stop its workers first"
            )

    def alter_offsets(self, group_id: str, offsets: Mapping[TopicPartition, int], now: int) -> None:
        """Set committed offsets of a group with no live members (Kafka's AlterConsumerGroup
        Offsets); an open transaction's pending offsets for those partitions are refused."""
        self._check_empty(group_id, now, "reset the offsets of")
        for tp in offsets:
            if self.conn.execute(
                "SELECT 1 FROM txn_offsets WHERE group_id = ? AND topic = ? AND partition = ?",
                (group_id, tp.topic, tp.partition),
            ).fetchone():
                raise UnstableOffsetCommitError(
                    f"an open transaction holds offsets of {tp.topic}[{tp.partition}] for "
                    f"group {group_id!r}; retry when it ends (or times out)"
                )
        self.conn.execute("INSERT OR IGNORE INTO groups VALUES (?, 0, ?)", (group_id, now))
        self.conn.executemany(
            "INSERT OR REPLACE INTO offsets VALUES (?, ?, ?, ?, NULL, ?)",
            [(group_id, tp.topic, tp.partition, off, now) for tp, off in offsets.items()],
        )

    def delete(self, group_id: str, now: int) -> None:
        """Delete a group with no live members, with its committed offsets."""
        if group_id not in self.list():
            raise GroupIdNotFoundError(f"unknown group {group_id!r}")
        self._check_empty(group_id, now, "delete")
        for table in ("members", "offsets", "groups"):
            self.conn.execute(f"DELETE FROM {table} WHERE group_id = ?", (group_id,))

    def list(self) -> list[str]:
        rows = self.conn.execute(
            "SELECT group_id FROM groups UNION SELECT group_id FROM offsets ORDER BY 1"
        ).fetchall()
        return [r[0] for r in rows]
