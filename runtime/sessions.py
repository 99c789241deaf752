"""onnxruntime sessions: execution-provider choice, threads, and load errors that say what is wrong."""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort

logger = logging.getLogger("musicgen_onnx")

PROVIDERS = ("auto", "cuda", "cpu")
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"


def resolve_providers(provider: str) -> list[str]:
    """Map the user's choice to onnxruntime providers; an unavailable explicit "cuda" is an error."""
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")
    available = ort.get_available_providers()
    if provider == "cpu":
        return [_CPU]
    if _CUDA in available:
        _preload_cuda_libraries()
        return [_CUDA, _CPU]
    if provider == "cuda":
        raise ValueError(
            "provider='cuda' requested but onnxruntime has no CUDAExecutionProvider "
            f"(available: {', '.join(available)}); install the GPU build: pip install 'musicgen-onnx[gpu]'"
        )
    return [_CPU]


def _preload_cuda_libraries() -> None:
    """Load CUDA / cuDNN from the nvidia-* pip packages when they are installed (onnxruntime >= 1.21), so
    onnxruntime-gpu works next to pip-installed CUDA libraries without LD_LIBRARY_PATH (and without torch)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as exc:  # best effort: system-wide CUDA libraries may still be found by the loader
        logger.debug("onnxruntime.preload_dlls() failed: %s", exc)


def make_session_options(threads: int | None) -> ort.SessionOptions:
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer or None (onnxruntime's default), got {threads!r}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def open_session(path: Path, providers: list[str], options: ort.SessionOptions) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ValueError(f"cannot load {path}: the graph is corrupt or not an ONNX model ({exc})") from exc


def open_decoder_session(
    path: Path, providers: list[str], options: ort.SessionOptions, cuda_graph: bool
) -> tuple[ort.InferenceSession, bool]:
    """The decoder session, with onnxruntime's CUDA-graph capture when asked; returns (session, captured).

    onnxruntime refuses CUDA graphs at load time when a compute node would not run on the CUDA EP or a
    host<->device copy would sit inside the graph: then this warns and opens the session without them.
    """
    if cuda_graph and providers[0] == _CUDA:
        graph_providers = [(_CUDA, {"enable_cuda_graph": "1"}), *providers[1:]]
        try:
            return ort.InferenceSession(str(path), options, providers=graph_providers), True
        except Exception as exc:  # onnxruntime raises its own exception types
            logger.warning("CUDA graph capture unavailable for %s, running without it: %s", path, exc)
    return open_session(path, providers, options), False
