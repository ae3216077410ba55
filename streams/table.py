"""Tables: dicts partitioned like the stream that updates them, backed by a changelog.

    counts = app.table("counts", default=int)   # changelog topic: <app>-counts-changelog

    @app.stream(words)
    async def count(stream):
        async for word in stream.group_by(lambda w: w, name="by-word"):
            counts[word] += 1                    # only inside an agent

Every change is written to the compacted changelog in the agent's transaction; the local store
is a cache rebuilt from the changelog when needed. Reads work anywhere in the worker for keys of
partitions it owns. A key whose partition another worker owns raises TableKeyNotOwnedError,
which explains how to fix it with group_by. Replace values (`table[k] = new`) rather than
mutating them in place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from runtime.errors import AppError, ConfigurationError, TableWriteOutsideAgentError
from runtime.worker import MISSING, TableSpec, TableState, current_agent
from runtime.worker.spec import WindowSpec
from runtime.worker.windowing import Window, to_ms, window_spec
from runtime.worker.windows import WindowedState, WindowSet
from streams.codecs import Codec

if TYPE_CHECKING:
    from streams.app import App
    from streams.topic import Topic


class Table:
    def __init__(
        self,
        app: App,
        name: str,
        partitions: int,
        key: Codec,
        value: Codec,
        default: Callable[[], Any] | None,
        *,
        store: str = "local",
    ) -> None:
        self.app = app
        self.store = store
        self.name = name
        self.partitions = partitions
        self.key = key
        self.value = value
        self.default = default
        self.changelog_topic = f"{app.id}-{name}-changelog"
        self.window: WindowSpec | None = None
        self._state: TableState | None = None

    def __repr__(self) -> str:
        return f"<Table {self.name} changelog={self.changelog_topic}>"

    def spec(self) -> TableSpec:
        return TableSpec(
            self.name,
            self.changelog_topic,
            self.partitions,
            self.key,
            self.value,
            self.default,
            self.window,
            self.store,
        )

    # --- windows ------------------------------------------------------------------------
    # Sizes are seconds (floats allowed) or timedeltas; see docs/windows.md.

    def tumbling(
        self,
        size: Any,
        *,
        grace: Any = 0,
        expires: Any = None,
        timestamp: Callable[[Any], Any] | str | None = None,
        dead_letter: Topic | str | None = None,
    ) -> Table:
        """Fixed, non-overlapping windows [start, start + size), aligned to the epoch."""
        return self._windowed(
            window_spec("tumbling", size, grace=grace, expires=expires, timestamp=timestamp),
            dead_letter,
        )

    def hopping(
        self,
        size: Any,
        step: Any,
        *,
        grace: Any = 0,
        expires: Any = None,
        timestamp: Callable[[Any], Any] | str | None = None,
        dead_letter: Topic | str | None = None,
    ) -> Table:
        """Overlapping windows of `size`, one starting every `step`."""
        return self._windowed(
            window_spec(
                "hopping", size, step=step, grace=grace, expires=expires, timestamp=timestamp
            ),
            dead_letter,
        )

    def sliding(
        self,
        size: Any,
        *,
        grace: Any = 0,
        expires: Any = None,
        timestamp: Callable[[Any], Any] | str | None = None,
        dead_letter: Topic | str | None = None,
    ) -> Table:
        """Windows [t - size, t] that end at each update's time (difference windows)."""
        return self._windowed(
            window_spec("sliding", size, grace=grace, expires=expires, timestamp=timestamp),
            dead_letter,
        )

    def session(
        self,
        gap: Any,
        *,
        grace: Any = 0,
        expires: Any = None,
        timestamp: Callable[[Any], Any] | str | None = None,
        merge: Callable[[Any, Any], Any] | None = None,
        dead_letter: Topic | str | None = None,
    ) -> Table:
        """Per-key sessions: updates less than `gap` apart share one window; sessions that
        an update bridges merge (their values combined with `merge`, default `+`)."""
        spec = window_spec(
            "session", gap, grace=grace, expires=expires, timestamp=timestamp, merge=merge
        )
        return self._windowed(spec, dead_letter)

    def emit_final(self, to: Topic | str, *, idle_close: Any = None) -> Table:
        """Send one final result per key and window to `to` when the window closes: when the
        stream time passes its end + grace or, with `idle_close` (seconds), after that much
        wall-clock time without updates in its partition."""
        if self.window is None:
            raise ConfigurationError(
                f"table {self.name!r}: emit_final() needs a window: call .tumbling(), "
                ".hopping(), .sliding() or .session() first"
            )
        idle = None
        if idle_close is not None:
            try:
                idle = to_ms(idle_close, "idle_close")
            except (TypeError, ValueError) as exc:
                raise ConfigurationError(f"table {self.name!r}: {exc}") from None
            if idle <= 0:
                raise ConfigurationError(f"table {self.name!r}: idle_close must be > 0")
        self.window = dataclasses.replace(
            self.window, emit_to=self._topic_name(to), idle_close=idle
        )
        return self

    def _windowed(self, spec: WindowSpec, dead_letter: Topic | str | None) -> Table:
        if self.window is not None:
            raise ConfigurationError(f"table {self.name!r} already has windows")
        if dead_letter is not None:
            spec = dataclasses.replace(spec, dead_letter=self._topic_name(dead_letter))
        self.window = spec
        return self

    def _topic_name(self, topic: Topic | str) -> str:
        if isinstance(topic, str):
            return self.app.topic(topic).name
        if self.app.topics.get(topic.name) is not topic:
            raise ConfigurationError(f"topic {topic.name!r} is not a topic of this app")
        return topic.name

    def windows(self, key: Any) -> list[Window]:
        """The live windows of `key` in a windowed table: Window(start, end, value)."""
        state = self._current()
        if not isinstance(state, WindowedState):
            raise AppError(f"table {self.name!r} has no windows")
        return state.windows(key)

    @property
    def dropped(self) -> int:
        """Late updates this worker dropped (windowed tables)."""
        state = self._current()
        return state.dropped if isinstance(state, WindowedState) else 0

    def _attach(self, state: TableState | None) -> None:
        self._state = state

    @property
    def state(self) -> TableState:
        if self._state is None:
            raise AppError(
                f"table {self.name!r} is available only while a worker of app "
                f"{self.app.id!r} runs (in its agents, timers and tasks)"
            )
        return self._state

    def _writable(self) -> TableState:
        if current_agent.get() is None:
            raise TableWriteOutsideAgentError(
                f"table {self.name!r} was written outside an agent: changes must be part of "
                "an agent's transaction; send an event to a topic and update the table in the "
                "agent that processes it"
            )
        return self._current()

    def _current(self) -> TableState:
        """This table in the worker running the current agent (several workers of one app
        may share a process, in tests), else in the worker the app runs."""
        runner = current_agent.get()
        if runner is not None:
            state: TableState | None = runner.tables.get(self.name)
            if state is not None:
                return state
        return self.state

    def __getitem__(self, key: Any) -> Any:
        runner = current_agent.get()  # inline of _current(): this is the hot path
        state = None if runner is None else runner.tables.get(self.name)
        if state is None:  # not `or`: an empty table is falsy
            state = self.state
        return state.get(key)

    def get(self, key: Any, default: Any = None) -> Any:
        return self._current().get(key, default)

    def __contains__(self, key: Any) -> bool:
        return self._current().contains(key)

    def __setitem__(self, key: Any, value: Any) -> None:
        runner = current_agent.get()
        state = None if runner is None else runner.tables.get(self.name)
        if state is None:
            state = self._writable()  # outside an agent: raises the explanation
        if value.__class__ is WindowSet and value.key is key and value.state is state:
            return  # `table[key] += 1` on a windowed table: the operator applied it (hot)
        state.set(key, value)

    def __delitem__(self, key: Any) -> None:
        self._writable().delete(key)

    def pop(self, key: Any, default: Any = MISSING) -> Any:
        state = self._writable()
        if not state.contains(key):
            if default is MISSING:
                raise KeyError(key)
            return default
        value = state.get(key)
        state.delete(key)
        return value

    def items(self) -> Iterator[tuple[Any, Any]]:
        """Rows of the partitions this worker owns."""
        return self._current().items()

    def keys(self) -> Iterator[Any]:
        return (k for k, _ in self._current().items())

    def values(self) -> Iterator[Any]:
        return (v for _, v in self._current().items())

    def __len__(self) -> int:
        return len(self._current())
