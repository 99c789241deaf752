"""EnCodec encoder graph: mono audio to codes, for audio prompts.

    audio [N, 1, L] ─> SEANet encoder ─> residual VQ (bandwidth = target_bandwidths[0]) ─> codes [N, Q, F]

F = ceil(L / hop). Stereo prompts are encoded one channel at a time and the code rows interleaved
(left, right, left, ...) by the runtime, as transformers' generate does.
"""

from __future__ import annotations

import torch
from torch import nn

from .encodec_layers import TraceableStack

INPUT_NAMES = ["audio_values"]
OUTPUT_NAMES = ["audio_codes"]
DYNAMIC_AXES = {"audio_values": {0: "batch", 2: "samples"}, "audio_codes": {0: "batch", 2: "frames"}}


class EncodecEncode(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        codec = model.audio_encoder
        self.encoder = TraceableStack(codec.encoder.layers)
        self.quantizer = codec.quantizer
        self.bandwidth = codec.config.target_bandwidths[0]

    def forward(self, audio_values: torch.Tensor) -> torch.Tensor:
        embeddings = self.encoder(audio_values)
        return self.quantizer.encode(embeddings, self.bandwidth).transpose(0, 1)

    @staticmethod
    def example_inputs(batch: int = 2, samples: int = 640 * 9 + 123) -> tuple[torch.Tensor]:
        return (torch.randn(batch, 1, samples) * 0.1,)
