"""Generation arguments: sampling options resolved against the checkpoint's defaults, texts, batch size.

Every check names the valid range, and runs before any heavy work starts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .manifest import GenerationDefaults


def is_real(x: object) -> bool:
    """A finite int or float (not a bool): what numeric arguments must be."""
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class SamplingOptions:
    """Resolved and validated sampling settings (None in ``generate`` means the checkpoint's default).

    ``top_k=0`` turns top-k filtering off (as in transformers and audiocraft). ``top_p`` is in (0, 1], 1 = off;
    0 is refused because the two reference implementations disagree on it (see ``resolve_sampling_options``).
    """

    do_sample: bool
    guidance_scale: float
    top_k: int
    top_p: float
    temperature: float


def resolve_sampling_options(
    d: GenerationDefaults,
    vocab: int,
    *,
    do_sample: bool | None = None,
    guidance_scale: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    temperature: float | None = None,
) -> SamplingOptions:
    """Fill unset options from the checkpoint's defaults and check each against its valid range."""
    opts = SamplingOptions(
        do_sample=d.do_sample if do_sample is None else bool(do_sample),
        guidance_scale=d.guidance_scale if guidance_scale is None else guidance_scale,
        top_k=d.top_k if top_k is None else top_k,
        top_p=d.top_p if top_p is None else top_p,
        temperature=d.temperature if temperature is None else temperature,
    )
    if not is_real(opts.guidance_scale) or opts.guidance_scale < 1:
        raise ValueError(
            f"guidance_scale must be a number >= 1 (1 disables classifier-free guidance, "
            f"3 is MusicGen's default), got {opts.guidance_scale!r}"
        )
    if not isinstance(opts.top_k, (int, np.integer)) or isinstance(opts.top_k, bool) or not 0 <= opts.top_k <= vocab:
        raise ValueError(f"top_k must be an integer in 0..{vocab} (0 disables top-k filtering), got {opts.top_k!r}")
    if is_real(opts.top_p) and opts.top_p == 0:
        raise ValueError(
            "top_p=0 is ambiguous: audiocraft reads it as 'nucleus sampling off', transformers as 'keep only the "
            "most likely token'; pass top_p=1.0 to turn nucleus sampling off, or do_sample=False for greedy decoding"
        )
    if not is_real(opts.top_p) or not 0 < opts.top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (1 disables nucleus sampling), got {opts.top_p!r}")
    if not is_real(opts.temperature) or opts.temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {opts.temperature!r}")
    return opts


def check_seed(seed: object) -> int | None:
    """None (fresh entropy) or an integer numpy's generator accepts."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer (0, 1, 2, ...) or None for a random seed, got {seed!r}")
    return int(seed)


def check_texts(texts: str | Sequence[str] | None) -> list[str] | None:
    if texts is None:
        return None
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, Sequence) or len(texts) == 0:
        raise ValueError("texts must be a non-empty list of strings (or None for unconditional generation)")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise ValueError(f"texts[{i}] must be a string, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"texts[{i}] is empty; give a description or use texts=None for unconditional")
    return list(texts)


def batch_size(texts: list[str] | None, prompt: np.ndarray | None) -> int:
    if texts is None:
        return 1 if prompt is None else prompt.shape[0]
    if prompt is not None and prompt.shape[0] not in (1, len(texts)):
        raise ValueError(
            f"prompt audio has batch {prompt.shape[0]} but there are {len(texts)} texts: give one prompt "
            "for all, or one per text"
        )
    return len(texts)
