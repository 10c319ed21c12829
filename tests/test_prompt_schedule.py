"""Prompt editing [from:to:when], alternation [a|b] and AND, as the WebUI runs them."""

from __future__ import annotations

import numpy as np
import pytest

from engine.params import JobParams
from engine.prompt_schedule import composable_parts, schedule

# The WebUI's documented examples (modules/prompt_parser.py's doctests), 10 steps.
DOCTESTS = [
    ("test", [(10, "test")]),
    ("a [b:3]", [(3, "a "), (10, "a b")]),
    ("a [b: 3]", [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", [(10, "a [unbalanced")]),
    ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", [(s, "a" if s % 2 else "(b:1.1)") for s in range(1, 11)]),
    ("[fe|]male", [(s, "female" if s % 2 else "male") for s in range(1, 11)]),
    ("[fe|||]male", [(s, "female" if s % 4 == 1 else "male") for s in range(1, 11)]),
]


@pytest.mark.parametrize(("prompt", "expected"), DOCTESTS)
def test_webui_documented_schedules(prompt, expected):
    assert schedule(prompt, 10) == expected


def test_hires_pass_counts_fractions_from_one_and_steps_on_from_the_first_pass():
    assert schedule("a [b:.5] c", 10, hires_steps=10) == [(10, "a b c")]
    assert schedule("a [b:1.5] c", 10, hires_steps=10) == [(5, "a  c"), (10, "a b c")]
    assert schedule("a [b:15] c", 10, hires_steps=10) == [(5, "a  c"), (10, "a b c")]


def test_the_doctest_the_webui_marks_unhandled_is_taken_literally():
    # "a [{b|d{:.5] c": '|' outside an alternation does not parse; the prompt stays as it is.
    assert schedule("a [{b|d{:.5] c", 10) == [(10, "a [{b|d{:.5] c")]


def test_composable_parts_and_weights():
    assert composable_parts("a cat AND a hat :0.5") == [("a cat", 1.0), (" a hat", 0.5)]
    assert composable_parts("a ANDROID") == [("a ANDROID", 1.0)]
    assert composable_parts("x:1.5 AND y : -0.3") == [("x", 1.5), (" y", -0.3)]


BASE = {"width": 64, "height": 64, "steps": 6, "seed": 3, "sampler": "Euler a"}


def test_edit_that_never_switches_is_the_plain_prompt(engine):
    plain = engine.run(JobParams(prompt="a dog", **BASE)).images[0]
    late = engine.run(JobParams(prompt="[a dog:a cat:100]", **BASE)).images[0]
    assert np.array_equal(plain, late)


def test_edit_switches_once_and_encodes_each_text_once(engine, monkeypatch):
    import engine.conditioning as conditioning

    encoded = []
    real = conditioning.encode_prompts
    monkeypatch.setattr(conditioning, "encode_prompts", lambda m, t, *a: encoded.append(t) or real(m, t, *a))
    edited = engine.run(JobParams(prompt="[a dog:a cat:3]", **BASE))
    assert sorted(set(encoded)) == sorted(encoded) and {"a dog", "a cat"} <= set(encoded)
    dog = engine.run(JobParams(prompt="a dog", **BASE)).images[0]
    cat = engine.run(JobParams(prompt="a cat", **BASE)).images[0]
    assert not np.array_equal(edited.images[0], dog) and not np.array_equal(edited.images[0], cat)
    assert "[a dog:a cat:3]" in edited.infotext  # the prompt is written as given


def test_and_with_halves_of_the_same_prompt_is_that_prompt(engine):
    plain = engine.run(JobParams(prompt="a cat", **BASE)).images[0].astype(int)
    halves = engine.run(JobParams(prompt="a cat :0.5 AND a cat :0.5", **BASE)).images[0].astype(int)
    other = engine.run(JobParams(prompt="a cat AND a red hat", **BASE)).images[0].astype(int)
    assert np.abs(plain - halves).max() <= 2 and np.abs(plain - other).max() > 2


@pytest.mark.parametrize("kind", ["img2img", "inpaint"])
def test_schedules_in_img2img_and_inpaint(engine, kind):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    image[..., 3] = 255
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    extra = {"mask": mask} if kind == "inpaint" else {}
    a = engine.run(JobParams(kind=kind, image=image, prompt="[a dog|a cat]", strength=0.8, **BASE, **extra))
    b = engine.run(JobParams(kind=kind, image=image, prompt="a dog", strength=0.8, **BASE, **extra))
    assert a.images[0].shape == (64, 64, 4) and not np.array_equal(a.images[0], b.images[0])


def test_unipc_takes_a_scheduled_prompt_too(engine):
    assert engine.check(JobParams(prompt="[a|b]", sampler="UniPC")) is not None
