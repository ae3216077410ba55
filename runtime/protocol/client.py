"""A minimal blocking Kafka-protocol client: one request, one response, over a socket.

For tests and diagnostics of the server (requests a real client would never send: a bad CRC,
an unknown version, a truncated frame), not for applications.

    with RawClient("127.0.0.1", 9092) as client:
        response = client.request(18, 3, {"client_software_name": "x"})   # ApiVersions v3
"""

from __future__ import annotations

import io
import socket
import struct
from types import TracebackType
from typing import Any

from kio.index import load_request_schema, load_response_schema
from kio.serial import entity_reader, entity_writer

from runtime.protocol.messages import build


class RawClient:
    def __init__(self, host: str, port: int, *, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.correlation_id = 0

    def __enter__(self) -> RawClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def encode(self, api_key: int, version: int, body: dict[str, Any]) -> bytes:
        """A request frame's payload (header and body, without the length prefix)."""
        cls = load_request_schema(api_key, version)
        self.correlation_id += 1
        out = io.BytesIO()
        client_id = b"raw"
        out.write(struct.pack(">hhih", api_key, version, self.correlation_id, len(client_id)))
        out.write(client_id)
        if cls.__flexible__:
            out.write(b"\x00")
        entity_writer(cls)(out, build(cls, body))
        return out.getvalue()

    def send_frame(self, payload: bytes, *, length: int | None = None) -> None:
        size = len(payload) if length is None else length
        self.sock.sendall(struct.pack(">i", size) + payload)

    def read_frame(self) -> bytes | None:
        """The next response payload, or None when the server closed the connection."""
        head = self._read(4)
        if head is None:
            return None
        (size,) = struct.unpack(">i", head)
        return self._read(size)

    def _read(self, size: int) -> bytes | None:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def request(self, api_key: int, version: int, body: dict[str, Any]) -> Any:
        """Send one request and decode its response (ConnectionError if the server closed)."""
        cls = load_request_schema(api_key, version)
        self.send_frame(self.encode(api_key, version, body))
        payload = self.read_frame()
        if payload is None:
            raise ConnectionError("the server closed the connection")
        response_cls = load_response_schema(api_key, version)
        pos = 4  # correlation id
        if cls.__flexible__ and api_key != 18:
            pos += 1  # empty tagged fields of response header v1
        entity, _ = entity_reader(response_cls)(payload, pos)
        return entity
