"""Cross-attention K/V graph: run once per prompt, not once per decoding step.

    encoder_hidden_states [B, T, H] ──┬─> layer 0 encoder_attn.k_proj ─> cross_key.0   [B, nh, T, hd]
                                      ├─> layer 0 encoder_attn.v_proj ─> cross_value.0 [B, nh, T, hd]
                                      └─> ... for every decoder layer

The projections have no bias, so zero hidden states (CFG's unconditional half) give zero K/V and the
runtime may build those halves itself.
"""

from __future__ import annotations

import torch
from torch import nn

INPUT_NAMES = ["encoder_hidden_states"]


def output_names(num_layers: int) -> list[str]:
    names = []
    for i in range(num_layers):
        names += [f"cross_key.{i}", f"cross_value.{i}"]
    return names


def dynamic_axes(num_layers: int) -> dict[str, dict[int, str]]:
    axes = {"encoder_hidden_states": {0: "batch", 1: "text_len"}}
    for name in output_names(num_layers):
        axes[name] = {0: "batch", 2: "text_len"}
    return axes


class CrossKV(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        layers = model.decoder.model.decoder.layers
        self.k_projs = nn.ModuleList([layer.encoder_attn.k_proj for layer in layers])
        self.v_projs = nn.ModuleList([layer.encoder_attn.v_proj for layer in layers])
        self.num_heads = layers[0].encoder_attn.num_heads
        self.head_dim = layers[0].encoder_attn.head_dim

    @property
    def num_layers(self) -> int:
        return len(self.k_projs)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs: list[torch.Tensor] = []
        for k_proj, v_proj in zip(self.k_projs, self.v_projs, strict=True):
            outputs.append(self._heads(k_proj(encoder_hidden_states)))
            outputs.append(self._heads(v_proj(encoder_hidden_states)))
        return tuple(outputs)
