"""Worker slots: a stable, unique identity for each worker process of an app on a broker.

A worker takes the first free slot N (its preferred N first, the one its supervisor gives
it). N names its transactional id `<app>-N`, its static group membership and its store
directory, so a restarted worker takes its predecessor's place at once: its transaction is
aborted by `init_transactions`, its partitions move to the successor with no rebalance.

A slot is free when both records of it say so:

- the lock file `slot-N.lock` in the app's state directory (workers of one machine sharing
  the directory); the operating system releases it when the process dies, even by kill -9;
- the broker: the app's group has no live member with instance id `<app>-N` held by another
  owner. A worker's client id names its owner, `<app>@<host>:<supervisor pid>-N`; an owner on
  this host whose process is gone holds nothing. So two supervisors of one app on one broker
  never share a slot (and so a transactional id), whatever their state directories or hosts.

    slot = await claim_slot(transport, "wordcount", "wordcount-state", preferred=2)
    slot.number        # 2, or another free number
    slot.release()
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket

from runtime.errors import ConfigurationError, DiskFullError, ResourceError, StreamsError
from runtime.transport import Transport
from runtime.worker.store import MEMORY

log = logging.getLogger(__name__)
MAX_SLOTS = 1024
SUPERVISOR_ENV = "STREAMS_SUPERVISOR_PID"  # set by the supervisor in its workers' environment


def owner_id() -> str:
    """Who holds this process's slot: its supervisor (or itself), `<host>:<pid>`."""
    pid = os.environ.get(SUPERVISOR_ENV) or str(os.getpid())
    return f"{socket.gethostname()}:{pid}"


def _alive(owner: str) -> bool:
    """Whether a slot's owner may still run: on another host we cannot tell (its group
    membership expires with its session); on this one, whether its process exists."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def state_dir_error(exc: OSError, state_dir: str) -> StreamsError:
    """A typed error for an OS error on the state directory: a full disk is temporary, a
    path that is a file or not writable is configuration."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"the state directory {state_dir!r} has no space left: {exc}")
    if exc.errno in (errno.EEXIST, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS):
        return ConfigurationError(
            f"cannot use {state_dir!r} as the state directory ({exc.strerror}): set state_dir "
            "(or $STREAMS_STATE_DIR) to a writable directory"
        )
    return ResourceError(f"cannot use the state directory {state_dir!r}: {exc}")


class Slot:
    def __init__(self, number: int, fd: int, owner: str = "") -> None:
        self.number = number
        self.owner = owner or owner_id()
        self._fd = fd

    @classmethod
    def claim(
        cls, state_dir: str, preferred: int | None = None, taken: frozenset[int] = frozenset()
    ) -> Slot:
        """Lock the first free slot file of `state_dir` (`preferred` first), skipping the
        numbers in `taken` (held elsewhere, as the broker says)."""
        try:
            os.makedirs(state_dir, exist_ok=True)
            order = list(range(MAX_SLOTS))
            if preferred is not None and 0 <= preferred < MAX_SLOTS:
                order.remove(preferred)
                order.insert(0, preferred)
            for number in order:
                if number in taken:
                    continue
                path = os.path.join(state_dir, f"slot-{number}.lock")
                fd = os.open(path, os.O_CREAT | os.O_RDWR)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                return cls(number, fd)
        except OSError as exc:
            raise state_dir_error(exc, state_dir) from exc
        raise ConfigurationError(f"all {MAX_SLOTS} worker slots of {state_dir!r} are taken")

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = -1


async def taken_slots(transport: Transport, app_id: str, owner: str) -> dict[int, str]:
    """Slots of `app_id` that live members of its group hold for another, live owner."""
    try:
        group = await transport.describe_group(app_id)
    except StreamsError as exc:  # e.g. a Kafka user not allowed to describe groups
        log.warning(
            "cannot read the slots of %s from the broker (%s): local locks only", app_id, exc
        )
        return {}
    prefix = f"{app_id}-"
    taken = {}
    for member in group.members:
        instance = getattr(member, "instance_id", None) or ""
        number = instance[len(prefix) :]
        if not instance.startswith(prefix) or not number.isdigit():
            continue
        client = member.client_id  # <app>@<owner>-<slot>, or <app>-<slot> (no owner)
        owned = client.startswith(f"{app_id}@")
        holder = client[len(app_id) + 1 : client.rfind("-")] if owned else ""
        if holder and holder != owner and _alive(holder):
            taken[int(number)] = holder
    return taken


async def claim_slot(
    transport: Transport, app_id: str, state_dir: str, preferred: int | None = None
) -> Slot:
    """The first slot free both in `state_dir` and in the broker (`preferred` first)."""
    owner = owner_id()
    taken = await taken_slots(transport, app_id, owner)
    if state_dir == MEMORY:  # no directory to lock in: the broker's record alone
        order = ([] if preferred is None else [preferred]) + list(range(MAX_SLOTS))
        free = [n for n in order if n not in taken]
        if not free:
            raise ConfigurationError(f"all {MAX_SLOTS} worker slots of {app_id!r} are taken")
        slot = Slot(free[0], -1)
    else:
        slot = Slot.claim(state_dir, preferred, frozenset(taken))
    if preferred is not None and slot.number != preferred:
        held = taken.get(preferred)
        log.warning(
            "slot %d of %s is held by %s: this worker takes slot %d",
            preferred,
            app_id,
            held or "another worker sharing the state directory",
            slot.number,
        )
    return slot
