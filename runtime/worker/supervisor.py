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

A worker that stops at a record it cannot process (on_error="fail") exits with EXIT_DATAERR
after writing its one-line reason to the file $STREAMS_FAILURE_FILE names (one per slot). It is
restarted with the same backoff; when it stops `give_up_after` times in a row with the same
line ($STREAMS_GIVE_UP_AFTER, default 5), restarting cannot help: the supervisor prints that
line on stderr, stops the other workers and exits with EXIT_DATAERR.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from types import FrameType

from runtime.errors import EXIT_CONFIG, EXIT_DATAERR, EXIT_TEMPFAIL, ConfigurationError
from runtime.worker.failures import FAILURE_FILE_ENV, read_failure
from runtime.worker.slots import SUPERVISOR_ENV

log = logging.getLogger(__name__)

BACKOFF_START_S = 0.25
BACKOFF_MAX_S = 10.0
HEALTHY_AFTER_S = 10.0
GIVE_UP_ENV = "STREAMS_GIVE_UP_AFTER"
GIVE_UP_AFTER = 5  # consecutive stops of a slot at the same record


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
        self.exit_code = 1  # when failed
        self.give_up_after = _give_up_after()
        self._failures = tempfile.TemporaryDirectory(prefix="streams-supervisor-")
        self._same_failure: dict[int, tuple[str, int]] = {}  # slot -> (line, times in a row)

    def _start(self, child: _Child) -> None:
        env = {**self._child_env(child.slot), SUPERVISOR_ENV: str(os.getpid())}
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
                self.exit_code = EXIT_CONFIG
                return
            stopped_at_a_record = process is not None and process.returncode == EXIT_DATAERR
            if stopped_at_a_record and self._stuck(child.slot):
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
        return 0 if clean and not self.failed else self.exit_code

    # --- records that stop a worker again and again --------------------------------------

    def _failure_file(self, slot: int) -> str:
        return os.path.join(self._failures.name, f"slot-{slot}.failure")

    def _child_env(self, slot: int) -> dict[str, str]:
        """The worker's environment: ours, and the file it leaves its failure line in."""
        path = self._failure_file(slot)
        if os.path.exists(path):
            os.unlink(path)  # a line is the last run's only
        return {**os.environ, FAILURE_FILE_ENV: path}

    def _stuck(self, slot: int) -> bool:
        """After a worker exited with EXIT_DATAERR: True (and the supervisor stops, printing
        the worker's line) when it stopped with the same line `give_up_after` times in a
        row."""
        line = read_failure(self._failure_file(slot)) or "a record could not be processed"
        previous, times = self._same_failure.get(slot, ("", 0))
        times = times + 1 if line == previous else 1
        self._same_failure[slot] = (line, times)
        if times < self.give_up_after:
            log.warning("worker %d stopped (%d in a row): %s", slot, times, line)
            return False
        log.error("worker %d stopped %d times in a row at the same record: giving up", slot, times)
        print(line, file=sys.stderr, flush=True)
        self.stopping = True
        self.failed = True
        self.exit_code = EXIT_DATAERR
        return True


def _give_up_after() -> int:
    text = os.environ.get(GIVE_UP_ENV)
    if text is None:
        return GIVE_UP_AFTER
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigurationError(f"bad ${GIVE_UP_ENV}={text!r}: must be a whole number >= 1")
    return value
