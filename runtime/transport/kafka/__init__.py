"""The Kafka back end: `kafka://host:port[,host:port][?options]` (pip install 'streams[kafka]').

Importing it needs confluent-kafka; `runtime.transport.connect` turns its absence into a
ConfigurationError that says what to install.
"""

from runtime.transport.kafka.consumer import KafkaConsumer
from runtime.transport.kafka.options import KafkaOptions
from runtime.transport.kafka.producer import KafkaProducer
from runtime.transport.kafka.transport import KafkaTransport

__all__ = ["KafkaConsumer", "KafkaOptions", "KafkaProducer", "KafkaTransport"]
