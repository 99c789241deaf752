"""Parity of runtime.generation with transformers' own MusicGen generation code (never with our own outputs)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from musicgen_onnx.runtime.generation import (
    DelayPatternState,
    apply_delay_pattern,
    build_delay_pattern,
    process_logits,
    revert_delay_pattern,
    select_tokens,
    split_channels,
)
from scipy import stats
from transformers import GenerationConfig, MusicgenDecoderConfig, MusicgenForCausalLM
from transformers.generation.logits_process import ClassifierFreeGuidanceLogitsProcessor, LogitsProcessorList

PAD = 2048
B = 2


@functools.cache
def tiny_decoder(num_codebooks: int, channels: int) -> MusicgenForCausalLM:
    cfg = MusicgenDecoderConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        ffn_dim=32,
        num_codebooks=num_codebooks,
        audio_channels=channels,
        max_position_embeddings=128,
    )
    return MusicgenForCausalLM(cfg).eval()


def hf_build(model, prompt: np.ndarray | None, max_length: int):
    """transformers: start token prepended (as _prepare_decoder_input_ids_for_generation does), then the mask."""
    K = model.num_codebooks
    start = torch.full((B * K, 1), PAD, dtype=torch.long)
    ids = start
    if prompt is not None and prompt.shape[-1]:
        ids = torch.cat([start, torch.from_numpy(prompt).reshape(B * K, -1)], dim=-1)
    ids, mask = model.build_delay_pattern_mask(ids, pad_token_id=PAD, max_length=max_length)
    return ids.reshape(B, K, -1).numpy(), mask.reshape(B, K, -1).numpy()


LAYOUTS = [(4, 1), (8, 2)]  # (K, channels): mono and stereo (C = 4 either way)
CASES = [
    (k, ch, p, length)
    for k, ch in LAYOUTS
    for p in (0, 1, 5)
    for length in (3, 6, 7, 9, 10, 16, 37)
    if length > p + 1  # transformers needs at least one step to generate
]


def _prompt(k: int, p: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2048, (B, k, p), dtype=np.int64)


@pytest.mark.parametrize(("k", "ch", "p", "length"), CASES)
def test_build_and_apply_match_transformers(k, ch, p, length):
    model = tiny_decoder(k, ch)
    prompt = _prompt(k, p, seed=k * 100 + p * 10 + length)
    kw = dict(batch_size=B, num_codebooks=k, channels=ch, max_length=length, pad_token_id=PAD)
    try:
        ref_ids, ref_mask = hf_build(model, prompt, length)
    except RuntimeError:  # prompt too long for max_length: transformers fails, we raise a clear error
        with pytest.raises(ValueError, match="too short"):
            build_delay_pattern(prompt, **kw)
        return
    ids, mask = build_delay_pattern(prompt if p else None, **kw)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(mask, ref_mask)
    assert ids.dtype == mask.dtype == np.int64
    if p == 0:  # an empty [B, K, 0] prompt is the same as no prompt
        ids0, mask0 = build_delay_pattern(prompt, **kw)
        np.testing.assert_array_equal(ids0, ids)
        np.testing.assert_array_equal(mask0, mask)

    rng = np.random.default_rng(length)
    for s in (1, ids.shape[-1], length):
        raw = rng.integers(0, 2048, (B, k, s), dtype=np.int64)
        ref = model.apply_delay_pattern_mask(
            torch.from_numpy(raw.reshape(B * k, s)), torch.from_numpy(ref_mask.reshape(B * k, -1))
        )
        np.testing.assert_array_equal(apply_delay_pattern(raw, mask), ref.reshape(B, k, s).numpy())


@pytest.mark.parametrize(("k", "ch", "p", "length"), [c for c in CASES if c[3] >= c[2] + 4])
def test_generation_loop_and_revert_match_transformers(k, ch, p, length):
    """Replay transformers' loop (append raw token, feed mask-applied last column, final apply + pad filter)."""
    model = tiny_decoder(k, ch)
    prompt = _prompt(k, p, seed=7 + length)
    ref_ids, ref_mask = hf_build(model, prompt, length)
    ref_mask_t = torch.from_numpy(ref_mask.reshape(B * k, -1))
    ids, mask = build_delay_pattern(
        prompt, batch_size=B, num_codebooks=k, channels=ch, max_length=length, pad_token_id=PAD
    )
    state = DelayPatternState(ids, mask, pad_token_id=PAD, channels=ch)
    np.testing.assert_array_equal(state.prefill_ids(cfg=True), np.concatenate([ref_ids, ref_ids]))
    assert state.num_steps == length - ref_ids.shape[-1]

    hf = torch.from_numpy(ref_ids.reshape(B * k, -1))
    rng = np.random.default_rng(length * 3 + p)
    steps = 0
    snapshots = []
    while hf.shape[-1] < length:
        tokens = rng.integers(0, 2048, B * k, dtype=np.int64)
        hf = torch.cat([hf, torch.from_numpy(tokens)[:, None]], dim=-1)
        fed = model.apply_delay_pattern_mask(hf, ref_mask_t)[:, -1:].repeat((2, 1))  # CFG doubles the batch
        state.write(tokens if steps % 2 else tokens.reshape(B, k))
        steps += 1
        np.testing.assert_array_equal(state.step_ids(cfg=True).reshape(2 * B * k, 1), fed.numpy())
        snapshots.append(state.frames(0, state.frames_ready).copy())  # streaming: frames as soon as ready
    assert state.done and steps == state.num_steps

    out = model.apply_delay_pattern_mask(hf, ref_mask_t)
    ref_codes = out[out != PAD].reshape(B, k, -1).numpy()
    codes = state.codes()
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_array_equal(
        revert_delay_pattern(apply_delay_pattern(hf.reshape(B, k, -1).numpy(), mask), PAD), ref_codes
    )
    for snap in snapshots:  # frames handed out early were already final
        np.testing.assert_array_equal(snap, ref_codes[..., : snap.shape[-1]])
    if not state.delayed:
        assert state.frames_ready == 0
    else:
        assert codes.shape[-1] == length - k // ch == state.frames_ready
        np.testing.assert_array_equal(state.frames(0, state.frames_ready), ref_codes)
        np.testing.assert_array_equal(codes[..., :p], prompt)  # prompt frames come first
        lo = state.frames_ready // 2
        np.testing.assert_array_equal(state.frames(lo, state.frames_ready), ref_codes[..., lo:])


