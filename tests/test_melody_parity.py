"""Melody checkpoints: the onnxruntime loop against transformers' MusicgenMelodyForConditionalGeneration.generate.

Greedy decoding: codes identical, audio within 1e-4. transformers' feature extractor needs torchaudio (which
must not be installed here), so transformers gets its ``input_features`` from the independent torch reference
(``chroma_reference``) while ours computes the chromagram in numpy from the raw audio.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from melody_helpers import TEXT, features, hf_generate, tune
from musicgen_onnx.runtime import MusicGen
from transformers import AutoTokenizer, MusicgenMelodyForConditionalGeneration

AUDIO_ATOL = 1e-4
SR = 32000


def _load(checkpoint, export):
    hf = MusicgenMelodyForConditionalGeneration.from_pretrained(checkpoint).eval()
    return hf, AutoTokenizer.from_pretrained(checkpoint), MusicGen.load(export, provider="cpu")


@pytest.fixture(scope="module")
def stereo(tiny_melody_stereo_checkpoint, exported_melody_stereo):
    return _load(tiny_melody_stereo_checkpoint, exported_melody_stereo)


@pytest.fixture(scope="module")
def mono(tiny_melody_mono_checkpoint, exported_melody_mono):
    return _load(tiny_melody_mono_checkpoint, exported_melody_mono)


def assert_same(ours, ref_audio, ref_codes):
    np.testing.assert_array_equal(ours.codes, ref_codes)
    assert ours.audio.shape == ref_audio.shape
    np.testing.assert_allclose(ours.audio, ref_audio, atol=AUDIO_ATOL, rtol=0)


def max_diff(ours, ref_audio) -> float:
    return float(np.max(np.abs(ours.audio - ref_audio)))


@pytest.mark.parametrize("which", ["stereo", "mono"])
def test_text_and_melody_with_cfg(which, request):
    hf, tok, ours = request.getfixturevalue(which)
    melody = tune(2.0)
    inputs = tok([TEXT], return_tensors="pt")
    feats = features(melody)
    ref = hf_generate(hf, **inputs, input_features=feats, do_sample=False, guidance_scale=3.0, max_new_tokens=30)
    result = ours.generate_detailed(TEXT, melody=melody, melody_sample_rate=SR, do_sample=False, max_new_tokens=30)
    assert_same(result, *ref)
    # the melody really steers the model: another melody gives other codes
    other = ours.generate_detailed(TEXT, melody=tune(2.0, notes=(440.0, 587.33)), do_sample=False, max_new_tokens=30)
    assert np.mean(other.codes != result.codes) > 0.1


@pytest.mark.parametrize("which", ["stereo", "mono"])
def test_text_only_uses_the_null_melody(which, request):
    hf, tok, ours = request.getfixturevalue(which)
    inputs = tok([TEXT], return_tensors="pt")
    ref = hf_generate(hf, **inputs, do_sample=False, guidance_scale=3.0, max_new_tokens=25)
    assert_same(ours.generate_detailed(TEXT, do_sample=False, guidance_scale=3.0, max_new_tokens=25), *ref)


@pytest.mark.parametrize("which", ["stereo", "mono"])
def test_unconditional(which, request):
    hf, _, ours = request.getfixturevalue(which)
    ref = hf_generate(hf, do_sample=False, max_new_tokens=20)
    assert_same(ours.generate_detailed(None, do_sample=False, max_new_tokens=20), *ref)


def test_melody_without_text_keeps_cfg(stereo):
    hf, _, ours = stereo
    melody = tune(2.0)
    ref = hf_generate(hf, input_features=features(melody), do_sample=False, guidance_scale=3.0, max_new_tokens=20)
    assert_same(ours.generate_detailed(None, melody=melody, do_sample=False, max_new_tokens=20), *ref)


@pytest.mark.parametrize(
    ("seconds", "guidance"),
    [(0.3, 3.0), (0.9, 1.0), (31.5, 3.0)],
    ids=["shorter-than-n_fft", "one-second-no-cfg", "longer-than-30s"],
)
def test_melody_lengths(stereo, seconds, guidance):
    hf, tok, ours = stereo
    melody = tune(seconds)
    inputs = tok([TEXT], return_tensors="pt")
    feats = features(melody)
    assert feats.shape[1] == 1 + max(min(melody.size, 30 * SR), 16384) // 4096
    ref = hf_generate(hf, **inputs, input_features=feats, do_sample=False, guidance_scale=guidance, max_new_tokens=20)
    result = ours.generate_detailed(TEXT, melody=melody, do_sample=False, guidance_scale=guidance, max_new_tokens=20)
    assert_same(result, *ref)


def test_melody_at_44k1(stereo):
    from scipy.signal import resample_poly

    hf, tok, ours = stereo
    melody = tune(2.0, sr=44100)
    at_32k = resample_poly(melody.astype(np.float64), 320, 441).astype(np.float32)  # an independent resampler
    inputs = tok([TEXT], return_tensors="pt")
    ref = hf_generate(hf, **inputs, input_features=features(at_32k), do_sample=False, max_new_tokens=20)
    result = ours.generate_detailed(TEXT, melody=melody, melody_sample_rate=44100, do_sample=False, max_new_tokens=20)
    assert_same(result, *ref)


@pytest.mark.parametrize("which", ["stereo", "mono"])
def test_stereo_melody_is_averaged(which, request):
    hf, tok, ours = request.getfixturevalue(which)
    melody = tune(1.5, channels=2)  # [2, L]
    inputs = tok([TEXT], return_tensors="pt")
    ref = hf_generate(hf, **inputs, input_features=features(melody), do_sample=False, max_new_tokens=20)
    assert_same(ours.generate_detailed(TEXT, melody=melody, do_sample=False, max_new_tokens=20), *ref)


def test_batch_rows_match_each_prompt_alone(stereo):
    """Texts of different lengths and melodies of different lengths in one batch: each row equals transformers'
    result for that prompt alone (transformers' own batched output depends on the padding; ours does not)."""
    hf, tok, ours = stereo
    texts = [TEXT, "calm piano"]
    melodies = [tune(2.0), tune(0.7, notes=(220.0, 246.94, 277.18))]
    lengths = tok(texts, padding=True, return_tensors="pt").attention_mask.sum(1)
    assert lengths[0] != lengths[1]
    result = ours.generate_detailed(texts, melody=melodies, do_sample=False, max_new_tokens=24)
    for i in range(2):
        inputs = tok(texts[i : i + 1], return_tensors="pt")
        ref_audio, ref_codes = hf_generate(
            hf, **inputs, input_features=features(melodies[i]), do_sample=False, max_new_tokens=24
        )
        np.testing.assert_array_equal(result.codes[i : i + 1], ref_codes)
        np.testing.assert_allclose(result.audio[i : i + 1], ref_audio, atol=AUDIO_ATOL, rtol=0)


def test_batch_array_matches_transformers_batch(stereo):
    """A [B, C, L] melody batch with texts of equal token length: no padding, so transformers' batch is the
    reference too."""
    hf, tok, ours = stereo
    texts = ["happy rock", "sad piano"]
    inputs = tok(texts, padding=True, return_tensors="pt")
    assert bool(inputs.attention_mask.all())
    melodies = np.stack([tune(1.2, channels=1), tune(1.2, notes=(330.0, 392.0), channels=1)])  # [2, 1, L]
    ref = hf_generate(
        hf, **inputs, input_features=features(*melodies), do_sample=False, guidance_scale=3.0, max_new_tokens=20
    )
    assert_same(ours.generate_detailed(texts, melody=melodies, do_sample=False, max_new_tokens=20), *ref)


def test_one_melody_for_all_rows(stereo):
    _, _, ours = stereo
    melody = tune(1.0)
    both = ours.generate_detailed([TEXT, TEXT], melody=melody, do_sample=False, max_new_tokens=12)
    alone = ours.generate_detailed(TEXT, melody=melody, do_sample=False, max_new_tokens=12)
    np.testing.assert_array_equal(both.codes[0], alone.codes[0])
    np.testing.assert_array_equal(both.codes[1], alone.codes[0])


def test_sampling_with_melody_is_reproducible(stereo):
    _, _, ours = stereo
    kwargs = dict(melody=tune(1.0), max_new_tokens=20, top_k=250, temperature=20.0)
    a = ours.generate_detailed(TEXT, seed=5, **kwargs)
    b = ours.generate_detailed(TEXT, seed=5, **kwargs)
    c = ours.generate_detailed(TEXT, seed=6, **kwargs)
    np.testing.assert_array_equal(a.codes, b.codes)
    assert np.mean(a.codes != c.codes) > 0.5


def test_transformers_batch_depends_on_padding_ours_does_not(stereo):
    """What the docs state: in transformers a shorter text's row changes when batched with a longer one (its
    padded zeros stay in the prefix and are attended); ours gives that row its alone result (previous tests)."""
    hf, tok, _ = stereo
    texts = [TEXT, "calm piano"]
    feats = features(tune(1.0), tune(1.0))
    start = torch.full((2 * hf.decoder.num_codebooks, 1), 2048)
    with torch.no_grad():
        batched = hf(**tok(texts, padding=True, return_tensors="pt"), input_features=feats, decoder_input_ids=start)
        alone = hf(**tok(texts[1:], return_tensors="pt"), input_features=feats[1:], decoder_input_ids=start[8:])
    k = hf.decoder.num_codebooks
    assert (batched.logits[k:, -1] - alone.logits[:, -1]).abs().max() > 1e-3
