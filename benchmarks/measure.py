"""Benchmark child processes: one system per process, so peak RSS and imports are per system.

``run.py`` starts ``python benchmarks/measure.py SYSTEM --spec JSON`` for each system and batch size
(SYSTEM: ``export``, ``transformers`` or ``ours``). The child logs progress on stderr and prints
exactly one line ``BENCH_RESULT {json}`` on stdout at the end. It can be run by hand the same way.

Timing points (``time.perf_counter``; on CUDA every point synchronises the device first):

* transformers: forward pre/post hooks registered from the outside on ``model.text_encoder`` and
  ``model.decoder``, plus a no-op ``StoppingCriteria`` that transformers calls once per step after
  the token is sampled. Step i = end of step i-1 (or decoder pre-hook of the prefill) -> end of step i,
  i.e. decoder forward + logits processing + sampling + cache bookkeeping, like ours.
* ours: ``GenerationResult.timings`` / ``step_times`` (the runtime's own clock), plus thin proxies
  around every onnxruntime session the model holds, which time ``run`` / ``run_with_iobinding``;
  Python overhead per step = step time - time inside the decoder session's run call.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

RESULT_MARKER = "BENCH_RESULT "
DEFAULT_TEXTS = (
    "80s pop track with bassy drums and synth",
    "lo-fi hip hop beat with warm piano and vinyl crackle",
    "epic orchestral score with choir and timpani",
    "90s rock song with loud guitars and heavy drums",
    "ambient electronic soundscape with slow pads",
    "jazz trio with upright bass, brushed drums and piano",
    "reggae groove with offbeat guitar and deep bass",
    "uplifting house track with a catchy piano riff",
)

log = logging.getLogger("bench")


# ---- small helpers ---------------------------------------------------------------------------------
def texts_for(batch: int) -> list[str]:
    return [DEFAULT_TEXTS[i % len(DEFAULT_TEXTS)] for i in range(batch)]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def peak_rss_bytes() -> int:
    """Lifetime peak RSS of this process (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def current_rss_bytes() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


class PhaseMonitor:
    """Watches one timed phase: this process's RSS (and, on CUDA, the device's used memory), sampled by a
    background thread every 50 ms, and the CPU time other processes used meanwhile.

    Gives the peak *during* the phase (ru_maxrss cannot be reset) and the peak before a given moment (to
    separate the token loop from the audio decode). ``other_cpu_percent``: share of the whole machine's
    CPU time (all cores) spent outside this process (busy time of /proc/stat incl. steal, minus ours);
    a few percent is background noise, more means the numbers are contaminated.
    """

    def __init__(self, period: float = 0.05, gpu: bool = False) -> None:
        import psutil

        self._psutil = psutil
        self._proc = psutil.Process()
        self._period = period
        self._gpu = gpu and shutil.which("nvidia-smi") is not None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.samples: list[tuple[float, int]] = []  # (perf_counter, rss)
        self.peak_gpu_used: int | None = None
        self.gpu_baseline: int | None = gpu_used_bytes() if self._gpu else None
        self.other_cpu_percent: float | None = None

    def _cpu(self) -> tuple[float, float, float]:
        t = self._psutil.cpu_times()
        busy = sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))
        own = self._proc.cpu_times()
        return time.perf_counter(), busy, own.user + own.system

    def _sample(self) -> None:
        self.samples.append((time.perf_counter(), self._proc.memory_info().rss))

    def _loop(self) -> None:
        next_gpu = 0.0
        while not self._stop.is_set():
            self._sample()
            now = time.monotonic()
            if self._gpu and now >= next_gpu:
                used = gpu_used_bytes()
                if used is not None:
                    self.peak_gpu_used = max(self.peak_gpu_used or 0, used)
                next_gpu = now + 0.25
            self._stop.wait(self._period)

    @property
    def peak_rss(self) -> int:
        return max(rss for _, rss in self.samples)

    def peak_rss_before(self, t: float) -> int:
        """Peak RSS of the samples taken before perf_counter time ``t`` (at least the first sample)."""
        return max([rss for ts, rss in self.samples if ts <= t] or [self.samples[0][1]])

    def __enter__(self) -> PhaseMonitor:
        self._cpu0 = self._cpu()
        self._sample()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        (w0, b0, o0), (w1, b1, o1) = self._cpu0, self._cpu()
        ncpu = self._psutil.cpu_count() or 1
        self.other_cpu_percent = max(0.0, 100.0 * ((b1 - b0) - (o1 - o0)) / ((w1 - w0) * ncpu))


