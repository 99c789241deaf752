"""A transformers-style entry point, so the model card's snippets port with one changed import.

from musicgen_onnx.runtime import pipeline
synthesiser = pipeline("text-to-audio", "out/musicgen-stereo-small")
music = synthesiser("lo-fi music with a soothing melody", forward_params={"do_sample": True})
soundfile.write("musicgen_out.wav", music["audio"].T, music["sampling_rate"])
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .model import MusicGen

TASKS = ("text-to-audio", "text-to-speech")


class TextToAudioPipeline:
    def __init__(self, model: MusicGen) -> None:
        self.model = model

    def __call__(
        self, text: str | Sequence[str], forward_params: dict[str, Any] | None = None, **generate_kwargs: Any
    ) -> dict[str, Any] | list[dict[str, Any]]:
        """One text -> {"audio": [channels, samples], "sampling_rate": int}; a list -> a list of those, in order.

        A list may be longer than the model's ``max_batch`` slots: the rows beyond them wait in the engine's queue
        and start as slots free (``MusicGen.submit``); with a ``seed`` the outputs do not depend on the slots."""
        params = {**(forward_params or {}), **generate_kwargs}
        single = isinstance(text, str)
        audio = self.model.generate([text] if single else list(text), **params)
        outputs = [{"audio": a, "sampling_rate": self.model.sampling_rate} for a in audio]
        return outputs[0] if single else outputs


def pipeline(
    task: str, model: str | Path | MusicGen, *, provider: str = "auto", threads: int | None = None
) -> TextToAudioPipeline:
    """``model`` is an export directory (not a hub id: export it first with ``musicgen-onnx export``)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if not isinstance(model, MusicGen):
        model = MusicGen.load(model, provider=provider, threads=threads)
    return TextToAudioPipeline(model)
