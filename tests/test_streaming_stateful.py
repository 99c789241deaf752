"""The stateful EnCodec stream decoder (graphs/encodec_stream.py, runtime/codec_stream.py).

Every code frame goes through the LSTM once; only the post-LSTM convolutions re-run over an overlap of the
measured reach. So the chunks equal the one-shot decode up to float rounding, not merely within 40 dB; the
export's validation checks the same against transformers (export/validate_stream.py), these tests check the
runtime's use of it: batching, per-sequence state, the stream, and exports made before the graph existed.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
from musicgen_onnx.runtime import MusicGen
from musicgen_onnx.runtime.codec_stream import StatefulStreamDecoder
from musicgen_onnx.runtime.manifest import CodecStreamSpec, Manifest
from musicgen_onnx.runtime.streaming import (
    CROSSFADE_FRAMES,
    RIGHT_CONTEXT_FRAMES,
    StreamDecoder,
    snr_db,
    stream_decoder,
)
from test_streaming import HOP, SR, TEXTS, check_chunks, check_snr, concat

#: float rounding only: the one-shot decode and the chunks differ in summation order, nothing else
ATOL = 2e-6


@pytest.fixture(scope="module")
def stereo(exported_stereo) -> MusicGen:
    return MusicGen.load(exported_stereo, provider="cpu")


def stream_in_steps(dec, codes: np.ndarray, steps: list[int]) -> np.ndarray:
    total = codes.shape[-1]
    return np.concatenate([dec.step(codes, r, final=r == total) for r in steps], axis=-1)


def random_steps(rng: np.random.Generator, total: int, most: int) -> list[int]:
    steps, ready = [], 0
    while ready < total:
        ready = min(total, ready + int(rng.integers(1, most)))
        steps.append(ready)
    return steps


def test_export_records_the_stateful_graph(stereo):
    manifest = stereo.engine.manifest
    assert "encodec_stream" in manifest.graphs and stereo.engine.has_stateful_codec
    # conv0 has kernel 7 (3 frames each side); the post-LSTM stack reaches one latent frame each side (measured
    # at export by perturbation; the same for every MusicGen EnCodec, whose convolutions are the same)
    assert manifest.codec_stream == CodecStreamSpec(code_context=3, left_context=1, right_context=1)
    assert isinstance(stream_decoder(stereo.engine), StatefulStreamDecoder)
    assert stream_decoder(stereo.engine).held_back == 4 < RIGHT_CONTEXT_FRAMES + CROSSFADE_FRAMES


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stateful_chunks_equal_the_one_shot_decode(stereo, seed):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2048, (2, 8, 300))
    ref = stereo.decode_codes(codes)
    audio = stream_in_steps(stream_decoder(stereo.engine), codes, random_steps(rng, 300, [3, 40, 120][seed]))
    assert audio.shape == ref.shape == (2, 2, 300 * HOP)
    np.testing.assert_allclose(audio, ref, rtol=0, atol=ATOL)


@pytest.mark.parametrize("total", [1, 2, 3, 4, 5, 8])
def test_short_clips_and_single_steps(stereo, total):
    """Clips of at most 3 frames (conv0's reflect padding zero-extends: the one-shot graph decodes them),
    just above, and one frame at a time."""
    codes = np.random.default_rng(total).integers(0, 2048, (1, 8, total))
    ref = stereo.decode_codes(codes)
    for steps in ([total], list(range(1, total + 1))):
        audio = stream_in_steps(stream_decoder(stereo.engine), codes, steps)
        np.testing.assert_allclose(audio, ref, rtol=0, atol=ATOL)


def test_without_the_measured_overlap_the_seams_show(stereo):
    """The overlap the export measured is what makes it exact (the equality tests above have teeth)."""
    codes = np.random.default_rng(0).integers(0, 2048, (1, 8, 200))
    ref = stereo.decode_codes(codes)
    for spec in (CodecStreamSpec(3, 0, 1), CodecStreamSpec(3, 1, 0)):
        dec = stream_decoder(stereo.engine)
        dec.spec = spec
        audio = stream_in_steps(dec, codes, [*range(50, 200, 50), 200])
        assert np.abs(audio - ref).max() > 1000 * ATOL


class _Recorder:
    """Records the batch and frames of every stateful graph call."""

    def __init__(self, run) -> None:
        self.inner, self.calls = run, []

    def __call__(self, feeds):
        self.calls.append(feeds["audio_codes"].shape)
        return self.inner(feeds)


@pytest.mark.parametrize("call_frames", [1500, 60, 1])
def test_state_is_per_sequence_in_batched_calls(stereo, call_frames):
    """Clips x channels share graph calls (up to the frame budget, as the one-shot decode batches them), each
    with its own LSTM state and context: the batch decodes exactly as every clip streamed alone."""
    rng = np.random.default_rng(call_frames)
    codes = rng.integers(0, 2048, (3, 8, 160))
    steps = random_steps(rng, 160, 30)
    dec = stream_decoder(stereo.engine)
    dec.call_frames = call_frames
    dec.run = recorder = _Recorder(dec.run)
    batched = stream_in_steps(dec, codes, steps)
    rows = [shape[0] for shape in recorder.calls]
    if call_frames == 1500:
        assert set(rows) == {6}  # 3 clips x 2 channels in every call
    elif call_frames == 1:
        assert set(rows) == {1}  # one sequence per call
    else:
        assert min(rows) < 6 and max(rows) > 1  # wide steps split the sequences over calls, narrow ones not
    for b in range(3):
        alone = stream_in_steps(stream_decoder(stereo.engine), codes[b : b + 1], steps)
        np.testing.assert_allclose(batched[b : b + 1], alone, rtol=0, atol=ATOL)
    np.testing.assert_allclose(batched, stereo.decode_codes(codes), rtol=0, atol=ATOL)


def test_stream_uses_the_stateful_graph_and_matches_generate(stereo, monkeypatch):
    engine = stereo.engine
    one_shot_calls = []
    original = engine.decode_codes
    monkeypatch.setattr(engine, "decode_codes", lambda codes: one_shot_calls.append(codes.shape) or original(codes))
    kwargs = dict(duration=5.0, seed=3, top_k=250, temperature=20.0)
    chunks = list(stereo.stream(TEXTS, chunk_seconds=0.5, **kwargs))
    assert one_shot_calls == []  # every chunk came from the stateful graph
    monkeypatch.undo()
    ref = stereo.generate_detailed(TEXTS, **kwargs)
    check_chunks(chunks, 2, 2)
    assert [c.audio.shape[-1] for c in chunks] == [SR // 2] * 10
    audio = concat(chunks)
    check_snr(ref.audio, audio, "stateful stream vs generate, tiny stereo, batch 2")
    np.testing.assert_allclose(audio, ref.audio, rtol=0, atol=ATOL)  # in fact equal up to float rounding


@pytest.fixture(scope="module")
def old_export(exported_stereo, tmp_path_factory):
    """The tiny stereo export as exporters before the stateful graph wrote it: no graph, no manifest entry."""
    out = tmp_path_factory.mktemp("old") / "stereo"
    shutil.copytree(exported_stereo, out)
    data = json.loads((out / "manifest.json").read_text())
    spec = data["graphs"].pop("encodec_stream")
    data.pop("codec_stream")
    for name in [spec["file"], *spec["external_data"]]:
        (out / name).unlink()
        data["files"].pop(name, None)
    (out / "manifest.json").write_text(json.dumps(data, indent=2))
    assert Manifest.load(out).codec_stream is None
    return out


def test_old_export_streams_through_the_overlap_path(old_export):
    model = MusicGen.load(old_export, provider="cpu")
    assert not model.engine.has_stateful_codec
    assert isinstance(stream_decoder(model.engine), StreamDecoder)
    kwargs = dict(duration=4.0, seed=5, top_k=250, temperature=20.0)
    ref = model.generate_detailed(TEXTS[:1], **kwargs)
    chunks = list(model.stream(TEXTS[:1], chunk_seconds=0.5, **kwargs))
    check_chunks(chunks, 1, 2)
    audio = concat(chunks)
    check_snr(ref.audio, audio, "overlap-path stream vs generate, export without the stateful graph")
    assert snr_db(ref.audio, audio) < 200  # the overlap path's cross-fades: close, not float-exact


def test_stateful_and_overlap_paths_agree(stereo):
    codes = np.random.default_rng(9).integers(0, 2048, (1, 8, 250))
    steps = [*range(60, 250, 50), 250]
    stateful = stream_in_steps(stream_decoder(stereo.engine, stateful=True), codes, steps)
    overlap = stream_in_steps(stream_decoder(stereo.engine, stateful=False), codes, steps)
    check_snr(stateful, overlap, "stateful vs overlap stream decode")


def test_a_stream_keeps_its_batch(stereo):
    dec = stream_decoder(stereo.engine)
    codes = np.random.default_rng(0).integers(0, 2048, (2, 8, 40))
    dec.step(codes, 20)
    with pytest.raises(ValueError, match="batch is fixed"):
        dec.step(codes[:1], 40, final=True)


def test_manifest_round_trip_keeps_the_spec(stereo):
    manifest = stereo.engine.manifest
    again = Manifest.from_dict(json.loads(json.dumps(manifest.to_dict())))
    assert again.codec_stream == manifest.codec_stream
    without = dataclasses.replace(manifest, codec_stream=None)
    assert Manifest.from_dict(json.loads(json.dumps(without.to_dict()))).codec_stream is None
