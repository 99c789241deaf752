"""onnxruntime sessions: execution-provider choice, threads, and load errors that say what is wrong."""

from __future__ import annotations

import logging
from pathlib import Path

import onnxruntime as ort

from .cpus import available_cpus

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


class ProviderUnavailableError(RuntimeError):
    """provider="cuda" was asked for, but onnxruntime could not start its CUDA execution provider."""


def make_session_options(
    threads: int | None, allow_spinning: bool | None = None, memory_pattern: bool = True
) -> ort.SessionOptions:
    """Session options shared by every graph of a model.

    ``threads`` None means the CPUs this process may actually use (``cpus.available_cpus``: affinity and
    cgroup quota), not onnxruntime's default of every core on the host. ``allow_spinning`` None keeps
    onnxruntime's default (worker threads spin between parallel sections: lowest latency on a dedicated
    node); False makes idle workers sleep, which costs a little latency and gives the CPU back to neighbours.

    Spinning workers stop when their run returns (onnxruntime's ``session.force_spinning_stop``): they still
    spin between the parallel sections of one run, where it pays, but a model's graphs run one after another
    (text encoder, cross K/V, decoder steps, EnCodec), each with its own pool, and a pool left spinning for
    tens of ms after its run took a core from the next graph's pool (docs/design.md §11).

    ``memory_pattern`` False: onnxruntime plans no memory pattern per input shape. EnCodec's sessions run with it
    off: their inputs change length call by call (clip lengths, stream chunks), every new length's pattern is
    one more fresh block of up to ~2 GB, and on a VM fresh memory made such a call ~1.4x slower, while the
    warm call is no faster with a pattern than without (docs/design.md §10).
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(
            f"threads must be a positive integer, or None for the CPUs this process may use "
            f"({available_cpus()} here), got {threads!r}"
        )
    if allow_spinning is not None and not isinstance(allow_spinning, bool):
        raise ValueError(f"allow_spinning must be True, False or None (onnxruntime's default), got {allow_spinning!r}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = available_cpus() if threads is None else threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.enable_mem_pattern = bool(memory_pattern)
    if allow_spinning is not None:
        flag = "1" if allow_spinning else "0"
        options.add_session_config_entry("session.intra_op.allow_spinning", flag)
        options.add_session_config_entry("session.inter_op.allow_spinning", flag)
    return options


def check_session_providers(session: ort.InferenceSession, providers: list[str], provider: str) -> list[str]:
    """The providers the session really got, compared with what was asked.

    onnxruntime-gpu lists CUDA as available even where it cannot start (no GPU, missing CUDA / cuDNN
    libraries) and then silently opens the session on the CPU. With ``provider="cuda"`` that is an
    error here, at load; with "auto" the caller continues on the CPU (the returned list says so).
    """
    got = session.get_providers()
    if providers[0] != _CUDA or _CUDA in got:
        return providers
    if provider == "cuda":
        raise ProviderUnavailableError(
            f"provider='cuda' requested, but onnxruntime {ort.__version__} could not start its CUDA execution "
            "provider (the session fell back to the CPU): no usable NVIDIA GPU is visible, or the CUDA / cuDNN "
            "libraries onnxruntime-gpu needs are missing (pip install 'onnxruntime-gpu[cuda,cudnn]', or put them "
            "on LD_LIBRARY_PATH); use provider='cpu' or 'auto' to run on the CPU"
        )
    return [_CPU]


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
