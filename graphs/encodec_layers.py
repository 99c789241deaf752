"""EnCodec layers re-wired so a traced graph is exact at every input length.

transformers' ``EncodecConv1d._pad1d`` reflect-pads, and for inputs shorter than the pad it first
appends zeros; that Python branch is frozen when tracing, so a graph traced at a long input fails
("Pad reflect ... exceeds") below ~4 frames. ``reflect_pad`` computes the same result with a gather
whose indices depend only on tensor arithmetic, which the exporter keeps dynamic:

    edges j in [-left, 0) and [L, L + right) ─> reflect about 0 and about n2 - 1 ─> gather (0 past L)
    result = concat(left edge, x, right edge)     (n2 = max(L, max_pad + 1): the zero-extended length)
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.encodec.modeling_encodec import EncodecConv1d, EncodecResnetBlock


def reflect_pad(x: torch.Tensor, left: torch.Tensor | int, right: torch.Tensor | int) -> torch.Tensor:
    """transformers' ``_pad1d(x, (left, right), mode="reflect")`` for any length, trace-friendly.

    The middle of the result is always ``x`` itself; only the ``left`` and ``right`` edge samples are
    gathered, so the big tensor is copied once (by the Concat), as a Pad op would.
    """
    length = x.shape[-1]
    length_t = torch.arange(length, device=x.device)[-1:] + 1  # the length as a tensor: stays dynamic
    max_pad = torch.maximum(torch.as_tensor(left), torch.as_tensor(right))
    n2 = torch.maximum(length_t, max_pad + 1)  # length after transformers' zero extension

    def edge(positions: torch.Tensor) -> torch.Tensor:
        i = torch.where(positions < 0, -positions, positions)
        i = torch.where(i >= n2, 2 * (n2 - 1) - i, i)
        valid = (i < length_t).to(x.dtype)
        return x.index_select(-1, torch.minimum(i, length_t - 1)) * valid

    left_part = edge(torch.arange(left, device=x.device) - left)
    right_part = edge(torch.arange(right, device=x.device) + length_t)
    return torch.cat([left_part, x, right_part], dim=-1)


class TraceableConv1d(nn.Module):
    """Same arithmetic as ``EncodecConv1d.forward``, with ``reflect_pad`` for the padding."""

    def __init__(self, conv: EncodecConv1d) -> None:
        super().__init__()
        self.inner = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.inner
        extra = conv._get_extra_padding_for_conv1d(x)
        if conv.causal:
            left, right = conv.padding_total, extra
        else:
            right = conv.padding_total // 2
            left = conv.padding_total - right
            right = right + extra
        if conv.pad_mode == "reflect":
            x = reflect_pad(x, left, right)
        else:
            x = nn.functional.pad(x, (left, right), conv.pad_mode)
        x = conv.conv(x)
        if conv.norm_type == "time_group_norm":
            x = conv.norm(x)
        return x


class TraceableResnetBlock(nn.Module):
    def __init__(self, block: EncodecResnetBlock) -> None:
        super().__init__()
        self.block = nn.ModuleList([traceable(layer) for layer in block.block])
        self.shortcut = traceable(block.shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        for layer in self.block:
            x = layer(x)
        return self.shortcut(residual) + x


def traceable(layer: nn.Module) -> nn.Module:
    """Wrap the layers whose padding is length-dependent; others are used as they are."""
    if isinstance(layer, EncodecConv1d):
        return TraceableConv1d(layer)
    if isinstance(layer, EncodecResnetBlock):
        return TraceableResnetBlock(layer)
    return layer


class TraceableStack(nn.Module):
    """An EnCodec encoder or decoder (a flat list of layers) with traceable layers."""

    def __init__(self, layers: nn.ModuleList) -> None:
        super().__init__()
        self.layers = nn.ModuleList([traceable(layer) for layer in layers])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x
