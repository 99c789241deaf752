"""Melody decoder graph: the MusicGen-Melody decoder (no cross-attention) with a static, in-place KV cache.

MusicgenMelodyForCausalLM is a plain causal LM whose conditioning (chroma + text states) is a prefix of
the sequence: the first call feeds ``prefix`` and the decoder start column, later calls one column each
with an empty prefix (``prefix`` [B, 0, H]), so prefill and steps are one graph, as for the text models.

    input_ids [B, K, S] ─> sum_k embed_k ─┐
    prefix [B, P, H] ─────────────────────┴─ cat ─> + sinusoid[position_ids]   (position_ids [B, P + S])
        ├── x num_layers ─────────────────────────────────────────────────────────────────────────────┐
        │ LN ─> qkv ─> GroupQueryAttention(qkv, past_key.i, past_value.i, seqlens_k, total_sequence_length, │
        │                                  attention_bias)  ─> out_proj ─> +                               │
        │ LN ─> fc2(gelu(fc1)) ─> +                                                                        │
        └──────────────────────────────────────────────────────────────────────────────────────────────────┘
        LN ─> last position ─> [lm_head_0 | ... | lm_head_K-1] ─> logits [B, K, vocab]

Rows of a batch may have texts of different lengths. Unlike transformers (which pads the text and lets the
decoder attend to the padded zeros, so a batch changes each row's result), every row here computes exactly
what it computes alone: the padded prefix positions are masked by ``attention_bias`` (0 or a large negative
number per key, [B, 1, P + S, total_sequence_length]) and ``position_ids`` give each row its own sinusoid
positions (the positions it would have without padding). ``seqlens_k`` [B] int32 is the cache index of the
last input column (past + P + S - 1, all rows alike); GroupQueryAttention adds the causal mask itself.

The sinusoid table is longer than ``max_position_embeddings``: transformers extends its table on demand,
and a full window needs chroma_length + text length + max_length positions (docs/design.md §18).
"""

from __future__ import annotations

import torch
from torch import nn

FIXED_INPUT_NAMES = [
    "input_ids",
    "prefix",
    "position_ids",
    "seqlens_k",
    "total_sequence_length",
    "attention_bias",
]


def past_names(num_layers: int) -> list[str]:
    return [name for i in range(num_layers) for name in (f"past_key.{i}", f"past_value.{i}")]


def present_names(num_layers: int) -> list[str]:
    return [name for i in range(num_layers) for name in (f"present_key.{i}", f"present_value.{i}")]


def input_names(num_layers: int) -> list[str]:
    return FIXED_INPUT_NAMES + past_names(num_layers)


def output_names(num_layers: int) -> list[str]:
    return ["logits", *present_names(num_layers)]


def dynamic_axes(num_layers: int) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 2: "seq_len"},
        "prefix": {0: "batch", 1: "prefix_len"},
        "position_ids": {0: "batch", 1: "input_len"},
        "seqlens_k": {0: "batch"},
        "attention_bias": {0: "batch", 2: "input_len", 3: "total_len"},
        "logits": {0: "batch"},
    }
    axes.update({name: {0: "batch", 2: "max_len"} for name in past_names(num_layers)})
    axes.update({name: {0: "batch", 2: "max_len"} for name in present_names(num_layers)})
    return axes


def sinusoid_table(length: int, dim: int) -> torch.Tensor:
    """transformers' MusicGen sinusoidal table (tensor2tensor layout: cos half, then sin half)."""
    import transformers.models.musicgen_melody.modeling_musicgen_melody as hf

    return hf.MusicgenMelodySinusoidalPositionalEmbedding.get_embedding(length, dim).to(torch.float32)


