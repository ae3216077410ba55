"""streams: exactly-once stream processing for Python.

The user API (App, topics, tables, agents) lands with the stream API; today this package holds
the `streams` command line. The broker and transports live in `runtime`.
"""

__version__ = "0.1.0"
