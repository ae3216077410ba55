"""Agents run as tasks of their own; the worker hands them events a batch at a time.

The worker feeds a batch into an agent's `Inbox` and awaits the moment the agent asks for more:
then every event of the batch has been processed (its table writes made, its outputs
produced). The worker commits only at such moments, so a commit never splits an event's
effects from its offset. Within a batch the agent takes events without suspending, so handing
over costs a few microseconds per batch, not per event.

    runner = AgentRunner(spec, emit)
    runner.start()
    await runner.process(events)      # returns when the agent has processed them all
    await runner.restart()            # a fresh run over a fresh inbox (after an abort)

An agent that raises fails its task: `process` raises AgentError carrying the events that
failed (the event being processed, or every event of the take() list being processed), so
the worker can apply the agent's on_error policy to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
from collections.abc import Callable
from typing import Any

from runtime.errors import AgentError, AgentStoppedError
from runtime.types import Event
from runtime.worker.spec import AgentSpec

current_agent: contextvars.ContextVar[AgentRunner | None] = contextvars.ContextVar(
    "streams_current_agent", default=None
)


class Inbox:
    """The events handed to one agent, and the hand-over between it and the worker."""

    __slots__ = ("_idle", "_more", "current", "events", "flushing", "holding", "pos", "taken")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.pos = 0
        self.current: Event | None = None  # the event the agent is processing
        self.taken: list[Event] | None = None  # the events of the take() list it processes
        self.holding = False  # the agent waits with events taken but not processed (take())
        self.flushing = False  # the worker asks held events to be processed now
        self._more: asyncio.Future[None] | None = None
        self._idle: asyncio.Future[None] | None = None

    async def wait(self, holding: bool = False) -> None:
        """Called by the agent's stream when it has taken every event handed to it;
        `holding` when it keeps some unprocessed (take() filling a list)."""
        self.holding = holding
        if self._idle is not None and not self._idle.done():
            self._idle.set_result(None)
        self._more = asyncio.get_running_loop().create_future()
        await self._more

    def feed(self, events: list[Event], flush: bool = False) -> asyncio.Future[None]:
        """Hand `events` over; the future completes when the agent has processed them (and,
        with `flush`, the events it held)."""
        self.events = events
        self.pos = 0
        self.flushing = flush
        self._idle = asyncio.get_running_loop().create_future()
        if self._more is not None and not self._more.done():
            self._more.set_result(None)
        return self._idle

    def fail(self, error: BaseException) -> None:
        if self._idle is not None and not self._idle.done():
            self._idle.set_exception(error)


class AgentRunner:
    """Runs one agent: its task, its inbox, and where its outputs go."""

    def __init__(
        self,
        spec: AgentSpec,
        emit: Callable[[AgentRunner, Any], None],
        tables: dict[str, Any] | None = None,
    ) -> None:
        self.spec = spec
        self.tables = tables or {}  # the tables of this agent's worker, by name
        self.inbox = Inbox()
        self._emit = emit
        self.task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None
        self.stage = "agent"  # "sink" while its output is being encoded

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(
            self._run(), name=f"agent:{self.spec.name}"
        )
        self.task.add_done_callback(self._finished)

    async def _run(self) -> None:
        current_agent.set(self)  # this task's context only
        result = self.spec.run(self.inbox)
        if inspect.isasyncgen(result):
            async for output in result:
                try:
                    self._emit(self, output)
                except Exception:
                    self.stage = "sink"  # the output could not be encoded
                    with contextlib.suppress(Exception):
                        await result.aclose()
                    raise
        else:
            await result  # type: ignore[misc]

    def _finished(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            self.inbox.fail(AgentStoppedError(f"agent {self.spec.name!r} was cancelled"))
            return
        exc = task.exception()
        failed = self.inbox.taken or ([] if self.inbox.current is None else [self.inbox.current])
        event = failed[-1] if failed else None
        where = ""
        if event is not None:
            where = f" at {event.topic}[{event.partition}]@{event.offset} (key {_short(event.key)})"
            if len(failed) > 1:
                where += f" processing a take() list of {len(failed)} events"
        if exc is None:
            error: BaseException = AgentStoppedError(
                f"agent {self.spec.name!r} returned{where}; agents must keep iterating their stream"
            )
        else:
            doing = "failed encoding its output" if self.stage == "sink" else "failed"
            error = AgentError(
                f"agent {self.spec.name!r} {doing}{where}: {exc!r}",
                events=failed,
                agent=self.spec.name,
                stage=self.stage,
            )
            error.__cause__ = exc
        self.error = error
        self.inbox.fail(error)

    async def process(self, events: list[Event]) -> None:
        if self.error is not None:
            raise self.error
        await self.inbox.feed(events)

    async def flush(self) -> None:
        """Have the agent process events it holds (before a commit)."""
        if self.inbox.holding:
            await self.inbox.feed([], flush=True)

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task  # its error, if any, is already in self.error

    async def restart(self) -> None:
        """Run the agent afresh: a new call of its function over a new inbox. After an
        aborted cycle, so that nothing it held or computed from that cycle's events (a take()
        list, local variables) survives; as a restarted worker would."""
        await self.stop()
        self.inbox = Inbox()
        self.error = None
        self.stage = "agent"
        self.start()


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
