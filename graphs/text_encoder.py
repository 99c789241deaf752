"""Text encoder graph: T5 encoder -> projection to the decoder width -> zero the padded positions.

    input_ids [B, T] ──> T5 encoder ──> enc_to_dec_proj (if widths differ) ──> x mask[..., None]
    attention_mask [B, T] ─────┴───────────────────────────────────────────────────┘
                                                  └──> encoder_hidden_states [B, T, H_dec]

The multiply by the mask is what MusicgenForConditionalGeneration.forward does; it makes padded
positions (and the unconditional CFG half) contribute exactly zero cross-attention keys and values.
"""

from __future__ import annotations

import torch
from torch import nn

INPUT_NAMES = ["input_ids", "attention_mask"]
OUTPUT_NAMES = ["encoder_hidden_states"]
DYNAMIC_AXES = {
    "input_ids": {0: "batch", 1: "text_len"},
    "attention_mask": {0: "batch", 1: "text_len"},
    "encoder_hidden_states": {0: "batch", 1: "text_len"},
}


class TextEncoder(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder = model.text_encoder
        self.proj = getattr(model, "enc_to_dec_proj", None)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.proj is not None:
            hidden = self.proj(hidden)
        return hidden * attention_mask[..., None].to(hidden.dtype)

    @staticmethod
    def example_inputs(batch: int = 2, length: int = 7, vocab: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(3, vocab, (batch, length), dtype=torch.long)
        mask = torch.ones(batch, length, dtype=torch.long)
        mask[-1, length // 2 :] = 0
        return ids, mask
