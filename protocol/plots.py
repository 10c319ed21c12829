"""Plots: one request, many images, each with its labels (the WebUI's scripts).

An X/Y/Z plot varies up to three parameters by their WebUI axis names, a
prompt matrix combines the `|`-separated parts of the prompt, and a prompt
list gives one image per prompt. `cells` expands a request into the plain
requests it stands for, each with the labels that caption it; the server
runs them as one job, and clients lay them out with `columns`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace

from protocol.errors import ProtocolError, clip, invalid
from protocol.fields import MAX_TEXT, from_wire, to_wire

MAX_CELLS = 100

# WebUI axis names (case-insensitive) -> request field and value type.
AXES: dict[str, tuple[str, type]] = {
    "seed": ("seed", int),
    "steps": ("steps", int),
    "cfg scale": ("cfg_scale", float),
    "sampler": ("sampler", str),
    "checkpoint name": ("model", str),
    "denoising": ("strength", float),
    "clip skip": ("clip_skip", int),
    "var. seed": ("subseed", int),
    "var. strength": ("subseed_strength", float),
    "eta": ("eta", float),
    "vae": ("vae", str),
    "prompt s/r": ("prompt", str),
}
ALIASES = {"cfg": "cfg scale", "model": "checkpoint name"}


@dataclass
class PlotAxis:
    name: str  # a WebUI axis name: Seed, Steps, CFG scale, Sampler, Prompt S/R, ...
    values: list[str] = field(default_factory=list)  # as typed; Prompt S/R: the first is searched for


@dataclass
class Plot:
    """Exactly one of: axes (X, then Y, then Z), prompt_matrix, prompts."""

    axes: list[PlotAxis] = field(default_factory=list)
    prompt_matrix: bool = False
    prompts: list[str] = field(default_factory=list)


@dataclass
class Cell:
    request: object  # a JobRequest with no plot
    labels: list[str]


def axis_field(name: str) -> tuple[str, type]:
    key = ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in AXES:
        raise invalid("plot.axes", f"unknown axis {name!r}; valid: {', '.join(sorted(AXES))}")
    return AXES[key]


def check(plot: Plot, prompt: str) -> None:
    """The plot's own rules; each cell is then checked as a plain request."""
    modes = sum([bool(plot.axes), plot.prompt_matrix, bool(plot.prompts)])
    if modes != 1:
        raise invalid("plot", "a plot has exactly one of: axes, prompt_matrix, prompts")
    if len(plot.axes) > 3:
        raise invalid("plot.axes", "at most three axes: X, Y and Z")
    for i, axis in enumerate(plot.axes):
        axis_field(axis.name)
        if not axis.values:
            raise invalid(f"plot.axes[{i}].values", f"axis {axis.name!r} has no values")
    if plot.prompt_matrix and "|" not in prompt:
        raise invalid("prompt", "a prompt matrix needs a prompt with | between the parts to combine")
    count = count_cells(plot, prompt)
    if count > MAX_CELLS:
        raise invalid("plot", f"the plot has {count} cells; at most {MAX_CELLS}")


def count_cells(plot: Plot, prompt: str) -> int:
    if plot.axes:
        return math.prod(len(a.values) for a in plot.axes)
    if plot.prompt_matrix:
        return 2 ** (len(prompt.split("|")) - 1)
    return len(plot.prompts)


def columns(plot: Plot, prompt: str) -> int:
    """Grid columns as the WebUI lays them out."""
    if plot.axes:
        return len(plot.axes[0].values)
    if plot.prompt_matrix:
        return 2 ** math.ceil((len(prompt.split("|")) - 1) / 2)
    return math.ceil(math.sqrt(len(plot.prompts)))


def cells(request) -> list[Cell]:
    """The plain requests a plotted request stands for (X varies fastest)."""
    from protocol.requests import JobRequest

    plot = request.plot
    base = replace(request, plot=None)
    if plot.axes:
        out = _axis_cells(base, plot.axes)
    elif plot.prompt_matrix:
        out = _matrix_cells(base)
    else:
        out = [Cell(replace(base, prompt=p), [p[:60]]) for p in plot.prompts]
    for cell in out:  # through the protocol's strict checks again: types, ranges, cross-field rules
        try:
            cell.request = from_wire(JobRequest, to_wire(cell.request))
            cell.request.validate()
        except ProtocolError as exc:
            raise invalid(exc.field or "plot", f"{', '.join(cell.labels)}: {exc.message}") from None
    return out


def _axis_cells(base, axes: list[PlotAxis]) -> list[Cell]:
    parsed = []
    for i, axis in enumerate(axes):
        name, kind = axis_field(axis.name)
        try:
            parsed.append((axis.name, name, [kind(v.strip()) for v in axis.values]))
        except ValueError:
            raise invalid(f"plot.axes[{i}].values", f"axis {axis.name!r}: values must be {kind.__name__}") from None
    out = []
    for combo in itertools.product(*[values for _, _, values in reversed(parsed)]):
        changes: dict[str, object] = {}
        labels = []
        for (label, name, values), value in zip(parsed, reversed(combo), strict=True):
            if name == "prompt":  # Prompt S/R: the first value is replaced by each in turn
                changes["prompt"] = search_replace(str(changes.get("prompt", base.prompt)), str(values[0]), str(value))
            else:
                changes[name] = value
            labels.append(f"{label}: {value}")
        out.append(Cell(replace(base, **changes), labels))
    return out


def search_replace(prompt: str, search: str, value: str) -> str:
    """Prompt S/R for one cell, its length checked *before* it is built: a
    short search in a long prompt, replaced by a long value, would otherwise
    build a string of len(prompt) x len(value) characters (gigabytes from a
    frame of a few hundred KB) only to refuse it afterwards."""
    if not search:
        raise invalid("plot.axes", "Prompt S/R: the first value (the text to search for) must not be empty")
    hits = prompt.count(search)
    length = len(prompt) + hits * (len(value) - len(search))
    if length > MAX_TEXT:
        raise invalid("plot.axes", f"Prompt S/R: replacing {clip(search, 60)!r} by a value of {len(value)} characters "
                                   f"would make a prompt of {length} characters; at most {MAX_TEXT}")
    return prompt.replace(search, value)


def _matrix_cells(base) -> list[Cell]:
    """'a|b|c' -> a; a, b; a, c; a, b, c (all with the same seed)."""
    first, *options = [p.strip() for p in base.prompt.split("|")]
    out = []
    for mask in range(2 ** len(options)):
        chosen = [o for i, o in enumerate(options) if mask & (1 << i)]
        label = ("+ " + " + ".join(chosen)) if chosen else first
        out.append(Cell(replace(base, prompt=", ".join([first, *chosen])), [label]))
    return out
