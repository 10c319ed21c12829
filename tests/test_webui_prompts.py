"""The WebUI's prompt syntax: emphasis parsing equal to the WebUI's on every input.

The WebUI's documented examples (its doctests) are facts; a few hundred
generated prompts (nested, weighted, escaped, unbalanced, malformed) are
checked against an oracle written here from the WebUI's grammar, scanning
character by character where engine/prompts.py uses a regular expression.
"""

from __future__ import annotations

import random
import re

import pytest

from engine.prompts import parse_attention

DOCTESTS = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55),
      (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1)]),
]


@pytest.mark.parametrize(("prompt", "expected"), DOCTESTS)
def test_webui_documented_examples(prompt, expected):
    assert parse_attention(prompt) == expected


BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)


def oracle(text: str) -> list[tuple[str, float]]:
    """The WebUI's emphasis rules, scanned by hand: `\\x` escapes ( ) [ ] \\ (a lone
    backslash vanishes), ( and [ open, `:number)` closes the innermost ( with that
    weight, ) and ] close with 1.1 and 1/1.1 (unmatched ones are text), other
    runs are text split at BREAK; unclosed brackets apply at the end; neighbours
    of equal weight merge."""
    res: list[list] = []
    rounds: list[int] = []
    squares: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for item in res[start:]:
            item[1] *= factor

    def text_run(run: str) -> None:
        for k, piece in enumerate(BREAK.split(run)):
            if k:
                res.append(["BREAK", -1])
            res.append([piece, 1.0])

    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            if i + 1 < n and text[i + 1] in "()[]\\":
                res.append([text[i + 1], 1.0])
                i += 2
            else:
                res.append(["", 1.0])
                i += 1
        elif c == "(":
            rounds.append(len(res))
            i += 1
        elif c == "[":
            squares.append(len(res))
            i += 1
        elif c == ":":
            j = i + 1
            while j < n and text[j].isspace():
                j += 1
            k = j + 1 if j < n and text[j] in "+-" else j
            m = k
            while m < n and (text[m] == "." or text[m].isdecimal()):
                m += 1
            e = m
            while e < n and text[e].isspace():
                e += 1
            if m > k and e < n and text[e] == ")":
                token, number = text[i : e + 1], text[j:m]
                try:
                    weight: float | None = float(number)
                except ValueError:
                    weight = None
                if rounds and weight is not None:
                    multiply(rounds.pop(), weight)
                else:
                    text_run(token)
                i = e + 1
            else:
                text_run(":")
                i += 1
        elif c == ")" and rounds:
            multiply(rounds.pop(), 1.1)
            i += 1
        elif c == "]" and squares:
            multiply(squares.pop(), 1 / 1.1)
            i += 1
        elif c in ")]":
            text_run(c)
            i += 1
        else:
            j = i
            while j < n and text[j] not in "\\()[]:":
                j += 1
            text_run(text[i:j])
            i = j
    for start in rounds:
        multiply(start, 1.1)
    for start in squares:
        multiply(start, 1 / 1.1)
    if not res:
        res = [["", 1.0]]
    merged: list[list] = []
    for item in res:
        if merged and merged[-1][1] == item[1]:
            merged[-1][0] += item[0]
        else:
            merged.append(item)
    return [(t, float(w)) for t, w in merged]


@pytest.mark.parametrize(("prompt", "expected"), DOCTESTS)
def test_the_oracle_knows_the_documented_examples(prompt, expected):
    assert oracle(prompt) == expected


PIECES = ["cat", " ", "a dog", "(", ")", "[", "]", ":", ":1.3)", ": 0.5 )", ":1.2.3)", ":-1)", ":+.5)", "\\(", "\\)",
          "\\[", "\\]", "\\\\", "\\", "\\x", "BREAK", " BREAK ", ",", "é", "城", "|", "1.5", ".", "\n", "::", "((", "]]"]


def generated(count: int = 400, seed: int = 15) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 14))) for _ in range(count)]


def test_generated_prompts_equal_the_oracle():
    for prompt in generated():
        assert parse_attention(prompt) == oracle(prompt), repr(prompt)


@pytest.mark.parametrize("prompt", ["(a:1.2.3)", "(a:.)", "[a:1.5)", "a:2)", "(BREAK)", "a BREAK BREAK b"])
def test_malformed_prompts_never_fail(prompt):
    assert parse_attention(prompt) == oracle(prompt)
