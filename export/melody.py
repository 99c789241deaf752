"""Export of the MusicGen-Melody checkpoints: graph plans, validation against transformers, manifest fields.

A melody checkpoint (MusicgenMelodyForConditionalGeneration) has no cross-attention: the decoder is a causal LM
whose first call gets the prefix ``cat([projected chroma, text states])``. Its graphs:

- ``text_encoder``: as for the text models (T5 -> enc_to_dec_proj -> x mask);
- ``melody_prefix``: text states + one-hot chroma -> prefix (``graphs.melody_prefix``);
- ``decoder``: the static-cache decoder with a prefix input and no cross-attention (``graphs.decoder_melody``);
- ``sampler``, ``encodec_decode``, ``encodec_encode``: as for the text models.

Each graph is checked against transformers' own code on fresh shapes: the prefix against
``_prepare_encoder_hidden_states_kwargs_for_generation``, the decoder against ``MusicgenMelodyForCausalLM``
with its own cache (prefill with a prefix, single steps over a past, a batch row whose padded prefix
positions are masked compared with the same row alone).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("musicgen_onnx")

#: Feature-extractor parameters of MusicgenMelodyFeatureExtractor (transformers 5.24 defaults, the hub's values).
CHROMA_N_FFT = 16384
CHROMA_HOP = 4096
CHROMA_MAX_SECONDS = 30.0


def is_melody_model(model: Any) -> bool:
    return getattr(model.config, "model_type", "") == "musicgen_melody"


def extra_positions(model: Any, max_text_tokens: int) -> int:
    """Sinusoid rows the melody decoder needs beyond max_position_embeddings: the longest prefix."""
    return int(model.config.chroma_length) + int(max_text_tokens)


def melody_plans(plan_cls, base_plans: list, max_text_tokens: int) -> list:
    """Replace the text model's cross_kv and decoder plans by the melody prefix and melody decoder plans."""
    from musicgen_onnx.graphs import decoder_melody, melody_prefix

    prefix = plan_cls(
        "melody_prefix",
        "melody_prefix.onnx",
        melody_prefix.MelodyPrefix,
        lambda m, w: w.example_inputs(2, 5, 7),
        lambda w: (melody_prefix.INPUT_NAMES, melody_prefix.OUTPUT_NAMES, melody_prefix.DYNAMIC_AXES),
        validator=validate_melody_prefix,
    )
    decoder = plan_cls(
        "decoder",
        "decoder.onnx",
        lambda m: decoder_melody.MelodyDecoderStep(m, extra_positions(m, max_text_tokens)),
        lambda m, w: w.example_inputs(2, 3, 4, 0, 16, m.decoder.config.vocab_size),
        lambda w: (
            decoder_melody.input_names(w.num_layers),
            decoder_melody.output_names(w.num_layers),
            decoder_melody.dynamic_axes(w.num_layers),
        ),
        validator=validate_melody_decoder,
        smoke=smoke_melody_decoder,
    )
    plans = []
    for plan in base_plans:
        if plan.role == "cross_kv":
            plans.append(prefix)
        elif plan.role == "decoder":
            plans.append(decoder)
        else:
            plans.append(plan)
    return plans


def melody_spec(model: Any, max_text_tokens: int):
    """The manifest's ``melody`` section: chroma parameters and the decoder's position table length."""
    from musicgen_onnx.runtime.manifest import MelodySpec

    return MelodySpec(
        sampling_rate=int(model.config.audio_encoder.sampling_rate),
        n_fft=CHROMA_N_FFT,
        hop_length=CHROMA_HOP,
        num_chroma=int(model.config.num_chroma),
        chroma_length=int(model.config.chroma_length),
        max_seconds=CHROMA_MAX_SECONDS,
        position_table=int(model.decoder.config.max_position_embeddings) + extra_positions(model, max_text_tokens),
    )


# ---- validation ------------------------------------------------------------------------------------------


