"""Entry point: `python -m benchmarks broker` (more benchmarks register here as they land)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys

BENCHMARKS = {
    "broker": "benchmarks.broker",
    "wordcount": "benchmarks.wordcount",
    "scaling": "benchmarks.scaling",
    "windows": "benchmarks.windows",
    "brokerfile": "benchmarks.brokerfile",
    "protocol": "benchmarks.protocol",
    "floor": "benchmarks.floor",
    "state": "benchmarks.state",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    parser.add_argument("name", choices=sorted(BENCHMARKS))
    args, rest = parser.parse_known_args(argv)
    module = importlib.import_module(BENCHMARKS[args.name])
    return int(asyncio.run(module.main(rest)) or 0)


if __name__ == "__main__":
    sys.exit(main())
