"""Raw pixel buffers as they travel: no PNG, no base64, just bytes + shape."""

from __future__ import annotations

from dataclasses import dataclass

from protocol.errors import invalid

# Channels: 4 = RGBA8 (images), 1 = 8-bit gray (masks: 255 = repaint, the WebUI
# convention), 3 = RGB8 (accepted on input, never sent by the server).
CHANNELS = (1, 3, 4)
MAX_SIDE = 16384


@dataclass(frozen=True)
class RawImage:
    width: int
    height: int
    channels: int
    data: bytes

    def __post_init__(self) -> None:
        self.validate("image")

    def validate(self, field: str) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if type(value) is not int or not 1 <= value <= MAX_SIDE:
                raise invalid(f"{field}.{name}", f"{field}.{name} must be an integer in 1..{MAX_SIDE}, got {value!r}")
        # `type(...) is int`: 4.0 == 4 and True == 1 in Python, but neither is an integer on the wire.
        if type(self.channels) is not int or self.channels not in CHANNELS:
            raise invalid(f"{field}.channels", f"{field}.channels must be one of {CHANNELS}, got {self.channels!r}")
        if not isinstance(self.data, (bytes, bytearray, memoryview)):
            raise invalid(f"{field}.data", f"{field}.data must be bytes")
        expected = self.width * self.height * self.channels
        if len(self.data) != expected:
            raise invalid(
                f"{field}.data",
                f"{field}.data has {len(self.data)} bytes; {self.width}x{self.height}x{self.channels} needs {expected}",
            )

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def to_wire(self) -> dict:
        return {"width": self.width, "height": self.height, "channels": self.channels, "data": self.data}
