"""Stateful EnCodec decoder graph: one chunk of a stream per call, the LSTM state carried between calls.

EnCodec's decoder is ``conv0 (kernel k) -> LSTM (+ skip) -> post stack (ELU, ConvTranspose, residual units,
conv)``. Only the LSTM reaches far back; the convolutions see a few frames each side (docs/design.md §10). So
a stream decodes each chunk once, carrying what crosses the chunk boundary:

    codes [N, Q, pad + n + pad]        the n new frames with conv0's context each side (``pad`` = (k - 1) / 2;
                                       at the clip's edges the runtime reflects the codes, which is what the
                                       one-shot decode's reflect padding of the embeddings computes)
      ─> sum_q codebook_q ─> conv0 (no padding) ─> [N, D, n]
      ─> LSTM from (lstm_h, lstm_c) [layers, N, D] ─> + skip ─> latent [N, D, n], new lstm_h / lstm_c
    context [N, D, P] ++ latent ─> post stack (its own reflect padding at the window's edges)
      ─> audio_values [N, 1, hop * (P + n)]

``context`` is the previous calls' last ``P`` latent frames (none at the start of a clip). The post stack's
window edges are wrong wherever the window is not the clip's edge; the runtime crops the frames that reach
(``runtime/codec_stream.py``), so the emitted audio equals the one-shot decode up to float rounding.
"""

from __future__ import annotations

import torch
from torch import nn

from .encodec_layers import TraceableStack

INPUT_NAMES = ["audio_codes", "lstm_h", "lstm_c", "context"]
OUTPUT_NAMES = ["audio_values", "lstm_h_out", "lstm_c_out", "latent"]
DYNAMIC_AXES = {
    "audio_codes": {0: "batch", 2: "code_frames"},
    "lstm_h": {1: "batch"},
    "lstm_c": {1: "batch"},
    "context": {0: "batch", 2: "context_frames"},
    "audio_values": {0: "batch", 2: "samples"},
    "lstm_h_out": {1: "batch"},
    "lstm_c_out": {1: "batch"},
    "latent": {0: "batch", 2: "frames"},
}


def supports_stateful(model: nn.Module) -> bool:
    """Whether the codec's decoder is the shape this graph assumes: non-causal, weight-normed convolutions
    (no time GroupNorm, which would couple every frame of a clip), conv0 -> LSTM -> the rest."""
    from transformers.models.encodec.modeling_encodec import EncodecConv1d, EncodecLSTM

    codec = model.audio_encoder
    cfg = codec.config
    layers = codec.decoder.layers
    return (
        not cfg.use_causal_conv
        and cfg.norm_type == "weight_norm"
        and isinstance(layers[0], EncodecConv1d)
        and isinstance(layers[1], EncodecLSTM)
        and int(layers[0].conv.stride[0]) == 1
        and int(layers[0].conv.kernel_size[0]) % 2 == 1
    )


class EncodecDecodeStateful(nn.Module):
    """transformers' EnCodec decoder split at its LSTM, with the LSTM state as inputs and outputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if not supports_stateful(model):
            raise ValueError("the stateful EnCodec graph needs a non-causal, weight-normed decoder (conv0, LSTM, ...)")
        codec = model.audio_encoder
        self.quantizer = codec.quantizer
        layers = codec.decoder.layers
        self.conv0 = layers[0].conv  # the weight-normed nn.Conv1d: padding is done by the runtime (codes)
        self.lstm = layers[1].lstm  # transformers' EncodecLSTM adds its input to the LSTM output (skip)
        self.post = TraceableStack(layers[2:])
        self.num_quantizers = codec.quantizer.get_num_quantizers_for_bandwidth(codec.config.target_bandwidths[0])
        dilation = int(self.conv0.dilation[0])
        #: conv0's frames of context each side
        self.pad = (int(self.conv0.kernel_size[0]) - 1) * dilation // 2
        self.num_layers = self.lstm.num_layers
        self.hidden = self.lstm.hidden_size
        self._reach: tuple[int, int] | None = None

    def forward(
        self, audio_codes: torch.Tensor, lstm_h: torch.Tensor, lstm_c: torch.Tensor, context: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        embeddings = self.quantizer.decode(audio_codes.transpose(0, 1))
        x = self.conv0(embeddings).permute(2, 0, 1)  # [n, N, D]
        out, (h, c) = self.lstm(x, (lstm_h, lstm_c))
        latent = (out + x).permute(1, 2, 0)  # [N, D, n]
        audio = self.post(torch.cat([context, latent], dim=-1))
        return audio, h, c, latent

    def post_stack_reach(self, frames: int = 15) -> tuple[int, int]:
        """Latent frames before and after a latent frame whose output audio it changes: the overlap a chunk
        needs each side so its emitted frames never see the window's edges. Measured by perturbing the
        middle frame of random latents (convolutions only, so the reach does not depend on the weights'
        values; outside it the outputs are bit-identical)."""
        if self._reach is None:
            self._reach = self._measure_reach(frames)
        return self._reach

    def _measure_reach(self, frames: int) -> tuple[int, int]:
        hop = 1
        for layer in self.post.layers:
            inner = getattr(getattr(layer, "inner", layer), "conv", None)  # a traceable wrapper holds the layer
            if isinstance(inner, nn.ConvTranspose1d):
                hop *= int(inner.stride[0])
        generator = torch.Generator().manual_seed(0)
        latent = torch.randn(1, self.hidden, frames, generator=generator)
        j = frames // 2
        changed = latent.clone()
        changed[..., j] += torch.randn(self.hidden, generator=generator)
        with torch.no_grad():
            diff = (self.post(changed) - self.post(latent)).abs().reshape(frames, hop).amax(dim=1)
        hit = torch.nonzero(diff > 0).flatten()
        if hit.numel() == 0 or hit.min() == 0 or hit.max() == frames - 1:
            raise ValueError(f"the EnCodec post-LSTM stack reaches {frames // 2} frames or more: measure it wider")
        return j - int(hit.min()), int(hit.max()) - j

    def example_inputs(
        self, batch: int = 2, frames: int = 9, context: int = 4
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        size = self.quantizer.codebook_size
        codes = torch.randint(0, size, (batch, self.num_quantizers, frames + 2 * self.pad), dtype=torch.long)
        state = (torch.randn(self.num_layers, batch, self.hidden) * 0.1 for _ in range(2))
        return (codes, *state, torch.randn(batch, self.hidden, context))
