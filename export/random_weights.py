"""The released MusicGen checkpoints' configs, shipped with the package, and random-weight models built from them.

No network access is needed: ``export/configs/<name>.json`` (package ``musicgen_onnx.export.configs``) holds, for each
of the 10 hub checkpoints, the ``to_dict()`` of the transformers 5.24 config (``MusicgenConfig`` or
``MusicgenMelodyConfig``) with the released architecture, plus one extra top-level key ``"generation_config"`` with
the values of the hub's ``generation_config.json`` (do_sample, guidance_scale, max_length, pad/bos/decoder_start ids).
That key is removed before the transformers config is built; :func:`load_shipped_generation_config` returns it.

:func:`build_random_model` builds the real architecture (real sizes) with transformers' own random initialization,
seeded, in fp32 and eval mode, plus a stand-in T5-like tokenizer (see ``standin_tokenizer``).
"""

from __future__ import annotations

import contextlib
import json
import logging
from importlib import resources
from pathlib import Path
from typing import Any

KNOWN_CHECKPOINTS: tuple[str, ...] = (
    "facebook/musicgen-small",
    "facebook/musicgen-medium",
    "facebook/musicgen-large",
    "facebook/musicgen-melody",
    "facebook/musicgen-melody-large",
    "facebook/musicgen-stereo-small",
    "facebook/musicgen-stereo-medium",
    "facebook/musicgen-stereo-large",
    "facebook/musicgen-stereo-melody",
    "facebook/musicgen-stereo-melody-large",
)

GENERATION_CONFIG_KEY = "generation_config"
_CONFIG_PACKAGE = "musicgen_onnx.export.configs"


def canonical_name(name: str) -> str:
    """``"musicgen-small"`` or ``"facebook/musicgen-small"`` -> ``"facebook/musicgen-small"``; else ValueError."""
    short = name.strip().rstrip("/")
    if short.startswith("facebook/"):
        short = short[len("facebook/") :]
    full = f"facebook/{short}"
    if full not in KNOWN_CHECKPOINTS:
        valid = ", ".join(KNOWN_CHECKPOINTS)
        raise ValueError(f"unknown MusicGen checkpoint {name!r}; shipped configs exist for: {valid}")
    return full


def is_melody(name: str) -> bool:
    """True for the melody checkpoints (MusicgenMelody*: no cross-attention; text + chroma are a decoder prefix)."""
    return "melody" in canonical_name(name)


def is_stereo(name: str) -> bool:
    """True for the stereo checkpoints (8 interleaved codebooks, 2 audio channels)."""
    return "stereo" in canonical_name(name)


def _read_shipped_json(name: str) -> dict[str, Any]:
    short = canonical_name(name).split("/", 1)[1]
    text = resources.files(_CONFIG_PACKAGE).joinpath(f"{short}.json").read_text(encoding="utf-8")
    return json.loads(text)


@contextlib.contextmanager
def _quiet_transformers():
    # MusicgenConfig's generic token-id check warns that pad/bos 2048 are outside the 2048-entry vocab; the decoder's
    # embedding really has 2049 rows, so the warning is noise.
    logger = logging.getLogger("transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_shipped_config(name: str):
    """The transformers config (``MusicgenConfig`` or ``MusicgenMelodyConfig``) of a released checkpoint.

    ``name``: ``"facebook/musicgen-stereo-small"`` or ``"musicgen-stereo-small"``; unknown names raise ValueError
    listing the valid ones. Nothing is downloaded.
    """
    data = _read_shipped_json(name)
    data.pop(GENERATION_CONFIG_KEY, None)
    import transformers

    config_cls = transformers.MusicgenMelodyConfig if is_melody(name) else transformers.MusicgenConfig
    with _quiet_transformers():
        return config_cls.from_dict(data)


def load_shipped_generation_config(name: str) -> dict[str, Any]:
    """The hub's ``generation_config.json`` values for ``name`` (a plain dict, e.g. ``guidance_scale`` 3.0)."""
    return dict(_read_shipped_json(name)[GENERATION_CONFIG_KEY])


def randomize_codebooks(model) -> None:
    """Give EnCodec's quantizer codebooks random entries (uses the current torch RNG).

    transformers initialises the codebook buffers to zeros: every code then decodes to the same
    embedding, so audio would not depend on the codes and encoding a prompt would tie on every
    frame. Random entries make both meaningful without changing the compute.
    """
    import torch

    with torch.no_grad():
        for layer in model.audio_encoder.quantizer.layers:
            layer.codebook.embed.copy_(torch.randn_like(layer.codebook.embed))


def build_random_model(name: str, seed: int = 0, scratch: Path | None = None):
    """Build the real architecture of ``name`` with random weights: ``(model, tokenizer)``.

    ``model`` is a ``MusicgenForConditionalGeneration`` (or ``MusicgenMelodyForConditionalGeneration``), fp32,
    ``eval()``, with ``generation_config`` set to the hub's values and transformers' own initialization: the
    T5 encoder and EnCodec are built as transformers builds them, under ``torch.manual_seed(seed)``; the decoder
    is built on the meta device and initialized one module at a time, each under a seed derived from ``seed``
    and the module's name (``random_init``), so the whole decoder never exists in anonymous memory at once.
    With ``scratch`` (a file path) the decoder's weights are written there and memory-mapped back, as a
    ``from_pretrained`` checkpoint is: a 3.3 B model then needs ~1 GB of RAM, not 13 GB. The same ``(name,
    seed)`` gives the same weights either way. The caller's global RNG state is restored afterwards.
    ``tokenizer`` is a ``tokenizers.Tokenizer`` stand-in for t5-base (ids < the text encoder's vocab size;
    save it with ``standin_tokenizer.save_standin_tokenizer``).
    """
    import torch
    import transformers

    from .random_init import ScratchFile, materialize
    from .standin_tokenizer import build_standin_tokenizer

    config = load_shipped_config(name)
    if is_melody(name):
        model_cls, decoder_cls = (
            transformers.MusicgenMelodyForConditionalGeneration,
            transformers.MusicgenMelodyForCausalLM,
        )
    else:
        model_cls, decoder_cls = transformers.MusicgenForConditionalGeneration, transformers.MusicgenForCausalLM

    with torch.random.fork_rng(devices=[]), _quiet_transformers():
        torch.manual_seed(seed)
        text_encoder = transformers.AutoModelForTextEncoding.from_config(config.text_encoder)
        audio_encoder = transformers.AutoModel.from_config(config.audio_encoder)
        with torch.device("meta"):
            decoder = decoder_cls._from_config(config.decoder)
        model = model_cls(config, text_encoder=text_encoder, audio_encoder=audio_encoder, decoder=decoder)
        randomize_codebooks(model)
    materialize(model.decoder, model.decoder, seed, ScratchFile(scratch) if scratch is not None else None)
    model = model.to(torch.float32).eval()

    gen = load_shipped_generation_config(name)
    with _quiet_transformers():
        model.generation_config = transformers.GenerationConfig(**gen)

    tokenizer = build_standin_tokenizer(config.text_encoder.vocab_size)
    return model, tokenizer


__all__ = [
    "GENERATION_CONFIG_KEY",
    "KNOWN_CHECKPOINTS",
    "build_random_model",
    "canonical_name",
    "is_melody",
    "is_stereo",
    "load_shipped_config",
    "load_shipped_generation_config",
    "randomize_codebooks",
]
