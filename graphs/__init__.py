"""One module per ONNX graph: the torch wrapper module that defines exactly what the graph computes.

Each module exposes a wrapper ``nn.Module`` built from a transformers MusicGen model, its input and
output names, its dynamic axes, and ``example_inputs`` for tracing. Export-time passes live in
``musicgen_onnx.export``; the runtime never imports this package.
"""

from .cross_kv import CrossKV
from .decoder import DecoderStep
from .encodec_decode import EncodecDecode
from .encodec_encode import EncodecEncode
from .sampler import TokenSampler
from .text_encoder import TextEncoder

__all__ = ["CrossKV", "DecoderStep", "EncodecDecode", "EncodecEncode", "TextEncoder", "TokenSampler"]
