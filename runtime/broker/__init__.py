"""The embedded broker: a Kafka-faithful partitioned log in one SQLite file.

from runtime.broker import Broker, ProduceBatch
broker = Broker("app.db")            # or Broker() for an in-memory database
"""

from runtime.broker.core import (
    EARLIEST,
    LATEST,
    NO_PRODUCER,
    READ_COMMITTED,
    READ_UNCOMMITTED,
    Broker,
    FetchResult,
    ProduceBatch,
)
from runtime.broker.groups import GroupDescription, Member, MemberState

__all__ = [
    "EARLIEST",
    "LATEST",
    "NO_PRODUCER",
    "READ_COMMITTED",
    "READ_UNCOMMITTED",
    "Broker",
    "FetchResult",
    "GroupDescription",
    "Member",
    "MemberState",
    "ProduceBatch",
]
