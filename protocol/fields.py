"""Strict conversion between wire maps and typed dataclasses.

msgpack gives us untyped maps; every message and request is a dataclass whose
annotations (plus `bounded`/`choice` metadata) say exactly what is allowed.
One generic walker checks types, ranges and unknown keys so that a bad field
is refused with its name and its allowed range before any model work.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Union

from protocol.errors import clip, invalid
from protocol.images import RawImage

MAX_TEXT = 20_000  # characters in one string field (prompts included)
MAX_ITEMS = 1_000  # entries in one list or map


def bounded(default: Any, lo: float, hi: float) -> Any:
    """A numeric field with an inclusive allowed range."""
    return dataclasses.field(default=default, metadata={"range": (lo, hi)})


def choice(default: str, options: tuple[str, ...]) -> Any:
    return dataclasses.field(default=default, metadata={"choices": options})


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def from_wire(cls: type, data: Any, path: str = "") -> Any:
    """Build dataclass `cls` from a wire map, refusing anything off-spec."""
    if not isinstance(data, dict):
        raise invalid(path or cls.__name__, f"{path or cls.__name__} must be a map")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        where = f" in {path}" if path else ""
        name = clip(str(unknown[0]), 60)
        raise invalid(f"{path}.{name}".lstrip("."), f"unknown field {name!r}{where}")
    kwargs = {}
    for name, f in fields.items():
        where = f"{path}.{name}" if path else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise invalid(where, f"missing field {where!r}")
            continue
        value = _convert(hints[name], data[name], where)
        _check_metadata(f, value, where)
        kwargs[name] = value
    return cls(**kwargs)


def _check_metadata(f: dataclasses.Field, value: Any, where: str) -> None:
    if value is None:
        return
    if "range" in f.metadata:
        lo, hi = f.metadata["range"]
        if not lo <= value <= hi:
            raise invalid(where, f"{where} must be in {lo}..{hi}, got {value!r}")
    if "choices" in f.metadata and value not in f.metadata["choices"]:
        raise invalid(where, f"{where} must be one of {', '.join(f.metadata['choices'])}; got {clip(repr(value))}")


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise invalid(where, f"{where} must not be null")
        (inner,) = [a for a in args if a is not type(None)]
        return _convert(inner, value, where)
    if tp is Any:
        return _plain(value, where)
    if tp is bool:
        if type(value) is not bool:
            raise invalid(where, f"{where} must be true or false, got {type(value).__name__}")
        return value
    if tp is int:
        # bool is an int subclass in Python; on the wire it is not a number.
        if type(value) is not int:
            raise invalid(where, f"{where} must be an integer, got {type(value).__name__}")
        return value
    if tp is float:
        if type(value) not in (int, float):
            raise invalid(where, f"{where} must be a number, got {type(value).__name__}")
        if not math.isfinite(value):
            raise invalid(where, f"{where} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if type(value) is not str:
            raise invalid(where, f"{where} must be a string, got {type(value).__name__}")
        if len(value) > MAX_TEXT or "\x00" in value:
            raise invalid(where, f"{where} must be at most {MAX_TEXT} characters with no NUL")
        return value
    if tp is bytes:
        if type(value) is not bytes:
            raise invalid(where, f"{where} must be binary, got {type(value).__name__}")
        return value
    if tp is RawImage:
        return _raw_image(value, where)
    if origin is list:
        if not isinstance(value, list) or len(value) > MAX_ITEMS:
            raise invalid(where, f"{where} must be a list of at most {MAX_ITEMS} items")
        (inner,) = typing.get_args(tp)
        return [_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        return _plain(value, where)
    if dataclasses.is_dataclass(tp):
        return from_wire(tp, value, where)
    raise TypeError(f"unsupported field type {tp!r} at {where}")  # a bug in a message class


def _raw_image(value: Any, where: str) -> RawImage:
    if not isinstance(value, dict) or set(value) != {"width", "height", "channels", "data"}:
        raise invalid(where, f"{where} must be a map with width, height, channels, data")
    if type(value["data"]) is not bytes:
        raise invalid(f"{where}.data", f"{where}.data must be binary")
    image = RawImage.__new__(RawImage)
    for key in ("width", "height", "channels", "data"):
        object.__setattr__(image, key, value[key])
    image.validate(where)
    return image


def _plain(value: Any, where: str, depth: int = 0) -> Any:
    """Free-form data (e.g. `parameters`): only plain scalars, lists and maps."""
    if depth > 8:
        raise invalid(where, f"{where} is nested too deeply")
    if value is None or type(value) in (bool, int, str, bytes):
        return value
    if type(value) is float:
        return value
    if isinstance(value, list) and len(value) <= MAX_ITEMS:
        return [_plain(v, where, depth + 1) for v in value]
    if isinstance(value, dict) and len(value) <= MAX_ITEMS:
        if not all(type(k) is str for k in value):
            raise invalid(where, f"{where} keys must be strings")
        return {k: _plain(v, where, depth + 1) for k, v in value.items()}
    raise invalid(where, f"{where} holds an unsupported value")


def to_wire(obj: Any) -> Any:
    """Dataclass tree -> plain maps/lists/bytes for msgpack."""
    if isinstance(obj, RawImage):
        return obj.to_wire()
    if dataclasses.is_dataclass(obj):
        return {f.name: to_wire(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, list):
        return [to_wire(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_wire(v) for k, v in obj.items()}
    return obj
