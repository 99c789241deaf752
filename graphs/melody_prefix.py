"""Melody prefix graph: text states + one-hot chromagram -> the decoder's conditioning prefix.

    chroma [B, F, 12] one-hot ──> audio_enc_to_dec_proj ──> frame i % F for i < chroma_length ──┐
    encoder_hidden_states [B, T, H] (text encoder output, already x mask) ───────────────────────┴─> cat
                                                               └──> prefix [B, chroma_length + T, H]

This is what MusicgenMelodyForConditionalGeneration builds before its first decoder call: the chroma
frames are projected, repeated ceil(chroma_length / F) times and cut to ``chroma_length`` (frame i of the
result is frame i % F, which is also the plain cut when F >= chroma_length), then placed before the text
states. Run once per prompt (and per long-form window, whose melody slice differs).
"""

from __future__ import annotations

import torch
from torch import nn

INPUT_NAMES = ["encoder_hidden_states", "chroma"]
OUTPUT_NAMES = ["prefix"]
DYNAMIC_AXES = {
    "encoder_hidden_states": {0: "batch", 1: "text_len"},
    "chroma": {0: "batch", 1: "chroma_frames"},
    "prefix": {0: "batch", 1: "prefix_len"},
}


class MelodyPrefix(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.proj = getattr(model, "audio_enc_to_dec_proj", None)
        self.chroma_length = int(model.config.chroma_length)
        self.num_chroma = int(model.config.num_chroma)
        self.hidden_size = int(model.decoder.config.hidden_size)

    def forward(self, encoder_hidden_states: torch.Tensor, chroma: torch.Tensor) -> torch.Tensor:
        audio = self.proj(chroma) if self.proj is not None else chroma
        index = torch.arange(self.chroma_length, device=chroma.device) % chroma.shape[1]
        return torch.cat([audio.index_select(1, index), encoder_hidden_states], dim=1)

    def example_inputs(self, batch: int = 2, text_len: int = 5, frames: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
        states = torch.randn(batch, text_len, self.hidden_size)
        chroma = torch.nn.functional.one_hot(torch.randint(0, self.num_chroma, (batch, frames)), self.num_chroma)
        return states, chroma.to(torch.float32)
