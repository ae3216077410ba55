"""The embedded back end: `sqlite:///path.db` (a file shared by processes) and `memory://`."""

from runtime.transport.embedded.consumer import EmbeddedConsumer
from runtime.transport.embedded.producer import EmbeddedProducer
from runtime.transport.embedded.transport import EmbeddedTransport

__all__ = ["EmbeddedConsumer", "EmbeddedProducer", "EmbeddedTransport"]
