"""Serving MusicGen over HTTP with Ray Serve (``pip install "musicgen-onnx[serve]"``).

``musicgen-onnx serve MODEL_DIR`` runs it on this machine; ``serve build`` / ``serve deploy`` with
``musicgen_onnx.serving.deployment:build_app`` runs the same app on a cluster. The modules import one way:
config, formats, schema <- service (no web framework) <- http (FastAPI) <- deployment (Ray) <- cli.
Importing this package loads neither Ray nor FastAPI.
"""

from .config import ServeConfig

__all__ = ["ServeConfig"]
