"""The onnxruntime loop against transformers' own ``MusicgenForConditionalGeneration.generate``.

Greedy decoding makes both deterministic, so codes must be identical and audio within 1e-4. The codes
transformers produced are captured from its call to the EnCodec ``decode`` (mock with ``wraps``).
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
from musicgen_onnx.runtime import MusicGen
from transformers import AutoTokenizer, MusicgenForConditionalGeneration

AUDIO_ATOL = 1e-4
TEXTS = ["an upbeat rock song with electric guitars", "calm piano"]


@pytest.fixture(scope="module")
def stereo(tiny_stereo_checkpoint, exported_stereo):
    hf = MusicgenForConditionalGeneration.from_pretrained(tiny_stereo_checkpoint).eval()
    return hf, AutoTokenizer.from_pretrained(tiny_stereo_checkpoint), MusicGen.load(exported_stereo, provider="cpu")


@pytest.fixture(scope="module")
def stereo_concat(tiny_stereo_checkpoint, exported_stereo_concat):
    hf = MusicgenForConditionalGeneration.from_pretrained(tiny_stereo_checkpoint).eval()
    model = MusicGen.load(exported_stereo_concat, provider="cpu")
    return hf, AutoTokenizer.from_pretrained(tiny_stereo_checkpoint), model


@pytest.fixture(scope="module")
def mono(tiny_mono_checkpoint, exported_mono):
    hf = MusicgenForConditionalGeneration.from_pretrained(tiny_mono_checkpoint).eval()
    return hf, AutoTokenizer.from_pretrained(tiny_mono_checkpoint), MusicGen.load(exported_mono, provider="cpu")


def hf_generate(hf, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """transformers' audio and the codes it decoded ([B, K, F], stereo rows re-interleaved)."""
    with mock.patch.object(hf.audio_encoder, "decode", wraps=hf.audio_encoder.decode) as spy, torch.no_grad():
        audio = hf.generate(**kwargs)
    parts = [call.args[0][0].numpy() for call in spy.call_args_list]  # each [B, 4, F]
    codes = np.empty((parts[0].shape[0], 4 * len(parts), parts[0].shape[-1]), dtype=np.int64)
    for c, part in enumerate(parts):
        codes[:, c :: len(parts)] = part
    return audio.numpy(), codes


def assert_same(ours, ref_audio, ref_codes):
    np.testing.assert_array_equal(ours.codes, ref_codes)
    assert ours.audio.shape == ref_audio.shape
    np.testing.assert_allclose(ours.audio, ref_audio, atol=AUDIO_ATOL, rtol=0)


@pytest.mark.parametrize("which", ["stereo", "mono", "stereo_concat"])
@pytest.mark.parametrize("guidance", [3.0, 1.0])
def test_greedy_text_batch_of_different_lengths(which, guidance, request):
    hf, tok, ours = request.getfixturevalue(which)
    inputs = tok(TEXTS, padding=True, return_tensors="pt")
    assert int(inputs.attention_mask.sum(1).min()) < inputs.attention_mask.shape[1]  # really different lengths
    ref_audio, ref_codes = hf_generate(hf, **inputs, do_sample=False, guidance_scale=guidance, max_new_tokens=23)
    result = ours.generate_detailed(TEXTS, do_sample=False, guidance_scale=guidance, max_new_tokens=23)
    assert result.codes.shape == (2, hf.decoder.config.num_codebooks, 23 + 1 - 4)
    assert_same(result, ref_audio, ref_codes)


@pytest.mark.parametrize("which", ["stereo", "mono"])
def test_greedy_single_prompt_cfg(which, request):
    hf, tok, ours = request.getfixturevalue(which)
    inputs = tok(TEXTS[:1], return_tensors="pt")
    ref_audio, ref_codes = hf_generate(hf, **inputs, do_sample=False, guidance_scale=3.0, max_new_tokens=40)
    result = ours.generate_detailed(TEXTS[0], do_sample=False, guidance_scale=3.0, max_new_tokens=40)
    assert_same(result, ref_audio, ref_codes)


@pytest.mark.parametrize("which", ["stereo", "mono"])
def test_greedy_unconditional(which, request):
    hf, _, ours = request.getfixturevalue(which)
    uncond = hf.get_unconditional_inputs(num_samples=1)
    ref_audio, ref_codes = hf_generate(hf, **uncond, do_sample=False, max_new_tokens=17)
    assert_same(ours.generate_detailed(None, do_sample=False, max_new_tokens=17), ref_audio, ref_codes)


@pytest.mark.parametrize(("which", "prompt_channels"), [("stereo", 2), ("stereo", 1), ("mono", 1)])
def test_greedy_audio_prompt(which, prompt_channels, request):
    hf, tok, ours = request.getfixturevalue(which)
    rng = np.random.default_rng(7)
    t = np.arange(int(0.23 * 32000)) / 32000
    prompt = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    prompt = np.stack([prompt * (1 - 0.3 * c) for c in range(prompt_channels)])  # [C, L]
    # transformers takes the prompt at the model's channel count: a mono prompt is duplicated, as we do
    hf_prompt = np.repeat(prompt, 2, axis=0) if prompt.shape[0] == 1 and which == "stereo" else prompt
    inputs = tok(TEXTS, padding=True, return_tensors="pt")
    values = torch.from_numpy(np.repeat(hf_prompt[None], 2, axis=0))
    ref_audio, ref_codes = hf_generate(
        hf, **inputs, input_values=values, do_sample=False, guidance_scale=3.0, max_new_tokens=12
    )
    result = ours.generate_detailed(
        TEXTS, prompt_audio=prompt, prompt_sample_rate=32000, do_sample=False, guidance_scale=3.0, max_new_tokens=12
    )
    assert result.codes.shape[-1] == 12 + 1 - 4 + int(np.ceil(prompt.shape[-1] / 640))
    assert_same(result, ref_audio, ref_codes)


def test_sampling_is_reproducible_and_seed_dependent(stereo):
    _, _, ours = stereo
    # the tiny model's scaled lm_heads are peaked: a high temperature makes the draws really random
    kwargs = dict(max_new_tokens=30, top_k=250, temperature=20.0)
    a = ours.generate_detailed(TEXTS, seed=123, **kwargs)
    b = ours.generate_detailed(TEXTS, seed=123, **kwargs)
    c = ours.generate_detailed(TEXTS, seed=124, **kwargs)
    np.testing.assert_array_equal(a.audio, b.audio)
    np.testing.assert_array_equal(a.codes, b.codes)
    assert np.mean(a.codes != c.codes) > 0.5


def test_duration_gives_exact_length(stereo):
    _, _, ours = stereo
    audio = ours.generate("drums", duration=0.73, seed=0)
    assert audio.shape == (1, 2, round(0.73 * 32000)) and audio.dtype == np.float32


def test_pipeline_entry_point(exported_mono):
    from musicgen_onnx.runtime import pipeline

    synthesiser = pipeline("text-to-audio", exported_mono)
    music = synthesiser("lo-fi music with a soothing melody", forward_params={"do_sample": True, "max_new_tokens": 10})
    assert music["sampling_rate"] == 32000
    assert music["audio"].shape == (1, (10 + 1 - 4) * 640)
