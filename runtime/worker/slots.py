"""Worker slots: a stable, unique identity for each worker process of an app on a machine.

A worker locks the first free `slot-N.lock` in the app's state directory (its preferred N
first, the one its supervisor gives it) and keeps the lock while it runs. N names its
transactional id, its static group membership and its store directory, so a restarted
worker takes its predecessor's place at once: its transaction is aborted by
`init_transactions`, its partitions move to the successor with no rebalance. The operating
system releases the lock when the process dies, even by `kill -9`.

    slot = Slot.claim("wordcount-state", preferred=2)
    slot.number        # 2, or another free number
    slot.release()
"""

from __future__ import annotations

import fcntl
import os

from runtime.errors import ConfigurationError

MAX_SLOTS = 1024


class Slot:
    def __init__(self, number: int, fd: int) -> None:
        self.number = number
        self._fd = fd

    @classmethod
    def claim(cls, state_dir: str, preferred: int | None = None) -> Slot:
        os.makedirs(state_dir, exist_ok=True)
        order = list(range(MAX_SLOTS))
        if preferred is not None and 0 <= preferred < MAX_SLOTS:
            order.remove(preferred)
            order.insert(0, preferred)
        for number in order:
            fd = os.open(os.path.join(state_dir, f"slot-{number}.lock"), os.O_CREAT | os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            return cls(number, fd)
        raise ConfigurationError(f"all {MAX_SLOTS} worker slots of {state_dir!r} are taken")

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = -1
