"""Benchmark child ``ours``: times musicgen-onnx's ``MusicGen.generate_detailed`` on the same export.

Timing points: the runtime's own ``timings`` / ``step_times``, plus ``TimedSession`` proxies around every
onnxruntime session the model holds; Python overhead per step = step time - time inside the decoder's run call
(and the sampler graph's, when tokens are selected on the device).
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


class TimedSession:
    """Wraps an onnxruntime.InferenceSession from the outside: times run / run_with_iobinding, forwards the rest."""

    def __init__(self, session: Any, role: str, calls: list[tuple[str, float]]) -> None:
        self._session = session
        self._role = role
        self._calls = calls

    def run(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self._session.run(*args, **kwargs)
        finally:
            self._calls.append((self._role, time.perf_counter() - t0))

    def run_with_iobinding(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return self._session.run_with_iobinding(*args, **kwargs)
        finally:
            self._calls.append((self._role, time.perf_counter() - t0))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def wrap_sessions(model: Any, calls: list[tuple[str, float]]) -> list[str]:
    """Replace every InferenceSession held by ``model`` or the runtime objects it holds by a TimedSession.

    The role of a session is the manifest role of the file it was opened from (``decoder``, ...).
    """
    import onnxruntime as ort

    by_file = {Path(spec.file).name: role for role, spec in model.manifest.graphs.items()}
    proxies: dict[int, TimedSession] = {}

    def proxy(session: Any) -> TimedSession:
        if id(session) not in proxies:
            path = Path(getattr(session, "_model_path", "") or "")
            role = by_file.get(path.name, path.stem or "unknown")
            proxies[id(session)] = TimedSession(session, role, calls)
        return proxies[id(session)]

    seen: set[int] = set()

    def walk(owner: Any, depth: int) -> None:  # the facade, its engine, the batching engine, its slot decoder
        if id(owner) in seen or depth > 3 or not hasattr(owner, "__dict__"):
            return
        seen.add(id(owner))
        for attr, value in list(vars(owner).items()):
            if isinstance(value, ort.InferenceSession):
                setattr(owner, attr, proxy(value))
            elif type(value).__module__.startswith("musicgen_onnx"):
                walk(value, depth + 1)

    walk(model, 0)
    return sorted({p._role for p in proxies.values()})


def run_ours(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort
    from musicgen_onnx.runtime.generation import choose_tokens
    from musicgen_onnx.runtime.model import MusicGen

    cuda = spec["device"] == "cuda"
    provider = "cuda" if cuda else "cpu"
    log.info("ours: loading %s (provider %s, %d threads)", spec["export_dir"], provider, spec["threads"])
    t0 = time.perf_counter()
    model = MusicGen.load(
        spec["export_dir"],
        provider=provider,
        threads=spec["threads"],
        cuda_graph=spec.get("cuda_graph"),
        device_sampling=spec.get("device_sampling"),
        max_batch=max(4, int(spec["batch"])),  # one request of `batch` prompts must fit the engine's slots
    )
    load_s = time.perf_counter() - t0
    rss_after_load = current_rss_bytes()
    log.info("ours: loaded in %.1f s (includes sha256 verification of the files)", load_s)

    calls: list[tuple[str, float]] = []
    roles = wrap_sessions(model, calls)
    if "decoder" not in roles:
        raise RuntimeError(f"could not find the decoder session to time (wrapped: {roles})")
    texts = texts_for(spec["batch"])
    sampling = {
        "do_sample": True,
        "guidance_scale": spec["guidance_scale"],
        "top_k": spec["top_k"],
        "top_p": 1.0,
        "temperature": 1.0,
    }

    log.info("ours: warm-up (%d steps, batch %d)", spec["warmup_steps"], spec["batch"])
    t0 = time.perf_counter()
    model.generate_detailed(texts, max_new_tokens=spec["warmup_steps"], seed=spec["seed"], **sampling)
    log.info("ours: warm-up done in %.1f s", time.perf_counter() - t0)

    n = spec["max_new_tokens"]
    log.info("ours: timed run, %d steps, batch %d (CFG: decoder batch %d)", n, spec["batch"], 2 * spec["batch"])
    calls.clear()
    with PhaseMonitor(gpu=cuda) as mem:
        t0 = time.perf_counter()
        res = model.generate_detailed(texts, max_new_tokens=n, seed=spec["seed"], **sampling)
        t_end = time.perf_counter()
        wall = t_end - t0
    step_times = list(res.step_times)
    if len(step_times) != n:
        raise RuntimeError(f"expected {n} step times, got {len(step_times)}")

    ort_by_role: dict[str, float] = {}
    for role, dt in calls:
        ort_by_role[role] = ort_by_role.get(role, 0.0) + dt
    dec_calls = [dt for role, dt in calls if role == "decoder"]
    sampler_calls = [dt for role, dt in calls if role == "sampler"] or [0.0] * len(dec_calls)
    overhead: dict[str, Any] = {"decoder_calls": len(dec_calls)}
    if len(dec_calls) == len(step_times) == len(sampler_calls):
        ort_calls = [d + s for d, s in zip(dec_calls, sampler_calls, strict=True)]
        per_step = [s - d for s, d in zip(step_times[1:], ort_calls[1:], strict=True)]
        overhead.update(
            {
                "median_ms": percentile([t * 1e3 for t in per_step], 50),
                "p90_ms": percentile([t * 1e3 for t in per_step], 90),
                "percent_of_step": 100.0 * sum(per_step) / sum(step_times[1:]),
                "decoder_ort_median_ms": percentile([t * 1e3 for t in dec_calls[1:]], 50),
                "per_step_ms": [round(t * 1e3, 4) for t in per_step],
            }
        )
    else:  # a runner with several calls per step: only totals are meaningful
        total = sum(step_times)
        overhead["percent_of_step"] = 100.0 * (total - sum(dec_calls) - sum(sampler_calls)) / total

    # The logits processing + sampling part of the overhead, isolated on random logits of the real shape.
    k = model.manifest.decoder.num_codebooks
    vocab = model.manifest.decoder.vocab_size
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2 * spec["batch"] * k, vocab), dtype=np.float32)
    samples = []
    for _ in range(30):
        t0 = time.perf_counter()
        choose_tokens(
            logits,
            guidance_scale=spec["guidance_scale"],
            do_sample=True,
            temperature=1.0,
            top_k=spec["top_k"],
            top_p=1.0,
            rng=rng,
        )
        samples.append(time.perf_counter() - t0)
    overhead["logits_processing_isolated_ms"] = percentile([t * 1e3 for t in samples], 50)

    audio = res.audio
    result: dict[str, Any] = {
        "system": "ours",
        "label": f"musicgen-onnx (onnxruntime {ort.__version__}, {provider}, {model.manifest.precision})",
        "batch": spec["batch"],
        "dtype": model.manifest.precision,
        "providers": model.providers,
        "cuda_graph": model.cuda_graph,
        "device_sampling": model.device_sampling,
        "load_s": load_s,
        "max_new_tokens": n,
        "frames": int(res.codes.shape[-1]),
        "audio_shape": list(audio.shape),
        "audio_finite": bool(np.isfinite(audio).all()),
        "text_encode_ms": res.timings.get("text_encode", float("nan")) * 1e3,
        "runtime_timings_s": dict(res.timings),
        "text_encode_note": "tokenize + text encoder (T5 + projection) + cross-attention K/V for all layers",
        "ort_ms_by_graph": {role: v * 1e3 for role, v in sorted(ort_by_role.items())},
        **step_summary(step_times),
        "python_overhead": overhead,
        "audio_decode_ms": res.timings.get("audio_decode", float("nan")) * 1e3,
        "end_to_end_s": wall,
        "rss_after_load_bytes": rss_after_load,
        "peak_rss_generate_bytes": mem.peak_rss,
        "peak_anon_rss_generate_bytes": mem.peak_anon_rss,
        "peak_rss_token_loop_bytes": mem.peak_rss_before(t_end - res.timings.get("audio_decode", 0.0)),
        "peak_rss_bytes": peak_rss_bytes(),
        "other_cpu_percent": mem.other_cpu_percent,
    }
    if cuda and mem.peak_gpu_used is not None and mem.gpu_baseline is not None:
        result["gpu_used_delta_bytes"] = mem.peak_gpu_used - mem.gpu_baseline

    if spec.get("profile_steps"):
        result["profile"] = profile_ours(model, texts, sampling, spec)
    return result


def profile_ours(model: Any, texts: list[str], sampling: dict[str, Any], spec: dict[str, Any]) -> list[dict]:
    """cProfile one short generation (after the timed run); the top functions by own time."""
    import cProfile
    import pstats

    steps = max(spec["profile_steps"], model.manifest.codebooks_per_channel)
    log.info("ours: cProfile of a %d-step generation", steps)
    prof = cProfile.Profile()
    prof.enable()
    model.generate_detailed(texts, max_new_tokens=steps, seed=spec["seed"], **sampling)
    prof.disable()
    stats = pstats.Stats(prof)
    rows = []
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        where = f"{Path(filename).name}:{line}" if line else filename
        rows.append(
            {
                "function": f"{where}({func})",
                "calls": ncalls,
                "own_ms_per_step": tottime * 1e3 / steps,
                "cum_ms_per_step": cumtime * 1e3 / steps,
            }
        )
    rows.sort(key=lambda r: r["own_ms_per_step"], reverse=True)
    return rows[:20]
