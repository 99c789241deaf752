"""Streaming EnCodec decode with carried state: every code frame goes through the LSTM once.

The stateful graph (role ``encodec_stream``, ``graphs/encodec_stream.py``) runs EnCodec's decoder on a chunk of
new frames from the LSTM state the previous chunk left, and re-runs only the post-LSTM convolutions over a small
overlap. For each (clip, channel) sequence the decoder keeps:

    lstm_h, lstm_c [layers, D]        after the LSTM consumed latent frames [0, done)
    context [D, <= left + right]      the latent frames just before ``done``: the post stack's overlap

A step with ``ready`` final code frames advances the LSTM to ``done' = ready - code_context`` (conv0 needs that
many later frames; at the end of a clip, ``ready`` itself, the codes reflected as the one-shot decode's padding
reflects the embeddings) and emits the audio of frames [emitted, done' - right_context): frames far enough from
the window's edges that the window's padding does not reach them. So the audio equals the one-shot decode up
to float rounding (measured and bounds in docs/design.md §10), and a chunk holds back only
``code_context + right_context`` frames (4 at MusicGen's EnCodec) instead of the overlap path's 13.

Deterministic given the codes and the ``ready`` of each step, which streaming derives from the codes alone.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .generation import split_channels
from .manifest import CodecStreamSpec

__all__ = ["StatefulStreamDecoder"]

#: ``run(feeds) -> [audio_values, lstm_h_out, lstm_c_out, latent]``: one call of the stateful graph.
RunGraph = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


class StatefulStreamDecoder:
    """Decodes a growing code sequence into consecutive audio pieces, carrying EnCodec's state between steps.

    The same interface as ``streaming.StreamDecoder``: ``step(codes, ready)`` whenever more frames are final,
    ``step(codes, total, final=True)`` at the end; ``held_back`` frames after a chunk must be final before it
    can be emitted. ``one_shot`` (codes -> audio) decodes a clip too short for conv0's reflect padding
    (at most ``code_context`` frames), where transformers zero-extends first.

    Sequences (clip b, channel c) are decoded together, at most ``call_frames`` frames per graph call (as
    ``Engine.decode_codes`` batches them); each keeps its own LSTM state and context.
    """

    def __init__(
        self,
        run: RunGraph,
        one_shot: Callable[[np.ndarray], np.ndarray],
        spec: CodecStreamSpec,
        hop: int,
        channels: int,
        call_frames: int,
        lstm_shape: tuple[int, int],
    ) -> None:
        self.run = run
        self.one_shot = one_shot
        self.spec = spec
        self.hop = int(hop)
        self.channels = int(channels)
        self.call_frames = int(call_frames)
        self.lstm_layers, self.hidden = (int(n) for n in lstm_shape)
        self.emitted = 0  # frames whose audio has been returned
        self.done = 0  # latent frames the LSTM has consumed
        self._h: np.ndarray | None = None  # [layers, sequences, D]
        self._c: np.ndarray | None = None
        self._context: np.ndarray | None = None  # [sequences, D, <= left + right]

    @property
    def held_back(self) -> int:
        """Frames after the last emitted one that must be final before a non-final step emits it."""
        return self.spec.code_context + self.spec.right_context

    def available(self, ready: int) -> int:
        """Frames a non-final ``step`` could return now, with ``ready`` frames final."""
        return max(0, ready - self.held_back - self.emitted)

    def step(self, codes: np.ndarray, ready: int, *, final: bool = False) -> np.ndarray:
        """Audio [B, channels, n] of frames [emitted, end): end = ready at the end, else ready - held_back."""
        batch = codes.shape[0]
        pad = self.spec.code_context
        if final and self.done == 0 and ready <= pad:  # too short to reflect: transformers zero-extends
            self.emitted = ready
            if ready == 0:
                return np.zeros((batch, self.channels, 0), np.float32)
            return np.asarray(self.one_shot(codes[..., :ready]), dtype=np.float32)
        done = ready if final else ready - pad
        end = ready if final else done - self.spec.right_context
        if done <= self.done:  # nothing new (or the end was already decoded)
            return np.zeros((batch, self.channels, 0), np.float32)
        window = self._codes_window(codes, done, ready, final)
        start = self.done - (0 if self._context is None else self._context.shape[-1])  # the window's first frame
        audio = self._decode(window, done - self.done)
        self.done = done
        lo, hi = (self.emitted - start) * self.hop, (max(end, self.emitted) - start) * self.hop
        self.emitted = max(end, self.emitted)
        return np.ascontiguousarray(audio[..., lo:hi])

    def _codes_window(self, codes: np.ndarray, done: int, ready: int, final: bool) -> np.ndarray:
        """Code frames [self.done - pad, done + pad), reflected about frame 0 and, at the end, the last frame."""
        pad = self.spec.code_context
        index = np.arange(self.done - pad, done + pad)
        index = np.where(index < 0, -index, index)
        if final:
            index = np.where(index >= ready, 2 * (ready - 1) - index, index)
        return np.asarray(codes, dtype=np.int64)[..., index]

    def _decode(self, window: np.ndarray, frames: int) -> np.ndarray:
        """Run every (clip, channel) sequence through the graph; audio [B, channels, hop * (context + frames)]."""
        parts = split_channels(window, self.channels)
        batch = window.shape[0]
        sequences = batch * len(parts)
        if self._h is None:
            self._h = np.zeros((self.lstm_layers, sequences, self.hidden), np.float32)
            self._c = np.zeros_like(self._h)
            self._context = np.zeros((sequences, self.hidden, 0), np.float32)
        elif self._h.shape[1] != sequences:
            raise ValueError(f"a stream's batch is fixed: {self._h.shape[1]} sequences, got {sequences}")
        stacked = np.stack([parts[c][b] for b in range(batch) for c in range(len(parts))])  # row = b * ch + c
        context = self._context
        width = context.shape[-1] + frames
        audio = np.empty((sequences, self.hop * width), np.float32)
        latent = np.empty((sequences, self.hidden, frames), np.float32)
        per_call = max(1, self.call_frames // max(width, 1))
        for first in range(0, sequences, per_call):
            rows = slice(first, min(sequences, first + per_call))
            feeds = {
                "audio_codes": np.ascontiguousarray(stacked[rows]),
                "lstm_h": np.ascontiguousarray(self._h[:, rows]),
                "lstm_c": np.ascontiguousarray(self._c[:, rows]),
                "context": np.ascontiguousarray(context[rows]),
            }
            out, h, c, lat = self.run(feeds)
            audio[rows] = out[:, 0]
            self._h[:, rows], self._c[:, rows], latent[rows] = h, c, lat
        keep = self.spec.left_context + self.spec.right_context
        self._context = np.concatenate([context, latent], axis=-1)[..., max(0, width - keep) :].copy()
        return audio.reshape(batch, len(parts), -1)
