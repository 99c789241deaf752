"""Load the model to export: a hub id, a local checkpoint directory, or random weights."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger("musicgen_onnx")

MELODY_MODEL_TYPES = ("musicgen_melody",)
SUPPORTED_MODEL_TYPES = ("musicgen", *MELODY_MODEL_TYPES)


class CheckpointError(ValueError):
    """The source is not a MusicGen checkpoint this exporter supports."""


@dataclass
class LoadedCheckpoint:
    model: Any  # MusicgenForConditionalGeneration (or MusicgenMelodyForConditionalGeneration), fp32, eval mode
    tokenizer: Any  # tokenizers.Tokenizer
    source: str
    random_weights: bool


def _looks_like_path(source: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else that does not exist is a missing path."""
    return source.startswith((".", "/", "~")) or source.count("/") > 1 or (os.sep != "/" and os.sep in source)


def _reject_unsupported(model_type: str, source: str) -> None:
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"{source} is not a MusicGen checkpoint: its config has model_type={model_type!r}, "
            f"expected one of {SUPPORTED_MODEL_TYPES}"
        )


def load_checkpoint(source: str, *, revision: str | None = None) -> LoadedCheckpoint:
    """Load a checkpoint with transformers' own ``from_pretrained`` (hub id or local directory)."""
    import torch
    from transformers import (
        AutoConfig,
        AutoTokenizer,
        MusicgenForConditionalGeneration,
        MusicgenMelodyForConditionalGeneration,
    )

    path = Path(source).expanduser()
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{source} is a file; expected a checkpoint directory or a hub id")
    if not path.exists() and _looks_like_path(source):
        raise FileNotFoundError(f"checkpoint directory not found: {source}")
    if path.is_dir() and not (path / "config.json").is_file():
        raise CheckpointError(f"{source} has no config.json: not a transformers checkpoint directory")
    location = str(path) if path.is_dir() else source
    try:
        config = AutoConfig.from_pretrained(location, revision=revision)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read a transformers config from {source}: {exc}") from exc
    _reject_unsupported(getattr(config, "model_type", "?"), source)

    logger.info("loading %s with transformers", source)
    melody = config.model_type in MELODY_MODEL_TYPES
    model_cls = MusicgenMelodyForConditionalGeneration if melody else MusicgenForConditionalGeneration
    model = model_cls.from_pretrained(location, revision=revision, dtype=torch.float32)
    model.eval()
    try:
        hf_tokenizer = AutoTokenizer.from_pretrained(location, revision=revision)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{source} has no usable tokenizer: {exc}") from exc
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise CheckpointError(
            f"{source}: the tokenizer is not a fast (tokenizers) tokenizer; the runtime needs tokenizer.json"
        )
    return LoadedCheckpoint(model=model, tokenizer=backend, source=source, random_weights=False)


def load_random_weights(name: str, *, seed: int = 0, scratch: Path | None = None) -> LoadedCheckpoint:
    """The real architecture of a released checkpoint with random weights, for latency work.

    With ``scratch`` (a file path) the decoder's weights are written there and memory-mapped back.
    """
    from .random_weights import build_random_model

    model, tokenizer = build_random_model(name, seed=seed, scratch=scratch)
    return LoadedCheckpoint(model=model, tokenizer=tokenizer, source=name, random_weights=True)


def resolved_generation_defaults(model: Any) -> dict[str, Any]:
    """The sampling settings transformers' generate would use when the caller passes none."""
    from transformers import GenerationConfig

    resolved = GenerationConfig()
    resolved.update(**model.generation_config.to_dict(), defaults_only=True)
    resolved.update(**GenerationConfig._get_default_generation_params(), defaults_only=True)
    guidance = resolved.guidance_scale if resolved.guidance_scale is not None else 1.0
    return {
        "do_sample": bool(resolved.do_sample),
        "guidance_scale": float(guidance),
        "max_length": int(resolved.max_length),
        "top_k": int(resolved.top_k or 0),
        "top_p": float(resolved.top_p if resolved.top_p is not None else 1.0),
        "temperature": float(resolved.temperature if resolved.temperature is not None else 1.0),
    }
