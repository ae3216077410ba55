"""Instruction counts for A/B work: `python -m benchmarks broker|wordcount|floor --instructions`.

Wall-clock figures on a shared 2-core VM move 15-25% from run to run; instructions counted by
callgrind move well under 1%. The benchmark runs twice under `valgrind --tool=callgrind`, with
N and 2N records (or events); the difference divided by N is the cost of one record, free of
interpreter start-up, imports and set-up:

    python -m benchmarks broker --instructions --records 20000
    {"benchmark": "broker", "instructions_per_record": 41234, "n": 20000, ...}

Commits are made every `--commit-every` events under callgrind (time-based commits would
depend on how slow callgrind makes the run).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

_TOTALS = re.compile(r"^(?:summary|totals):\s+(\d+)", re.MULTILINE)
_SIZE_FLAGS = ("--records", "--events")


def _without(argv: list[str], drop: tuple[str, ...], valued: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in drop:
            continue
        if name in valued:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out


def count(benchmark: str, argv: list[str]) -> int:
    """Instructions executed (all threads) by `python -m benchmarks BENCHMARK ARGV`."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    with tempfile.TemporaryDirectory() as directory:
        out = os.path.join(directory, "callgrind.out")
        subprocess.run(
            [
                valgrind,
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-m",
                "benchmarks",
                benchmark,
                *argv,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        with open(out) as file:
            found = _TOTALS.search(file.read())
    if found is None:
        raise SystemExit(f"no instruction total in callgrind's output for {benchmark}")
    return int(found.group(1))


def report(benchmark: str, argv: list[str], n: int, unit: str = "record") -> None:
    """Print the instructions per record (or event) of `benchmark` run with `argv`."""
    rest = _without(argv, ("--instructions", "--vs-floor"), (*_SIZE_FLAGS, "--runs"))
    flag = "--records" if unit == "record" else "--events"
    once = count(benchmark, [*rest, flag, str(n)])
    twice = count(benchmark, [*rest, flag, str(2 * n)])
    print(
        json.dumps(
            {
                "benchmark": benchmark,
                "args": " ".join(rest),
                "n": n,
                f"instructions_per_{unit}": round((twice - once) / n),
                "instructions_n": once,
                "instructions_2n": twice,
            }
        ),
        flush=True,
    )
