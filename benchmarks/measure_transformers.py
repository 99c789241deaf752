"""Benchmark child ``transformers``: times ``MusicgenForConditionalGeneration.generate`` on random weights.

Timing points: forward pre/post hooks registered from the outside on ``model.text_encoder`` and
``model.decoder``, plus a no-op ``StoppingCriteria`` that transformers calls once per step after the token is
sampled (see ``measure.py`` for how the steps are delimited).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from measure_common import (
    PhaseMonitor,
    current_rss_bytes,
    log,
    peak_rss_bytes,
    percentile,
    step_summary,
    texts_for,
)


def run_transformers(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch
    import transformers
    from musicgen_onnx.export.random_weights import build_random_model
    from musicgen_onnx.runtime.manifest import Manifest
    from musicgen_onnx.runtime.tokenizer import TextTokenizer
    from transformers import StoppingCriteria, StoppingCriteriaList

    cuda = spec["device"] == "cuda"
    torch.set_num_threads(spec["threads"])
    torch.set_num_interop_threads(1)
    device = torch.device("cuda" if cuda else "cpu")
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def now() -> float:
        sync()
        return time.perf_counter()

    log.info("transformers: building %s with random weights (seed %d)", spec["model"], spec["seed"])
    t0 = time.perf_counter()
    model, _ = build_random_model(spec["model"], seed=spec["seed"])
    dtype = "fp32"
    if cuda:
        model = model.to(device).half()
        dtype = "fp16"
    load_s = time.perf_counter() - t0
    rss_after_load = current_rss_bytes()
    log.info("transformers: model ready in %.1f s (%s, %s)", load_s, device, dtype)

    # Same tokenizer file and padding as the runtime, so both systems see identical ids.
    manifest = Manifest.load(spec["export_dir"])
    tokenizer = TextTokenizer(
        Path(spec["export_dir"]) / manifest.text.tokenizer_file, manifest.text.pad_token_id, manifest.text.max_tokens
    )

    events: dict[str, list[float]] = {"dec_pre": [], "dec_post": [], "te_pre": [], "te_post": [], "stop": []}

    class StepMarker(StoppingCriteria):
        """Never stops; records when transformers finished a step (token sampled and appended)."""

        def __call__(self, input_ids, scores, **kwargs):
            events["stop"].append(now())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    hooks = [
        model.decoder.register_forward_pre_hook(lambda m, a: events["dec_pre"].append(now())),
        model.decoder.register_forward_hook(lambda m, a, o: events["dec_post"].append(now())),
        model.text_encoder.register_forward_pre_hook(lambda m, a: events["te_pre"].append(now())),
        model.text_encoder.register_forward_hook(lambda m, a, o: events["te_post"].append(now())),
    ]

    texts = texts_for(spec["batch"])

    def generate(max_new_tokens: int):
        for v in events.values():
            v.clear()
        torch.manual_seed(spec["seed"])
        start = now()
        ids, mask = tokenizer(texts)
        with torch.inference_mode():
            audio = model.generate(
                input_ids=torch.from_numpy(ids).to(device),
                attention_mask=torch.from_numpy(mask).to(device),
                do_sample=True,
                guidance_scale=spec["guidance_scale"],
                top_k=spec["top_k"],
                top_p=1.0,
                temperature=1.0,
                max_new_tokens=max_new_tokens,
                stopping_criteria=StoppingCriteriaList([StepMarker()]),
            )
        end = now()
        return audio, start, end

    log.info("transformers: warm-up (%d steps, batch %d)", spec["warmup_steps"], spec["batch"])
    t0 = time.perf_counter()
    generate(spec["warmup_steps"])
    log.info("transformers: warm-up done in %.1f s", time.perf_counter() - t0)

    n = spec["max_new_tokens"]
    log.info("transformers: timed run, %d steps, batch %d (CFG: decoder batch %d)", n, spec["batch"], 2 * spec["batch"])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with PhaseMonitor(gpu=cuda) as mem:
        audio, start, end = generate(n)
    for h in hooks:
        h.remove()

    stops, dec_pre, dec_post = events["stop"], events["dec_pre"], events["dec_post"]
    # transformers 5.24's MusicgenForConditionalGeneration.generate runs a prefill forward of its own and
    # passes it to _sample as `prefill_outputs`, which _sample ignores and prefills again: n + 1 decoder
    # calls for n tokens. The extra (first) call is counted in end-to-end time, not in the step times.
    extra = len(dec_pre) - n
    if len(stops) != n or extra < 0:
        raise RuntimeError(f"expected {n} steps and >= {n} decoder calls, saw {len(stops)} steps, {len(dec_pre)} calls")
    step_times = [stops[0] - dec_pre[extra]] + [stops[i] - stops[i - 1] for i in range(1, n)]
    all_fwd = [b - a for a, b in zip(dec_pre, dec_post, strict=True)]
    decoder_fwd = all_fwd[extra:]
    audio_np = audio.float().cpu().numpy()
    frames = n + 1 - spec["codebooks_per_channel"]
    wall = end - start
    result: dict[str, Any] = {
        "system": "transformers",
        "label": f"transformers {transformers.__version__} ({'cuda' if cuda else 'cpu'}, {dtype})",
        "batch": spec["batch"],
        "dtype": dtype,
        "load_s": load_s,
        "max_new_tokens": n,
        "frames": frames,
        "audio_shape": list(audio_np.shape),
        "audio_finite": bool(np.isfinite(audio_np).all()),
        "text_encode_ms": (events["te_post"][0] - events["te_pre"][0]) * 1e3,
        "text_encode_note": "T5 forward only (hooks on model.text_encoder); cross-attention K/V are computed "
        "inside every decoder forward",
        **step_summary(step_times),
        "decoder_forward_median_ms": percentile([t * 1e3 for t in decoder_fwd[1:]], 50),
        "extra_decoder_calls": extra,
        "extra_decoder_calls_ms": [round(t * 1e3, 3) for t in all_fwd[:extra]],
        "decoder_forward_times_ms": [round(t * 1e3, 4) for t in decoder_fwd],
        "audio_decode_ms": (end - stops[-1]) * 1e3,
        "audio_decode_note": "from the last step to generate() returning: delay-pattern revert + EnCodec decode",
        "end_to_end_s": wall,
        "rss_after_load_bytes": rss_after_load,
        "peak_rss_generate_bytes": mem.peak_rss,
        "peak_anon_rss_generate_bytes": mem.peak_anon_rss,
        "peak_rss_token_loop_bytes": mem.peak_rss_before(stops[-1]),
        "peak_rss_bytes": peak_rss_bytes(),
        "other_cpu_percent": mem.other_cpu_percent,
    }
    if cuda:
        result["gpu_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
        result["gpu_max_reserved_bytes"] = int(torch.cuda.max_memory_reserved())
        if mem.peak_gpu_used is not None and mem.gpu_baseline is not None:
            result["gpu_used_delta_bytes"] = mem.peak_gpu_used - mem.gpu_baseline
    return result