def validate_melody_prefix(path: Path, model, wrapper, tol: float) -> list:
    """The prefix graph fed with transformers' text states vs transformers' own prefix construction."""
    import torch
    from transformers import GenerationConfig

    from .validate import _compare, _session

    session = _session(path)
    vocab = model.text_encoder.config.vocab_size
    length = wrapper.chroma_length
    checks = []
    generator = torch.Generator().manual_seed(99)
    for batch, text_len, frames in [(1, 3, 5), (2, 4, length), (3, 1, length + 9), (1, 2, 1)]:
        ids = torch.randint(3, vocab, (batch, text_len), generator=generator)
        mask = torch.ones(batch, text_len, dtype=torch.long)
        mask[-1, (text_len + 1) // 2 :] = 0
        bins = torch.randint(0, wrapper.num_chroma, (batch, frames), generator=generator)
        chroma = torch.nn.functional.one_hot(bins, wrapper.num_chroma).to(torch.float32)
        with torch.no_grad():
            kwargs = model._prepare_encoder_hidden_states_kwargs_for_generation(
                ids, {"attention_mask": mask, "input_features": chroma}, "input_ids", GenerationConfig()
            )
            ref = kwargs["encoder_hidden_states"]
            states = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            if hasattr(model, "enc_to_dec_proj"):
                states = model.enc_to_dec_proj(states)
            states = states * mask[..., None]
        ours = session.run(None, {"encoder_hidden_states": states.numpy(), "chroma": chroma.numpy()})
        case = f"batch={batch} text={text_len} frames={frames}"
        checks.append(_compare("melody_prefix", case, ours, [ref], tol))
    return checks


def hf_melody_reference(model, input_ids, prefix, past: list):
    """Last-position logits and present K/V of transformers' MusicgenMelodyForCausalLM (its own cache)."""
    import torch
    from transformers.cache_utils import DynamicCache

    from .validate import cache_kwargs

    cache = DynamicCache()
    for i in range(len(past) // 2):
        if past[2 * i].shape[2] > 0:
            cache.update(past[2 * i], past[2 * i + 1], i)
    batch, codebooks, seq_len = input_ids.shape
    with torch.no_grad():
        out = model.decoder(
            input_ids=input_ids.reshape(batch * codebooks, seq_len),
            encoder_hidden_states=prefix if prefix.shape[1] else None,
            use_cache=True,
            **cache_kwargs(model.decoder, cache),
        )
    logits = out.logits.reshape(batch, codebooks, out.logits.shape[-2], -1)[:, :, -1]
    presents = []
    for i in range(len(past) // 2):
        layer = cache.layers[i]
        presents += [layer.keys, layer.values]
    return [logits, *presents]


def _feeds(names: list[str], inputs) -> dict[str, np.ndarray]:
    return {name: t.numpy() for name, t in zip(names, inputs, strict=True)}


def validate_melody_decoder(path: Path, model, wrapper, tol: float) -> list:
    import torch

    from .validate import _compare, _session

    session = _session(path)
    names = [i.name for i in session.get_inputs()]
    vocab = model.decoder.config.vocab_size
    checks = []
    torch.manual_seed(4321)
    # (batch, seq_len, prefix_len, past_len, total = buffer length)
    for batch, seq_len, prefix_len, past_len, full_total in [
        (2, 1, 6, 0, False),  # first call: prefix + start column
        (1, 4, 5, 0, False),  # first call with prompt codes
        (3, 1, 0, 7, False),  # a step over a past
        (2, 1, 0, 9, True),  # a CUDA-graph replay's step: total = buffer length
    ]:
        max_len = past_len + prefix_len + seq_len + 3
        inputs = list(wrapper.example_inputs(batch, seq_len, prefix_len, past_len, max_len, vocab))
        if full_total:
            inputs[4] = torch.tensor(max_len, dtype=torch.int32)
            inputs[5] = torch.zeros(batch, 1, seq_len, max_len)
        ours = session.run(None, _feeds(names, inputs))
        total = past_len + prefix_len + seq_len
        ours = [ours[0]] + [p[:, :, :total] for p in ours[1:]]
        past = [p[:, :, :past_len] for p in inputs[6:]]
        ref = hf_melody_reference(model, inputs[0], inputs[1], past)
        case = f"batch={batch} seq={seq_len} prefix={prefix_len} past={past_len}"
        case += " total=buffer" if full_total else ""
        checks.append(_compare("decoder", case, ours, ref, tol))
    checks.append(_validate_padded_row(session, names, model, wrapper, tol))
    return checks


def _validate_padded_row(session, names, model, wrapper, tol: float):
    """A batch row whose prefix positions [4, 7) are padding equals that row without them, run alone."""
    import torch

    from .validate import _compare

    torch.manual_seed(77)
    start, stop, prefix_len, seq_len = 4, 7, 9, 2
    inputs = list(wrapper.example_inputs(2, seq_len, prefix_len, 0, 16, model.decoder.config.vocab_size, (start, stop)))
    ours = session.run(None, _feeds(names, inputs))
    keep = [i for i in range(prefix_len + seq_len) if not start <= i < stop]
    alone_prefix = torch.cat([inputs[1][1:, :start], inputs[1][1:, stop:]], dim=1)
    empty = [p[1:, :, :0] for p in inputs[6:]]
    ref = hf_melody_reference(model, inputs[0][1:], alone_prefix, empty)
    ours_row = [ours[0][1:]] + [p[1:, :, keep] for p in ours[1:]]
    return _compare("decoder", "padded batch row vs alone", ours_row, ref, tol)


def smoke_melody_decoder(role: str, path: Path, model, wrapper) -> None:
    """A reduced-precision melody decoder must load, run (prefill and step) and give finite outputs."""
    from .validate import ValidationError, _session

    session = _session(path)
    names = [i.name for i in session.get_inputs()]
    types = {i.name: i.type for i in session.get_inputs()}
    for args in [(2, 1, 5, 0, 12), (2, 1, 0, 6, 12)]:
        feeds = _feeds(names, wrapper.example_inputs(*args, model.decoder.config.vocab_size))
        feeds = {k: v.astype(np.float16) if types[k] == "tensor(float16)" else v for k, v in feeds.items()}
        if not all(np.isfinite(o).all() for o in session.run(None, feeds)):
            raise ValidationError("decoder: the converted graph produces NaN or inf")
