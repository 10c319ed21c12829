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
import shlex
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
        out = [_line_cell(base, i, line) for i, line in enumerate(plot.prompts)]
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


# The WebUI's "Prompts from file or textbox" options, as its script names them,
# -> request fields. Options about where the WebUI saves files mean nothing to
# a server that sends its images back, so they are accepted and ignored.
LINE_OPTIONS: dict[str, tuple[str, type]] = {
    "prompt": ("prompt", str),
    "negative_prompt": ("negative_prompt", str),
    "seed": ("seed", int),
    "subseed": ("subseed", int),
    "subseed_strength": ("subseed_strength", float),
    "sampler_name": ("sampler", str),
    "batch_size": ("batch_size", int),
    "n_iter": ("batch_count", int),
    "steps": ("steps", int),
    "cfg_scale": ("cfg_scale", float),
    "width": ("width", int),
    "height": ("height", int),
    "denoising_strength": ("strength", float),
    "sd_model": ("model", str),
}
LINE_IGNORED = {"outpath_samples", "outpath_grids", "prompt_for_display", "do_not_save_samples", "do_not_save_grid"}


def parse_line(line: str, where: str = "plot.prompts") -> dict[str, object]:
    """A prompts-file line: a plain prompt, or (starting with --) WebUI options
    such as `--prompt "a banana" --steps 3`. As in the WebUI, the words after
    --prompt / --negative_prompt run up to the next option; anything else must
    be an option with one value."""
    if not line.lstrip().startswith("--"):
        return {"prompt": line}
    try:
        words = shlex.split(line)
    except ValueError as exc:
        raise invalid(where, f"{line[:60]!r}: {exc}") from None
    changes: dict[str, object] = {}
    pos = 0
    while pos < len(words):
        word = words[pos]
        if not word.startswith("--"):
            raise invalid(where, f"{line[:60]!r}: {word!r} is not an option; write --prompt \"...\" for the prompt")
        tag = word[2:]
        if pos + 1 >= len(words):
            raise invalid(where, f"{line[:60]!r}: {word} needs a value")
        if tag in ("prompt", "negative_prompt"):
            end = pos + 1
            while end + 1 < len(words) and not words[end + 1].startswith("--"):
                end += 1
            changes[tag] = " ".join(words[pos + 1 : end + 1])
            pos = end + 1
            continue
        if tag not in LINE_OPTIONS and tag not in LINE_IGNORED:
            known = ", ".join("--" + t for t in LINE_OPTIONS)
            raise invalid(where, f"{line[:60]!r}: unknown option {word}; known: {known}")
        if tag in LINE_OPTIONS:
            name, kind = LINE_OPTIONS[tag]
            try:
                changes[name] = kind(words[pos + 1])
            except ValueError:
                raise invalid(where, f"{line[:60]!r}: {word} takes a {kind.__name__}") from None
        pos += 2
    return changes


def _line_cell(base, index: int, line: str) -> Cell:
    changes = parse_line(line, f"plot.prompts[{index}]")
    prompt = str(changes.get("prompt", base.prompt))
    return Cell(replace(base, **changes), [prompt[:60]])
