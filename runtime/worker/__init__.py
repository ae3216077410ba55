"""The worker: assignment, restore, agents and the exactly-once commit cycle."""

from runtime.worker.agents import AgentRunner, Inbox, current_agent
from runtime.worker.commit import STEPS, CommitCycle
from runtime.worker.ops import Skip, apply_ops, expand, expands
from runtime.worker.spec import (
    AgentSpec,
    AppSpec,
    RepartitionSpec,
    TableSpec,
    TimerSpec,
    TopicSpec,
)
from runtime.worker.store import StateStore
from runtime.worker.tables import MISSING, TableState
from runtime.worker.worker import Worker, WorkerSettings

__all__ = [
    "MISSING",
    "STEPS",
    "AgentRunner",
    "AgentSpec",
    "AppSpec",
    "CommitCycle",
    "Inbox",
    "RepartitionSpec",
    "Skip",
    "StateStore",
    "TableSpec",
    "TableState",
    "TimerSpec",
    "TopicSpec",
    "Worker",
    "WorkerSettings",
    "apply_ops",
    "current_agent",
    "expand",
    "expands",
]
