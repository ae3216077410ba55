"""Workers die with their supervisor: no orphan keeps a slot after `kill -9` of it.

On Linux the kernel sends the worker SIGTERM when its parent dies (prctl
PR_SET_PDEATHSIG), so it finishes and commits its transaction, leaves the group and exits
as on any SIGTERM. Everywhere, `parent_gone()` is also checked every second by the worker's
loop (the same clean stop), and once right after the signal is set up, for a parent that died
before.

    die_with_parent(signal.SIGTERM)
    if parent_gone(supervisor_pid): ...   # stop
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1


def die_with_parent(signum: int) -> bool:
    """Ask the kernel for `signum` when the parent process dies; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    except (OSError, AttributeError) as exc:
        log.warning("cannot ask to be stopped with the supervisor (%s): checking every second", exc)
        return False
    return True


def parent_gone(parent_pid: int) -> bool:
    """Whether the process that started us (`parent_pid`) is no longer our parent."""
    return os.getppid() != parent_pid
