"""Classic-protocol consumer groups (JoinGroup / SyncGroup / Heartbeat / LeaveGroup).

Kafka's classic groups assign on the client: the coordinator gathers every member's join (with
opaque protocol metadata), picks a leader and a common protocol, and hands the leader all the
members' metadata; the leader's SyncGroup carries each member's (opaque) assignment back. This
module keeps that state machine in the broker file, so that several servers of one file share a
group, and mirrors each synced assignment into the broker's own `members` table: commit fencing
(`Groups.check_owner`) then works the same for classic members as for embedded ones.

States: Empty -> PreparingRebalance (a join, leave or expiry) -> CompletingRebalance (every
member joined, or the rebalance timeout passed: generation + 1, leader chosen) -> Stable (the
leader's assignment arrived). Joins and syncs that must wait are polled by the caller.

    member_id = classic.join(group, "", None, "rdkafka", 6000, 30000, "consumer", protos, now)
    result = classic.join_result(group, member_id, now)     # None until the round completes
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import orjson

from runtime.broker.groups import Groups, _assignment_blob, _blob
from runtime.errors import (
    GroupError,
    GroupNotEmptyError,
    IllegalGenerationError,
    InvalidRequestError,
    RebalanceInProgressError,
    UnknownMemberIdError,
)
from runtime.types import TopicPartition

EMPTY = "Empty"
PREPARING = "PreparingRebalance"
COMPLETING = "CompletingRebalance"
STABLE = "Stable"

TABLES = """
CREATE TABLE IF NOT EXISTS classic_groups (
    group_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    generation INTEGER NOT NULL,
    protocol_type TEXT,
    protocol TEXT,
    leader TEXT,
    deadline_ms INTEGER
);
CREATE TABLE IF NOT EXISTS classic_members (
    group_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    instance_id TEXT,
    client_id TEXT NOT NULL,
    session_timeout_ms INTEGER NOT NULL,
    rebalance_timeout_ms INTEGER NOT NULL,
    protocols BLOB NOT NULL,
    joined INTEGER NOT NULL,
    waiting INTEGER NOT NULL DEFAULT 0,
    generation INTEGER NOT NULL,
    assignment BLOB,
    last_seen_ms INTEGER NOT NULL,
    joined_ms INTEGER NOT NULL,
    PRIMARY KEY (group_id, member_id)
);
"""


class InconsistentGroupProtocolError(GroupError):
    """A member's protocol type or protocols have nothing in common with the group's."""


class JoinResult(NamedTuple):
    generation: int
    protocol_type: str | None
    protocol: str | None
    leader: str
    member_id: str
    members: list[tuple[str, str | None, bytes]]  # for the leader: (id, instance id, metadata)


class ClassicMember(NamedTuple):
    member_id: str
    instance_id: str | None
    client_id: str
    metadata: bytes
    assignment: bytes


class ClassicGroup(NamedTuple):
    group_id: str
    state: str
    generation: int
    protocol_type: str | None
    protocol: str | None
    members: list[ClassicMember]


class ClassicGroups:
    def __init__(self, conn: sqlite3.Connection, groups: Groups) -> None:
        self.conn = conn
        self.groups = groups
        self._ready = False

    def _tables(self) -> None:
        if not self._ready:
            for statement in TABLES.split(";"):
                if statement.strip():
                    self.conn.execute(statement)
            self._ready = True

    # --- state --------------------------------------------------------------------------

    def _group(self, group_id: str) -> tuple[str, int, str | None, str | None, str | None, int]:
        row = self.conn.execute(
            "SELECT state, generation, protocol_type, protocol, leader, deadline_ms"
            " FROM classic_groups WHERE group_id = ?",
            (group_id,),
        ).fetchone()
        if row is None:
            return EMPTY, 0, None, None, None, 0
        return row[0], row[1], row[2], row[3], row[4], row[5] or 0

    def _set_state(self, group_id: str, state: str, **fields: object) -> None:
        sets = ", ".join(f"{name} = ?" for name in fields)
        self.conn.execute(
            f"UPDATE classic_groups SET state = ?{', ' + sets if sets else ''} WHERE group_id = ?",
            (state, *fields.values(), group_id),
        )

    def _expire(self, group_id: str, now: int) -> None:
        """Remove members whose session ended (a member waiting in a join is alive) and
        start a rebalance for the others."""
        dead = self.conn.execute(
            "SELECT member_id FROM classic_members WHERE group_id = ? AND joined = 0"
            " AND last_seen_ms + session_timeout_ms < ?",
            (group_id, now),
        ).fetchall()
        if dead:
            for (member_id,) in dead:
                self._remove(group_id, member_id)
            self._prepare(group_id, now)

    def _remove(self, group_id: str, member_id: str) -> None:
        self.conn.execute(
            "DELETE FROM classic_members WHERE group_id = ? AND member_id = ?",
            (group_id, member_id),
        )
        self.conn.execute(
            "DELETE FROM members WHERE group_id = ? AND member_id = ?", (group_id, member_id)
        )

    def _prepare(self, group_id: str, now: int) -> None:
        """Enter PreparingRebalance (or Empty without members): everyone must rejoin."""
        count, timeout = self.conn.execute(
            "SELECT count(*), max(rebalance_timeout_ms) FROM classic_members WHERE group_id = ?",
            (group_id,),
        ).fetchone()
        state = self._group(group_id)[0]
        if count == 0:
            self._set_state(group_id, EMPTY, leader=None, protocol=None)
            return
        if state != PREPARING:
            self._set_state(group_id, PREPARING, deadline_ms=now + timeout)

    # --- join ---------------------------------------------------------------------------

    def join(
        self,
        group_id: str,
        member_id: str,
        instance_id: str | None,
        client_id: str,
        session_timeout_ms: int,
        rebalance_timeout_ms: int,
        protocol_type: str,
        protocols: Sequence[tuple[str, bytes]],
        now: int,
    ) -> str:
        """Register a join; returns the member id (a new one for a new member)."""
        self._tables()
        if not group_id:
            raise InvalidRequestError("a group id must not be empty")
        if not protocols:
            raise InconsistentGroupProtocolError("a join needs at least one protocol")
        self.conn.execute(
            "INSERT OR IGNORE INTO classic_groups (group_id, state, generation) VALUES (?, ?, 0)",
            (group_id, EMPTY),
        )
        self.conn.execute("INSERT OR IGNORE INTO groups VALUES (?, 0, ?)", (group_id, now))
        self._expire(group_id, now)
        _state, _gen, group_type, _p, _l, _d = self._group(group_id)
        count = self.conn.execute(
            "SELECT count(*) FROM classic_members WHERE group_id = ?", (group_id,)
        ).fetchone()[0]
        if count and group_type is not None and group_type != protocol_type:
            raise InconsistentGroupProtocolError(
                f"group {group_id!r} uses protocol type {group_type!r}, not {protocol_type!r}"
            )
        encoded = orjson.dumps([[name, bytes(meta).hex()] for name, meta in protocols])
        if member_id:
            known = self.conn.execute(
                "SELECT 1 FROM classic_members WHERE group_id = ? AND member_id = ?",
                (group_id, member_id),
            ).fetchone()
            if known is None:
                raise UnknownMemberIdError(
                    f"member {member_id!r} is not in group {group_id!r}: join with no member id"
                )
        elif instance_id is not None:
            previous = self.conn.execute(
                "SELECT member_id FROM classic_members WHERE group_id = ? AND instance_id = ?",
                (group_id, instance_id),
            ).fetchone()
            member_id = f"{instance_id}-{uuid.uuid4().hex[:12]}"
            if previous is not None:  # a restarted static member replaces its old self
                self._remove(group_id, previous[0])
        else:
            member_id = f"{client_id}-{uuid.uuid4().hex[:12]}"
        self.conn.execute(
            "INSERT INTO classic_members (group_id, member_id, instance_id, client_id,"
            " session_timeout_ms, rebalance_timeout_ms, protocols, joined, generation,"
            " assignment, last_seen_ms, joined_ms, waiting)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, 1, -1, NULL, ?, ?, 1)"
            " ON CONFLICT (group_id, member_id) DO UPDATE SET session_timeout_ms ="
            " excluded.session_timeout_ms, rebalance_timeout_ms = excluded.rebalance_timeout_ms,"
            " protocols = excluded.protocols, joined = 1, waiting = 1,"
            " last_seen_ms = excluded.last_seen_ms",
            (
                group_id,
                member_id,
                instance_id,
                client_id,
                session_timeout_ms,
                rebalance_timeout_ms,
                encoded,
                now,
                now,
            ),
        )
        self.conn.execute(
            "UPDATE classic_groups SET protocol_type = ? WHERE group_id = ?",
            (protocol_type, group_id),
        )
        state = self._group(group_id)[0]
        if state != PREPARING:
            # everyone must rejoin, except members whose join is still waiting for its answer:
            # that request is answered by the round this one starts
            self.conn.execute(
                "UPDATE classic_members SET joined = waiting WHERE group_id = ? AND member_id != ?",
                (group_id, member_id),
            )
            self._prepare(group_id, now)
        self._maybe_complete(group_id, now)
        return member_id

    def join_result(self, group_id: str, member_id: str, now: int) -> JoinResult | None:
        """The answer to a member's join once its round completed; None while it waits."""
        self._tables()
        self._expire(group_id, now)  # a silent member must not hold the round up
        self._maybe_complete(group_id, now)
        row = self.conn.execute(
            "SELECT joined, generation FROM classic_members WHERE group_id = ? AND member_id = ?",
            (group_id, member_id),
        ).fetchone()
        if row is None:
            raise UnknownMemberIdError(
                f"member {member_id!r} was removed from group {group_id!r} during its join"
            )
        state, generation, protocol_type, protocol, leader, _ = self._group(group_id)
        if row[0]:
            self.conn.execute(
                "UPDATE classic_members SET last_seen_ms = ? WHERE group_id = ? AND member_id = ?",
                (now, group_id, member_id),
            )
            return None
        if row[1] != generation or state == PREPARING:
            return None
        self.conn.execute(
            "UPDATE classic_members SET waiting = 0 WHERE group_id = ? AND member_id = ?",
            (group_id, member_id),
        )
        members: list[tuple[str, str | None, bytes]] = []
        if member_id == leader:
            for other, instance, blob in self.conn.execute(
                "SELECT member_id, instance_id, protocols FROM classic_members"
                " WHERE group_id = ? ORDER BY joined_ms, member_id",
                (group_id,),
            ):
                members.append((other, instance, _metadata(blob, protocol)))
        assert leader is not None
        return JoinResult(generation, protocol_type, protocol, leader, member_id, members)

    def _maybe_complete(self, group_id: str, now: int) -> None:
        state, generation, _t, _p, leader, deadline = self._group(group_id)
        if state != PREPARING:
            return
        waiting = self.conn.execute(
            "SELECT count(*) FROM classic_members WHERE group_id = ? AND joined = 0",
            (group_id,),
        ).fetchone()[0]
        if waiting and now < deadline:
            return
        if waiting:  # the rebalance timeout passed: those that did not rejoin are out
            for (member_id,) in self.conn.execute(
                "SELECT member_id FROM classic_members WHERE group_id = ? AND joined = 0",
                (group_id,),
            ).fetchall():
                self._remove(group_id, member_id)
        rows = self.conn.execute(
            "SELECT member_id, protocols FROM classic_members WHERE group_id = ?"
            " ORDER BY joined_ms, member_id",
            (group_id,),
        ).fetchall()
        if not rows:
            self._set_state(group_id, EMPTY, leader=None, protocol=None)
            return
        protocol = _common_protocol([orjson.loads(blob) for _, blob in rows])
        if protocol is None:
            raise InconsistentGroupProtocolError(
                f"the members of group {group_id!r} share no assignment protocol"
            )
        ids = [member_id for member_id, _ in rows]
        if leader not in ids:
            leader = ids[0]
        base = self.conn.execute(
            "SELECT generation FROM groups WHERE group_id = ?", (group_id,)
        ).fetchone()
        new_generation = max(generation, base[0] if base else 0) + 1
        self._set_state(
            group_id, COMPLETING, generation=new_generation, protocol=protocol, leader=leader
        )
        self.conn.execute(
            "UPDATE classic_members SET joined = 0, generation = ?, assignment = NULL"
            " WHERE group_id = ?",
            (new_generation, group_id),
        )
        self.conn.execute(
            "UPDATE groups SET generation = ?, updated_ms = ? WHERE group_id = ?",
            (new_generation, now, group_id),
        )
        # until the leader's assignment arrives nobody owns anything: old commits fail
        self.conn.execute(
            "UPDATE members SET assignment = '[]', target = '[]', generation = ?"
            " WHERE group_id = ?",
            (new_generation, group_id),
        )

    # --- sync ---------------------------------------------------------------------------

    def _member_of(self, group_id: str, member_id: str, generation: int) -> tuple[str, int]:
        self._tables()
        state, current, *_ = self._group(group_id)
        row = self.conn.execute(
            "SELECT generation FROM classic_members WHERE group_id = ? AND member_id = ?",
            (group_id, member_id),
        ).fetchone()
        if row is None:
            raise UnknownMemberIdError(f"member {member_id!r} is not in group {group_id!r}")
        if generation != current:
            raise IllegalGenerationError(
                f"generation {generation} of group {group_id!r} is over (now {current})"
            )
        return state, current

    def sync(
        self,
        group_id: str,
        member_id: str,
        generation: int,
        assignments: Mapping[str, bytes],
        owned: Mapping[str, Sequence[TopicPartition]],
        now: int,
    ) -> None:
        """The leader's SyncGroup stores every member's assignment (opaque bytes, and the
        partitions they name for commit fencing); the group becomes Stable."""
        self._expire(group_id, now)
        state, current = self._member_of(group_id, member_id, generation)
        if state == PREPARING:
            raise RebalanceInProgressError(f"group {group_id!r} is rebalancing: join again")
        self.conn.execute(
            "UPDATE classic_members SET last_seen_ms = ? WHERE group_id = ? AND member_id = ?",
            (now, group_id, member_id),
        )
        leader = self._group(group_id)[4]
        if member_id != leader or state != COMPLETING:
            return
        rows = self.conn.execute(
            "SELECT member_id, client_id, session_timeout_ms, rebalance_timeout_ms,"
            " instance_id, joined_ms FROM classic_members WHERE group_id = ?",
            (group_id,),
        ).fetchall()
        for other, client_id, session, rebalance, instance, joined_ms in rows:
            self.conn.execute(
                "UPDATE classic_members SET assignment = ? WHERE group_id = ? AND member_id = ?",
                (bytes(assignments.get(other, b"")), group_id, other),
            )
            tps = list(owned.get(other, ()))
            topics = sorted({tp.topic for tp in tps})
            acquired = {TopicPartition(*tp): current for tp in tps}
            self.conn.execute(
                "INSERT OR REPLACE INTO members (group_id, member_id, client_id, topics,"
                " session_timeout_ms, rebalance_timeout_ms, joined_ms, last_seen_ms, generation,"
                " assignment, target, revoke_since_ms, assignor, instance_id, standby_replicas,"
                " standby) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, 'sticky', ?, 0, '[]')",
                (
                    group_id,
                    other,
                    client_id,
                    orjson.dumps(topics),
                    session,
                    rebalance,
                    joined_ms,
                    now,
                    current,
                    _assignment_blob(acquired),
                    _blob(tps),
                    instance,
                ),
            )
        self._set_state(group_id, STABLE)

    def sync_result(self, group_id: str, member_id: str, generation: int, now: int) -> bytes | None:
        """A member's assignment once the leader's arrived; None while it waits."""
        self._expire(group_id, now)
        state, _ = self._member_of(group_id, member_id, generation)
        if state == PREPARING:
            raise RebalanceInProgressError(f"group {group_id!r} is rebalancing: join again")
        if state != STABLE:
            self.conn.execute(
                "UPDATE classic_members SET last_seen_ms = ? WHERE group_id = ? AND member_id = ?",
                (now, group_id, member_id),
            )
            return None
        row = self.conn.execute(
            "SELECT assignment FROM classic_members WHERE group_id = ? AND member_id = ?",
            (group_id, member_id),
        ).fetchone()
        return bytes(row[0] or b"")

    # --- heartbeat and leave ------------------------------------------------------------

    def heartbeat(self, group_id: str, member_id: str, generation: int, now: int) -> None:
        self._tables()
        self._expire(group_id, now)
        state, _ = self._member_of(group_id, member_id, generation)
        self.conn.execute(
            "UPDATE classic_members SET last_seen_ms = ? WHERE group_id = ? AND member_id = ?",
            (now, group_id, member_id),
        )
        self.conn.execute(
            "UPDATE members SET last_seen_ms = ? WHERE group_id = ? AND member_id = ?",
            (now, group_id, member_id),
        )
        if state == PREPARING:
            raise RebalanceInProgressError(f"group {group_id!r} is rebalancing: join again")

    def leave(self, group_id: str, member_ids: Sequence[tuple[str, str | None]], now: int) -> None:
        """Remove members (by member id, or by instance id for static members)."""
        self._tables()
        for member_id, instance_id in member_ids:
            if not member_id and instance_id is not None:
                row = self.conn.execute(
                    "SELECT member_id FROM classic_members WHERE group_id = ? AND instance_id = ?",
                    (group_id, instance_id),
                ).fetchone()
                member_id = "" if row is None else row[0]
            known = self.conn.execute(
                "SELECT 1 FROM classic_members WHERE group_id = ? AND member_id = ?",
                (group_id, member_id),
            ).fetchone()
            if known is None:
                raise UnknownMemberIdError(f"member {member_id!r} is not in group {group_id!r}")
            self._remove(group_id, member_id)
        self._prepare(group_id, now)

    # --- administration -----------------------------------------------------------------

    def check_empty(self, group_id: str, now: int) -> None:
        """GroupNotEmptyError while the group has classic members (after expiring those
        whose session lapsed)."""
        self._tables()
        self._expire(group_id, now)
        members = [
            m
            for (m,) in self.conn.execute(
                "SELECT member_id FROM classic_members WHERE group_id = ?", (group_id,)
            )
        ]
        if members:
            raise GroupNotEmptyError(
                f"cannot delete group {group_id!r}: it has {len(members)} live member(s) "
                f"({', '.join(sorted(members))}); stop its consumers first"
            )

    def forget(self, group_id: str) -> None:
        self._tables()
        self.conn.execute("DELETE FROM classic_groups WHERE group_id = ?", (group_id,))

    # --- description --------------------------------------------------------------------

    def describe(self, group_id: str, now: int) -> ClassicGroup | None:
        self._tables()
        if (
            self.conn.execute(
                "SELECT 1 FROM classic_groups WHERE group_id = ?", (group_id,)
            ).fetchone()
            is None
        ):
            return None
        self._expire(group_id, now)
        state, generation, protocol_type, protocol, _, _ = self._group(group_id)
        members = [
            ClassicMember(m, i, c, _metadata(p, protocol), bytes(a or b""))
            for m, i, c, p, a in self.conn.execute(
                "SELECT member_id, instance_id, client_id, protocols, assignment"
                " FROM classic_members WHERE group_id = ? ORDER BY joined_ms, member_id",
                (group_id,),
            )
        ]
        return ClassicGroup(group_id, state, generation, protocol_type, protocol, members)

    def list(self) -> list[tuple[str, str, str | None]]:
        """(group id, state, protocol type) of every classic group."""
        self._tables()
        return [
            (g, s, t)
            for g, s, t in self.conn.execute(
                "SELECT group_id, state, protocol_type FROM classic_groups ORDER BY group_id"
            )
        ]


def _metadata(blob: bytes, protocol: str | None) -> bytes:
    for name, meta in orjson.loads(blob):
        if name == protocol:
            return bytes.fromhex(meta)
    return b""


def _common_protocol(members: list[list[list[str]]]) -> str | None:
    """The first protocol, in the first member's order of preference, that all support."""
    if not members:
        return None
    supported = [{name for name, _ in protocols} for protocols in members]
    for name, _ in members[0]:
        if all(name in names for names in supported):
            return name
    return None
