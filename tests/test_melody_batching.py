"""Melody checkpoints in the continuous-batching engine: each slot prefills its own chroma + text prefix, then its
rows step with every other request's. A request's codes never depend on what else is in the batch: they equal
the single-request path (``job.CodeGenerator``, held to transformers by tests/test_melody_parity.py) for mixed
melodies, texts, durations, CFG on and off, sampling with a seed, a request joining mid-flight, long-form windows
and streaming. Tiny stereo melody export."""

from __future__ import annotations

import numpy as np
import pytest
from melody_helpers import TEXT, tune
from musicgen_onnx.runtime import MusicGen
from musicgen_onnx.runtime.melody_slots import MelodySlotDecoder
from musicgen_onnx.runtime.submission import Submission

SR = 32000
TEXTS = [TEXT, "calm piano", "lo-fi beat with a warm and dusty electric piano and brushed drums"]
LOW = (220.0, 246.94, 277.18)


@pytest.fixture(scope="module")
def model(exported_melody_stereo):
    with MusicGen.load(exported_melody_stereo, provider="cpu", max_batch=4, max_queued=32) as m:
        yield m


def _solo(model, spec) -> np.ndarray:
    """The request alone on the single-request path (no batching engine)."""
    spec = dict(spec)
    request = model.request(spec.pop("texts"), **spec)
    return Submission(model.engine, request, None).result().codes


def _together(model, specs) -> list[np.ndarray]:
    subs = []
    for spec in specs:
        spec = dict(spec)
        subs.append(model.submit(spec.pop("texts"), **spec))
    assert all(s.handle is not None for s in subs)  # they ran in the engine
    return [s.result().codes for s in subs]


# mixed melodies (lengths, pitches, stereo), texts of different lengths, CFG on and off, no text, no melody,
# an audio prompt, different durations
REQUESTS = [
    dict(texts=TEXTS[0], melody=tune(2.0), duration=1.2, do_sample=False),
    dict(texts=TEXTS[1], melody=tune(0.7, notes=LOW), duration=0.7, do_sample=False, guidance_scale=1.0),
    dict(texts=None, melody=tune(1.5, channels=2), duration=0.9, do_sample=False),
    dict(texts=TEXTS[2], duration=1.0, do_sample=False),
    dict(texts=None, duration=0.5, do_sample=False),
    dict(texts=TEXTS[1], melody=tune(1.0), duration=1.0, do_sample=False, prompt_audio=tune(0.3)[None]),
]


def test_melody_models_batch_in_the_compact_layout(model):
    assert model.batcher is not None and model.batcher.melody
    assert isinstance(model.batcher.decoder, MelodySlotDecoder)


def test_greedy_codes_do_not_depend_on_the_batch(model):
    alone = [_solo(model, spec) for spec in REQUESTS]
    for codes, expected in zip(_together(model, REQUESTS), alone, strict=True):
        np.testing.assert_array_equal(codes, expected)


def test_sampled_codes_with_a_seed_do_not_depend_on_the_batch(model):
    specs = [
        dict(texts=TEXTS[i], melody=tune(1.0 + i, notes=LOW[i:]), duration=0.6 + 0.2 * i, do_sample=True,
             top_k=50, temperature=2.0 + i, seed=i)
        for i in range(3)
    ]  # fmt: skip
    specs.append(dict(texts=None, melody=tune(0.8), duration=0.5, do_sample=True, top_p=0.9, seed=11))
    alone = [_solo(model, spec) for spec in specs]
    for codes, expected in zip(_together(model, specs), alone, strict=True):
        np.testing.assert_array_equal(codes, expected)


def test_a_request_with_several_prompts_equals_each_prompt_alone(model):
    """Rows of one request with texts of different lengths: each slot's prefix is trimmed to its own length."""
    melodies = [tune(1.0), tune(2.0, notes=LOW)]
    both = model.generate_detailed(TEXTS[:2], melody=melodies, duration=0.8, do_sample=False).codes
    for i in range(2):
        alone = _solo(model, dict(texts=TEXTS[i], melody=melodies[i], duration=0.8, do_sample=False))
        np.testing.assert_array_equal(both[i : i + 1], alone)


def test_a_request_joining_mid_flight(model):
    long = dict(texts=TEXTS[0], melody=tune(3.0), duration=2.0, do_sample=False)
    short = dict(texts=TEXTS[2], melody=tune(1.0, notes=LOW), duration=0.6, do_sample=True, seed=3)
    expected_long, expected_short = _solo(model, long), _solo(model, short)
    first = model.submit(long.pop("texts"), **long)
    first.handle.wait(40)  # the first request is 40+ frames in
    second = model.submit(short.pop("texts"), **short)
    np.testing.assert_array_equal(second.result().codes, expected_short)
    np.testing.assert_array_equal(first.result().codes, expected_long)


