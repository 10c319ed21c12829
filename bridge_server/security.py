"""Who may open a websocket: handshake checks against hostile web pages.

Any page in the painter's browser can open ws://127.0.0.1:8765. Browsers
always send an `Origin` header, so a foreign or `null` origin is refused,
and a `Host` header that is not ours is refused too (DNS rebinding: a
hostile name that resolves to 127.0.0.1). Native clients (Krita, the CLI)
send no Origin and pass.
"""

from __future__ import annotations

import hmac
import ipaddress
from urllib.parse import urlsplit

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_only(value: str) -> str:
    """'example.com:8765' / '[::1]:8765' -> hostname, lower case."""
    parsed = urlsplit(f"//{value}")
    return (parsed.hostname or "").lower()


def check_origin(origin: str | None, allowed: list[str]) -> str | None:
    """None if the origin may connect, else the reason it may not."""
    if origin is None:
        return None  # not a browser
    if origin == "null":
        return "Origin 'null' is refused (sandboxed or file:// pages)"
    if origin in allowed:
        return None
    parsed = urlsplit(origin)
    if parsed.scheme in ("http", "https") and parsed.hostname and is_loopback(parsed.hostname):
        return None
    return f"Origin {origin!r} is not allowed (start the server with --allow-origin {origin} to allow it)"


def check_host(host_header: str | None, bound_host: str) -> str | None:
    """Refuse Host headers naming something other than this server."""
    if host_header is None:
        return "missing Host header"
    host = _host_only(host_header)
    if is_loopback(host):
        return None
    bound = bound_host.strip("[]").lower()
    if bound in ("0.0.0.0", "::", ""):
        # Listening on every interface: any IP literal reaches us legitimately;
        # a DNS name could be a rebinding attack, unless a token guards us.
        try:
            ipaddress.ip_address(host)
            return None
        except ValueError:
            return f"Host {host!r} is not an address of this server"
    return None if host == bound else f"Host {host!r} is not this server ({bound_host})"


def token_ok(presented: str, expected: str) -> bool:
    if not expected:
        return True
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))
