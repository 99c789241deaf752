"""Decoder graph with a static, in-place KV cache (onnxruntime's GroupQueryAttention).

Same computation as ``decoder.py``, but the self-attention cache is a preallocated buffer of the
generation's full length, and the attention length is an input:

    input_ids [B, K, S], position_ids [B, S] int64, total_sequence_length int32 (host)
        │  embed + sinusoid[position_ids]          seqlens_k [B] = position_ids[:, -1] (each row its own)
        ├── x num_layers ─────────────────────────────────────────────────────────────────────────┐
        │ LN ─> qkv = x @ [Wq|Wk|Wv] ─> GroupQueryAttention(qkv, past_key.i, past_value.i,         │
        │                                seqlens_k, total_sequence_length)                        │
        │        writes K/V rows position_ids of the buffers, attends causally up to seqlens_k       │
        │ LN ─> cross-attn ─> LN ─> FFN   (as decoder.py)                                           │
        └────────────────────────────────────────────────────────────────────────────────────────────┘
        LN ─> last position ─> [lm_head_0 | ... | lm_head_K-1] ─> logits [B, K, vocab]

Bind the same OrtValue as ``past_key.i`` input and ``present_key.i`` output (IOBinding) and the
cache is updated in place: a step's cost no longer includes copying the whole cache (docs/design.md §6).
This graph is traced and validated with a float cache; ``--kv-cache static-int8`` then rewrites its
GroupQueryAttention nodes to keep the cache in int8 with calibrated scales (``export.kv_quant``).
Q/K/V projections and the K lm_heads are each fused into one matrix multiply.

Positions are per row (manifest format 3) so that rows at different points of their generation share one
step: a continuous-batching engine puts requests that joined at different times in one batch, and each row
writes its K/V at its own position and attends over its own length only (docs/design.md §17).

Why these inputs: the graph must be capturable as a CUDA graph (static shapes, every compute node on
the CUDA EP, no host<->device copies inside). Positions therefore arrive as a device tensor rather than
being computed from shapes on the host, and ``total_sequence_length`` (a host-memory input of
GroupQueryAttention) is fed directly: ``position_ids[-1] + 1`` for a prefill, and for a single-token step
any value up to the buffer length (CUDA-graph replays pass the buffer length, so it never changes).
``export.cuda_graph_check`` verifies the placement rules on the exported graph.
"""

from __future__ import annotations

import torch
from torch import nn

from . import decoder
from .decoder import DecoderStep

FIXED_INPUT_NAMES = ["input_ids", "encoder_attention_mask", "position_ids", "total_sequence_length"]


def input_names(num_layers: int) -> list[str]:
    return decoder.input_names(num_layers, FIXED_INPUT_NAMES)


def dynamic_axes(num_layers: int) -> dict[str, dict[int, str]]:
    """Past and present are the same preallocated buffers: one ``max_len`` axis for both."""
    axes = decoder.dynamic_axes(num_layers, past_axis="max_len", present_axis="max_len")
    axes["position_ids"] = {0: "batch", 1: "seq_len"}
    return axes


output_names = decoder.output_names


