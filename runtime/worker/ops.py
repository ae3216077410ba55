"""Stream operations applied to values, shared by the worker and `streams`.

    ("filter", pred)     the value continues only if pred(value) is true
    ("map", fn)          fn(value) continues instead
    ("flat_map", fn)     every element of the iterable fn(value) continues, in order
    ("peek", fn)         fn(value) is called for its side effects; the value continues

`apply_ops` runs a chain without `flat_map` (one value in, at most one out: the hot path);
`expand` runs any chain, depth first as Kafka Streams does: the first element of a flat_map
goes through the rest of the chain before the second is taken; `chain` makes one function of
either, for the repartition step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from runtime.worker.spec import Op


class Skip(Exception):
    """The value was dropped by a filter."""


def apply_ops(ops: list[Op], value: Any) -> Any:
    """Run `value` through `ops` (no flat_map among them); raises Skip when a filter drops
    it."""
    for kind, fn in ops:
        if kind == "map":
            value = fn(value)
        elif kind == "peek":
            fn(value)
        elif not fn(value):
            raise Skip
    return value


def expands(ops: list[Op]) -> bool:
    """Whether `ops` may turn one value into several (it holds a flat_map)."""
    return any(kind == "flat_map" for kind, _ in ops)


def expand(ops: list[Op], value: Any, start: int = 0) -> Iterator[Any]:
    """Every value `value` becomes through `ops[start:]`, lazily, depth first: none when a
    filter drops it, several after a flat_map."""
    for i in range(start, len(ops)):
        kind, fn = ops[i]
        if kind == "map":
            value = fn(value)
        elif kind == "peek":
            fn(value)
        elif kind == "flat_map":
            for element in fn(value):
                yield from expand(ops, element, i + 1)
            return
        elif not fn(value):
            return
    yield value


def chain(ops: list[Op]) -> Callable[[Any], Sequence[Any]]:
    """`ops` as one function of a value giving every value it becomes (the repartition step:
    none when a filter drops it, several after a flat_map). Build it once per batch."""
    if not ops:
        return _alone
    if expands(ops):
        return lambda value: list(expand(ops, value))

    def one(value: Any) -> Sequence[Any]:
        try:
            return (apply_ops(ops, value),)
        except Skip:
            return ()

    return one


def _alone(value: Any) -> Sequence[Any]:
    return (value,)