class BiasedStaticCacheAttention(torch.autograd.Function):
    """Causal self-attention over a preallocated cache plus an additive key bias; exported as
    com.microsoft GroupQueryAttention (attention_bias input). The PyTorch forward is the reference used
    while tracing."""

    @staticmethod
    def forward(ctx, qkv, past_key, past_value, seqlens_k, total_length, bias, num_heads: int, scale: float):
        batch, seq_len, width = qkv.shape
        head_dim = width // (3 * num_heads)
        total = int(seqlens_k[0]) + 1
        past = total - seq_len
        q, k, v = (
            t.reshape(batch, seq_len, num_heads, head_dim).transpose(1, 2) for t in qkv.split(width // 3, dim=-1)
        )
        present_key, present_value = past_key.clone(), past_value.clone()
        present_key[:, :, past:total] = k
        present_value[:, :, past:total] = v
        keys, values = present_key[:, :, :total], present_value[:, :, :total]
        positions = torch.arange(past, total)
        causal = (torch.arange(total)[None, :] > positions[:, None]).to(qkv.dtype) * torch.finfo(qkv.dtype).min
        scores = torch.matmul(q, keys.transpose(2, 3)) * scale + causal + bias[..., :total]
        out = torch.matmul(torch.softmax(scores, dim=-1), values)
        return out.transpose(1, 2).reshape(batch, seq_len, width // 3), present_key, present_value

    @staticmethod
    def symbolic(g, qkv, past_key, past_value, seqlens_k, total_length, bias, num_heads: int, scale: float):
        from torch.onnx.symbolic_helper import _optional_input_placeholder_tensor

        empty = _optional_input_placeholder_tensor(g)
        out, present_key, present_value = g.op(
            "com.microsoft::GroupQueryAttention",
            qkv,
            empty,
            empty,
            past_key,
            past_value,
            seqlens_k,
            total_length,
            empty,  # cos_cache
            empty,  # sin_cache
            empty,  # position_ids (rotary only)
            bias,
            num_heads_i=num_heads,
            kv_num_heads_i=num_heads,
            scale_f=scale,
            outputs=3,
        )
        out.setType(qkv.type().with_sizes([None, None, None]))
        present_key.setType(past_key.type())
        present_value.setType(past_value.type())
        return out, present_key, present_value


class MelodyDecoderStep(nn.Module):
    def __init__(self, model: nn.Module, extra_positions: int = 0) -> None:
        """``extra_positions``: sinusoid rows beyond max_position_embeddings (the prefix's share)."""
        super().__init__()
        causal_lm = model.decoder
        decoder = causal_lm.model.decoder
        self.embed_tokens = decoder.embed_tokens
        self.layers = decoder.layers
        self.layer_norm = decoder.layer_norm
        self.num_codebooks = decoder.num_codebooks
        config = decoder.config
        self.table_length = int(config.max_position_embeddings) + int(extra_positions)
        self.register_buffer("positions", sinusoid_table(self.table_length, config.hidden_size))
        attn = self.layers[0].self_attn
        self.num_heads = attn.num_heads
        self.head_dim = attn.head_dim
        self.scale = attn.scaling
        self.hidden_size = config.hidden_size
        self.lm_heads = causal_lm.lm_heads
        self.vocab = causal_lm.lm_heads[0].weight.shape[0]

    # The fused weights are concatenated in forward, not stored (as in DecoderStaticStep): a stored copy would
    # hold every Q/K/V and lm-head weight a second time in anonymous memory at export. The exporter folds each
    # Concat (+ Transpose) into one initializer, written lazily.
    def qkv_weight(self, layer: nn.Module) -> torch.Tensor:
        attn = layer.self_attn
        return torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight], dim=0)

    def lm_weight(self) -> torch.Tensor:
        return torch.cat([head.weight for head in self.lm_heads], dim=0)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(
        self,
        input_ids: torch.Tensor,
        prefix: torch.Tensor,
        position_ids: torch.Tensor,
        seqlens_k: torch.Tensor,
        total_sequence_length: torch.Tensor,
        attention_bias: torch.Tensor,
        *past: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        batch = input_ids.shape[0]
        embeds = self.embed_tokens[0](input_ids[:, 0])
        for k in range(1, self.num_codebooks):
            embeds = embeds + self.embed_tokens[k](input_ids[:, k])
        hidden = torch.cat([prefix, embeds], dim=1) + self.positions[position_ids]

        presents: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            residual = hidden
            qkv = torch.matmul(layer.self_attn_layer_norm(hidden), self.qkv_weight(layer).t())
            attn, key, value = BiasedStaticCacheAttention.apply(
                qkv, past[2 * i], past[2 * i + 1], seqlens_k, total_sequence_length, attention_bias, self.num_heads,
                self.scale,
            )  # fmt: skip
            presents += [key, value]
            hidden = residual + layer.self_attn.out_proj(attn)
            residual = hidden
            hidden = residual + layer.fc2(layer.activation_fn(layer.fc1(layer.final_layer_norm(hidden))))

        last = self.layer_norm(hidden[:, -1])
        logits = torch.matmul(last, self.lm_weight().t()).reshape(batch, self.num_codebooks, self.vocab)
        return (logits, *presents)

    def example_inputs(
        self,
        batch: int = 2,
        seq_len: int = 3,
        prefix_len: int = 4,
        past_len: int = 0,
        max_len: int = 16,
        vocab: int = 2048,
        padded: tuple[int, int] | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Inputs for one call. ``padded`` = (start, stop): the last row's keys [start, stop) are padding
        (masked, positions shifted), as for a shorter text in a batch."""
        ids = torch.randint(0, vocab + 1, (batch, self.num_codebooks, seq_len), dtype=torch.long)
        prefix = torch.randn(batch, prefix_len, self.hidden_size)
        length = prefix_len + seq_len
        total = past_len + length
        cache_index = torch.arange(past_len, total)
        positions = cache_index[None].repeat(batch, 1)
        bias = torch.zeros(batch, 1, length, total)
        if padded is not None:
            start, stop = padded
            shifted = torch.where(cache_index >= stop, cache_index - (stop - start), cache_index)
            positions[-1] = shifted
            bias[-1, :, :, start:stop] = torch.finfo(torch.float32).min
        shape = (batch, self.num_heads, max_len, self.head_dim)
        past = [torch.randn(shape) for _ in range(2 * self.num_layers)]
        seqlens = torch.full((batch,), total - 1, dtype=torch.int32)
        return (ids, prefix, positions, seqlens, torch.tensor(total, dtype=torch.int32), bias, *past)