def gpu_used_bytes() -> int | None:
    """Used memory of GPU 0 (whole device, all processes) from nvidia-smi, or None."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return int(float(out.strip().splitlines()[0]) * 1024 * 1024)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def emit(result: dict[str, Any]) -> None:
    sys.stdout.write(RESULT_MARKER + json.dumps(result) + "\n")
    sys.stdout.flush()


def step_summary(step_times: list[float]) -> dict[str, Any]:
    """Prefill (step 0) and the per-step statistics of the remaining steps, in ms."""
    steps = [t * 1e3 for t in step_times[1:]]
    return {
        "prefill_ms": step_times[0] * 1e3 if step_times else None,
        "num_steps": len(step_times),
        "step_median_ms": percentile(steps, 50),
        "step_p90_ms": percentile(steps, 90),
        "step_mean_ms": sum(steps) / len(steps) if steps else None,
        "decode_loop_s": float(sum(step_times)),
        # past length of step i is i: no audio prompt, one start token, one new column per step
        "step_times_ms": [round(t * 1e3, 4) for t in step_times],
    }


# ---- export --------------------------------------------------------------------------------------------
def run_export(spec: dict[str, Any]) -> dict[str, Any]:
    import inspect

    from musicgen_onnx.export import export_model

    kwargs: dict[str, Any] = {"random_weights": spec["model"], "seed": spec["seed"], "overwrite": spec["overwrite"]}
    if "precision" in inspect.signature(export_model).parameters:
        kwargs["precision"] = spec["precision"]
    elif spec["precision"] != "fp32":
        raise SystemExit(
            f"this version of musicgen_onnx.export.export_model has no `precision` parameter: only fp32 exports "
            f"exist, got --precision {spec['precision']}"
        )
    log.info(
        "exporting %s (%s, random weights, seed %d) to %s",
        spec["model"],
        spec["precision"],
        spec["seed"],
        spec["out_dir"],
    )
    t0 = time.perf_counter()
    manifest = export_model(None, spec["out_dir"], **kwargs)
    elapsed = time.perf_counter() - t0
    return {
        "system": "export",
        "export_s": elapsed,
        "peak_rss_bytes": peak_rss_bytes(),
        "precision": manifest.precision,
        "exporter": manifest.exporter,
    }


# ---- transformers --------------------------------------------------------------------------------------
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


# ---- ours ----------------------------------------------------------------------------------------------
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
    """Replace every InferenceSession held by ``model`` (or one level below) by a TimedSession.

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

    for owner in [model, *[v for v in vars(model).values() if hasattr(v, "__dict__")]]:
        for attr, value in list(vars(owner).items()):
            if isinstance(value, ort.InferenceSession):
                setattr(owner, attr, proxy(value))
    return sorted({p._role for p in proxies.values()})


def run_ours(spec: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import onnxruntime as ort
    from musicgen_onnx.runtime.generation import process_logits, select_tokens
    from musicgen_onnx.runtime.model import MusicGen

    cuda = spec["device"] == "cuda"
    provider = "cuda" if cuda else "cpu"
    log.info("ours: loading %s (provider %s, %d threads)", spec["export_dir"], provider, spec["threads"])
    t0 = time.perf_counter()
    model = MusicGen.load(spec["export_dir"], provider=provider, threads=spec["threads"])
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
    overhead: dict[str, Any] = {"decoder_calls": len(dec_calls)}
    if len(dec_calls) == len(step_times):
        per_step = [s - d for s, d in zip(step_times[1:], dec_calls[1:], strict=True)]
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
        overhead["percent_of_step"] = 100.0 * (total - sum(dec_calls)) / total

    # The logits processing + sampling part of the overhead, isolated on random logits of the real shape.
    k = model.manifest.decoder.num_codebooks
    vocab = model.manifest.decoder.vocab_size
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2 * spec["batch"] * k, vocab), dtype=np.float32)
    samples = []
    for _ in range(30):
        t0 = time.perf_counter()
        scores = process_logits(
            logits,
            guidance_scale=spec["guidance_scale"],
            do_sample=True,
            temperature=1.0,
            top_k=spec["top_k"],
            top_p=1.0,
        )
        select_tokens(scores, do_sample=True, rng=rng)
        samples.append(time.perf_counter() - t0)
    overhead["logits_processing_isolated_ms"] = percentile([t * 1e3 for t in samples], 50)

    audio = res.audio
    result: dict[str, Any] = {
        "system": "ours",
        "label": f"musicgen-onnx (onnxruntime {ort.__version__}, {provider}, {model.manifest.precision})",
        "batch": spec["batch"],
        "dtype": model.manifest.precision,
        "providers": model.providers,
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


# ---- entry point -------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("system", choices=("export", "transformers", "ours"))
    parser.add_argument("--spec", required=True, help="JSON object with the run's settings (see run.py)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    spec = json.loads(args.spec)
    runner = {"export": run_export, "transformers": run_transformers, "ours": run_ours}[args.system]
    emit(runner(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
