"""Long-form generation (windows beyond the model's 30 s), progress and cancel, on tiny exports.

The reference below is audiocraft's ``generate_tokens`` loop (audiocraft/models/genmodel.py) rewritten in
numpy, in seconds as audiocraft writes it; each of its ``lm.generate`` calls is one call of the runtime's
single-window loop (``Engine.window_steps``, held to transformers by tests/test_runtime_parity.py), and one of them
is also checked against transformers' own generate with the prompt codes as ``decoder_input_ids``.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from musicgen_onnx.runtime import MusicGen
from musicgen_onnx.runtime.plan import plan_windows

SR, FR, HOP, C = 32000, 50, 640, 4
WINDOW, STRIDE = 4.0, 2.4  # short windows keep the tiny model fast (its 512 positions allow 10.16 s)
TEXTS = ["an upbeat rock song with electric guitars", "calm piano"]


@pytest.fixture(scope="module")
def stereo(exported_stereo) -> MusicGen:
    return MusicGen.load(exported_stereo, provider="cpu")


@pytest.fixture(scope="module")
def mono(exported_mono) -> MusicGen:
    return MusicGen.load(exported_mono, provider="cpu")


def audiocraft_reference(model, texts, duration, *, max_duration, extend_stride, prompt_codes=None, seed=None):
    """audiocraft's windowing, written independently; returns (codes, [(offset, prompt codes), ...])."""
    batch = 1 if texts is None else len(texts)
    options = model.resolve_options(do_sample=False)
    conditioning = model.engine.condition(texts, batch)
    rng = np.random.default_rng(seed)
    frame_rate = model.frame_rate

    def lm_generate(prompt_tokens, max_gen_len):  # audiocraft: returns max_gen_len frames, prompt included
        p = 0 if prompt_tokens is None else prompt_tokens.shape[-1]
        steps = max_gen_len - p + C - 1
        *_, state = model.engine.window_steps(conditioning, prompt_tokens, steps, options, rng, [])
        codes = state.codes()
        assert codes.shape[-1] == max_gen_len
        return codes

    total_gen_len = int(duration * frame_rate)
    calls = []
    if duration <= max_duration:
        return lm_generate(prompt_codes, total_gen_len), [(0, prompt_codes)]
    all_tokens = []
    prompt_tokens = prompt_codes
    if prompt_tokens is None:
        prompt_length = 0
    else:
        all_tokens.append(prompt_tokens)
        prompt_length = prompt_tokens.shape[-1]
    stride_tokens = int(frame_rate * extend_stride)
    current_gen_offset = 0
    while current_gen_offset + prompt_length < total_gen_len:
        # audiocraft: int(min(duration - offset / frame_rate, max_duration) * frame_rate), which float rounding
        # can make one frame short (int((9.0 - 7.2) * 50) == 89); the same in integer frames, so the clip is exact
        max_gen_len = min(total_gen_len - current_gen_offset, int(max_duration * frame_rate))
        calls.append((current_gen_offset, None if prompt_tokens is None else prompt_tokens.copy()))
        gen_tokens = lm_generate(prompt_tokens, max_gen_len)
        if prompt_tokens is None:
            all_tokens.append(gen_tokens)
        else:
            all_tokens.append(gen_tokens[:, :, prompt_tokens.shape[-1] :])
        prompt_tokens = gen_tokens[:, :, stride_tokens:]
        prompt_length = prompt_tokens.shape[-1]
        current_gen_offset += stride_tokens
    return np.concatenate(all_tokens, axis=-1), calls


def check_against_reference(model, job, ref_codes, ref_calls):
    assert len(job.plan.windows) == len(ref_calls)
    for w, given, (offset, ref_prompt) in zip(job.plan.windows, job.window_prompts, ref_calls, strict=True):
        assert w.start == offset
        if ref_prompt is None:
            assert given is None and w.prompt == 0
        else:
            assert w.prompt == ref_prompt.shape[-1]
            np.testing.assert_array_equal(given, ref_prompt)
            # fed back codes are the last (window - stride) frames of everything generated so far
            np.testing.assert_array_equal(given, job.codes[..., w.start : w.start + w.prompt])
    np.testing.assert_array_equal(job.codes, ref_codes)


