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

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from runtime.errors import AppError, TableWriteOutsideAgentError
from runtime.worker import MISSING, TableSpec, TableState, current_agent
from streams.codecs import Codec

if TYPE_CHECKING:
    from streams.app import App


class Table:
    def __init__(
        self,
        app: App,
        name: str,
        partitions: int,
        key: Codec,
        value: Codec,
        default: Callable[[], Any] | None,
    ) -> None:
        self.app = app
        self.name = name
        self.partitions = partitions
        self.key = key
        self.value = value
        self.default = default
        self.changelog_topic = f"{app.id}-{name}-changelog"
        self._state: TableState | None = None

    def __repr__(self) -> str:
        return f"<Table {self.name} changelog={self.changelog_topic}>"

    def spec(self) -> TableSpec:
        return TableSpec(
            self.name, self.changelog_topic, self.partitions, self.key, self.value, self.default
        )

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
