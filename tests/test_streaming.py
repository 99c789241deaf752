"""Streaming: chunks while generating, incremental EnCodec decode with a cross-fade, cancel.

The tiny checkpoints get random EnCodec codebooks (tests/tiny_checkpoint.py; transformers would leave them zeros,
and the audio would then ignore the codes), so the SNR tests below measure a decoder that really depends on them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import numpy as np
import pytest
from musicgen_onnx.runtime import MusicGen
from musicgen_onnx.runtime.streaming import (
    CROSSFADE_FRAMES,
    LEFT_CONTEXT_FRAMES,
    RIGHT_CONTEXT_FRAMES,
    StreamDecoder,
    decode_long,
    measure_receptive_field,
    snr_db,
    stream_chunks,
    stream_decoder,
)

SR, HOP = 32000, 640
SNR_BOUND_DB = 40.0
TEXTS = ["an upbeat rock song with electric guitars", "calm piano"]


@pytest.fixture(scope="module")
def live_stereo(exported_stereo) -> MusicGen:
    """The tiny stereo export: its EnCodec codebooks are random, so decoded audio depends on every code."""
    return MusicGen.load(exported_stereo, provider="cpu")


@pytest.fixture(scope="module")
def mono(exported_mono) -> MusicGen:
    return MusicGen.load(exported_mono, provider="cpu")


def check_snr(ref: np.ndarray, test: np.ndarray, what: str) -> None:
    """SNR >= 40 dB, and also against the reference without its DC (random decoders output a large offset,
    which would make the plain SNR ~20 dB easier)."""
    dc = ref.mean(axis=-1, keepdims=True)
    snr, snr_ac = snr_db(ref, test), snr_db(ref - dc, test - dc)
    print(f"{what}: SNR {snr:.1f} dB, without DC {snr_ac:.1f} dB")
    assert snr >= SNR_BOUND_DB and snr_ac >= SNR_BOUND_DB


def concat(chunks) -> np.ndarray:
    return np.concatenate([c.audio for c in chunks], axis=-1)


def check_chunks(chunks, batch, channels):
    assert chunks and chunks[-1].final and not any(c.final for c in chunks[:-1])
    start = 0
    for c in chunks:
        assert c.audio.dtype == np.float32 and c.audio.shape[:2] == (batch, channels)
        assert c.start_sample == start and math.isclose(c.start, start / SR)
        assert np.isfinite(c.audio).all()
        start += c.audio.shape[-1]


def test_receptive_field_is_covered_by_the_context(live_stereo):
    for eps in (1e-4, 1e-5):
        rf = measure_receptive_field(live_stereo.engine, eps=eps)
        assert 0 < rf.before < RIGHT_CONTEXT_FRAMES  # convolutions only: finite (4 frames measured)
        assert 0 < rf.after <= LEFT_CONTEXT_FRAMES + CROSSFADE_FRAMES  # LSTM memory: 10 / 15 frames measured


@pytest.mark.parametrize("batch", [1, 2])
def test_stream_matches_one_shot_decode(live_stereo, batch):
    kwargs = dict(duration=5.0, seed=3, top_k=250, temperature=20.0)
    ref = live_stereo.generate_detailed(TEXTS[:batch], **kwargs)
    chunks = list(live_stereo.stream(TEXTS[:batch], chunk_seconds=0.5, **kwargs))
    check_chunks(chunks, batch, 2)
    audio = concat(chunks)
    assert audio.shape == ref.audio.shape == (batch, 2, 5 * SR)
    check_snr(ref.audio, audio, f"stream vs one-shot decode, tiny stereo, batch {batch}")
    assert [c.audio.shape[-1] for c in chunks] == [SR // 2] * 10  # chunks of 25 frames, whatever the timing


def test_stream_long_form(live_stereo):
    kwargs = dict(duration=12.0, window=4.0, extend_stride=2.4, do_sample=False)
    ref = live_stereo.generate_detailed(TEXTS[:1], **kwargs)
    chunks = list(live_stereo.stream(TEXTS[:1], chunk_seconds=1.0, **kwargs))
    check_chunks(chunks, 1, 2)
    assert len(ref.windows) == 5
    assert [c.audio.shape[-1] for c in chunks] == [SR] * 12  # 600 frames: 11 chunks of 50, then the final 50
    check_snr(ref.audio, concat(chunks), "stream vs one-shot decode, tiny stereo long-form 12 s")


def test_decode_long_matches_one_shot(live_stereo):
    codes = np.random.default_rng(0).integers(0, 2048, (1, 8, 3750))  # 75 s: decoded in 1500-frame pieces
    check_snr(live_stereo.decode_codes(codes), decode_long(live_stereo.engine, codes), "decode_long vs one-shot, 75 s")


class _RecordingSession:
    """The engine's EnCodec session, recording the shape of every call."""

    def __init__(self, session) -> None:
        self.session, self.shapes = session, []

    def run(self, names, feeds):
        self.shapes.append(feeds["audio_codes"].shape)
        return self.session.run(names, feeds)