def test_75s_stereo_cfg_text_matches_audiocraft_scheme(stereo):
    duration = 75.0
    job = stereo.submit(TEXTS, duration=duration, do_sample=False, window=WINDOW, extend_stride=STRIDE)
    job.result()
    ref_codes, ref_calls = audiocraft_reference(stereo, TEXTS, duration, max_duration=WINDOW, extend_stride=STRIDE)
    assert ref_codes.shape == (2, 8, 3750)
    check_against_reference(stereo, job, ref_codes, ref_calls)
    w = job.plan.windows
    assert [x.start for x in w] == list(range(0, 3601, 120)) and len(w) == 31
    assert all(x.length == 200 for x in w[:-1]) and w[-1].length == 150 and w[-1].stop == 3750
    assert all(x.prompt == 80 for x in w[1:])

    result = stereo.generate_detailed(TEXTS, duration=duration, do_sample=False, window=WINDOW, extend_stride=STRIDE)
    np.testing.assert_array_equal(result.codes, ref_codes)
    assert result.audio.shape == (2, 2, 75 * SR) and result.audio.dtype == np.float32
    assert np.isfinite(result.audio).all() and not result.stopped_early
    assert result.windows == list(w)


def test_window_equals_transformers_generate_with_prompt_codes(stereo, tiny_stereo_checkpoint):
    """One later window (prompt = fed-back codes) is transformers' generate with those codes as decoder prompt."""
    torch = pytest.importorskip("torch")
    from transformers import AutoTokenizer, MusicgenForConditionalGeneration

    result = stereo.generate_detailed(TEXTS, duration=6.0, do_sample=False, window=WINDOW, extend_stride=STRIDE)
    w = result.windows[1]
    assert (w.start, w.prompt, w.length) == (120, 80, 180)
    hf = MusicgenForConditionalGeneration.from_pretrained(tiny_stereo_checkpoint).eval()
    inputs = AutoTokenizer.from_pretrained(tiny_stereo_checkpoint)(TEXTS, padding=True, return_tensors="pt")
    prompt = torch.from_numpy(result.codes[..., w.start : w.start + w.prompt].reshape(2 * 8, w.prompt))
    with mock.patch.object(hf.audio_encoder, "decode", wraps=hf.audio_encoder.decode) as spy, torch.no_grad():
        hf.generate(**inputs, decoder_input_ids=prompt, do_sample=False, guidance_scale=3.0, max_new_tokens=w.steps)
    parts = [call.args[0][0].numpy() for call in spy.call_args_list]  # left, right: [B, 4, F] each
    hf_codes = np.empty((2, 8, parts[0].shape[-1]), np.int64)
    hf_codes[:, 0::2], hf_codes[:, 1::2] = parts
    np.testing.assert_array_equal(hf_codes, result.codes[..., w.start : w.stop])


def test_mono_unconditional_and_audio_prompt(mono):
    ref, calls = audiocraft_reference(mono, None, 9.0, max_duration=WINDOW, extend_stride=STRIDE)
    job = mono.submit(None, duration=9.0, do_sample=False, window=WINDOW, extend_stride=STRIDE)
    job.result()
    check_against_reference(mono, job, ref, calls)

    rng = np.random.default_rng(0)
    prompt = (0.2 * rng.standard_normal((1, SR))).astype(np.float32)  # 1 s = 50 frames
    prompt_codes = mono.encode_audio(prompt[None])
    job = mono.submit(
        TEXTS[:1], duration=9.0, do_sample=False, window=WINDOW, extend_stride=STRIDE, prompt_audio=prompt
    )
    job.result()
    ref, calls = audiocraft_reference(
        mono, TEXTS[:1], 9.0, max_duration=WINDOW, extend_stride=STRIDE, prompt_codes=prompt_codes
    )
    check_against_reference(mono, job, ref, calls)
    assert job.plan.windows[0].prompt == 50 and job.plan.windows[0].length == 200
    np.testing.assert_array_equal(job.codes[..., :50], prompt_codes)

    audio = mono.generate(TEXTS[:1], duration=9.0, window=WINDOW, extend_stride=STRIDE, prompt_audio=prompt, seed=0)
    assert audio.shape == (1, 1, 9 * SR)


