"""I/O shells around the pure protocol core.

Everything else in `protocol/` is pure (no sockets, no threads, no clocks);
this subpackage holds the code that actually talks to a server: the blocking
client that the CLI and the Krita plugin share. The plugin carries it, so it
imports only `protocol` and `websockets` (never `bridge_server` or torch).
"""
