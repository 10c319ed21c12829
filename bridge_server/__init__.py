"""PaintBridge websocket server, its blocking client and the `paintbridge` CLI."""

__version__ = "0.1.0"
