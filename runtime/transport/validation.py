"""Argument checks shared by every back end, so bad input gets the same typed error on each.

check_record("words", b"v", None, None, None, None)     # passes
check_record("words", "a str", None, None, None, None)  # InvalidRequestError
"""

from __future__ import annotations

from typing import Any

from runtime.errors import InvalidRequestError


def check_record(
    topic: Any, value: Any, key: Any, partition: Any, headers: Any, timestamp: Any
) -> None:
    """Raise InvalidRequestError for a record the broker could not store as given."""
    if not isinstance(topic, str):
        raise InvalidRequestError(f"topic must be a string, not {type(topic).__name__}")
    for label, item in (("value", value), ("key", key)):
        if item is not None and type(item) is not bytes:
            raise InvalidRequestError(
                f"{label} must be bytes or None, not {type(item).__name__} (encode it first)"
            )
    if partition is not None and (type(partition) is not int or partition < 0):
        raise InvalidRequestError(f"partition must be a non-negative int, not {partition!r}")
    if timestamp is not None and type(timestamp) is not int:
        raise InvalidRequestError(f"timestamp must be int milliseconds, not {timestamp!r}")
    if headers is not None and not all(
        isinstance(h, tuple) and len(h) == 2 and isinstance(h[0], str) and type(h[1]) is bytes
        for h in headers
    ):
        raise InvalidRequestError("headers must be a list of (str, bytes) pairs")