def test_prompt_already_starting_with_start_token_is_not_prefixed():
    # _prepare_decoder_input_ids_for_generation only prepends when *no* row starts with the start token
    prompt = _prompt(4, 3, seed=1)
    prompt[..., 0] = PAD
    ids, _ = build_delay_pattern(prompt, batch_size=B, num_codebooks=4, channels=1, max_length=20, pad_token_id=PAD)
    assert ids.shape[-1] == 3


def test_split_channels():
    codes = np.arange(2 * 8 * 5).reshape(2, 8, 5)
    left, right = split_channels(codes, 2)
    np.testing.assert_array_equal(left, codes[:, [0, 2, 4, 6]])
    np.testing.assert_array_equal(right, codes[:, [1, 3, 5, 7]])
    (mono,) = split_channels(codes[:, :4], 1)
    np.testing.assert_array_equal(mono, codes[:, :4])


# ---------------------------------------------------------------- logits processing


def hf_process(logits: np.ndarray, *, guidance_scale, do_sample, temperature, top_k, top_p) -> np.ndarray:
    """transformers' own pipeline: CFG as MusicGen's generate appends it, then _get_logits_processor's warpers."""
    custom = LogitsProcessorList()
    rows = logits.shape[0]
    if guidance_scale is not None and guidance_scale > 1:
        custom.append(ClassifierFreeGuidanceLogitsProcessor(guidance_scale))
        rows //= 2
    gen_cfg = GenerationConfig(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p)
    procs = tiny_decoder(4, 1)._get_logits_processor(
        generation_config=gen_cfg, input_ids_seq_length=1, logits_processor=custom, device="cpu"
    )
    return procs(torch.zeros((rows, 1), dtype=torch.long), torch.from_numpy(logits)).numpy()


PARAMS = [
    dict(guidance_scale=3.0, do_sample=True, temperature=1.0, top_k=250, top_p=None),  # audiocraft defaults
    dict(guidance_scale=3.0, do_sample=True, temperature=1.0, top_k=50, top_p=None),  # hub + global top_k
    dict(guidance_scale=None, do_sample=True, temperature=0.7, top_k=None, top_p=0.9),
    dict(guidance_scale=2.5, do_sample=True, temperature=1.3, top_k=20, top_p=0.8),
    dict(guidance_scale=3.0, do_sample=True, temperature=0.5, top_k=0, top_p=0.5),
    dict(guidance_scale=3.0, do_sample=True, temperature=1.0, top_k=None, top_p=0.0),  # keeps only the best
    dict(guidance_scale=3.0, do_sample=False, temperature=0.3, top_k=5, top_p=0.5),  # greedy: warpers off
    dict(guidance_scale=1.0, do_sample=True, temperature=1.0, top_k=0, top_p=1.0),  # all off
]


