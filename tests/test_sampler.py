"""The exported sampler graph (token selection on the device) against transformers' logits processors,
and generation with ``device_sampling=True`` against the numpy path (run on the CPU)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
from musicgen_onnx.runtime import MusicGen
from musicgen_onnx.runtime.generation import select_with_uniform
from musicgen_onnx.runtime.sampler import sampler_feeds
from scipy import stats
from test_generation_logic import PARAMS, hf_process

VOCAB, CODEBOOKS = 2048, 8  # the tiny stereo checkpoint keeps the real vocabulary and codebook count


@pytest.fixture(scope="module")
def sampler(exported_stereo):
    return ort.InferenceSession(str(exported_stereo / "sampler.onnx"), providers=["CPUExecutionProvider"])


def _run(session, logits, uniform, params):
    top_k = params["top_k"] or 0
    top_p = 1.0 if params["top_p"] is None else params["top_p"]
    scale = params["guidance_scale"] or 1.0
    feeds = sampler_feeds(VOCAB, scale, params["temperature"], top_k, top_p, params["do_sample"])
    batch = uniform.shape[0] // CODEBOOKS
    feeds.update(logits=logits, uniform=uniform.astype(np.float32).reshape(batch, CODEBOOKS))
    (tokens,) = session.run(None, feeds)
    return tokens.reshape(-1)


@pytest.mark.parametrize("params", PARAMS, ids=lambda p: "-".join(f"{v}" for v in p.values()))
def test_graph_draws_what_transformers_processors_give(sampler, params):
    cfg = params["guidance_scale"] is not None and params["guidance_scale"] > 1
    batch = 3
    rng = np.random.default_rng(3)
    agree = []
    for _ in range(10):
        logits = (rng.standard_normal(((2 if cfg else 1) * batch, CODEBOOKS, VOCAB)) * 4).astype(np.float32)
        uniform = np.zeros(batch * CODEBOOKS) if not params["do_sample"] else rng.random(batch * CODEBOOKS)
        ours = _run(sampler, logits, uniform, params)
        scores = hf_process(logits.reshape(-1, VOCAB), **params)  # transformers' own pipeline
        ref = np.argmax(scores, axis=-1) if not params["do_sample"] else select_with_uniform(scores, uniform)
        assert np.isfinite(scores[np.arange(len(ours)), ours]).all(), "drew a token transformers filtered out"
        agree.append(np.mean(ours == ref))
    assert np.mean(agree) >= 0.999, agree


def test_graph_frequencies_follow_transformers_distribution(sampler):
    params = dict(guidance_scale=3.0, do_sample=True, temperature=0.9, top_k=12, top_p=0.95)
    rng = np.random.default_rng(11)
    # every codebook row of the batch carries the same logits: 8 independent draws per batch row
    logits = np.repeat((rng.standard_normal((2, 1, VOCAB)) * 2).astype(np.float32), CODEBOOKS, axis=1)
    p = hf_process(logits.reshape(-1, VOCAB), **params)[0]
    p = np.exp(p.astype(np.float64) - p.max())
    p /= p.sum()
    n = 1000
    tiled = np.repeat(logits[:, None], n, axis=1).reshape(2 * n, CODEBOOKS, VOCAB)  # n cond rows, then n uncond
    tokens = _run(sampler, tiled, np.random.default_rng(5).random(n * CODEBOOKS), params)
    counts = np.bincount(tokens, minlength=VOCAB)
    assert counts[p == 0].sum() == 0
    keep = p > 0
    assert stats.chisquare(counts[keep], n * CODEBOOKS * p[keep]).pvalue > 1e-3


@pytest.mark.parametrize("do_sample", [False, True])
def test_device_sampling_generates_what_numpy_sampling_generates(exported_stereo, do_sample):
    host = MusicGen.load(exported_stereo, provider="cpu")
    device = MusicGen.load(exported_stereo, provider="cpu", device_sampling=True)
    assert not host.device_sampling and device.device_sampling
    kwargs = dict(max_new_tokens=40, do_sample=do_sample, guidance_scale=3.0, top_k=50, seed=4)
    texts = ["an upbeat rock song", "calm piano"]
    expected = host.generate_detailed(texts, **kwargs).codes
    np.testing.assert_array_equal(device.generate_detailed(texts, **kwargs).codes, expected)
    # unconditional generation runs without CFG: the graph's "no CFG" rows
    np.testing.assert_array_equal(
        device.generate_detailed(None, **kwargs).codes, host.generate_detailed(None, **kwargs).codes
    )


def test_device_sampling_needs_the_graph(exported_stereo, tmp_path):
    target = tmp_path / "old"
    shutil.copytree(exported_stereo, target)
    manifest = json.loads((target / "manifest.json").read_text())
    del manifest["graphs"]["sampler"]
    (target / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="device_sampling=True needs the sampler graph"):
        MusicGen.load(target, provider="cpu", device_sampling=True)
    assert not MusicGen.load(target, provider="cpu").device_sampling  # default: numpy sampling
