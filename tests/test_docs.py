"""Every ```python example in README.md and docs/ runs as written."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
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


COMMAND_PAGES = [ROOT / "docs" / "cli.md", ROOT / "docs" / "operations.md"]
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.DOTALL | re.MULTILINE)
RUN_FOR_S = 6.0  # how long a command that runs until stopped (a worker, `tail`) is let run


def doc_commands() -> list[str]:
    """Every command of the ```sh blocks of the command pages, in page order (a trailing
    backslash continues a line; `#` comments are left to the shell)."""
    commands = []
    for page in COMMAND_PAGES:
        for block in SH_BLOCK.findall(page.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                if line.strip() and not line.lstrip().startswith("#"):
                    commands.append(line.strip())
    return commands


def runs_until_stopped(command: str) -> bool:
    """A worker, `broker serve`, or a `tail` with neither --max nor --idle: it runs until
    SIGTERM."""
    words = shlex.split(command, comments=True)
    if "worker" in words or words[1:3] == ["broker", "serve"]:
        return True
    return words[:2] == ["streams", "tail"] and not {"--max", "--idle"} & set(words)


@pytest.mark.slow
def test_every_command_of_the_command_pages_runs_as_written(tmp_path: Path) -> None:
    """docs/cli.md then docs/operations.md, each ```sh command run by the shell as written,
    in order, in a fresh directory holding the example apps and `words.txt`, with this
    environment's `streams` and `python`. A command that runs until stopped must still be
    running, with no error, after RUN_FOR_S seconds, and stop cleanly on SIGTERM."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    (tmp_path / "words.txt").write_text("a\nb\na\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMS_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONPATH", None)
    commands = doc_commands()
    assert any(c.startswith("streams worker") for c in commands)
    for n, command in enumerate(commands):
        err_path = tmp_path / f"command-{n}.err"
        with open(err_path, "w") as err_file:
            process = subprocess.Popen(
                ["bash", "-c", f"exec {command}"],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err_file,
                start_new_session=True,
            )
            try:
                if runs_until_stopped(command):
                    try:
                        process.wait(timeout=RUN_FOR_S)
                    except subprocess.TimeoutExpired:
                        process.send_signal(signal.SIGTERM)
                    else:
                        raise AssertionError(f"{command!r} stopped: {err_path.read_text()}")
                process.wait(timeout=60)
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        err = err_path.read_text()
        assert process.returncode in (0, -signal.SIGTERM), (command, process.returncode, err)
        assert "error" not in err.lower() and "Traceback" not in err, (command, err)
    counts = subprocess.run(
        ["streams", "table", "examples.wordcount:app", "counts"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert '"a"\t' in counts.stdout, counts  # the workers counted what the page sent


def test_an_unknown_topic_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "streams.cli", "topics", "describe", "nope"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "streams: error: unknown topic 'nope': create it first"
