"""Continuous batching: a request's output never depends on what else is in the decoder batch; limits are
explicit; cancelling frees a slot without disturbing the other rows. Tiny stereo and mono exports."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from mixed_rows import assert_slot0_independent
from musicgen_onnx.runtime import MusicGen, QueueFullError, RequestCancelledError
from musicgen_onnx.runtime.batching import BatchEngine
from musicgen_onnx.runtime.slots import SlotDecoder

SR = 32000
TEXTS = ["an upbeat rock song with electric guitars and loud drums", "calm piano", "lo-fi beat", "a jazz trio"]


@pytest.fixture(scope="module")
def stereo(exported_stereo):
    with MusicGen.load(exported_stereo, provider="cpu", max_batch=4, max_queued=32) as model:
        yield model


@pytest.fixture(scope="module")
def mono(exported_mono):
    with MusicGen.load(exported_mono, provider="cpu", max_batch=4, max_queued=32) as model:
        yield model


def _prompt(seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * (220 + 40 * seed) * t))[None].astype(np.float32)


# a spread of requests: mixed text lengths, CFG on and off, unconditional, an audio prompt, different lengths
REQUESTS = [
    dict(texts=TEXTS[0], duration=1.2, do_sample=False),
    dict(texts=TEXTS[1], duration=0.7, do_sample=False, guidance_scale=1.0),
    dict(texts=None, duration=0.9, do_sample=False),
    dict(texts=TEXTS[3], duration=1.0, do_sample=False, prompt_audio=_prompt(0.3)),
]


def _alone(model, spec):
    spec = dict(spec)
    return model.generate_detailed(spec.pop("texts"), **spec).codes


def _together(model, specs):
    subs = []
    for spec in specs:
        spec = dict(spec)
        subs.append(model.submit(spec.pop("texts"), **spec))
    return [s.result().codes for s in subs]


@pytest.mark.parametrize("which", ["stereo", "mono"])
def test_greedy_codes_do_not_depend_on_the_batch(which, request):
    model = request.getfixturevalue(which)
    alone = [_alone(model, spec) for spec in REQUESTS]
    for codes, expected in zip(_together(model, REQUESTS), alone, strict=True):
        np.testing.assert_array_equal(codes, expected)


def test_sampled_codes_with_a_seed_do_not_depend_on_the_batch(stereo):
    specs = [
        dict(texts=TEXTS[i], duration=0.8 + 0.1 * i, do_sample=True, top_k=50, temperature=1.0 + i, seed=i)
        for i in range(3)
    ]
    specs.append(dict(texts=TEXTS[3], duration=0.5, do_sample=True, top_p=0.9, seed=11))
    alone = [_alone(stereo, spec) for spec in specs]
    for codes, expected in zip(_together(stereo, specs), alone, strict=True):
        np.testing.assert_array_equal(codes, expected)


def test_a_request_joining_mid_flight(stereo):
    long = dict(texts=TEXTS[0], duration=2.0, do_sample=False)
    short = dict(texts=TEXTS[2], duration=0.6, do_sample=True, seed=3)
    expected_long, expected_short = _alone(stereo, long), _alone(stereo, short)
    first = stereo.submit(long.pop("texts"), **long)
    first.handle.wait(40)  # the first request is 40+ frames in
    second = stereo.submit(short.pop("texts"), **short)
    np.testing.assert_array_equal(second.result().codes, expected_short)
    np.testing.assert_array_equal(first.result().codes, expected_long)


def test_long_form_and_streaming_share_the_batch(mono):
    long_form = dict(texts=TEXTS[1], duration=5.0, window=2.0, extend_stride=1.2, do_sample=False)
    expected = _alone(mono, long_form)
    other = mono.submit(TEXTS[0], duration=3.0, do_sample=False)
    spec = dict(long_form)
    streamed = mono.submit(spec.pop("texts"), **spec)
    with streamed.stream(chunk_seconds=0.5) as chunks:
        audio = np.concatenate([c.audio for c in chunks], axis=-1)
    assert audio.shape == (1, 1, 5 * SR)
    assert len(streamed.window_prompts) == 4  # windows of 2 s advancing by 1.2 s
    np.testing.assert_array_equal(streamed.codes, expected)
    np.testing.assert_array_equal(
        other.result().codes, _alone(mono, dict(texts=TEXTS[0], duration=3.0, do_sample=False))
    )


def test_row_logits_in_a_mixed_batch_equal_the_row_alone(stereo):
    """Teacher-forced: the same token stream for slot 0, alone and next to rows at other positions."""
    engine = stereo.engine
    d = engine.manifest.decoder
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, d.vocab_size, (30, d.num_codebooks))
    conds = [engine.condition([text], 1) for text in TEXTS[:3]]

    assert_slot0_independent(engine, conds, tokens, rng, length=64, lead=7)


def test_a_step_over_the_busy_rows_only_equals_the_step_over_all(stereo):
    """Stepping rows [4, 6) alone (slots 0 and 1 idle) gives slot 2 the logits it gets in a step over rows [0, 6)."""
    engine = stereo.engine
    d = engine.manifest.decoder
    tokens = np.random.default_rng(1).integers(0, d.vocab_size, (12, d.num_codebooks))
    cond = engine.condition([TEXTS[1]], 1)

    def run(first: int) -> list[np.ndarray]:
        dec = SlotDecoder(engine.decoder, engine.manifest, slots=3, length=32)
        for slot in range(3):
            dec.set_text(slot, [kv[0] for kv in cond.cross_kv], cond.text_mask[0])
        out = []
        for t, column in enumerate(tokens):
            dec.ids[:] = d.pad_token_id
            dec.positions[:] = 0
            dec.ids[4:6, :, 0] = column
            dec.positions[4:6] = t
            out.append(dec.step(6, first)[4 - first : 6 - first].copy())
        return out

    for busy_only, all_rows in zip(run(4), run(0), strict=True):
        np.testing.assert_allclose(busy_only, all_rows, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="whole slots"):
        SlotDecoder(engine.decoder, engine.manifest, slots=3, length=32).step(6, 3)


def test_full_rows_layout_equals_compact(exported_stereo):
    """The CUDA layout (every row every step, prompts as forced tokens), run on the CPU."""
    model = MusicGen.load(exported_stereo, provider="cpu")
    full = BatchEngine(model.engine, max_batch=3, max_seconds=2.0, full_rows=True)
    try:
        long_text = " ".join(["a slow waltz for strings and a lonely clarinet"] * 4)  # > 16 tokens: wider slots
        specs = [*REQUESTS[:2], *REQUESTS[3:], dict(texts=long_text, duration=0.5, do_sample=False)]
        expected = [_alone(model, spec) for spec in specs]
        handles = []
        for spec in specs:
            spec = dict(spec)
            texts = spec.pop("texts")
            handles.append(full.submit(model.request(texts, **spec)))
        for handle, codes in zip(handles, expected, strict=True):
            np.testing.assert_array_equal(handle.result(timeout=120), codes)
        assert full.decoder.text_width > 16
    finally:
        full.close()
        model.close()


def test_wider_text_gets_a_new_cuda_graph_id(stereo):
    """Growing the text width moves the buffers: a captured graph must not be replayed on the new addresses."""
    engine = stereo.engine
    dec = SlotDecoder(engine.decoder, engine.manifest, slots=1, length=16, full_rows=True, graph_id=1)
    cond = engine.condition(["short"], 1)
    dec.set_text(0, [kv[0] for kv in cond.cross_kv], cond.text_mask[0])
    assert (dec.graph_id, dec.text_width) == (1, 16)
    wide = engine.condition([" ".join(["word"] * 40)], 1)
    dec.set_text(0, [kv[0] for kv in wide.cross_kv], wide.text_mask[0])
    assert dec.graph_id == 2 and dec.text_width > 16


def test_queue_limit_is_a_distinct_error_and_cancel_frees_the_slot(exported_mono):
    with MusicGen.load(exported_mono, provider="cpu", max_batch=1, max_queued=1) as model:
        running = model.submit(TEXTS[0], duration=8.0, do_sample=False)
        running.handle.wait(5)
        waiting = model.submit(TEXTS[1], duration=0.5, do_sample=False)
        with pytest.raises(QueueFullError, match=r"max_batch=1 slots busy and 1 requests waiting \(max_queued=1\)"):
            model.submit(TEXTS[2], duration=0.5)
        running.cancel()
        with pytest.raises(RequestCancelledError):
            running.result()
        assert waiting.result().codes.shape[-1] == 25  # the waiting request got the slot
        assert running.codes.shape[-1] < 400  # stopped long before its 8 s


def test_a_stalled_loop_still_has_work_after_its_waiting_client_cancels(exported_mono):
    """The serving watchdog asks ``has_work``: a request cancelled while the loop is stuck leaves ``queued``
    at once, but only a stepping loop reaps it, so the stall must stay visible (else no replacement)."""
    with MusicGen.load(exported_mono, provider="cpu", max_batch=1) as model:
        batcher = model.batcher
        batcher.suspend(30)
        waiting = model.submit(TEXTS[0], duration=0.5, do_sample=False)
        assert batcher.queued == 1 and batcher.has_work
        waiting.cancel()
        assert batcher.queued == 0
        assert batcher.has_work
        batcher.suspend(0)  # the loop steps again, reaps the cancelled part and is idle
        deadline = time.monotonic() + 10
        while batcher.has_work and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not batcher.has_work


def test_requests_that_can_never_fit_are_refused(exported_mono):
    with MusicGen.load(exported_mono, provider="cpu", max_batch=2, max_seconds=2.0) as model:
        with pytest.raises(ValueError, match=r"3 prompts but the model was loaded with max_batch=2"):
            model.batcher.submit(model.request(TEXTS[:3], duration=0.5))  # MusicGen.submit splits it (test_waves)
        with pytest.raises(ValueError, match=r"more than max_seconds=2 \(104 positions\)"):
            model.submit(TEXTS[0], duration=3.0, window=3.0)
        # without an explicit window, long clips use windows of max_seconds
        assert model.generate(TEXTS[0], duration=3.0, do_sample=False).shape == (1, 1, 3 * SR)
    with pytest.raises(ValueError, match=r"max_seconds must be in \(0, "):
        MusicGen.load(exported_mono, provider="cpu", max_seconds=1000)
    with pytest.raises(ValueError, match="max_batch must be an integer >= 1"):
        MusicGen.load(exported_mono, provider="cpu", max_batch=0)


def test_cancel_mid_batch_leaves_the_others_unchanged(stereo):
    keep = dict(texts=TEXTS[1], duration=1.5, do_sample=False)
    expected = _alone(stereo, keep)
    doomed = stereo.submit(TEXTS[0], duration=3.0, do_sample=False)
    kept = stereo.submit(keep.pop("texts"), **keep)
    doomed.handle.wait(20)
    doomed.cancel()
    np.testing.assert_array_equal(kept.result().codes, expected)
    with pytest.raises(RequestCancelledError):
        doomed.result()


def test_sixteen_threads_submitting_at_once(mono):
    specs = [dict(texts=TEXTS[i % 4], duration=0.3 + 0.05 * (i % 5), do_sample=True, seed=i) for i in range(16)]
    expected = [_alone(mono, spec) for spec in specs]
    results: list = [None] * 16
    barrier = threading.Barrier(16)

    def client(i: int) -> None:
        spec = dict(specs[i])
        barrier.wait(timeout=30)
        results[i] = mono.generate_detailed(spec.pop("texts"), **spec).codes

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert time.monotonic() - started < 300 and not any(t.is_alive() for t in threads)
    for codes, exp in zip(results, expected, strict=True):
        np.testing.assert_array_equal(codes, exp)
