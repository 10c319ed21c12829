"""Typed engine failures. The codes are the protocol's error codes, spelled as
plain strings so the engine does not depend on the layers above it."""

from __future__ import annotations


class EngineError(Exception):
    def __init__(self, code: str, message: str, *, field: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class JobCancelled(Exception):
    """Raised from inside a sampling step when the cancel flag is set."""