@pytest.mark.parametrize("params", PARAMS, ids=lambda p: "-".join(f"{v}" for v in p.values()))
def test_process_logits_matches_transformers(params):
    cfg = params["guidance_scale"] is not None and params["guidance_scale"] > 1
    rows = 2 * 8 * (2 if cfg else 1)
    logits = (np.random.default_rng(42).standard_normal((rows, 2048)) * 4).astype(np.float32)
    before = logits.copy()
    ours = process_logits(logits, **params)
    np.testing.assert_array_equal(logits, before)  # input untouched
    assert ours.dtype == np.float32 and ours.shape == (rows // (2 if cfg else 1), 2048)
    np.testing.assert_array_equal(ours, hf_process(logits, **params))
    greedy = select_tokens(ours, do_sample=False)
    np.testing.assert_array_equal(greedy, torch.argmax(torch.from_numpy(ours), dim=-1).numpy())


@pytest.mark.parametrize(
    "params",
    [
        dict(guidance_scale=3.0, do_sample=True, temperature=1.0, top_k=7, top_p=None),
        dict(guidance_scale=2.0, do_sample=True, temperature=1.0, top_k=1, top_p=None),
        dict(guidance_scale=None, do_sample=True, temperature=0.8, top_k=None, top_p=0.6),
        dict(guidance_scale=3.0, do_sample=True, temperature=1.0, top_k=10, top_p=0.7),
    ],
)
def test_process_logits_ties_match_transformers(params):
    """Integer logits: many ties at the k-th value (all tied tokens kept) and across the top-p cut."""
    cfg = params["guidance_scale"] is not None
    logits = np.random.default_rng(3).integers(-3, 3, (64 * (2 if cfg else 1), 64)).astype(np.float32)
    ours = process_logits(logits, **params)
    ref = hf_process(logits, **params)
    if params["top_p"] is None:
        np.testing.assert_array_equal(ours, ref)
    else:  # which of several tied tokens top-p drops follows torch's unstable sort: compare kept values
        np.testing.assert_array_equal(np.sort(ours, axis=-1), np.sort(ref, axis=-1))
    greedy = select_tokens(ours, do_sample=False)  # ties: first maximum, like torch.argmax
    np.testing.assert_array_equal(greedy, torch.argmax(torch.from_numpy(ours), dim=-1).numpy())


def test_process_logits_rejects_bad_parameters():
    x = np.zeros((4, 8), np.float32)
    with pytest.raises(ValueError):
        process_logits(x, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError):
        process_logits(x, do_sample=True, top_k=-1)
    with pytest.raises(ValueError):
        process_logits(x[:3], guidance_scale=3.0)


def _softmax64(x: np.ndarray) -> np.ndarray:
    e = np.exp(x.astype(np.float64) - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_sampler_frequencies_follow_softmax():
    rng = np.random.default_rng(11)
    dists = process_logits(
        rng.standard_normal((3, 40)).astype(np.float32) * 2,
        do_sample=True,
        temperature=0.9,
        top_k=12,
        top_p=0.95,
    )
    dists[2] = process_logits(np.arange(40, dtype=np.float32)[None] / 8, do_sample=True)[0]  # near-uniform
    n = 30000
    draws = select_tokens(np.tile(dists, (n, 1)), do_sample=True, rng=np.random.default_rng(2024)).reshape(n, 3)
    for r in range(3):
        p = _softmax64(dists[r])
        counts = np.bincount(draws[:, r], minlength=40)
        assert counts[p == 0].sum() == 0, "drew a filtered token"
        keep = p > 0
        pvalue = stats.chisquare(counts[keep], n * p[keep] / p[keep].sum()).pvalue
        assert pvalue > 1e-3, (r, pvalue)


def test_sampler_is_reproducible():
    scores = process_logits(
        np.random.default_rng(5).standard_normal((16, 2048)).astype(np.float32), do_sample=True, top_k=250
    )
    a = [select_tokens(scores, do_sample=True, rng=g) for g in [np.random.default_rng(9)] * 4]
    b = [select_tokens(scores, do_sample=True, rng=g) for g in [np.random.default_rng(9)] * 4]
    np.testing.assert_array_equal(np.stack(a), np.stack(b))
    assert a[0].dtype == np.int64 and a[0].shape == (16,)
    assert not np.array_equal(select_tokens(scores, do_sample=True, rng=np.random.default_rng(10)), b[0])
    assert np.isfinite(scores[np.arange(16), a[0]]).all()
    with pytest.raises(ValueError):
        select_tokens(scores, do_sample=True)
