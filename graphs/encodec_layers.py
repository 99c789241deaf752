"""EnCodec layers re-wired so a traced graph is exact at every input length, and fast on CPU.

transformers' ``EncodecConv1d._pad1d`` reflect-pads, and for inputs shorter than the pad it first
appends zeros; that Python branch is frozen when tracing, so a graph traced at a long input fails
("Pad reflect ... exceeds") below ~4 frames. ``reflect_pad`` computes the same result with a gather
whose indices depend only on tensor arithmetic, which the exporter keeps dynamic:

    edges j in [-left, 0) and [L, L + right) ─> reflect about 0 and about n2 - 1 ─> gather (0 past L)
    result = concat(left edge, x, right edge)     (n2 = max(L, max_pad + 1): the zero-extended length)

``TraceableConvTranspose1d`` computes the upsampling transposed convolutions as an ordinary convolution
over the input frames followed by an interleave ("sub-pixel" form): output sample ``q * s + r`` (stride
``s``, phase ``r``) is a ``ceil(K / s)``-tap convolution of the input with the kernel taps ``r, r + s, ...``.
Same multiply-adds; onnxruntime's CPU Conv (blocked NCHWc kernels) runs them in ~0.77x the time of its
ConvTranspose (40 % of a decode before), and with the interleave's Transpose a decode is ~5 % faster
(docs/design.md §10): the convolutions are compute-bound either way.

    x [N, Cin, T] ─> zero-pad P - 1 each side ─> Conv (Cout * s channels, P = K / s taps) ─> [N, Cout * s, T + P - 1]
      ─> reshape [N, Cout, s, T + P - 1] ─> transpose ─> [N, Cout, (T + P - 1) * s] ─> trim as EnCodec does

(with K = P * s the transposed convolution's output is exactly (T + P - 1) * s long; other kernels keep
the ConvTranspose.)
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.models.encodec.modeling_encodec import EncodecConv1d, EncodecConvTranspose1d, EncodecResnetBlock


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


def phase_conv_weights(weight: torch.Tensor, bias: torch.Tensor | None, stride: int):
    """A ConvTranspose1d's weight [Cin, Cout, K] (K = P * s) and bias [Cout] as the Conv1d weight
    [Cout * s, Cin, P] and bias of its sub-pixel form: ``conv[o * s + r, i, m] = weight[i, o, (P - 1 - m) * s + r]``.

    Written with slices, concats, reshapes and a transpose only: traced inside ``forward``, these fold into a
    recipe over the checkpoint's weight (export/lazy_weights.py) instead of a second copy of it."""
    cin, cout, k = weight.shape
    taps = k // stride
    phases = weight.reshape(cin, cout, taps, stride)
    if taps > 1:  # reverse the taps
        phases = torch.cat([phases[:, :, m : m + 1] for m in reversed(range(taps))], dim=2)
    conv = phases.permute(1, 3, 0, 2).reshape(cout * stride, cin, taps)
    if bias is None:
        return conv, None
    return conv, torch.cat([bias.unsqueeze(1)] * stride, dim=1).reshape(cout * stride)


def subpixel_applies(layer: EncodecConvTranspose1d) -> bool:
    """EnCodec's upsampling layers (kernel 2 x stride, no padding, dilation or groups) take the sub-pixel form."""
    conv = layer.conv
    stride, kernel = int(conv.stride[0]), int(conv.kernel_size[0])
    return (
        kernel % stride == 0
        and int(conv.dilation[0]) == 1
        and int(conv.padding[0]) == 0
        and int(conv.output_padding[0]) == 0
        and int(conv.groups) == 1
    )


class TraceableConvTranspose1d(nn.Module):
    """``EncodecConvTranspose1d.forward`` (transposed conv, optional GroupNorm, trim) in sub-pixel form."""

    def __init__(self, layer: EncodecConvTranspose1d) -> None:
        super().__init__()
        if not subpixel_applies(layer):
            raise ValueError("the sub-pixel form needs kernel = a multiple of the stride, no padding or dilation")
        self.inner = layer
        self.stride = int(layer.conv.stride[0])
        self.kernel = int(layer.conv.kernel_size[0])
        self.out_channels = int(layer.conv.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        layer, s = self.inner, self.stride
        taps = self.kernel // s
        weight, bias = phase_conv_weights(layer.conv.weight, layer.conv.bias, s)
        frames = x.shape[-1]
        y = nn.functional.conv1d(x, weight, bias, padding=taps - 1)  # [N, Cout * s, T + P - 1]
        batch = y.shape[0]
        y = y.reshape(batch, self.out_channels, s, -1).transpose(2, 3).reshape(batch, self.out_channels, -1)
        if layer.norm_type == "time_group_norm":
            y = layer.norm(y)
        padding_total = self.kernel - s
        padding_right = math.ceil(padding_total * layer.trim_right_ratio) if layer.causal else padding_total // 2
        return y[..., padding_total - padding_right : (frames - 1) * s + self.kernel - padding_right]


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
    if isinstance(layer, EncodecConvTranspose1d) and subpixel_applies(layer):
        return TraceableConvTranspose1d(layer)
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
