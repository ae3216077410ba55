"""The Kafka wire protocol over the embedded broker: `streams broker serve`.

Frames in, broker calls, frames out: this package stands on `runtime.broker` as the embedded
transport does and knows nothing of workers or apps; no protocol type reaches the broker.

    from runtime.protocol import ProtocolServer
    server = ProtocolServer.start_in_thread("sqlite:///app.db", port=0)
    ...  # any Kafka client: bootstrap.servers = server.bootstrap
    server.stop()
"""

from runtime.protocol.server import ProtocolServer

__all__ = ["ProtocolServer"]
