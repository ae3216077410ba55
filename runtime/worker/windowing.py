"""Window arithmetic, apart from the state that uses it: times in integer milliseconds,
declarations validated into a WindowSpec, window starts, and the in-place operators a window
update applies (by name, as sliding windows store them).

    spec = window_spec("hopping", 60, step=10, grace=5)    # seconds in, milliseconds out
    list(windows_for(65_000, spec.size, spec.step))        # [10000, 20000, ..., 60000]
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from runtime.errors import ConfigurationError
from runtime.worker.spec import WindowSpec
from runtime.worker.tables import MISSING

# In-place operators a window set supports, by the name stored in sliding updates.
OPS: dict[str, Callable[[Any, Any], Any]] = {
    "set": lambda _old, new: new,
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "truediv": operator.truediv,
    "floordiv": operator.floordiv,
    "mod": operator.mod,
    "pow": operator.pow,
    "or": operator.or_,
    "and": operator.and_,
    "xor": operator.xor,
    "lshift": operator.lshift,
    "rshift": operator.rshift,
}


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utc(seconds: float) -> datetime:
    """A window bound (seconds since the epoch, whole milliseconds) as an aware UTC datetime,
    exact to the millisecond."""
    return EPOCH + timedelta(milliseconds=round(seconds * 1000))


class Window(NamedTuple):
    """A live window of one key: bounds in seconds since the epoch (end exclusive for
    tumbling and hopping windows, inclusive for sliding windows and sessions), and as UTC
    datetimes (`start_time`, `end_time`)."""

    start: float
    end: float
    value: Any

    @property
    def start_time(self) -> datetime:
        return utc(self.start)

    @property
    def end_time(self) -> datetime:
        return utc(self.end)


@dataclasses.dataclass(frozen=True)
class WindowResult:
    """A final result of a window, as `emit_final` sends it: `{"key", "start", "end",
    "value"}`, bounds in seconds. Declare the results topic with
    `value_type=streams.WindowResult` to read them as these, with `start_time` and `end_time`
    as UTC datetimes; the records are the same JSON objects either way."""

    key: Any
    start: float
    end: float
    value: Any

    @property
    def start_time(self) -> datetime:
        return utc(self.start)

    @property
    def end_time(self) -> datetime:
        return utc(self.end)


def to_ms(value: Any, what: str = "a time") -> int:
    """Seconds (int, float), a datetime or a timedelta as integer milliseconds."""
    if isinstance(value, datetime):
        return round(value.timestamp() * 1000)
    if isinstance(value, timedelta):
        return round(value.total_seconds() * 1000)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{what} must be seconds (int or float), a datetime or a timedelta")
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{what} must be finite, not {value!r}")
    return round(value * 1000)


def window_spec(
    kind: str,
    size: Any,
    *,
    step: Any = None,
    grace: Any = 0,
    expires: Any = None,
    timestamp: Callable[[Any], Any] | str | None = None,
    merge: Callable[[Any, Any], Any] | None = None,
) -> WindowSpec:
    """Validate a window declaration (seconds or timedeltas) into a WindowSpec (ms)."""
    try:
        size_ms = to_ms(size, "the window size")
        step_ms = size_ms if step is None else to_ms(step, "the hop step")
        grace_ms = to_ms(grace, "grace")
        expires_ms = grace_ms if expires is None else to_ms(expires, "expires")
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{kind} window: {exc}") from None
    if size_ms <= 0:
        raise ConfigurationError(f"{kind} window: the size must be at least 1 ms, got {size!r}")
    if not 0 < step_ms <= size_ms:
        raise ConfigurationError(f"hopping window: need 0 < step <= size, got step {step!r}")
    if grace_ms < 0:
        raise ConfigurationError(f"{kind} window: grace must be >= 0, got {grace!r}")
    if expires_ms < grace_ms:
        raise ConfigurationError(
            f"{kind} window: expires ({expires!r}) must be at least grace ({grace!r}): a "
            "window must be kept until it can no longer change"
        )
    if isinstance(timestamp, str):
        timestamp = _field(timestamp)
    if timestamp is not None and not callable(timestamp):
        raise ConfigurationError(
            "timestamp= must be a function of the event's value or the name of its field"
        )
    if merge is not None and not callable(merge):
        raise ConfigurationError("merge= must be a function of two values")
    return WindowSpec(kind, size_ms, step_ms, grace_ms, expires_ms, timestamp, merge)


def _field(name: str) -> Callable[[Any], Any]:
    """timestamp="ts": the event value's field `ts` (a dict key or an attribute)."""

    def field(value: Any) -> Any:
        return value[name] if isinstance(value, dict) else getattr(value, name)

    return field


def windows_for(ts: int, size: int, step: int) -> range:
    """Starts of the tumbling/hopping windows [start, start + size) holding `ts`."""
    first = max(0, ts - size + step) // step * step
    return range(first, ts + 1, step)


def sliding_fold(
    entries: list[tuple[int, list[Any]]], start: int, end: int, close_at: int, default: Any
) -> Any:
    """A sliding window's value: the updates at times in [start, end] that arrived before the
    window closed (stream time at arrival < close_at), folded in event-time order."""
    value, found = default, False
    for ts, updates in entries:
        if start <= ts <= end:
            for arrived, op, operand in updates:
                if arrived < close_at:
                    value = OPS[op](value, operand) if found or value is not MISSING else operand
                    found = True
    return value if found else MISSING
