"""An app run as a script (`python app.py worker`): mistakes as one line, not silence.

    app = streams.App("wordcount", commit_interval=-1)   # `python app.py worker`:
    # wordcount.py: error: bad commit_interval=-1: must be a positive, finite number  (exit 78)

- A configuration error raised while the script runs (a bad setting or broker URL in
  `App(...)`, at import, before `app.main()` could catch anything) is one line on stderr and
  exit code 78 (EX_CONFIG: a supervisor does not restart it). STREAMS_DEBUG=1 shows the
  traceback instead.
- `python app.py worker` that declares agents but never calls `app.main()` (or `app.run()`)
  prints a hint and exits 78 instead of exiting 0 in silence.
- `streams worker module:app` imports the module: an `app.main()` at its bottom without an
  `if __name__ == "__main__":` guard returns at once (`importing_for_cli`) instead of reading
  the command's arguments.

Only apps created by the `__main__` module are watched: importing an app changes nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from runtime.errors import EXIT_CONFIG, StreamsError, exit_code

_cli_import = 0  # > 0 while `streams ...` imports an app's module
_started = False
_failed = False
_apps: list[Any] = []  # apps the __main__ module created
_previous_hook = sys.__excepthook__


@contextlib.contextmanager
def importing_for_cli() -> Iterator[None]:
    """While the CLI imports an app's module: `app.main()` there is a no-op."""
    global _cli_import
    _cli_import += 1
    try:
        yield
    finally:
        _cli_import -= 1


def in_cli_import() -> bool:
    return _cli_import > 0


def mark_started() -> None:
    """`app.main()` or `app.run()` ran: the script did start its app."""
    global _started
    _started = True


def watch(app: Any, caller_module: str | None) -> None:
    """Called by App() with the name of the module creating it."""
    if caller_module != "__main__" or in_cli_import():
        return
    global _previous_hook
    if not _apps:
        _previous_hook = sys.excepthook
        sys.excepthook = _excepthook
        if sys.argv[1:2] == ["worker"]:
            atexit.register(_check_started)
    _apps.append(app)


def program() -> str:
    """The script's name, for its error lines (`app.py: error: ...`)."""
    return os.path.basename(sys.argv[0]) or "python"


def _exit_now(message: str, code: int) -> None:
    """One line on stderr and exit at once (from an excepthook or atexit, where raising
    SystemExit cannot set the exit code)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    print(f"{program()}: error: {message}", file=sys.stderr, flush=True)
    os._exit(code)


def _excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    global _failed
    _failed = True
    if (
        isinstance(exc, StreamsError)
        and exit_code(exc) == EXIT_CONFIG
        and not os.environ.get("STREAMS_DEBUG")
    ):
        _exit_now(str(exc), EXIT_CONFIG)
    _previous_hook(kind, exc, tb)


def _check_started() -> None:
    if _started or _failed:
        return
    idle = [app for app in _apps if getattr(app, "agents", None) or getattr(app, "timers", None)]
    if idle:
        names = ", ".join(repr(getattr(app, "id", "?")) for app in idle)
        _exit_now(
            f"app {names} declares agents but nothing started a worker: end {program()} "
            'with `if __name__ == "__main__": app.main()`',
            EXIT_CONFIG,
        )
