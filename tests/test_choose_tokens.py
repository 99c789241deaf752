"""``choose_tokens`` draws over the top-k tokens only; it must pick exactly what the full-vocabulary path picks.

The reference is ``select_tokens(process_logits(...))``, which test_generation_logic.py holds to transformers'
own logits processors; here every case is compared draw for draw on the same uniforms.
"""

from __future__ import annotations

import numpy as np
import pytest
from musicgen_onnx.runtime import generation
from musicgen_onnx.runtime.generation import choose_tokens, process_logits, select_tokens

VOCAB = 2048


def _reference(logits, rng, **options):
    _RECORDING[0] = False  # the reference's own draws are not choose_tokens' choice of path
    try:
        return _full_draw(logits, rng, options)
    finally:
        _RECORDING[0] = True


_RECORDING = [True]


def _full_draw(logits, rng, options):
    scores = process_logits(
        logits,
        guidance_scale=options["guidance_scale"],
        do_sample=options["do_sample"],
        temperature=options["temperature"],
        top_k=options["top_k"],
        top_p=options["top_p"],
    )
    return select_tokens(scores, do_sample=options["do_sample"], rng=rng)


def _options(**changes):
    return {"guidance_scale": 3.0, "do_sample": True, "temperature": 1.0, "top_k": 250, "top_p": 1.0, **changes}


def _logits(seed: int, rows: int = 16, vocab: int = VOCAB, scale: float = 3.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((rows, vocab)) * scale).astype(np.float32)


class _Draws:
    """An ``rng`` whose ``random(n)`` returns the given uniforms (the samplers call nothing else)."""

    def __init__(self, values) -> None:
        self.values = np.asarray(values, np.float64)

    def random(self, n: int) -> np.ndarray:
        return np.resize(self.values, n)


@pytest.fixture
def widths(monkeypatch):
    """The vocabulary width of every draw ``choose_tokens`` makes (k: the top-k path; the vocab: the full one)."""
    seen: list[int] = []
    draw = generation.select_with_uniform

    def recording(scores, uniform):
        if _RECORDING[0]:
            seen.append(np.shape(scores)[-1])
        return draw(scores, uniform)

    monkeypatch.setattr(generation, "select_with_uniform", recording)
    return seen


@pytest.mark.parametrize(
    "changes",
    [
        {},  # MusicGen's defaults: CFG 3, top-k 250, no top-p
        {"top_p": None},
        {"temperature": 0.7},
        {"guidance_scale": None},
        {"guidance_scale": 1.0},
        {"top_k": 1},
        {"top_k": 7},
        {"top_k": VOCAB - 1},
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "defaults",
)
def test_top_k_draw_equals_full_vocabulary_draw(changes, widths):
    options = _options(**changes)
    for seed in range(60):
        logits = _logits(seed)
        ours = choose_tokens(logits, rng=np.random.default_rng(seed), **options)
        ref = _reference(logits, np.random.default_rng(seed), **options)
        np.testing.assert_array_equal(ours, ref, err_msg=f"seed {seed}")
        assert ours.dtype == np.int64
    assert set(widths) == {options["top_k"]}, "the top-k path was not the one taken"


def test_uniform_at_the_ends_of_the_range(widths):
    """u = 0 picks the first kept token; u just below 1 (which can round onto the total) the last positive one."""
    logits = _logits(3)
    logits[:, 100:110] = -np.inf  # filtered tokens whatever the draw
    logits[:, 0] = 800.0  # every other token underflows to probability 0 in float64
    options = _options(guidance_scale=None)  # guided -inf - -inf would be NaN
    for u in (0.0, np.nextafter(1.0, 0.0), 0.5):
        ours = choose_tokens(logits, rng=_Draws([u]), **options)
        np.testing.assert_array_equal(ours, _reference(logits, _Draws([u]), **options), err_msg=str(u))
    assert set(widths) == {250}


def test_ties_at_the_kth_score_take_the_full_path(widths):
    logits = np.round(_logits(5, scale=2.0) * 2) / 2  # coarse values: many ties at the k-th score
    for seed in range(20):
        ours = choose_tokens(logits, rng=np.random.default_rng(seed), **_options())
        np.testing.assert_array_equal(ours, _reference(logits, np.random.default_rng(seed), **_options()))
    assert VOCAB in widths


def test_nan_takes_the_full_path(widths):
    logits = _logits(6)
    logits[2, 17] = np.nan
    ours = choose_tokens(logits, rng=np.random.default_rng(0), **_options(guidance_scale=None))
    np.testing.assert_array_equal(ours, _reference(logits, np.random.default_rng(0), **_options(guidance_scale=None)))
    assert widths == [VOCAB]


@pytest.mark.parametrize(
    "changes", [{"do_sample": False}, {"top_p": 0.9}, {"top_k": None}, {"top_k": 0}, {"top_k": VOCAB + 5}]
)
def test_other_options_match_the_reference(changes, widths):
    options = _options(**changes)
    for seed in range(10):
        logits = _logits(seed)
        ours = choose_tokens(logits, rng=np.random.default_rng(seed), **options)
        np.testing.assert_array_equal(ours, _reference(logits, np.random.default_rng(seed), **options))


def test_bad_options_are_named():
    logits = _logits(0)
    with pytest.raises(ValueError, match="top_k must be a positive integer"):
        choose_tokens(logits, rng=np.random.default_rng(0), **_options(top_k=-3))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        choose_tokens(logits, rng=np.random.default_rng(0), **_options(temperature=0.0))
    with pytest.raises(ValueError, match=r"np\.random\.Generator"):
        choose_tokens(logits, rng=None, **_options())
    with pytest.raises(ValueError, match="odd row count"):
        choose_tokens(logits[:3], rng=np.random.default_rng(0), **_options())
