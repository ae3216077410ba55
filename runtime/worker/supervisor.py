"""The supervisor: runs N worker processes, restarts those that die, forwards SIGTERM/SIGINT.

    supervisor = Supervisor(lambda slot: [sys.executable, "-m", "streams.cli", ...], workers=3)
    sys.exit(supervisor.run())

A worker that exits (crash, `kill -9`, a resource short: exit 75) is started again in the same
slot after a backoff that doubles from 0.25 s to 10 s, and resets once the worker has run for
10 s. A worker that exits with 78 (configuration) stops the supervisor, which then exits 78.
Workers get STREAMS_SUPERVISOR_PID, so that they stop when the supervisor dies. On SIGTERM or SIGINT
every worker gets SIGTERM (finish and commit the current transaction, leave the group, exit 0);
a worker still running after `grace` seconds is killed. The supervisor exits 0 when every
worker stopped cleanly.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from types import FrameType

from runtime.errors import EXIT_CONFIG, EXIT_TEMPFAIL
from runtime.worker.slots import SUPERVISOR_ENV

log = logging.getLogger(__name__)

BACKOFF_START_S = 0.25
BACKOFF_MAX_S = 10.0
HEALTHY_AFTER_S = 10.0


class _Child:
    def __init__(self, slot: int) -> None:
        self.slot = slot
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.backoff = BACKOFF_START_S
        self.restart_at = 0.0
        self.restarts = 0


class Supervisor:
    def __init__(
        self, command: Callable[[int], list[str]], workers: int, grace: float = 30.0
    ) -> None:
        self.command = command
        self.children = [_Child(slot) for slot in range(workers)]
        self.grace = grace
        self.stopping = False
        self.failed = False

    def _start(self, child: _Child) -> None:
        env = {**os.environ, SUPERVISOR_ENV: str(os.getpid())}
        child.process = subprocess.Popen(self.command(child.slot), env=env)
        child.started = time.monotonic()
        log.info("worker %d started (pid %d)", child.slot, child.process.pid)

    def _stop_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("received %s: stopping workers", signal.Signals(signum).name)
        self.stopping = True

    def run(self) -> int:
        previous = {
            sig: signal.signal(sig, self._stop_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            for child in self.children:
                self._start(child)
            while not self.stopping:
                self._watch()
                time.sleep(0.1)
            return self._shutdown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _watch(self) -> None:
        now = time.monotonic()
        for child in self.children:
            process = child.process
            if process is not None and process.poll() is None:
                if now - child.started >= HEALTHY_AFTER_S:
                    child.backoff = BACKOFF_START_S
                continue
            if process is not None and process.returncode == EXIT_CONFIG:
                # the worker said why on its stderr, in one line
                log.info(
                    "worker %d exited with %d (configuration): stopping", child.slot, EXIT_CONFIG
                )
                self.stopping = True
                self.failed = True
                return
            if process is not None:
                log.warning(
                    "worker %d (pid %d) exited with %s%s; restarting in %.1f s",
                    child.slot,
                    process.pid,
                    process.returncode,
                    " (a resource is short)" if process.returncode == EXIT_TEMPFAIL else "",
                    child.backoff,
                )
                child.process = None
                child.restart_at = now + child.backoff
                child.backoff = min(child.backoff * 2, BACKOFF_MAX_S)
            if now >= child.restart_at:
                child.restarts += 1
                self._start(child)

    def _shutdown(self) -> int:
        running = [c.process for c in self.children if c.process and c.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        clean = True
        for process in running:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error(
                    "worker pid %d did not stop within %.0f s: killing", process.pid, self.grace
                )
                process.kill()
                process.wait()
            # -SIGTERM: a worker still starting up (no handler installed yet, so nothing
            # processed and nothing to commit) was stopped by our SIGTERM: also clean.
            clean &= process.returncode in (0, -signal.SIGTERM)
        if self.failed:
            return EXIT_CONFIG
        return 0 if clean else 1
