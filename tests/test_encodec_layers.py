"""The sub-pixel form of EnCodec's transposed convolutions against transformers' own layer.

The exported EnCodec graphs compute each upsampling ConvTranspose1d as a Conv over the input frames plus an
interleave (graphs/encodec_layers.py); it must give transformers' output at every input length, for both
norms and both paddings EnCodec configs use, and leave the layers it cannot express alone.
"""

from __future__ import annotations

import onnx
import pytest
import torch
from musicgen_onnx.graphs.encodec_layers import TraceableConvTranspose1d, subpixel_applies, traceable
from transformers import EncodecConfig
from transformers.models.encodec.modeling_encodec import EncodecConvTranspose1d


def _layer(kernel: int, stride: int, causal: bool, norm: str, trim: float = 1.0) -> EncodecConvTranspose1d:
    torch.manual_seed(kernel * 31 + stride)
    config = EncodecConfig(use_causal_conv=causal, norm_type=norm, trim_right_ratio=trim)
    layer = EncodecConvTranspose1d(config, 6, 5, kernel, stride).eval()
    with torch.no_grad():
        layer.conv.bias.normal_()
    return layer


@pytest.mark.parametrize(
    ("kernel", "stride", "causal", "norm", "trim"),
    [
        (16, 8, False, "weight_norm", 1.0),  # EnCodec 32 kHz's ratios 8, 5, 4, 2 with kernel 2 x stride
        (10, 5, False, "weight_norm", 1.0),
        (4, 2, False, "weight_norm", 1.0),
        (8, 4, True, "weight_norm", 1.0),
        (8, 4, True, "weight_norm", 0.5),
        (6, 2, False, "time_group_norm", 1.0),  # three taps
        (3, 3, True, "time_group_norm", 1.0),  # one tap
    ],
)
def test_same_output_as_transformers(kernel, stride, causal, norm, trim):
    layer = _layer(kernel, stride, causal, norm, trim)
    wrapped = traceable(layer)
    assert isinstance(wrapped, TraceableConvTranspose1d)
    for frames in (1, 2, 3, 17):
        x = torch.randn(2, 6, frames)
        with torch.no_grad():
            expected, got = layer(x), wrapped(x)
        assert got.shape == expected.shape, frames
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_other_kernels_keep_the_transposed_convolution():
    layer = _layer(7, 3, False, "weight_norm")
    assert not subpixel_applies(layer)
    assert traceable(layer) is layer
    with pytest.raises(ValueError, match="multiple of the stride"):
        TraceableConvTranspose1d(layer)


def test_encodec_decode_graph_has_no_conv_transpose(exported_stereo):
    graph = onnx.load(exported_stereo / "encodec_decode.onnx", load_external_data=False).graph
    ops = {node.op_type for node in graph.node}
    assert "ConvTranspose" not in ops and "Conv" in ops
