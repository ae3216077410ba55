"""The pytest plugin of streams: installed with the package (a `pytest11` entry point), nothing
to configure.

    async def test_greets(streams_testing):
        async with streams_testing(app) as t:          # app.testing(), stopped with the test
            await t.send("names", "ada")
            await t.drain()
            assert t.table("seen") == {"ada": 1}

`streams_testing(app, **settings)` is `app.testing(**settings)`; with `files=True` the broker
and the table stores are files under the test's `tmp_path` (the same paths for every run of
that app in the test, so a second run is a restart). An `async def` test that uses the fixture
is run by this plugin in an event loop of its own, unless pytest-asyncio (auto mode, or an
`asyncio` mark) runs it; either way a run the test left started is stopped (as a crash would
end it) when the test ends. `pytest -p no:streams` disables the plugin.
"""

from __future__ import annotations

import asyncio
import inspect
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from streams.app import App
    from streams.testing import TestRun

FIXTURE = "streams_testing"


class TestRuns:
    """The `streams_testing` fixture's value: makes test runs and stops those left started."""

    __test__ = False  # not a pytest test class

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.runs: list[TestRun] = []

    def __call__(self, app: App, *, files: bool = False, **settings: Any) -> TestRun:
        """`app.testing(**settings)`; `files=True`: a SQLite broker and a state directory
        under the test's tmp_path instead of memory."""
        if files:
            settings.setdefault("broker", f"sqlite:///{self.tmp_path / app.id}.db")
            settings.setdefault("state_dir", str(self.tmp_path / f"{app.id}-state"))
        run: TestRun = app.testing(**settings)
        self.runs.append(run)
        return run

    def started(self) -> list[TestRun]:
        return [r for r in self.runs if r.worker is not None and r.worker.started]

    async def stop_started(self) -> None:
        """Stop every run still started, as a crash would (nothing more is committed)."""
        for run in reversed(self.started()):
            await run.stop(clean=False)


@pytest.fixture
def streams_testing(tmp_path: Path) -> Iterator[TestRuns]:
    """`streams_testing(app, files=False, **settings)`: an `app.testing()` run of this test."""
    runs = TestRuns(tmp_path)
    yield runs
    if runs.started():
        # The test ran in pytest-asyncio's loop, closed by now: stop the runs in a new one
        # (their aiosqlite threads would otherwise keep the process from exiting).
        warnings.warn(
            f"{len(runs.started())} streams test run(s) were left started: use `async with "
            "streams_testing(app) as t:` or `await t.stop()`",
            pytest.PytestWarning,
            stacklevel=1,
        )
        asyncio.run(runs.stop_started())


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run an `async def` test that uses `streams_testing`, when no other plugin does (an
    async test that pytest-asyncio runs reaches this hook already wrapped as a plain
    function)."""
    function = pyfuncitem.obj
    if not inspect.iscoroutinefunction(function) or FIXTURE not in pyfuncitem.fixturenames:
        return None
    funcargs = pyfuncitem.funcargs
    runs = funcargs.get(FIXTURE)
    if not isinstance(runs, TestRuns):  # a fixture of the same name that is not ours
        return None
    if "anyio_backend" in funcargs:  # anyio's plugin runs it, on the backend it was given
        return None
    arguments = {
        name: funcargs[name] for name in inspect.signature(function).parameters if name in funcargs
    }
    asyncio.run(_run(function(**arguments), runs))
    return True


async def _run(test: Any, runs: TestRuns) -> None:
    try:
        await test
    finally:
        await runs.stop_started()