def test_long_form_and_streaming_share_the_batch(model):
    """Every window re-prefills its slot with the melody at the window's offset, next to another request."""
    long_form = dict(texts=TEXTS[1], melody=tune(3.0), duration=5.0, window=2.0, extend_stride=1.2, do_sample=False)
    expected = _solo(model, long_form)
    other_spec = dict(texts=TEXTS[0], melody=tune(2.0, notes=LOW), duration=3.0, do_sample=False)
    other = model.submit(other_spec.pop("texts"), **other_spec)
    spec = dict(long_form)
    streamed = model.submit(spec.pop("texts"), **spec)
    with streamed.stream(chunk_seconds=0.5) as chunks:
        audio = np.concatenate([c.audio for c in chunks], axis=-1)
    assert audio.shape == (1, 2, 5 * SR)
    assert len(streamed.window_prompts) == 4  # windows of 2 s advancing by 1.2 s
    np.testing.assert_array_equal(streamed.codes, expected)
    other_spec = dict(texts=TEXTS[0], melody=tune(2.0, notes=LOW), duration=3.0, do_sample=False)
    np.testing.assert_array_equal(other.result().codes, _solo(model, other_spec))


def test_row_logits_in_a_mixed_batch_equal_the_row_alone(model):
    """Teacher-forced: slot 0's token stream, alone and next to rows with other prefixes at other positions."""
    engine = model.engine
    d = engine.manifest.decoder
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, d.vocab_size, (20, d.num_codebooks))
    conds = [engine.condition([text], 1, [tune(1.0 + i)]) for i, text in enumerate(TEXTS)]
    prefixes = [cond.slot_prefixes(0, cfg=True)[0] for cond in conds]
    assert len({p.shape[1] for p in prefixes}) == 3  # three prefix lengths
    start = np.full((2, d.num_codebooks, 1), d.pad_token_id)

    def run(other_rows: bool) -> list[np.ndarray]:
        dec = MelodySlotDecoder(engine.decoder, engine.manifest, slots=3, length=128)
        out = [dec.prefill(0, start, prefixes[0])]
        if other_rows:
            for slot in (1, 2):
                dec.prefill(slot, start, prefixes[slot])
        for t, column in enumerate(tokens):
            dec.ids[:] = d.pad_token_id
            dec.positions[:] = 0
            dec.ids[0:2, :, 0] = column
            dec.positions[0:2] = t + 1
            if other_rows:  # slots 1 and 2 at other columns
                for slot, lead in ((1, 5), (2, 11)):
                    dec.ids[2 * slot : 2 * slot + 2, :, 0] = rng.integers(0, d.vocab_size, d.num_codebooks)
                    dec.positions[2 * slot : 2 * slot + 2] = t + lead
            out.append(dec.step(6 if other_rows else 2)[0:2].copy())
        return out

    for mixed, alone in zip(run(True), run(False), strict=True):
        np.testing.assert_allclose(mixed, alone, atol=1e-4, rtol=0)


def test_cache_overflow_is_a_clear_error(model):
    engine = model.engine
    dec = MelodySlotDecoder(engine.decoder, engine.manifest, slots=1, length=40)
    prefix = np.zeros((2, 41, engine.manifest.decoder.hidden_size), np.float32)
    start = np.full((2, engine.manifest.decoder.num_codebooks, 1), engine.manifest.decoder.pad_token_id)
    with pytest.raises(ValueError, match="do not fit the cache of 40"):
        dec.prefill(0, start, prefix)


def test_fixed_buffers_run_melody_alone(exported_melody_stereo, model):
    """The fixed-buffer (CUDA) layout feeds prompts as token columns, which a prefix is not: there melody requests
    take the single-request path, with the same codes."""
    with pytest.raises(ValueError, match="compact CPU layout only"):
        from musicgen_onnx.runtime.batching import BatchEngine

        BatchEngine(model.engine, max_seconds=model.batcher.max_seconds, full_rows=True)
    with MusicGen.load(exported_melody_stereo, provider="cpu", fixed_buffers=True) as fixed:
        assert fixed.batcher is None
        spec = REQUESTS[0]
        np.testing.assert_array_equal(
            fixed.generate_detailed(spec["texts"], **{k: v for k, v in spec.items() if k != "texts"}).codes,
            _together(model, [spec])[0],
        )
