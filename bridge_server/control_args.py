"""The CLI's ControlNet flags: `--control MODEL=IMAGE[:strength[:start:end]]`
(repeatable), `--control-preprocess`, `--control-mode`, the `preprocess`
command, and the "ControlNet i" fields of a PNG read back by `--from-png`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from protocol.requests import CONTROL_MODES, PREPROCESSORS

# The WebUI extension's labels -> this protocol's names.
_MODES = {"balanced": "balanced", "my prompt is more important": "prompt", "controlnet is more important": "control"}
_RESIZE = {"crop and resize": "crop and resize", "just resize": "just resize", "resize and fill": "resize and fill"}


class ControlSpecError(ValueError):
    pass


def add_control_args(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("ControlNet units (several at once: repeat --control)")
    group.add_argument("--control", action="append", default=[], metavar="MODEL=IMAGE[:STRENGTH[:START:END]]",
                       help="a ControlNet and its control image (any size; fitted by crop and resize); "
                            "IMAGE empty = the job's own image; START/END: fractions of the steps")
    group.add_argument("--control-preprocess", action="append", default=[], choices=PREPROCESSORS,
                       help="preprocess the control image on the server (one for all units, or one per --control)")
    group.add_argument("--control-mode", action="append", default=[], choices=CONTROL_MODES,
                       help="balanced, prompt (my prompt is more important), control (ControlNet is more important)")


def parse_control(spec: str) -> dict[str, Any]:
    """'model=path.png:0.8:0:0.5' -> {'model', 'image_path', 'strength', 'start', 'end'}."""
    model, eq, rest = spec.partition("=")
    if not eq:
        raise ControlSpecError(f"--control {spec!r}: expected MODEL=IMAGE[:STRENGTH[:START:END]]")
    parts = rest.split(":")
    numbers: list[float] = []
    while len(parts) > 1 and len(numbers) < 3:  # numbers from the right: a path may hold ':'
        try:
            numbers.insert(0, float(parts[-1]))
        except ValueError:
            break
        parts.pop()
    if len(numbers) == 2:
        raise ControlSpecError(f"--control {spec!r}: give STRENGTH, or STRENGTH:START:END")
    unit: dict[str, Any] = {"model": model.strip(), "image_path": ":".join(parts)}
    if numbers:
        unit["strength"] = numbers[0]
    if len(numbers) == 3:
        unit["start"], unit["end"] = numbers[1], numbers[2]
    return unit


def _pick(values: list[str], i: int) -> str | None:
    if not values:
        return None
    return values[0] if len(values) == 1 else (values[i] if i < len(values) else None)


def controls_wire(args: argparse.Namespace, read_image) -> list[dict[str, Any]]:
    """The request's `controls` from the flags (and a PNG's units as defaults)."""
    from_png: list[dict[str, Any]] = list(getattr(args, "png_controls", None) or [])
    units = []
    specs = list(args.control)
    for i in range(max(len(specs), len(from_png))):
        unit = dict(from_png[i]) if i < len(from_png) else {}
        if i < len(specs):
            given = parse_control(specs[i])
            if not given["model"] and not unit.get("model"):
                raise ControlSpecError(f"--control {specs[i]!r} names no ControlNet")
            unit.update({k: v for k, v in given.items() if v != "" or k != "model"})
        path = unit.pop("image_path", "")
        if path:
            unit["image"] = read_image(Path(path), "RGB").to_wire()
        for key, values in (("preprocess", args.control_preprocess), ("mode", args.control_mode)):
            value = _pick(values, i)
            if value is not None:
                unit[key] = value
        units.append(unit)
    return units


def add_preprocess_command(sub, client_args, formatter=None) -> None:
    text = "turn an image into a control image on the server (depth, canny, ...)"
    p = sub.add_parser("preprocess", help=text, description=text,
                       **({"formatter_class": formatter} if formatter else {}))
    client_args(p)
    p.add_argument("--kind", required=True, choices=[k for k in PREPROCESSORS if k != "none"],
                   help="depth (an estimator from annotators/), canny, lineart, scribble or tile")
    p.add_argument("--image", type=Path, required=True, help="the picture to preprocess")
    p.add_argument("--width", type=int, default=0, help="fit the result to this size (crop and resize); 0 = the image's")
    p.add_argument("--height", type=int, default=0, help="as --width")
    p.add_argument("--out", type=Path, required=True, help="output PNG")


def preprocess_wire(args: argparse.Namespace, read_image) -> dict[str, Any]:
    return {"kind": "preprocess", "image": read_image(args.image, "RGBA").to_wire(), "width": args.width,
            "height": args.height, "controls": [{"preprocess": args.kind}]}


def png_controls(fields: dict[str, str]) -> list[dict[str, Any]]:
    """A PNG's "ControlNet 0", "ControlNet 1", ... fields (the extension's format) as units."""
    units = []
    i = 0
    while f"ControlNet {i}" in fields:
        raw: dict[str, str] = {}
        for item in fields[f"ControlNet {i}"].split(","):
            key, _, value = item.strip().partition(": ")
            raw[key.strip().lower()] = value.strip()
        unit: dict[str, Any] = {"model": raw.get("model", "").split(" [")[0]}  # the extension appends " [hash]"
        if raw.get("module", "none") in PREPROCESSORS:
            unit["preprocess"] = raw.get("module", "none")
        for key, dest in (("weight", "strength"), ("guidance start", "start"), ("guidance end", "end")):
            if key in raw:
                unit[dest] = float(raw[key])
        unit["mode"] = _MODES.get(raw.get("control mode", "balanced").lower(), "balanced")
        unit["resize_mode"] = _RESIZE.get(raw.get("resize mode", "crop and resize").lower(), "crop and resize")
        units.append(unit)
        i += 1
    return units
