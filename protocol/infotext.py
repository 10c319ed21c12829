"""Read the WebUI's `parameters` text (what PaintBridge writes into PNGs).

Pure Python: the CLI's `--from-png` and any host can reproduce an image from it.
It reads the WebUI 1.6-1.10's texts as the WebUI does
(modules/infotext_utils.py): the prompt lines, "Negative prompt:" and the
lines after it, and a last line of `key: value` pairs; a value in double
quotes is a JSON string (the WebUI writes values with a comma, colon or line
break that way, with any Unicode kept as it is).
"""

from __future__ import annotations

import json
import re

# key: value pairs on the last line; values may be quoted (JSON strings).
_PAIR = re.compile(r'\s*([\w .\-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')

# What "Schedule type: Automatic" meant in the WebUI 1.9+ where it is not Uniform
# (the sampler's own default there; engine/samplers.py's webui19_schedule).
WEBUI19_AUTOMATIC = {
    "DPM++ 2M": "Karras", "DPM++ SDE": "Karras", "DPM++ 2M SDE": "Exponential", "DPM++ 2M SDE Heun": "Exponential",
    "DPM++ 2S a": "Karras", "DPM++ 3M SDE": "Exponential", "DPM2": "Karras", "DPM2 a": "Karras", "Restart": "Karras",
}


def quote(value: str) -> str:
    """As the WebUI writes a value: as it is, or a JSON string (Unicode kept) when
    it holds a separator (and a quote, so it reads back exactly)."""
    return json.dumps(value, ensure_ascii=False) if any(c in value for c in ',:"\n') else value


def unquote(value: str) -> str:
    """As the WebUI reads a value: a double-quoted one is a JSON string."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            decoded = json.loads(value)
        except ValueError:
            return value
        return decoded if isinstance(decoded, str) else value
    return value


def parse_infotext(text: str) -> dict[str, str]:
    """'prompt\\nNegative prompt: n\\nSteps: 20, ...' -> {'Prompt': ..., 'Steps': '20', ...}."""
    lines = text.strip().split("\n")
    fields: dict[str, str] = {}
    if lines and len(_PAIR.findall(lines[-1])) >= 3:
        for key, value in _PAIR.findall(lines.pop()):
            fields[key.strip()] = unquote(value.strip())
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    fields["Prompt"] = "\n".join(prompt)
    fields["Negative prompt"] = "\n".join(negative)
    return fields


def sampler_and_schedule(fields: dict[str, str], schedule_types: tuple[str, ...]) -> tuple[str, str]:
    """(sampler, schedule type) to request for an infotext's picture.

    WebUI 1.9+ texts carry "Schedule type" (its "Automatic" meant the sampler's
    own default there, which for some samplers is Karras or Exponential); 1.6-1.8
    texts carry it only when a global override was set (lowercase: "karras");
    without it the sampler name says all ("DPM++ 2M Karras")."""
    sampler = fields.get("Sampler", "")
    given = fields.get("Schedule type", "")
    if not given:
        return sampler, "Automatic"
    folded = {s.lower().replace(" ", "").replace("_", ""): s for s in schedule_types}
    label = folded.get(given.lower().replace(" ", "").replace("_", ""), given)
    if label == "Automatic":
        label = WEBUI19_AUTOMATIC.get(sampler, "Automatic")
    return sampler, label
