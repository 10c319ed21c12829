"""Who may open a websocket: handshake checks against hostile web pages.

Any page in the painter's browser can open ws://127.0.0.1:8765. Browsers
always send an `Origin` header, so a foreign or `null` origin is refused,
and a `Host` header that is not ours is refused too (DNS rebinding: a
hostile name that resolves to 127.0.0.1). Native clients (Krita, the CLI)
send no Origin and pass.

Both headers are parsed strictly (RFC 6454 serialized origin: scheme, host,
optional port, nothing else; RFC 9110 Host: host and optional port): a value
that a lenient URL parser would read one way and a browser or proxy another
(`http://evil.com@127.0.0.1`, `127.0.0.1:abc`) is refused, not guessed at.
"""

from __future__ import annotations

import hmac
import ipaddress
import re

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1", "[::1]"}

# scheme "://" host [":" port], where host is a reg-name, IPv4 or [IPv6]; no
# userinfo, path, query or fragment. Written out because urllib.parse accepts
# all of those (and a non-numeric port) without complaint.
_SCHEME = r"[a-z][a-z0-9+.-]*"
_REG_NAME = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*\.?"
_IPV6 = r"\[[0-9a-f:.]+\]"
_HOST = rf"(?P<host>{_REG_NAME}|{_IPV6})"
_PORT = r"(?::(?P<port>[0-9]{1,5}))?"
_ORIGIN = re.compile(rf"(?P<scheme>{_SCHEME})://{_HOST}{_PORT}", re.IGNORECASE)
_HOST_HEADER = re.compile(rf"{_HOST}{_PORT}", re.IGNORECASE)
MAX_HEADER_VALUE = 255  # a hostname is at most 253 characters; an origin adds a scheme and a port


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _valid_host(host: str, port: str | None) -> bool:
    if port is not None and not 0 < int(port) < 65536:
        return False
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
    elif re.fullmatch(r"[0-9.]+", host):  # all digits and dots: must be a real IPv4 address
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
    return True


def parse_host(value: str) -> str | None:
    """A Host header ('example.com:8765', '[::1]:8765') -> the host in lower
    case, or None when it is not exactly host[:port]."""
    match = _HOST_HEADER.fullmatch(value) if len(value) <= MAX_HEADER_VALUE else None
    if match is None or not _valid_host(match["host"], match["port"]):
        return None
    return match["host"].lower()


def parse_origin(value: str) -> tuple[str, str] | None:
    """An Origin header -> (scheme, host) in lower case, or None when it is not
    exactly scheme://host[:port]."""
    match = _ORIGIN.fullmatch(value) if len(value) <= MAX_HEADER_VALUE else None
    if match is None or not _valid_host(match["host"], match["port"]):
        return None
    return match["scheme"].lower(), match["host"].lower()


def check_origin(origin: str | None, allowed: list[str]) -> str | None:
    """None if the origin may connect, else the reason it may not.

    `allowed` (`--allow-origin`) matches exactly, byte for byte: that is how a
    non-browser host with its own scheme (a Photoshop UXP plugin's `uxp://…`,
    an app's `file://`) is admitted. Loopback http(s) origins always pass.
    """
    if origin is None:
        return None  # not a browser
    if origin in allowed:
        return None
    shown = origin[:80]
    if origin == "null":
        return "Origin 'null' is refused (sandboxed or file:// pages; start the server with --allow-origin null to allow it)"
    parsed = parse_origin(origin)
    if parsed is None:
        return f"malformed Origin {shown!r} (expected scheme://host[:port])"
    scheme, host = parsed
    if scheme in ("http", "https") and is_loopback(host):
        return None
    return f"Origin {shown!r} is not allowed (start the server with --allow-origin {shown} to allow it)"


def check_host(host_header: str | None, bound_host: str) -> str | None:
    """Refuse Host headers naming something other than this server."""
    if host_header is None:
        return "missing Host header"
    host = parse_host(host_header)
    if host is None:
        return f"malformed Host header {host_header[:80]!r} (expected host[:port])"
    if is_loopback(host):
        return None
    bound = bound_host.strip("[]").lower()
    if bound in ("0.0.0.0", "::", ""):
        # Listening on every interface: any IP literal reaches us legitimately;
        # a DNS name could be a rebinding attack, unless a token guards us.
        try:
            ipaddress.ip_address(host.strip("[]"))
            return None
        except ValueError:
            return f"Host {host!r} is not an address of this server"
    return None if host.strip("[]") == bound else f"Host {host!r} is not this server ({bound_host})"


def token_ok(presented: str, expected: str) -> bool:
    if not expected:
        return True
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))
