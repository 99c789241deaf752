"""Export a transformers MusicGen checkpoint to validated ONNX graphs plus a manifest.

Needs the ``export`` extra (torch, transformers, onnx): ``pip install "musicgen-onnx[export]"``.
"""

from .exporter import export_model

__all__ = ["export_model"]
