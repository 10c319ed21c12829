"""Read the WebUI's `parameters` text (what PaintBridge writes into PNGs).

Pure Python: the CLI's `--from-png` and any host can reproduce an image from it.
"""

from __future__ import annotations

import re

# key: value pairs on the last line; values may be quoted.
_PAIR = re.compile(r'\s*([\w .\-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse_infotext(text: str) -> dict[str, str]:
    """'prompt\\nNegative prompt: n\\nSteps: 20, ...' -> {'Prompt': ..., 'Steps': '20', ...}."""
    lines = text.strip().split("\n")
    fields: dict[str, str] = {}
    if lines and len(_PAIR.findall(lines[-1])) >= 3:
        for key, value in _PAIR.findall(lines.pop()):
            value = value.strip()
            if value.startswith('"') and value.endswith('"'):
                value = value[1:-1].replace('\\"', '"')
            fields[key.strip()] = value
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    fields["Prompt"] = "\n".join(prompt)
    fields["Negative prompt"] = "\n".join(negative)
    return fields
