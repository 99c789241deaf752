"""Decoder graph: one KV-cached step of the MusicGen decoder; prefill and single steps alike.

    input_ids [B, K, S] ─> sum_k embed_k(ids[:, k]) + sinusoid[past_len : past_len + S]
                                   │
             ┌──── x num_layers ───┴──────────────────────────────────────────────────────┐
             │ LN ─> self-attn(q; cat(past_key.i, k), cat(past_value.i, v); causal)  ─> +  │
             │ LN ─> cross-attn(q; cross_key.i, cross_value.i; encoder_attention_mask) ─> + │
             │ LN ─> fc2(gelu(fc1)) ─> +                                                    │
             └──────────────────────┬───────────────────────────────────────────────────────┘
                                    LN ─> last position ─> lm_head_k ─> logits [B, K, vocab]
                                    present_key.i / present_value.i = the concatenated K/V

The past length is read from the shape of past_key.0, so an empty past (length 0) is a prefill.
Only the logits of the last position leave the graph: generation never needs the others, and the
[B, K, S, 2048] tensor would dominate prefill time. The layers' own submodules are called, so the
weights (and the arithmetic) are transformers' own.
"""

from __future__ import annotations

import torch
from torch import nn

from .cross_attention import CrossAttention, attention

FIXED_INPUT_NAMES = ["input_ids", "encoder_attention_mask"]


def cross_names(num_layers: int) -> list[str]:
    return [name for i in range(num_layers) for name in (f"cross_key.{i}", f"cross_value.{i}")]


def past_names(num_layers: int) -> list[str]:
    return [name for i in range(num_layers) for name in (f"past_key.{i}", f"past_value.{i}")]


def present_names(num_layers: int) -> list[str]:
    return [name for i in range(num_layers) for name in (f"present_key.{i}", f"present_value.{i}")]


def input_names(num_layers: int, fixed: list[str] = FIXED_INPUT_NAMES) -> list[str]:
    return fixed + cross_names(num_layers) + past_names(num_layers)


def output_names(num_layers: int) -> list[str]:
    return ["logits", *present_names(num_layers)]


def dynamic_axes(
    num_layers: int, past_axis: str = "past_len", present_axis: str = "total_len"
) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 2: "seq_len"},
        "encoder_attention_mask": {0: "batch", 1: "text_len"},
        "logits": {0: "batch"},
    }
    axes.update({name: {0: "batch", 2: "text_len"} for name in cross_names(num_layers)})
    axes.update({name: {0: "batch", 2: past_axis} for name in past_names(num_layers)})
    axes.update({name: {0: "batch", 2: present_axis} for name in present_names(num_layers)})
    return axes


class DecoderStep(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        causal_lm = model.decoder
        decoder = causal_lm.model.decoder
        self.embed_tokens = decoder.embed_tokens
        self.layers = decoder.layers
        self.layer_norm = decoder.layer_norm
        self.lm_heads = causal_lm.lm_heads
        max_positions = decoder.config.max_position_embeddings
        self.register_buffer("positions", decoder.embed_positions.weights[:max_positions].clone())
        attn = self.layers[0].self_attn
        self.num_heads = attn.num_heads
        self.head_dim = attn.head_dim
        self.scale = attn.scaling
        self.num_codebooks = decoder.num_codebooks

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, length, _ = x.shape
        return x.transpose(1, 2).reshape(batch, length, self.num_heads * self.head_dim)

    # ---- pieces shared with the static-cache variant -------------------------------------------------
    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = self.embed_tokens[0](input_ids[:, 0])
        for k in range(1, self.num_codebooks):
            hidden = hidden + self.embed_tokens[k](input_ids[:, k])
        if positions.dim() == 1:  # one position per column, shared by every row
            return hidden + self.positions.index_select(0, positions)
        flat = self.positions.index_select(0, positions.reshape(-1))  # [B * S, H]: each row its own
        return hidden + flat.reshape(positions.shape[0], positions.shape[1], -1)

    @staticmethod
    def cross_mask(encoder_attention_mask: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The text's key padding mask (int32, as MultiHeadAttention takes it), and a 0/1 factor for rows
        that have no text at all.

        A row with no text (CFG's unconditional half) attends to nothing: its output is 0, as in
        transformers, rather than softmax's average over masked keys.
        """
        has_text = (encoder_attention_mask.sum(dim=1) > 0).to(dtype)[:, None, None]
        return encoder_attention_mask.to(torch.int32), has_text

    def cross_and_ffn(self, layer, hidden, cross_key, cross_value, text_mask, has_text) -> torch.Tensor:
        residual = hidden
        q = layer.encoder_attn.q_proj(layer.encoder_attn_layer_norm(hidden))
        attn = CrossAttention.apply(q, cross_key, cross_value, text_mask, self.num_heads, self.scale) * has_text
        hidden = residual + layer.encoder_attn.out_proj(attn)
        residual = hidden
        x = layer.activation_fn(layer.fc1(layer.final_layer_norm(hidden)))
        return residual + layer.fc2(x)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        last = self.layer_norm(hidden[:, -1])
        return torch.stack([head(last) for head in self.lm_heads], dim=1)

    def forward(
        self, input_ids: torch.Tensor, encoder_attention_mask: torch.Tensor, *cache: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        n = self.num_layers
        cross, past = cache[: 2 * n], cache[2 * n :]
        seq_len = input_ids.shape[2]
        past_len = past[0].shape[2]
        positions = torch.arange(seq_len, device=input_ids.device) + past_len
        hidden = self.embed(input_ids, positions)

        key_positions = torch.arange(seq_len + past_len, device=input_ids.device)
        causal = (key_positions[None, :] > positions[:, None]).to(hidden.dtype) * torch.finfo(hidden.dtype).min
        causal = causal[None, None]
        text_mask, has_text = self.cross_mask(encoder_attention_mask, hidden.dtype)

        presents: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            residual = hidden
            x = layer.self_attn_layer_norm(hidden)
            q = self._heads(layer.self_attn.q_proj(x))
            k = torch.cat([past[2 * i], self._heads(layer.self_attn.k_proj(x))], dim=2)
            v = torch.cat([past[2 * i + 1], self._heads(layer.self_attn.v_proj(x))], dim=2)
            presents += [k, v]
            hidden = residual + layer.self_attn.out_proj(self._merge(attention(q, k, v, causal, self.scale)))
            hidden = self.cross_and_ffn(layer, hidden, cross[2 * i], cross[2 * i + 1], text_mask, has_text)
        return (self.head(hidden), *presents)

    def example_inputs(
        self, batch: int = 2, seq_len: int = 3, past_len: int = 2, text_len: int = 5, vocab: int = 2048
    ) -> tuple[torch.Tensor, ...]:
        ids = torch.randint(0, vocab + 1, (batch, self.num_codebooks, seq_len), dtype=torch.long)
        mask = torch.ones(batch, text_len, dtype=torch.long)
        mask[-1, text_len // 2 :] = 0
        kv = (batch, self.num_heads, text_len, self.head_dim)
        cross = [torch.randn(kv) for _ in range(2 * self.num_layers)]
        pkv = (batch, self.num_heads, past_len, self.head_dim)
        past = [torch.randn(pkv) for _ in range(2 * self.num_layers)]
        return (ids, mask, *cross, *past)
