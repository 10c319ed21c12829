"""docs/protocol.md, as a client author in another language reads it, checked
against the real server: the example session is replayed message by message,
and the minimal Python client in the docs is run as written."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from typing import Any

import msgpack
import pytest
from websockets.sync.client import connect

from tests.conftest import ROOT

DOC = (ROOT / "docs" / "protocol.md").read_text()
pytestmark = pytest.mark.slow

VARYING = {"job_id", "client_id", "server"}  # differ from run to run: checked for their type only


class More:
    """`…` in the docs: fields, list items or messages left out."""


class Bytes:
    def __init__(self, size: int) -> None:
        self.size = size


def _block(after: str, lang: str = "") -> str:
    start = DOC.index(after)
    match = re.compile(rf"```{lang}\n(.*?)```", re.S).search(DOC, start)
    assert match is not None, f"no code block after {after!r}"
    return match.group(1)


def _parse(text: str) -> Any:
    """The docs' notation (JSON with bare keys, nil, <N bytes>, …) -> Python."""
    text = re.sub(r"<(\d+) bytes>", r'"__bytes_\1__"', text)
    text = re.sub(r",\s*…(\s*)}", r', "__more__": __more__\1}', text)  # fields left out of a map
    text = re.sub(r"(?<![\"\w])…(?![\"\w])", "__more__", text)  # items left out of a list
    text = re.sub(r"([{,]\s*)([a-z_]+):", r'\1"\2":', text)
    text = re.sub(r"\bnil\b", "None", text).replace("true", "True").replace("false", "False")
    value = eval(text, {"__builtins__": {}}, {"__more__": More})  # our own docs, no builtins

    def convert(v: Any) -> Any:
        if isinstance(v, str) and (m := re.fullmatch(r"__bytes_(\d+)__", v)):
            return Bytes(int(m.group(1)))
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        if isinstance(v, (list, set)):
            return [convert(x) for x in v]
        return v

    return convert(value)


def _session() -> list[tuple[str, Any]]:
    lines, out = _block("## Example session").splitlines(), []
    current = ""
    for line in [*lines, "C: end"]:
        if re.match(r"^[CS]: ", line) or line.strip() == "…":
            if current:
                out.append((current[0], _parse(current[3:]) if current[3:].strip() != "end" else None))
            current = line if line.strip() != "…" else ""
            if line.strip() == "…":
                out.append(("S", More))
        else:
            current += "\n" + line
    return [(side, msg) for side, msg in out if msg is not None]


def _wire(value: Any) -> Any:
    """A documented client message as it is sent (the docs show no elisions in them)."""
    assert value is not More and not isinstance(value, Bytes)
    if isinstance(value, dict):
        assert "__more__" not in value
        return {k: _wire(v) for k, v in value.items()}
    return value


def _matches(documented: Any, actual: Any, where: str) -> None:
    if isinstance(documented, Bytes):
        assert isinstance(actual, bytes) and len(actual) == documented.size, f"{where}: {len(actual)} bytes"
    elif isinstance(documented, dict):
        assert isinstance(actual, dict), f"{where}: {actual!r}"
        for key, value in documented.items():
            if key == "__more__":
                continue
            assert key in actual, f"{where}.{key} is documented but not sent"
            if key in VARYING and value != "":
                assert isinstance(actual[key], str) and actual[key], f"{where}.{key}"
            else:
                _matches(value, actual[key], f"{where}.{key}")
    elif isinstance(documented, list) and More in documented:
        for i, item in enumerate(x for x in documented if x is not More):
            # An elided list: each shown item is in the real one.
            assert any(_equal(item, a) for a in actual), f"{where}[{i}] = {item!r} not in {actual!r}"
    elif isinstance(documented, list):
        assert isinstance(actual, list) and len(actual) == len(documented), f"{where}: {actual!r}"
        for i, (d, a) in enumerate(zip(documented, actual, strict=True)):
            _matches(d, a, f"{where}[{i}]")
    else:
        assert documented == actual, f"{where}: documented {documented!r}, server sent {actual!r}"


def _equal(documented: Any, actual: Any) -> bool:
    try:
        _matches(documented, actual, "")
        return True
    except AssertionError:
        return False


def test_example_session_matches_the_server(server):
    session = _session()
    assert session[0] == ("C", session[0][1]) and session[0][1]["type"] == "hello"
    with connect(server.url, max_size=None) as ws:
        pending: list[dict] = []
        for i, (side, documented) in enumerate(session):
            if side == "C":
                ws.send(msgpack.packb(_wire(documented)))
                continue
            if documented is More:
                continue
            # The next server message of the documented type (and step, for progress); others may come between
            # where the docs show `…`.
            while True:
                message = pending.pop(0) if pending else msgpack.unpackb(ws.recv(timeout=120))
                same = message["type"] == documented["type"] and (
                    documented["type"] != "progress" or message.get("step") == documented.get("step"))
                if same:
                    break
                allowed = session[i - 1][1] is More or documented["type"] in ("progress", "result")
                assert allowed and message["type"] == "progress", f"unexpected {message['type']} before {documented}"
            _matches(documented, message, documented["type"])


def test_documented_python_client_runs_as_written(server):
    code = _block("A minimal Python client", "python").replace("ws://127.0.0.1:8765", server.url)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "progress" in done.stdout


def test_documented_limits_are_the_servers():
    """The numbers the docs state are the ones the code uses."""
    from bridge_server.config import DEFAULT_MAX_MESSAGE, ServerConfig
    from protocol.errors import MAX_ECHO
    from protocol.limits import MAX_GENERATE_SIDE

    config = ServerConfig(models_dir=ROOT)
    assert config.max_hello_bytes == 64 * 1024 and "64 KiB" in DOC
    assert DEFAULT_MAX_MESSAGE == 300 * 2**20 and "314572800" in DOC
    assert config.max_outbox_frames == 1024 and config.max_outbox_bytes == 64 * 2**20 and "1,024" in DOC
    assert config.max_queue_bytes == 2**30 and "1 GiB of images" in DOC
    assert MAX_GENERATE_SIDE == 8192 and MAX_ECHO == 200 and "200 characters" in DOC
    assert "protocol: 1" not in DOC
