"""PaintBridge for Krita: AI painting through a local PaintBridge server.

Krita imports this package at start-up. The logic lives in plain modules
(colors, regions, requests, history, jobqueue, prefs, pngio, connection,
worker) that run and are tested without Krita; `kritadoc` holds every call
into Krita, and `docker` is the Qt widget over them.
"""

import os
import sys

# The plugin carries what it needs (protocol, client, a pure-Python
# websocket client and msgpack) in vendor/, because Krita's own Python has no
# pip on Windows and macOS.
_VENDOR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vendor")
if os.path.isdir(_VENDOR) and _VENDOR not in sys.path:
    sys.path.insert(0, _VENDOR)

try:
    import krita  # only inside Krita
except ImportError:
    krita = None

if krita is not None and hasattr(krita, "DockWidget"):
    from .docker import register

    register()
