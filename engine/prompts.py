"""WebUI prompt syntax: emphasis, BREAK, <lora:...> tags, 75-token chunks.

Written here because no library implements the WebUI's exact rules (compel
uses a different syntax and other weights). Behaviour follows the WebUI's
documented examples: `(word)` x1.1, `((word))` x1.21, `[word]` /1.1,
`(word:1.5)`, `\\(` for a literal bracket, unbalanced brackets closed at the
end, `BREAK` starting a new 75-token chunk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ATTENTION_TOKENS = re.compile(
    r"""
    \\\( | \\\) | \\\[ | \\] | \\\\ | \\    # escapes
    | \( | \[                               # openers
    | :\s*([+-]?[.\d]+)\s*\)                 # (text:1.3) closer with a weight
    | \) | ]                                # closers
    | [^\\()\[\]:]+                          # plain text
    | :
    """,
    re.X,
)
BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
LORA_TAG = re.compile(r"<(lora|lyco):([^:>]+)(?::([+-]?[\d.]+))?(?::[^>]*)?>", re.I)
ROUND, SQUARE = 1.1, 1 / 1.1
CHUNK = 75  # tokens per CLIP window, without BOS/EOS
COMMA_BACKTRACK = 20  # the WebUI moves up to 20 tokens after a comma to the next chunk


def parse_attention(text: str) -> list[tuple[str, float]]:
    """'a (cat:1.2)' -> [('a ', 1.0), ('cat', 1.2)]; BREAK becomes ('BREAK', -1)."""
    parts: list[list] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for part in parts[start:]:
            part[1] *= factor

    for match in ATTENTION_TOKENS.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            parts.append([token[1:], 1.0])
        elif token == "(":
            round_open.append(len(parts))
        elif token == "[":
            square_open.append(len(parts))
        elif weight is not None and round_open and _number(weight) is not None:
            scale(round_open.pop(), _number(weight))
        elif token == ")" and round_open:
            scale(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            scale(square_open.pop(), SQUARE)
        else:
            for i, piece in enumerate(BREAK.split(token)):
                if i:
                    parts.append(["BREAK", -1.0])
                parts.append([piece, 1.0])
    for start in round_open:
        scale(start, ROUND)
    for start in square_open:
        scale(start, SQUARE)
    if not parts:
        parts = [["", 1.0]]
    merged: list[list] = []
    for part in parts:  # neighbours with the same weight become one piece (BREAKs too, as the WebUI does)
        if merged and merged[-1][1] == part[1]:
            merged[-1][0] += part[0]
        else:
            merged.append(part)
    return [(t, w) for t, w in merged]


def _number(text: str) -> float | None:
    """A weight such as "1.3"; None for what the pattern lets through but is no
    number ("1.2.3", "."), where the WebUI would fail: the text is kept literally."""
    try:
        return float(text)
    except ValueError:
        return None


def extract_loras(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """Remove `<lora:name:0.8>` tags; return the text and (name, weight) pairs."""
    loras = [(m.group(2).strip(), float(m.group(3)) if m.group(3) else 1.0) for m in LORA_TAG.finditer(prompt)]
    return LORA_TAG.sub("", prompt), loras


@dataclass
class Chunk:
    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)


def chunk_tokens(parsed: list[tuple[str, float]], tokenize, comma_id: int | None) -> list[Chunk]:
    """Token ids and weights in chunks of at most 75, as the WebUI splits them.

    `tokenize(text)` returns the ids of a piece without BOS/EOS.
    """
    chunks: list[Chunk] = []
    current = Chunk()
    last_comma = -1

    def close() -> None:
        nonlocal current, last_comma
        chunks.append(current)
        current, last_comma = Chunk(), -1

    for text, weight in parsed:
        if text == "BREAK" and weight == -1:
            close()
            continue
        for token in tokenize(text):
            if token == comma_id:
                last_comma = len(current.tokens)
            elif len(current.tokens) == CHUNK and last_comma != -1 and len(current.tokens) - last_comma <= COMMA_BACKTRACK:
                # Keep the phrase after the last comma together in the next chunk.
                split = last_comma + 1
                moved = Chunk(current.tokens[split:], current.weights[split:])
                current.tokens, current.weights = current.tokens[:split], current.weights[:split]
                close()
                current = moved
            if len(current.tokens) == CHUNK:
                close()
            current.tokens.append(token)
            current.weights.append(weight)
    if current.tokens or not chunks:
        close()
    return chunks
