"""A call with more prompts than the engine has slots runs in waves (issue 20): every row equals its prompt run
alone (greedy) or the call on a model with enough slots (seeded), progress counts every row, stopping and
cancelling drop the rows still waiting, and other callers still meet ``max_queued``. Tiny stereo and mono exports.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
from musicgen_onnx.runtime import MusicGen, QueueFullError, RequestCancelledError, pipeline
from musicgen_onnx.runtime.streaming import snr_db
from musicgen_onnx.runtime.waves import RequestGroup

SR = 32000
WORDS = ["rock", "calm piano", "lo-fi beat with warm keys", "a jazz trio", "ambient pads", "techno", "folk guitar"]
TEXTS = [f"{WORDS[i % 7]} number {i}" + " and strings" * (i % 3) for i in range(16)]


@pytest.fixture(scope="module")
def stereo(exported_stereo):
    with MusicGen.load(exported_stereo, provider="cpu", max_batch=4, max_queued=8) as model:
        yield model


@pytest.fixture(scope="module")
def mono(exported_mono):
    with MusicGen.load(exported_mono, provider="cpu", max_batch=4, max_queued=8) as model:
        yield model


def _parts_started(sub) -> int:
    return sum(p.started is not None for p in sub.handle.parts)


def test_sixteen_prompts_on_four_slots_equal_their_solo_runs(stereo):
    result = stereo.generate_detailed(TEXTS, duration=0.5, do_sample=False)
    assert result.audio.shape == (16, 2, SR // 2) and result.codes.shape[0] == 16
    for i, text in enumerate(TEXTS):  # input order, each row as its prompt alone
        np.testing.assert_array_equal(
            result.codes[i], stereo.generate_detailed(text, duration=0.5, do_sample=False).codes[0]
        )
    assert stereo.batcher.active == 0 and stereo.batcher.queued == 0


def test_seeded_sampling_does_not_depend_on_the_slots(exported_stereo, stereo):
    spec = dict(duration=0.6, do_sample=True, top_k=50, temperature=1.5, seed=7)
    waves = stereo.generate_detailed(TEXTS, **spec)
    with MusicGen.load(exported_stereo, provider="cpu", max_batch=16) as wide:
        one_wave = wide.generate_detailed(TEXTS, **spec)
    assert waves.seed == one_wave.seed == 7
    np.testing.assert_array_equal(waves.codes, one_wave.codes)
    np.testing.assert_allclose(waves.audio, one_wave.audio, atol=1e-5)
    # without a seed, a split call draws one and reports it: that seed reproduces it
    drawn = stereo.generate_detailed(TEXTS[:6], duration=0.3, do_sample=True)
    assert isinstance(drawn.seed, int)
    again = stereo.generate_detailed(TEXTS[:6], duration=0.3, do_sample=True, seed=drawn.seed)
    np.testing.assert_array_equal(drawn.codes, again.codes)


def test_per_prompt_audio_prompts_and_cfg_off(mono):
    t = np.arange(int(0.3 * SR)) / SR
    prompts = np.stack([0.3 * np.sin(2 * np.pi * (200 + 30 * i) * t)[None] for i in range(6)]).astype(np.float32)
    spec = dict(duration=0.8, do_sample=False, guidance_scale=1.0)
    together = mono.generate_detailed(TEXTS[:6], prompt_audio=prompts, **spec).codes
    for i in range(6):
        alone = mono.generate_detailed(TEXTS[i], prompt_audio=prompts[i], **spec).codes
        np.testing.assert_array_equal(together[i], alone[0])
    unconditional = mono.generate_detailed(None, prompt_audio=prompts, **spec).codes
    np.testing.assert_array_equal(
        unconditional[5], mono.generate_detailed(None, prompt_audio=prompts[5], **spec).codes[0]
    )


def test_progress_counts_every_row(stereo):
    sub = stereo.submit(TEXTS, duration=2.0, do_sample=False)  # waves of ~0.7 s: the caller sees the first one
    assert isinstance(sub.handle, RequestGroup) and len(sub.handle.parts) == 16
    calls: list[tuple[int, int, int, int]] = []

    def progress(done: int, total: int) -> None:
        rows = sum(p.frames_ready for p in sub.handle.parts)  # frames only grow: at least what ``done`` saw
        calls.append((done, total, rows, _parts_started(sub)))

    result = sub.result(progress)
    total = result.codes.shape[-1]
    done = [c[0] for c in calls]
    assert done == sorted(done) and done[-1] == total and all(c[1] == total for c in calls)
    assert all(d * 16 <= rows for d, _, rows, _ in calls)  # the mean over all 16 rows, never ahead of them
    early = [d for d, _, _, started in calls if started <= 4]  # only the first wave had started
    assert early and max(early) <= total // 4 + 1  # a quarter of the call, not the whole clip


def test_cancel_stops_the_rows_still_waiting(stereo):
    sub = stereo.submit(TEXTS, duration=2.0, do_sample=False)
    sub.handle.wait(3)  # the first wave is running
    sub.cancel()
    with pytest.raises(RequestCancelledError):
        sub.result()
    deadline = time.monotonic() + 30
    while (stereo.batcher.active or stereo.batcher.queued) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stereo.batcher.active == 0 and stereo.batcher.queued == 0
    assert _parts_started(sub) <= 8  # the later waves never started
    assert stereo.generate(TEXTS[0], duration=0.3, do_sample=False).shape == (1, 2, int(0.3 * SR))


def test_progress_returning_false_stops_the_waiting_rows_too(stereo):
    sub = stereo.submit(TEXTS, duration=2.0, do_sample=False)
    result = sub.result(lambda done, total: done < 5)
    assert result.stopped_early and _parts_started(sub) < 16
    assert result.codes.shape[:2] == (16, 8)
    assert (
        result.codes.shape[-1] == 0
    )  # a batch is one array: the frames every row reached, none for rows never started
    assert result.audio.shape == (16, 2, 0)
    assert stereo.batcher.queued == 0


def test_other_callers_still_meet_max_queued(exported_mono):
    with MusicGen.load(exported_mono, provider="cpu", max_batch=2, max_queued=1) as model:
        call = model.submit(TEXTS[:6], duration=3.0, do_sample=False)  # 4 rows wait: still one request
        call.handle.wait(2)
        assert model.batcher.queued == 1
        with pytest.raises(QueueFullError, match=r"1 requests waiting \(max_queued=1\)"):
            model.submit(TEXTS[6], duration=0.5)
        call.cancel()
    with MusicGen.load(exported_mono, provider="cpu", max_batch=2, max_queued=0) as model:
        # a caller's own rows are never refused by the bound: 6 prompts on 2 idle slots and no queue
        assert model.generate(TEXTS[:6], duration=0.3, do_sample=False).shape == (6, 1, int(0.3 * SR))
        running = model.submit(TEXTS[0], duration=3.0, do_sample=False)
        running.handle.wait(2)
        with pytest.raises(QueueFullError):  # but it waits like any request when the slots are taken
            model.submit(TEXTS[:6], duration=0.3)
        running.cancel()


def test_streaming_a_batch_in_waves(mono):
    spec = dict(duration=1.5, do_sample=False)
    sub = mono.submit(TEXTS[:10], **spec)
    chunks, started_at_first = [], None
    with sub.stream(chunk_seconds=0.5) as stream:
        for chunk in stream:
            if started_at_first is None:
                started_at_first = _parts_started(sub)
            chunks.append(chunk)
    assert started_at_first == 10  # every row's audio at once: paced by the last wave
    audio = np.concatenate([c.audio for c in chunks], axis=-1)
    assert audio.shape == (10, 1, int(1.5 * SR)) and chunks[-1].final
    whole = mono.generate_detailed(TEXTS[:10], **spec)
    np.testing.assert_array_equal(sub.codes, whole.codes)
    assert snr_db(whole.audio, audio) >= 40


def test_pipeline_takes_any_number_of_texts(stereo):
    synthesiser = pipeline("text-to-audio", stereo)
    music = synthesiser(TEXTS[:9], forward_params={"do_sample": False, "duration": 0.3})
    assert len(music) == 9
    for i in (0, 4, 8):
        alone = stereo.generate(TEXTS[i], duration=0.3, do_sample=False)[0]
        np.testing.assert_allclose(music[i]["audio"], alone, atol=1e-4)


def test_concat_cache_exports_take_more_prompts_than_slots(exported_stereo_concat):
    with MusicGen.load(exported_stereo_concat, provider="cpu", max_batch=4) as model:
        assert model.batcher is None  # one request at a time, the whole batch in one loop
        codes = model.generate_detailed(TEXTS[:6], duration=0.4, do_sample=False).codes
        for i in (0, 5):
            np.testing.assert_array_equal(
                codes[i], model.generate_detailed(TEXTS[i], duration=0.4, do_sample=False).codes[0]
            )


def test_melody_models_split_their_rows_too(exported_melody_stereo):
    from melody_helpers import tune
    from musicgen_onnx.runtime.submission import Submission

    spec = dict(melody=[tune(0.8 + 0.2 * i) for i in range(5)], duration=0.6, do_sample=True, top_k=50, seed=3)
    with MusicGen.load(exported_melody_stereo, provider="cpu", max_batch=2) as model:
        sub = model.submit(TEXTS[:5], **spec)
        assert isinstance(sub.handle, RequestGroup) and len(sub.handle.parts) == 5
        waves = sub.result().codes
        request = model.request(TEXTS[:5], **spec)
        whole = Submission(model.engine, request, None).result().codes  # the single-request loop: all rows at once
    np.testing.assert_array_equal(waves, whole)


def test_other_callers_share_the_queue_with_a_split_call(mono):
    other = dict(duration=0.7, do_sample=True, seed=5)
    expected_other = mono.generate_detailed(TEXTS[9], **other).codes
    expected_rows = [mono.generate_detailed(t, duration=1.0, do_sample=False).codes[0] for t in TEXTS[:6]]
    call = mono.submit(TEXTS[:6], duration=1.0, do_sample=False)
    joiner = mono.submit(TEXTS[9], **other)  # queued behind the call's waiting rows, FIFO
    np.testing.assert_array_equal(joiner.result().codes, expected_other)
    codes = call.result().codes
    for row, expected in zip(codes, expected_rows, strict=True):
        np.testing.assert_array_equal(row, expected)
