"""Melody with long-form windows and streaming, on the tiny melody export.

audiocraft re-slices the melody for every window at the window's time offset, wrapping around; window 0 is the
melody as transformers uses it. A later window is held to transformers' generate with that window's melody
slice as ``input_features`` and the fed-back codes as ``decoder_input_ids``.
"""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
import torch
from chroma_reference import reference_chroma
from melody_helpers import TEXT, hf_generate, tune
from musicgen_onnx.runtime import MusicGen
from musicgen_onnx.runtime.melody import MelodyCondition, window_melody
from musicgen_onnx.runtime.streaming import snr_db
from transformers import AutoTokenizer, MusicgenMelodyForConditionalGeneration

SR, HOP = 32000, 640
WINDOW, STRIDE = 4.0, 2.4


@pytest.fixture(scope="module")
def model(exported_melody_stereo) -> MusicGen:
    return MusicGen.load(exported_melody_stereo, provider="cpu")


def test_windows_slice_the_melody_at_their_offset(model, tiny_melody_stereo_checkpoint):
    melody = tune(5.0)
    starts = []
    original = MelodyCondition.prefix

    def spy(self, start_sample, cfg):
        starts.append(start_sample)
        return original(self, start_sample, cfg)

    with mock.patch.object(MelodyCondition, "prefix", spy):
        result = model.generate_detailed(
            TEXT, melody=melody, duration=7.0, do_sample=False, window=WINDOW, extend_stride=STRIDE
        )
    assert [w.start * HOP for w in result.windows] == starts == [0, 76800, 153600]

    w = result.windows[1]
    assert (w.start, w.prompt, w.length) == (120, 80, 200)
    hf = MusicgenMelodyForConditionalGeneration.from_pretrained(tiny_melody_stereo_checkpoint).eval()
    inputs = AutoTokenizer.from_pretrained(tiny_melody_stereo_checkpoint)([TEXT], return_tensors="pt")
    sliced = window_melody(melody, w.start * HOP, 30 * SR)
    np.testing.assert_array_equal(sliced, np.roll(melody, -w.start * HOP))  # 5 s melody: wraps around
    feats = torch.from_numpy(reference_chroma(sliced)[None])
    prompt = torch.from_numpy(result.codes[..., w.start : w.start + w.prompt].reshape(8, w.prompt))
    _, codes = hf_generate(
        hf, **inputs, input_features=feats, decoder_input_ids=prompt, do_sample=False, max_new_tokens=w.steps
    )
    np.testing.assert_array_equal(codes, result.codes[..., w.start : w.stop])


def test_stream_with_melody_matches_generate(model):
    kwargs = dict(melody=tune(2.0), duration=3.0, do_sample=False)
    full = model.generate_detailed(TEXT, **kwargs)
    chunks = list(model.stream(TEXT, chunk_seconds=0.5, **kwargs))
    assert chunks[-1].final and len(chunks) > 2
    streamed = np.concatenate([c.audio for c in chunks], axis=-1)
    assert streamed.shape == full.audio.shape == (1, 2, 3 * SR)
    assert snr_db(full.audio, streamed) >= 40
