"""Every ```python example in README.md and docs/ runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
EXAMPLES = [
    pytest.param(code, id=f"{page.name}:{n}")
    for page in PAGES
    for n, code in enumerate(BLOCK.findall(page.read_text()), 1)
]


@pytest.mark.parametrize("code", EXAMPLES)
def test_example_runs(code: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "program", sorted(p.name for p in (ROOT / "examples").glob("*.py") if p.name != "__init__.py")
)
def test_example_programs_run(program: str) -> None:
    """Each program of examples/ runs its demo to the end (they check their own results)."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / program)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_cli_examples_in_docs_run(tmp_path: Path) -> None:
    """The commands of docs/cli.md, in order, against a fresh broker file."""
    (tmp_path / "words.txt").write_text("a\nb\n")
    streams = [sys.executable, "-m", "streams.cli", "--broker", f"sqlite:///{tmp_path}/cli.db"]
    commands = [
        ["topics", "create", "words", "--partitions", "4"],
        ["topics", "list"],
        ["send", "words", "hello", "--key", "greeting"],
        ["send", "words", "--file", "words.txt"],
        ["tail", "words", "--from-beginning", "--max", "3"],
        ["topics", "describe", "words"],
        ["groups", "list"],
        ["topics", "delete", "words"],
    ]
    for command in commands:
        result = subprocess.run(
            streams + command, cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, (command, result.stderr)
    result = subprocess.run(
        [*streams, "topics", "describe", "nope"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "streams: error: unknown topic 'nope': create it first"
