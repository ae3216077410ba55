"""The pytest plugin (streams/pytest_plugin.py): docs/testing.md's pytest example passes in a
fresh project, one with none of this repository's configuration, under plain `pytest`.

Each test writes test files into an empty directory and runs `python -m pytest` there in a
subprocess, with `-c /dev/null` and no PYTEST_* or PYTHONPATH variables, so that nothing of
ours (asyncio_mode=auto, --import-mode=importlib, conftest.py) applies; the plugin comes from
the package's `pytest11` entry point alone (after `pip install -e .`).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def pytest_example() -> str:
    """The ```python block of docs/testing.md that is a pytest test file."""
    blocks = [
        b for b in BLOCK.findall((ROOT / "docs" / "testing.md").read_text()) if "def test_" in b
    ]
    examples = [b for b in blocks if "streams_testing" in b]
    assert len(examples) == 1, "docs/testing.md should have one pytest example"
    return examples[0]


def run_pytest(project: Path, *options: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST") and k != "PYTHONPATH"}
    command = [sys.executable, "-m", "pytest", "-c", os.devnull, "--rootdir", str(project)]
    return subprocess.run(
        [*command, "-rA", "-p", "no:cacheprovider", *options],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_plugin_is_registered_by_the_package() -> None:
    """`pytest11` names streams.pytest_plugin (reinstall with `pip install -e .` if not)."""
    plugins = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert plugins.get("streams") == "streams.pytest_plugin"


@pytest.mark.parametrize("asyncio_plugin", ["with pytest-asyncio", "without pytest-asyncio"])
def test_the_docs_example_passes_in_a_fresh_project(tmp_path: Path, asyncio_plugin: str) -> None:
    """The example's async tests pass with nothing configured, pytest-asyncio (strict mode,
    its default) installed or not."""
    (tmp_path / "test_greeter.py").write_text(pytest_example())
    options = ["-p", "no:asyncio"] if asyncio_plugin == "without pytest-asyncio" else []
    result = run_pytest(tmp_path, *options)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_the_docs_example_fails_without_the_plugin(tmp_path: Path) -> None:
    """With the plugin disabled the same project fails: it is the plugin that makes it pass."""
    (tmp_path / "test_greeter.py").write_text(pytest_example())
    result = run_pytest(tmp_path, "-p", "no:streams")
    assert result.returncode != 0
    assert "fixture 'streams_testing' not found" in result.stdout


LEFT_STARTED = """
import streams

app = streams.App("left")
runs = []


@app.stream(app.topic("numbers"))
async def agent(stream):
    async for _ in stream:
        pass


async def test_leaves_a_run_started(streams_testing):
    run = streams_testing(app)
    await run.start()
    runs.append(run)


def test_the_run_was_stopped_when_the_test_ended():
    assert runs and not runs[0].worker.started


async def test_not_using_the_fixture():
    pass
"""


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_a_run_left_started_is_stopped_and_other_async_tests_are_not_ours(
    tmp_path: Path, mode: str
) -> None:
    """A run the test did not stop is stopped when it ends, whether the plugin ran the test
    (pytest-asyncio in strict mode) or pytest-asyncio did (auto mode: with a warning, since
    its loop is gone by then). An async test without
    the fixture is left to pytest-asyncio: pytest fails it in strict mode."""
    (tmp_path / "test_left.py").write_text(LEFT_STARTED)
    result = run_pytest(tmp_path, "-o", f"asyncio_mode={mode}")
    out = result.stdout
    assert "PASSED test_left.py::test_leaves_a_run_started" in out, out + result.stderr
    assert "PASSED test_left.py::test_the_run_was_stopped_when_the_test_ended" in out, out
    outcome = "PASSED" if mode == "auto" else "FAILED"
    assert f"{outcome} test_left.py::test_not_using_the_fixture" in out, out
    # The plugin stops it in the test's own loop; after pytest-asyncio's loop is closed, the
    # fixture stops it in a new one and warns.
    assert ("were left started" in out) == (mode == "auto"), out
