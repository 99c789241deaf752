"""The exporter's reference runs work with every transformers 5.x the export extra admits (>= 5.0)."""

from __future__ import annotations

from musicgen_onnx.export.validate import cache_kwargs


class _Old:
    def forward(self, input_ids=None, past_key_values=None, use_cache=None, **kwargs):  # transformers 5.0-5.17
        return past_key_values


class _New:
    def forward(self, input_ids=None, cache=None, use_cache=None, **kwargs):  # later 5.x
        return cache


def test_cache_keyword_follows_the_decoder_signature() -> None:
    marker = object()
    # a wrong keyword would be swallowed by **kwargs and the decoder would build its own, empty cache
    assert _Old().forward(**cache_kwargs(_Old(), marker)) is marker
    assert _New().forward(**cache_kwargs(_New(), marker)) is marker


def test_installed_transformers_decoder_takes_the_chosen_keyword() -> None:
    import inspect

    from transformers.models.musicgen.modeling_musicgen import MusicgenForCausalLM

    (keyword,) = cache_kwargs(MusicgenForCausalLM, None)
    assert keyword in inspect.signature(MusicgenForCausalLM.forward).parameters