@pytest.mark.parametrize("duration", [7.33, 10.017, 4.0, 4.02])
def test_exact_output_length(mono, duration):
    audio = mono.generate(None, duration=duration, window=WINDOW, extend_stride=STRIDE, seed=1)
    assert audio.shape == (1, 1, round(duration * SR))


def test_default_window_and_stride(stereo, mono):
    # tiny positions (512) allow 508 frames per window; the stride is audiocraft's 18/30 of it
    job = stereo.request(None, duration=25.0)
    assert (job.plan.window_frames, job.plan.stride_frames) == (508, 304)
    assert [w.start for w in job.plan.windows] == [0, 304, 608, 912]
    assert plan_windows(1500 * 4, 1500, 900) == [
        (0, 0, 1500),
        (900, 600, 1500),
        (1800, 600, 1500),
        (2700, 600, 1500),
        (3600, 600, 1500),
        (4500, 600, 1500),
    ]
    one = mono.request(None, duration=10.0)  # within the window: a single pass, as before
    assert len(one.plan.windows) == 1 and one.plan.windows[0].steps == 500 + C - 1


def test_seeds_reproduce_across_windows(mono):
    kwargs = dict(duration=6.0, window=WINDOW, extend_stride=STRIDE, top_k=250, temperature=20.0)
    a = mono.generate_detailed(TEXTS[:1], seed=5, **kwargs)
    b = mono.generate_detailed(TEXTS[:1], seed=5, **kwargs)
    c = mono.generate_detailed(TEXTS[:1], seed=6, **kwargs)
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.audio, b.audio)
    assert np.mean(a.codes != c.codes) > 0.5
    assert len(a.windows) == 2


def test_progress_counts_frames_over_all_windows(mono):
    calls = []
    result = mono.generate_detailed(
        None, duration=9.0, window=WINDOW, extend_stride=STRIDE, seed=0, progress=lambda d, t: calls.append((d, t))
    )
    done = [d for d, _ in calls]
    assert {t for _, t in calls} == {450}
    assert done == sorted(done) and calls[-1] == (450, 450)
    assert len(calls) >= 450 - 200  # at least one call per new frame after the first window's fill
    assert not result.stopped_early


def test_cancel_returns_the_audio_made_so_far(stereo):
    kwargs = dict(duration=9.0, window=WINDOW, extend_stride=STRIDE, do_sample=False)
    full = stereo.generate_detailed(TEXTS, **kwargs)
    result = stereo.generate_detailed(TEXTS, progress=lambda done, total: done < 300, **kwargs)
    assert result.stopped_early
    assert result.codes.shape == (2, 8, 300)
    np.testing.assert_array_equal(result.codes, full.codes[..., :300])
    assert result.audio.shape == (2, 2, 300 * HOP) and np.isfinite(result.audio).all()


def test_bad_arguments_give_clear_errors(stereo):
    with pytest.raises(ValueError, match=r"extend_stride must be in \(0, 4\)"):
        stereo.generate(None, duration=9.0, window=4.0, extend_stride=4.0)
    with pytest.raises(ValueError, match=r"extend_stride must be in \(0, 4\)"):
        stereo.generate(None, duration=9.0, window=4.0, extend_stride=0)
    with pytest.raises(ValueError, match=r"extend_stride must be in \(0, 4\)"):
        stereo.generate(None, duration=9.0, window=4.0, extend_stride=-1.0)
    with pytest.raises(ValueError, match="at least one frame"):
        stereo.generate(None, duration=9.0, window=4.0, extend_stride=0.01)
    with pytest.raises(ValueError, match=r"window must be a number of seconds in \(0, 10.16\]"):
        stereo.generate(None, duration=9.0, window=20.0)
    with pytest.raises(ValueError, match=r"beyond the configured cap: 0 < duration <= 600 s"):
        stereo.generate(None, duration=601.0)
    capped = MusicGen.load(stereo.model_dir, provider="cpu")
    capped.duration_cap = 20.0
    with pytest.raises(ValueError, match=r"0 < duration <= 20 s"):
        capped.generate(None, duration=21.0)
    with pytest.raises(ValueError, match="shorter than the generation window"):
        stereo.generate(None, duration=9.0, window=1.0, prompt_audio=np.zeros((2, 2 * SR), np.float32))
    with pytest.raises(ValueError, match="not both"):
        stereo.generate(None, duration=9.0, max_new_tokens=10)
