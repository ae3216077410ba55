"""Stream operations (filter, map) applied to values, shared by the worker and `streams`."""

from __future__ import annotations

from typing import Any

from runtime.worker.spec import Op


class Skip(Exception):
    """The value was dropped by a filter."""


def apply_ops(ops: list[Op], value: Any) -> Any:
    """Run `value` through `ops`; raises Skip when a filter drops it."""
    for kind, fn in ops:
        if kind == "map":
            value = fn(value)
        elif not fn(value):
            raise Skip
    return value
