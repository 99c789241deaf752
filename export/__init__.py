"""Export a transformers MusicGen checkpoint to validated ONNX graphs plus a manifest.

Needs the ``export`` extra (torch, transformers, onnx): ``pip install "musicgen-onnx[export]"``.
"""

from .exporter import ExportError, export_model

__all__ = ["ExportError", "export_model"]
