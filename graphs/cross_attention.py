"""Cross-attention over the text's precomputed K/V as one onnxruntime ``MultiHeadAttention`` node
(docs/design.md §3, §15).

Traced from plain PyTorch ops, a layer's cross-attention was 20-odd nodes: shape arithmetic for the head split and
merge (Shape, Gather, Unsqueeze, Concat), two Reshapes and two Transposes, QK^T, the mask, softmax and AV. On 2
rows each node costs onnxruntime microseconds of dispatch for almost no arithmetic; as one contrib node (CPU and
CUDA kernels) a full-size stereo-small step is 0.3-0.55 ms faster (2-2.5 %, steps interleaved with the plain
graph). The PyTorch ``forward`` is the reference arithmetic the exporter validates the graph against.
"""

from __future__ import annotations

import torch


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(q k^T * scale + bias) v over [B, heads, S, head_dim]: the reference arithmetic of every attention in
    the decoder graphs (self-attention of the concat graph, and ``CrossAttention.forward``)."""
    scores = torch.matmul(q, k.transpose(2, 3)) * scale + bias
    return torch.matmul(torch.softmax(scores, dim=-1), v)


class CrossAttention(torch.autograd.Function):
    """Attention of queries [B, S, D] over precomputed keys and values [B, heads, L, head_dim], with a key
    padding mask [B, L] (int32, 1 = a text token); output [B, S, D].

    A row whose mask is all 0 (CFG's unconditional half) gets an output the caller multiplies by 0: softmax
    over nothing has no meaning, and onnxruntime and PyTorch fill it differently.
    """

    @staticmethod
    def forward(ctx, query, key, value, key_padding_mask, num_heads: int, scale: float):
        batch, length, width = query.shape
        q = query.view(batch, length, num_heads, width // num_heads).transpose(1, 2)
        bias = (1.0 - key_padding_mask.to(query.dtype))[:, None, None, :] * torch.finfo(query.dtype).min
        out = attention(q, key, value, bias, scale)
        return out.transpose(1, 2).reshape(batch, length, width)

    @staticmethod
    def symbolic(g, query, key, value, key_padding_mask, num_heads: int, scale: float):
        from torch.onnx.symbolic_helper import _optional_input_placeholder_tensor

        out = g.op(
            "com.microsoft::MultiHeadAttention",
            query,
            key,
            value,
            _optional_input_placeholder_tensor(g),  # no bias: the projections are plain MatMuls
            key_padding_mask,
            num_heads_i=num_heads,
            scale_f=scale,
        )
        out.setType(query.type())
        return out
