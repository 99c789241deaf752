"""EnCodec decoder graph: one mono channel's codes to audio.

    codes [N, Q, F] ─> sum_q codebook_q[codes[:, q]] ─> SEANet decoder ─> audio [N, 1, hop * F]

Stereo models call it twice (left = even codebook rows, right = odd) with the batch stacked, as
transformers' generate does. The codec's audio scales are None for MusicGen (normalize=False).
"""

from __future__ import annotations

import torch
from torch import nn

from .encodec_layers import TraceableStack

INPUT_NAMES = ["audio_codes"]
OUTPUT_NAMES = ["audio_values"]
DYNAMIC_AXES = {"audio_codes": {0: "batch", 2: "frames"}, "audio_values": {0: "batch", 2: "samples"}}


class EncodecDecode(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        codec = model.audio_encoder
        self.quantizer = codec.quantizer
        self.decoder = TraceableStack(codec.decoder.layers)
        self.num_quantizers = codec.quantizer.get_num_quantizers_for_bandwidth(codec.config.target_bandwidths[0])

    def forward(self, audio_codes: torch.Tensor) -> torch.Tensor:
        embeddings = self.quantizer.decode(audio_codes.transpose(0, 1))
        return self.decoder(embeddings)

    def example_inputs(self, batch: int = 2, frames: int = 9) -> tuple[torch.Tensor]:
        size = self.quantizer.codebook_size
        return (torch.randint(0, size, (batch, self.num_quantizers, frames), dtype=torch.long),)
