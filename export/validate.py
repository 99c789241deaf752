"""Check every exported graph against transformers' own PyTorch modules on fresh inputs.

Inputs differ in shape from the ones used for tracing (other batch sizes, sequence and past lengths,
EnCodec lengths down to one frame), so a shape frozen by the tracer fails here, not in production.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from musicgen_onnx.graphs.decoder import DecoderStep

logger = logging.getLogger("musicgen_onnx")

#: fp32 graphs must match PyTorch within this, relative to max(1, max |reference|).
FP32_TOLERANCE = 1e-4


def cache_kwargs(module, cache) -> dict:
    """The keyword a transformers decoder takes its KV cache under.

    transformers 5.0-5.17 call it ``past_key_values``, later releases ``cache``; an unknown keyword is
    swallowed by ``**kwargs`` and the decoder would silently build its own cache, so ask the signature."""
    import inspect

    params = inspect.signature(module.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


class ValidationError(RuntimeError):
    """An exported graph disagrees with PyTorch beyond the stated tolerance."""


@dataclass
class Check:
    graph: str
    case: str
    max_abs_diff: float
    scale: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance * max(1.0, self.scale)


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # Prepacking copies every MatMul weight into anonymous memory (13 GB for a large decoder) for speed that a
    # few validation runs do not need: without it onnxruntime computes from the mapped .data file.
    options.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _compare(graph: str, case: str, ours: list[np.ndarray], ref: list, tol: float) -> Check:
    worst, scale = 0.0, 0.0
    for a, b in zip(ours, ref, strict=True):
        b = b.detach().cpu().numpy() if hasattr(b, "detach") else np.asarray(b)
        if a.shape != b.shape:
            raise ValidationError(f"{graph} [{case}]: output shape {a.shape} != PyTorch {b.shape}")
        worst = max(worst, float(np.max(np.abs(a.astype(np.float64) - b))) if a.size else 0.0)
        scale = max(scale, float(np.max(np.abs(b))) if b.size else 0.0)
    return Check(graph, case, worst, scale, tol)


def hf_decoder_reference(model, input_ids, encoder_attention_mask, cross: list, past: list):
    """Logits of the last position and present K/V from transformers' MusicgenForCausalLM.

    The past and the cross-attention K/V are fed through transformers' own cache objects, so the
    reference exercises transformers' attention, masks and positions, not our wrapper.
    """
    import torch
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    decoder = model.decoder
    num_layers = len(cross) // 2
    self_cache, cross_cache = DynamicCache(), DynamicCache()
    for i in range(num_layers):
        if past[2 * i].shape[2] > 0:
            self_cache.update(past[2 * i], past[2 * i + 1], i)
        cross_cache.update(cross[2 * i], cross[2 * i + 1], i)
    cache = EncoderDecoderCache(self_cache, cross_cache)
    for i in range(num_layers):
        cache.is_updated[i] = True
    batch, codebooks, seq_len = input_ids.shape
    text_len = cross[0].shape[2]
    hidden = decoder.config.hidden_size
    with torch.no_grad():
        out = decoder(
            input_ids=input_ids.reshape(batch * codebooks, seq_len),
            encoder_hidden_states=torch.zeros(batch, text_len, hidden),
            encoder_attention_mask=encoder_attention_mask,
            use_cache=True,
            **cache_kwargs(decoder, cache),
        )
    logits = out.logits.reshape(batch, codebooks, seq_len, -1)[:, :, -1]
    presents = []
    for i in range(num_layers):
        layer = cache.self_attention_cache.layers[i]
        presents += [layer.keys, layer.values]
    return [logits, *presents]


def static_cache_feeds(
    names: list[str], inputs: list, num_layers: int, max_len: int, full_total: bool = False
) -> dict[str, np.ndarray]:
    """Plain-decoder inputs (ids, mask, cross..., past...) as the static-cache graph's feeds.

    ``full_total`` passes the buffer length as total_sequence_length, as CUDA-graph replays of
    single-token steps do; otherwise the true length (past + S)."""
    ids, mask = inputs[0], inputs[1]
    cross, past = inputs[2 : 2 + 2 * num_layers], inputs[2 + 2 * num_layers :]
    past_len = past[0].shape[2]
    buffers = []
    for p in past:
        buf = np.zeros((p.shape[0], p.shape[1], max_len, p.shape[3]), np.float32)
        buf[:, :, :past_len] = p.numpy()
        buffers.append(buf)
    seq_len = ids.shape[2]
    total = max_len if full_total else past_len + seq_len
    positions = np.broadcast_to(np.arange(past_len, past_len + seq_len, dtype=np.int64), (ids.shape[0], seq_len))
    values = [ids.numpy(), mask.numpy(), np.ascontiguousarray(positions), np.array(total, np.int32)]
    values += [c.numpy() for c in cross] + buffers
    return dict(zip(names, values, strict=True))


def validate_decoder(path: Path, model, wrapper, tol: float) -> list[Check]:
    import torch

    session = _session(path)
    names = [i.name for i in session.get_inputs()]
    static = "total_sequence_length" in names
    checks = []
    generator = torch.Generator().manual_seed(1234)
    n = wrapper.num_layers
    cases = [(1, 4, 0, 3, False), (3, 1, 5, 6, False), (2, 3, 7, 1, False)]
    if static:
        cases.append((2, 1, 6, 4, True))  # a CUDA-graph replay's single step: total = buffer length
    for batch, seq_len, past_len, text_len, full_total in cases:
        if static and batch > 1 and seq_len > 1 and past_len > 0:
            continue  # never fed by the runtime (prefill has no past); GQA would need query_seqlens
        inputs = DecoderStep.example_inputs(wrapper, batch, seq_len, past_len, text_len)
        inputs = [torch.randn(t.shape, generator=generator) if t.is_floating_point() else t for t in inputs]
        ids, mask, cross, past = inputs[0], inputs[1], list(inputs[2 : 2 + 2 * n]), list(inputs[2 + 2 * n :])
        if static:
            total = past_len + seq_len
            ours = session.run(None, static_cache_feeds(names, inputs, n, total + 3, full_total))
            ours = [ours[0]] + [p[:, :, :total] for p in ours[1:]]
        else:
            ours = session.run(None, {name: t.numpy() for name, t in zip(names, inputs, strict=True)})
        ref = hf_decoder_reference(model, ids, mask, cross, past)
        case = f"batch={batch} seq={seq_len} past={past_len} text={text_len}" + (" total=buffer" if full_total else "")
        checks.append(_compare("decoder", case, ours, ref, tol))
    if static:
        checks.append(_per_row_positions_check(session, names, model, wrapper, generator, tol))
    return checks


def _per_row_positions_check(session, names, model, wrapper, generator, tol: float) -> Check:
    """Rows at different positions in one single-token step (what continuous batching feeds): each row's
    logits and new K/V must equal transformers run on that row alone, with its own past."""
    import torch

    n, pasts, text_len, max_len = wrapper.num_layers, [2, 6, 4], 5, 9
    batch = len(pasts)
    inputs = DecoderStep.example_inputs(wrapper, batch, 1, max(pasts), text_len)
    inputs = [torch.randn(t.shape, generator=generator) if t.is_floating_point() else t for t in inputs]
    ids, mask, cross, past = inputs[0], inputs[1], list(inputs[2 : 2 + 2 * n]), list(inputs[2 + 2 * n :])
    feeds = static_cache_feeds(names, inputs, n, max_len)
    feeds["position_ids"] = np.array(pasts, np.int64)[:, None]
    feeds["total_sequence_length"] = np.array(max(pasts) + 1, np.int32)
    out = session.run(None, feeds)
    ours, ref = [], []
    for b, length in enumerate(pasts):
        rows = slice(b, b + 1)
        expected = hf_decoder_reference(
            model, ids[rows], mask[rows], [c[rows] for c in cross], [p[rows, :, :length] for p in past]
        )
        ref += list(expected)
        ours += [out[0][rows]] + [p[rows, :, : length + 1] for p in out[1:]]
    return _compare("decoder", f"per-row positions {pasts}", ours, ref, tol)


def smoke_test(role: str, path: Path, model, wrapper) -> None:
    """A reduced-precision graph is not held to fp32 parity here (quality is measured separately,
    as KL divergence and token agreement); it must still load, run and give finite outputs."""
    import torch

    session = _session(path)
    names = [i.name for i in session.get_inputs()]
    if role == "decoder":
        inputs = DecoderStep.example_inputs(wrapper, 2, 1, 3, 4)
        if "total_sequence_length" in names:
            feeds = static_cache_feeds(names, list(inputs), wrapper.num_layers, 8)
        else:
            feeds = {name: t.numpy() for name, t in zip(names, inputs, strict=True)}
    else:
        feeds = {names[0]: torch.randn(2, 3, model.decoder.config.hidden_size).numpy()}
    types = {i.name: i.type for i in session.get_inputs()}
    casts = {"tensor(float16)": np.float16, "tensor(int8)": np.int8}  # fp16 exports; an int8 KV cache
    feeds = {k: v.astype(casts[types[k]]) if types[k] in casts else v for k, v in feeds.items()}
    outputs = session.run(None, feeds)
    if not all(np.isfinite(o).all() for o in outputs):
        raise ValidationError(f"{role}: the converted graph produces NaN or inf")


def validate_text_encoder(path: Path, model, wrapper, tol: float) -> list[Check]:
    import torch

    session = _session(path)
    vocab = model.text_encoder.config.vocab_size
    checks = []
    for batch, length in [(1, 1), (3, 9)]:
        ids, mask = wrapper.example_inputs(batch, length, vocab)
        with torch.no_grad():
            hidden = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
            if hasattr(model, "enc_to_dec_proj"):
                hidden = model.enc_to_dec_proj(hidden)
            ref = hidden * mask[..., None]
        ours = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        checks.append(_compare("text_encoder", f"batch={batch} len={length}", ours, [ref], tol))
    return checks


def validate_cross_kv(path: Path, model, wrapper, tol: float) -> list[Check]:
    import torch

    session = _session(path)
    hidden = model.decoder.config.hidden_size
    checks = []
    for batch, length in [(1, 1), (2, 11)]:
        states = torch.randn(batch, length, hidden)
        ref = []
        with torch.no_grad():
            for layer in model.decoder.model.decoder.layers:
                attn = layer.encoder_attn
                shape = (batch, length, attn.num_heads, attn.head_dim)
                ref += [
                    attn.k_proj(states).view(shape).transpose(1, 2),
                    attn.v_proj(states).view(shape).transpose(1, 2),
                ]
        ours = session.run(None, {"encoder_hidden_states": states.numpy()})
        checks.append(_compare("cross_kv", f"batch={batch} len={length}", ours, ref, tol))
    return checks


def validate_encodec_decode(path: Path, model, wrapper, tol: float) -> list[Check]:
    import torch

    session = _session(path)
    checks = []
    for batch, frames in [(1, 1), (2, 2), (1, 3), (2, 50)]:
        (codes,) = wrapper.example_inputs(batch, frames)
        with torch.no_grad():
            ref = model.audio_encoder.decode(codes[None], [None]).audio_values
        ours = session.run(None, {"audio_codes": codes.numpy()})
        checks.append(_compare("encodec_decode", f"batch={batch} frames={frames}", ours, [ref], tol))
    return checks


def validate_encodec_encode(path: Path, model, wrapper, tol: float) -> list[Check]:
    import torch

    session = _session(path)
    hop = int(np.prod(model.audio_encoder.config.upsampling_ratios))
    checks = []
    for batch, samples in [(1, 1), (2, hop + 1), (1, 3 * hop), (2, 20 * hop + 17)]:
        (audio,) = wrapper.example_inputs(batch, samples)
        with torch.no_grad():
            ref = model.audio_encoder.encode(audio).audio_codes[0]
        (ours,) = session.run(None, {"audio_values": audio.numpy()})
        ref = ref.numpy()
        if ours.shape != ref.shape:
            raise ValidationError(f"encodec_encode: codes shape {ours.shape} != PyTorch {ref.shape}")
        # Codes are integers: count frames whose codes differ (a near-tie argmax can flip one frame).
        bad_frames = float(np.mean(np.any(ours != ref, axis=1)))
        checks.append(Check("encodec_encode", f"batch={batch} samples={samples}", bad_frames, 0.0, 0.01))
    return checks


#: Sampler settings checked at export: (batch, cfg, guidance, temperature, top_k (0: off), top_p, greedy).
SAMPLER_CASES = [
    (1, True, 3.0, 1.0, 250, 1.0, False),
    (3, True, 2.5, 0.7, 50, 0.9, False),
    (2, False, 1.0, 1.3, 0, 0.8, False),
    (2, True, 3.0, 1.0, 1, 1.0, True),
]


def validate_sampler(path: Path, model, wrapper, tol: float) -> list[Check]:
    """Tokens drawn by the graph vs the runtime's numpy path (held to transformers' logits processors
    by the tests) from the same uniform numbers; rounding may flip a draw sitting on a bucket edge."""
    import torch
    from musicgen_onnx.runtime.generation import process_logits, select_with_uniform
    from musicgen_onnx.runtime.sampler import sampler_feeds

    session = _session(path)
    rng = np.random.default_rng(7)
    vocab, codebooks = wrapper.vocab_size, wrapper.num_codebooks
    dtype = np.float16 if wrapper.logits_dtype == torch.float16 else np.float32
    checks = []
    for batch, cfg, scale, temperature, top_k, top_p, greedy in SAMPLER_CASES:
        rows = 2 * batch if cfg else batch
        logits = (rng.standard_normal((rows, codebooks, vocab)) * 3).astype(dtype)
        uniform = np.zeros(batch * codebooks) if greedy else rng.random(batch * codebooks)
        feeds = sampler_feeds(vocab, scale, temperature, top_k, top_p, do_sample=not greedy)
        uniform = uniform.astype(np.float32)
        (tokens,) = session.run(None, {"logits": logits, "uniform": uniform.reshape(batch, codebooks), **feeds})
        scores = process_logits(
            logits.reshape(-1, vocab).astype(np.float32),
            guidance_scale=scale if cfg else None,
            do_sample=not greedy,
            temperature=temperature,
            top_k=top_k or None,
            top_p=top_p,
        )
        ref = np.argmax(scores, axis=-1) if greedy else select_with_uniform(scores, uniform)
        mismatch = float(np.mean(tokens.reshape(-1) != ref))
        case = f"batch={batch} cfg={cfg} top_k={top_k} top_p={top_p} greedy={greedy}"
        checks.append(Check("sampler", case, mismatch, 0.0, 0.0 if greedy else 0.01))
    return checks


VALIDATORS: dict[str, Callable] = {
    "text_encoder": validate_text_encoder,
    "cross_kv": validate_cross_kv,
    "decoder": validate_decoder,
    "encodec_decode": validate_encodec_decode,
    "encodec_encode": validate_encodec_encode,
    "sampler": validate_sampler,
}


def validate_graph(
    role: str, path: Path, model, wrapper, tol: float = FP32_TOLERANCE, validator: Callable | None = None
) -> list[Check]:
    """Run ``validator`` (default: the role's entry in VALIDATORS) and raise on the first failed check."""
    checks = (validator or VALIDATORS[role])(path, model, wrapper, tol)
    for check in checks:
        logger.debug("validate %s [%s]: max|diff| %.3g (scale %.3g)", role, check.case, check.max_abs_diff, check.scale)
        if not check.ok:
            raise ValidationError(
                f"{role} [{check.case}] differs from PyTorch: max |diff| {check.max_abs_diff:.3g} > "
                f"{check.tolerance:g} x max(1, {check.scale:.3g})"
            )
    return checks