@pytest.mark.parametrize(("batch", "frames", "calls"), [(1, 20, [2]), (2, 20, [4]), (2, 900, [1, 1, 1, 1])])
def test_codec_calls_batch_sequences_within_the_frame_budget(exported_stereo, monkeypatch, batch, frames, calls):
    """Clips x channels share EnCodec calls up to CODEC_CALL_FRAMES in all, and the audio is the same as
    decoding every (clip, channel) alone: the batch only saves time."""
    from musicgen_onnx.runtime.engine import CODEC_CALL_FRAMES

    model = MusicGen.load(exported_stereo, provider="cpu")
    codes = np.random.default_rng(frames).integers(0, 2048, (batch, 8, frames))
    recorder = _RecordingSession(model.engine.codec_decoder)
    monkeypatch.setattr(model.engine, "codec_decoder", recorder)
    audio = model.decode_codes(codes)
    assert [shape[0] for shape in recorder.shapes] == calls
    assert all(shape[0] * shape[2] <= max(CODEC_CALL_FRAMES, frames) for shape in recorder.shapes)
    for b in range(batch):
        for c in range(2):
            (alone,) = recorder.session.run(None, {"audio_codes": np.ascontiguousarray(codes[b : b + 1, c::2])})
            np.testing.assert_allclose(audio[b, c], alone[0, 0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_stream_decoder_any_increments(live_stereo, seed):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2048, (2, 8, 400))
    dec = StreamDecoder(live_stereo.decode_codes, HOP, 2)
    parts, ready = [], 0
    while ready < 400:
        ready = min(400, ready + int(rng.integers(1, 40)))
        parts.append(dec.step(codes, ready, final=ready == 400))
    audio = np.concatenate(parts, axis=-1)
    assert audio.shape == (2, 2, 400 * HOP)
    check_snr(live_stereo.decode_codes(codes), audio, f"StreamDecoder, random increments (seed {seed})")


def test_overlap_is_what_makes_it_exact(live_stereo):
    """Without left context, right context and cross-fade the seams show: the SNR test above has teeth."""
    codes = np.random.default_rng(0).integers(0, 2048, (1, 8, 400))
    ref = live_stereo.decode_codes(codes)
    dec = StreamDecoder(live_stereo.decode_codes, HOP, 2, left_context=0, right_context=0, crossfade=0)
    audio = np.concatenate([dec.step(codes, r) for r in range(50, 400, 50)] + [dec.step(codes, 400, final=True)], -1)
    dc = ref.mean(axis=-1, keepdims=True)
    assert snr_db(ref - dc, audio - dc) < SNR_BOUND_DB


class ScriptedSource:
    """A code source advanced one frame at a time by the test: the stream's timing without any threads."""

    def __init__(self, result) -> None:
        self.buffer, self.plan = result.codes, result.plan
        self.frames_ready, self.finished, self.stopped = 0, False, False

    def steps(self, events: list, every: int = 1) -> Iterator[int]:
        """Advance one frame at a time; yield every ``every`` frames (a reader that falls behind sees jumps)."""
        total = self.buffer.shape[-1]
        for f in range(1, total + 1):
            self.frames_ready = f
            events.append(("step", f))
            if f % every == 0:
                yield f
        self.finished = True
        yield total


def test_chunks_arrive_as_soon_as_their_frames_are_final(mono):
    ref = mono.generate_detailed(None, duration=4.0, seed=0)
    source, events, pieces = ScriptedSource(ref), [], []
    for chunk in stream_chunks(mono.engine, source, source.steps(events), 50):
        pieces.append(chunk)
        events.append(("chunk", chunk.start_sample // HOP, chunk.audio.shape[-1] // HOP, chunk.final))
    # A non-final chunk of 50 frames needs the frames its decoder holds back after it to be final: conv0's code
    # context + the post stack's overlap with the stateful graph (4), right context + cross-fade without it (13).
    need = stream_decoder(mono.engine).held_back
    chunks = [(i, e) for i, e in enumerate(events) if e[0] == "chunk"]
    assert [e[1:] for _, e in chunks] == [(0, 50, False), (50, 50, False), (100, 50, False), (150, 50, True)]
    for i, (_, start, n, _) in chunks[:-1]:
        assert events[i - 1] == ("step", start + n + need)  # yielded right after the step that made it final
    assert events[-2] == ("step", 200) and chunks[-1][0] == len(events) - 1
    check_snr(ref.audio, concat(pieces), "scripted stream vs one-shot decode, tiny mono")


@pytest.mark.parametrize("every", [7, 64, 1000])
def test_a_reader_that_falls_behind_gets_the_same_chunks(mono, every):
    ref = mono.generate_detailed(None, duration=4.0, seed=1)
    runs = []
    for lag in (1, every):
        source = ScriptedSource(ref)
        runs.append(list(stream_chunks(mono.engine, source, source.steps([], every=lag), 50)))
    steady, behind = runs
    assert [c.start_sample for c in behind] == [c.start_sample for c in steady]
    for a, b in zip(steady, behind, strict=True):
        assert a.final == b.final
        np.testing.assert_array_equal(a.audio, b.audio)  # the same bytes, not merely close


def test_cancel_returns_a_valid_shorter_clip(live_stereo):
    stop_at = 130

    def progress(done, total):
        return done < stop_at

    kwargs = dict(duration=5.0, seed=1, top_k=250, temperature=20.0)
    chunks = list(live_stereo.stream(TEXTS, chunk_seconds=0.5, progress=progress, **kwargs))
    check_chunks(chunks, 2, 2)
    audio = concat(chunks)
    assert audio.shape == (2, 2, stop_at * HOP)
    ref = live_stereo.generate_detailed(TEXTS, progress=progress, **kwargs)
    assert ref.stopped_early and ref.audio.shape == audio.shape
    check_snr(ref.audio, audio, "cancelled stream vs cancelled generate")


def test_cancel_before_the_first_frame(mono):
    chunks = list(mono.stream(None, duration=4.0, seed=0, progress=lambda done, total: False))
    assert len(chunks) == 1 and chunks[0].final and chunks[0].audio.shape == (1, 1, 0)
    result = mono.generate_detailed(None, duration=4.0, seed=0, progress=lambda done, total: False)
    assert result.stopped_early and result.audio.shape == (1, 1, 0) and result.codes.shape == (1, 4, 0)


def test_stream_with_audio_prompt(live_stereo):
    rng = np.random.default_rng(2)
    prompt = (0.2 * rng.standard_normal((1, int(1.5 * SR)))).astype(np.float32)  # mono prompt, stereo model
    kwargs = dict(duration=4.0, seed=0, do_sample=False, prompt_audio=prompt, prompt_sample_rate=SR)
    ref = live_stereo.generate_detailed(TEXTS[:1], **kwargs)
    chunks = list(live_stereo.stream(TEXTS[:1], chunk_seconds=0.5, **kwargs))
    check_chunks(chunks, 1, 2)
    assert chunks[0].audio.shape[-1] >= 0.5 * SR
    check_snr(ref.audio, concat(chunks), "stream with an audio prompt")


@pytest.mark.parametrize("chunk", [0.01, 0.0, -1.0, float("nan"), "1", True])
def test_bad_chunk_sizes(mono, chunk):
    with pytest.raises(ValueError, match="chunk_seconds must be"):
        mono.stream(None, duration=2.0, chunk_seconds=chunk)  # raised by the call, before any generation


def test_stream_validates_generation_arguments_eagerly(mono):
    with pytest.raises(ValueError, match="extend_stride"):
        mono.stream(None, duration=20.0, window=4.0, extend_stride=5.0)


@pytest.mark.parametrize("stream", [False, True])
def test_cli_long_form_stream_and_ctrl_c(exported_mono, tmp_path, stream, monkeypatch):
    """The CLI's --duration beyond the window, --stream, and Ctrl-C saving what was generated."""
    import signal

    import soundfile as sf
    from musicgen_onnx.runtime import cli

    flag = ["--stream"] if stream else []
    out = tmp_path / "long.wav"
    args = ["generate", str(exported_mono), "x", "-o", str(out), "--duration", "21", "--extend-stride", "5", "-q"]
    assert cli.main(args + flag) == 0  # the tiny model's window is 10.16 s: three windows
    audio, sr = sf.read(out, always_2d=True)
    assert sr == SR and audio.shape == (21 * SR, 1)

    original = cli.ProgressBar.__call__

    def interrupted(self, done, total):  # Ctrl-C once 120 frames are done
        if done >= 120 and not self.stop_requested:
            signal.raise_signal(signal.SIGINT)
        return original(self, done, total)

    monkeypatch.setattr(cli.ProgressBar, "__call__", interrupted)
    out = tmp_path / "stopped.wav"
    assert cli.main(["generate", str(exported_mono), "x", "-o", str(out), "--duration", "8", "-q", *flag]) == 0
    audio, _ = sf.read(out, always_2d=True)
    assert audio.shape == (120 * HOP, 1)


@pytest.fixture(params=[False, True], ids=["compact", "fixed-buffers"])
def batched_model(exported_stereo, request):
    """The model as on the CPU (compact rows) and as on a GPU (fixed buffers, what CUDA graphs replay)."""
    with MusicGen.load(exported_stereo, provider="cpu", fixed_buffers=request.param, max_batch=2) as model:
        yield model


def _wait_idle(model, timeout: float = 30.0) -> int:
    """Requests still holding decoder slots after the engine's next steps (bounded wait)."""
    deadline = time.monotonic() + timeout
    while model.batcher.active and time.monotonic() < deadline:
        time.sleep(0.01)
    return model.batcher.active


@pytest.mark.parametrize("how", ["close", "context", "cancel"])
def test_abandoned_stream_releases_its_slot(batched_model, how):
    model = batched_model
    args = dict(duration=2.0, do_sample=False, chunk_seconds=0.2)
    if how == "context":
        with model.stream(TEXTS[:1], **args) as chunks:
            first = next(chunks)
            assert model.batcher.active == 1
        assert chunks.closed
    else:
        chunks = model.stream(TEXTS[:1], **args)
        first = next(chunks)
        assert model.batcher.active == 1  # the stream is still referenced and not exhausted
        getattr(chunks, how)()
    assert first.audio.shape[-1] > 0
    assert _wait_idle(model) == 0  # its slot is free at the next step, not at garbage collection
    assert list(chunks) == []  # a closed stream yields nothing more
    expected = model.generate(TEXTS[:1], duration=2.0, do_sample=False)  # the slots serve the next request
    assert expected.shape == (1, 2, 2 * SR)


def test_exhausted_stream_releases_its_slot(batched_model):
    chunks = batched_model.stream(TEXTS[:1], duration=0.6, do_sample=False)
    assert sum(c.audio.shape[-1] for c in chunks) == round(0.6 * SR)
    assert chunks.closed and _wait_idle(batched_model) == 0
