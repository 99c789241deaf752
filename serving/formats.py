"""Audio on the wire: 16-bit PCM in a WAV or FLAC file, raw PCM, MP3, Ogg Opus, and the WAV header of a stream.

numpy + soundfile (libsndfile, which writes MP3 through LAME and Opus through libopus: no ffmpeg), so the
encoding is tested without a server. The lossless formats carry the same int16 samples (``to_pcm16``), which
is what makes a streamed clip byte-identical to the same clip sent whole. MP3 and Opus are encoded from those
samples once the clip is whole: their frames and headers need the whole clip, so they are never streamed.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import soundfile as sf
from musicgen_onnx.runtime.audio import resample

__all__ = [
    "FORMATS",
    "OPUS_RATES",
    "STREAMABLE",
    "WAV_HEADER_BYTES",
    "content_type",
    "encode",
    "file_rate",
    "to_pcm16",
    "wav_stream_header",
]

#: response_format values and their media types.
FORMATS: dict[str, str] = {
    "wav": "audio/wav",
    "flac": "audio/flac",
    "pcm": "audio/L16",
    "mp3": "audio/mpeg",
    "opus": "audio/ogg;codecs=opus",
}
#: formats that can be sent while the clip is generated (FLAC, MP3 and Opus are encoded from the whole clip).
STREAMABLE = ("wav", "pcm")
#: the only rates libopus encodes; other rates are resampled to 48 kHz (Opus's own rate) with soxr.
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
WAV_HEADER_BYTES = 44
_OPEN = 0xFFFFFFFF  # RIFF / data sizes of a stream whose length is not known yet


def content_type(fmt: str, sampling_rate: int, channels: int) -> str:
    if fmt == "pcm":  # RFC 2586: the rate and channels travel in the media type
        return f"audio/L16;rate={sampling_rate};channels={channels};endianness=little-endian"
    return FORMATS[fmt]


def file_rate(fmt: str, sampling_rate: int) -> int:
    """The sample rate of a ``fmt`` file made from ``sampling_rate`` audio: the model's, except Opus, which
    has no 32 kHz mode (MusicGen's rate) and is written at 48 kHz."""
    if fmt == "opus" and sampling_rate not in OPUS_RATES:
        return 48000
    return sampling_rate


def to_pcm16(audio: np.ndarray) -> bytes:
    """[channels, n] float32 in [-1, 1] -> interleaved little-endian int16 (clipped, rounded)."""
    pcm = np.clip(np.round(np.asarray(audio, np.float32) * 32767.0), -32768, 32767).astype("<i2")
    return np.ascontiguousarray(pcm.T).tobytes()


def wav_stream_header(sampling_rate: int, channels: int) -> bytes:
    """A 44-byte PCM WAV header with open sizes (0xFFFFFFFF), as streaming encoders write before the length is
    known; players and libsndfile read up to the end of the data."""
    block = 2 * channels
    return (
        b"RIFF"
        + struct.pack("<I", _OPEN)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, sampling_rate, sampling_rate * block, block, 16)
        + b"data"
        + struct.pack("<I", _OPEN)
    )


def encode(pcm: bytes, fmt: str, sampling_rate: int, channels: int) -> bytes:
    """A whole clip (interleaved int16 ``pcm``) as a file of ``fmt``."""
    if fmt == "pcm":
        return pcm
    if fmt == "wav":  # the stream's header with the sizes filled in: the same bytes after the header
        header = bytearray(wav_stream_header(sampling_rate, channels))
        header[4:8] = struct.pack("<I", 36 + len(pcm))
        header[40:44] = struct.pack("<I", len(pcm))
        return bytes(header) + pcm
    if fmt == "flac":
        samples = np.frombuffer(pcm, "<i2").reshape(-1, channels)
        out = io.BytesIO()
        sf.write(out, samples, sampling_rate, format="FLAC", subtype="PCM_16")
        return out.getvalue()
    if fmt == "mp3":  # MPEG-1 Layer III has 32 kHz; LAME's default VBR quality
        # as float: libsndfile 1.2.2's MP3 writer garbles int16 input (a noise floor ~0.17 RMS, measured), not float
        samples = np.frombuffer(pcm, "<i2").reshape(-1, channels).astype(np.float32) / 32768.0
        out = io.BytesIO()
        sf.write(out, samples, sampling_rate, format="MP3", subtype="MPEG_LAYER_III")
        return out.getvalue()
    if fmt == "opus":
        rate = file_rate(fmt, sampling_rate)
        samples = np.frombuffer(pcm, "<i2").reshape(-1, channels).astype(np.float32) / 32768.0
        if rate != sampling_rate:
            samples = resample(samples.T, sampling_rate, rate).T
        out = io.BytesIO()
        sf.write(out, np.clip(samples, -1.0, 1.0), rate, format="OGG", subtype="OPUS")
        return out.getvalue()
    raise ValueError(f"response_format must be one of {', '.join(FORMATS)}, got {fmt!r}")