class StaticCacheAttention(torch.autograd.Function):
    """Causal self-attention over a preallocated cache; exported as com.microsoft GroupQueryAttention."""

    @staticmethod
    def forward(ctx, qkv, past_key, past_value, seqlens_k, total_length, num_heads: int, scale: float):
        batch, seq_len, width = qkv.shape
        head_dim = width // (3 * num_heads)
        q, k, v = (
            t.reshape(batch, seq_len, num_heads, head_dim).transpose(1, 2) for t in qkv.split(width // 3, dim=-1)
        )
        present_key, present_value = past_key.clone(), past_value.clone()
        rows = []
        for b in range(batch):  # each row its own length, read from seqlens_k as GQA does
            total = int(seqlens_k[b]) + 1
            past = total - seq_len
            present_key[b, :, past:total] = k[b]
            present_value[b, :, past:total] = v[b]
            keys, values = present_key[b : b + 1, :, :total], present_value[b : b + 1, :, :total]
            positions = torch.arange(past, total)
            causal = (torch.arange(total)[None, :] > positions[:, None]).to(qkv.dtype) * torch.finfo(qkv.dtype).min
            scores = torch.matmul(q[b : b + 1], keys.transpose(2, 3)) * scale + causal
            rows.append(torch.matmul(torch.softmax(scores, dim=-1), values))
        out = torch.cat(rows, dim=0)
        return out.transpose(1, 2).reshape(batch, seq_len, width // 3), present_key, present_value

    @staticmethod
    def symbolic(g, qkv, past_key, past_value, seqlens_k, total_length, num_heads: int, scale: float):
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
            num_heads_i=num_heads,
            kv_num_heads_i=num_heads,
            scale_f=scale,
            outputs=3,
        )
        # Declare the output types so the exporter's shape inference knows this contrib op.
        out.setType(qkv.type().with_sizes([None, None, None]))
        present_key.setType(past_key.type())
        present_value.setType(past_value.type())
        return out, present_key, present_value


class DecoderStaticStep(DecoderStep):
    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.vocab = self.lm_heads[0].weight.shape[0]

    # The fused weights are concatenated in forward, not stored: a stored copy would double the decoder's
    # memory at export. The exporter folds each Concat (+ Transpose) into one initializer, written lazily.
    def qkv_weight(self, layer) -> torch.Tensor:
        attn = layer.self_attn
        return torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight], dim=0)

    def lm_weight(self) -> torch.Tensor:
        return torch.cat([head.weight for head in self.lm_heads], dim=0)

    def forward(
        self,
        input_ids: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        total_sequence_length: torch.Tensor,
        *cache: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        n = self.num_layers
        cross, past = cache[: 2 * n], cache[2 * n :]
        batch = input_ids.shape[0]
        hidden = self.embed(input_ids, position_ids)
        seqlens_k = position_ids[:, -1].to(torch.int32)
        total = total_sequence_length
        text_mask, has_text = self.cross_mask(encoder_attention_mask, hidden.dtype)

        presents: list[torch.Tensor] = []
        for i, layer in enumerate(self.layers):
            residual = hidden
            qkv = torch.matmul(layer.self_attn_layer_norm(hidden), self.qkv_weight(layer).t())
            attn, key, value = StaticCacheAttention.apply(
                qkv, past[2 * i], past[2 * i + 1], seqlens_k, total, self.num_heads, self.scale
            )
            presents += [key, value]
            hidden = residual + layer.self_attn.out_proj(attn)
            hidden = self.cross_and_ffn(layer, hidden, cross[2 * i], cross[2 * i + 1], text_mask, has_text)

        last = self.layer_norm(hidden[:, -1])
        logits = torch.matmul(last, self.lm_weight().t()).reshape(batch, self.num_codebooks, self.vocab)
        return (logits, *presents)

    def example_inputs(
        self,
        batch: int = 2,
        seq_len: int = 3,
        past_len: int = 2,
        text_len: int = 5,
        vocab: int = 2048,
        max_len: int = 16,
    ) -> tuple[torch.Tensor, ...]:
        plain = super().example_inputs(batch, seq_len, past_len, text_len, vocab)
        ids, mask = plain[0], plain[1]
        cross = plain[2 : 2 + 2 * self.num_layers]
        shape = (batch, self.num_heads, max_len, self.head_dim)
        past = [torch.randn(shape) for _ in range(2 * self.num_layers)]
        positions = torch.arange(past_len, past_len + seq_len, dtype=torch.long).expand(batch, seq_len).contiguous()
        total = torch.tensor(past_len + seq_len, dtype=torch.int32)
        return (ids, mask, positions, total, *cross, *past)
