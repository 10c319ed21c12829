"""Moved: the blocking client lives in `protocol.shell.client` (issue 13, item 8).

Kept as an alias only so branches written before the move still import; new
code imports `protocol.shell.client`.
"""

from protocol.shell.client import UNREACHABLE, Client, ClientError, ProgressCallback

__all__ = ["UNREACHABLE", "Client", "ClientError", "ProgressCallback"]
