"""The quality gate: how far a reduced-precision export drifts from fp32, teacher-forced (docs/design.md §8).

Each variant export (int8, int4, a mixed preset, a quantized KV cache, ...) is run in lockstep with the fp32
export on the same prompts, fed the token stream the fp32 model samples (top-k from the manifest, a seeded
uniform per row). At every step, on the distributions generation really samples from (after classifier-free
guidance, before top-k), per codebook row:

- KL(fp32 || variant) in nats, averaged over the steps where the row is free (not forced by the delay pattern);
- top-1 agreement (same argmax);
- sampled agreement: the variant's draw with the *same* uniform (inverse CDF over its own top-k scores), i.e. the
  token it would have picked had it generated that step itself.

The variant's draws form a code sequence of their own; both sequences are decoded by the fp32 export's EnCodec
and compared as audio (SNR in dB). A variant passes the gate when every codebook's mean KL is within
``--max-kl`` (default 0.01 nats). One command prints the table and writes the JSON records:

    python benchmarks/precision_quality.py FP32_DIR VARIANT_DIR [VARIANT_DIR ...] [--steps 250] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
from musicgen_onnx.runtime import MusicGen
from musicgen_onnx.runtime.generation import (
    DelayPatternState,
    build_delay_pattern,
    process_logits,
    select_with_uniform,
)
from musicgen_onnx.runtime.streaming import snr_db

#: the issue's bound: mean KL per codebook vs fp32, nats per step
MAX_CODEBOOK_KL = 0.01
TEXTS = (
    "an energetic rock song with drums, bass and electric guitar",
    "calm solo piano, slow and soft",
)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@dataclass
class QualityRecord:
    """One variant against the reference, over every prompt; per-codebook lists are in row order."""

    variant: str
    precision: str
    kv_cache: str
    precision_plan: dict
    prompts: int
    steps: int
    kl_per_codebook: list[float]
    top1_per_codebook: list[float]
    sampled_agreement_per_codebook: list[float]
    mean_kl: float
    max_codebook_kl: float
    p90_kl: float
    top1_agreement: float
    sampled_agreement: float
    audio_snr_db: float
    seconds: float
    max_kl_bound: float = MAX_CODEBOOK_KL
    passed: bool = field(init=False)

    def __post_init__(self) -> None:
        self.passed = passes(self.kl_per_codebook, self.max_kl_bound)


def passes(kl_per_codebook: list[float], bound: float = MAX_CODEBOOK_KL) -> bool:
    """The gate: every codebook's mean KL within ``bound`` (a NaN, from a broken variant, fails)."""
    return all(math.isfinite(kl) and kl <= bound for kl in kl_per_codebook)


def _start(model: MusicGen, text: str, max_length: int):
    runner = model.engine.decoder_runner()
    runner.start(*model.engine.condition([text], 1).with_cfg(), max_length=max_length)
    return runner


def _prompt(ref: MusicGen, var: MusicGen, text: str, steps: int, rng: np.random.Generator) -> dict:
    """One prompt, batch 1 with CFG: per-step KL / agreement arrays [steps, K], free mask, both code sequences."""
    d = ref.manifest.decoder
    guidance, top_k = ref.manifest.generation.guidance_scale, ref.manifest.generation.top_k
    ids, pattern = build_delay_pattern(
        None, batch_size=1, num_codebooks=d.num_codebooks, channels=ref.channels, max_length=1 + steps,
        pad_token_id=d.pad_token_id,
    )  # fmt: skip
    states = [DelayPatternState(ids, pattern, pad_token_id=d.pad_token_id, channels=ref.channels) for _ in range(2)]
    runners = (_start(ref, text, 1 + steps), _start(var, text, 1 + steps))
    kl, top1, sampled, free = [], [], [], []
    feed = states[0].prefill_ids(cfg=True)
    try:
        while True:
            column = states[0].length
            a, b = (r.step(feed) for r in runners)
            sa, sb = (process_logits(x.reshape(-1, x.shape[-1]), guidance_scale=guidance) for x in (a, b))
            la, lb = log_softmax(sa), log_softmax(sb)
            kl.append((np.exp(la) * (la - lb)).sum(-1))
            top1.append(sa.argmax(-1) == sb.argmax(-1))
            uniform = rng.random(sa.shape[0])
            picks = [select_with_uniform(process_logits(s, do_sample=True, top_k=top_k), uniform) for s in (sa, sb)]
            sampled.append(picks[0] == picks[1])
            free.append(pattern[0, :, column] == -1)
            for state, pick in zip(states, picks, strict=True):
                state.write(pick)  # the reference stream is fed to both: the variant's picks are only recorded
            if states[0].done:
                break
            feed = states[0].step_ids(cfg=True)
    finally:
        for runner in runners:
            runner.release()
    return {
        "kl": np.array(kl),
        "top1": np.array(top1),
        "sampled": np.array(sampled),
        "free": np.array(free),
        "codes": (states[0].codes(), states[1].codes()),
    }


def compare(
    ref: MusicGen,
    var: MusicGen,
    *,
    texts: tuple[str, ...] = TEXTS,
    steps: int = 250,
    seed: int = 0,
    name: str = "",
    bound: float = MAX_CODEBOOK_KL,
) -> QualityRecord:
    """Teacher-forced comparison of ``var`` against ``ref`` (see the module docstring)."""
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    runs = [_prompt(ref, var, text, steps, rng) for text in texts]
    free = np.concatenate([r["free"] for r in runs])  # [steps * prompts, K]
    kl, top1, sampled = (np.concatenate([r[key] for r in runs]) for key in ("kl", "top1", "sampled"))

    def per_codebook(values: np.ndarray) -> list[float]:
        return [float(values[free[:, k], k].mean()) for k in range(values.shape[1])]

    ref_codes = np.concatenate([r["codes"][0] for r in runs])
    var_codes = np.concatenate([r["codes"][1] for r in runs])
    ref_audio, var_audio = ref.decode_codes(ref_codes), ref.decode_codes(var_codes)
    kl_cb = per_codebook(kl)
    return QualityRecord(
        variant=name or str(var.model_dir),
        precision=var.manifest.precision,
        kv_cache=var.manifest.decoder.kv_cache,
        precision_plan=dict(getattr(var.manifest, "precision_plan", {}) or {}),
        prompts=len(texts),
        steps=steps,
        kl_per_codebook=[round(x, 6) for x in kl_cb],
        top1_per_codebook=[round(x, 4) for x in per_codebook(top1)],
        sampled_agreement_per_codebook=[round(x, 4) for x in per_codebook(sampled)],
        mean_kl=float(kl[free].mean()),
        max_codebook_kl=max(kl_cb),
        p90_kl=float(np.percentile(kl[free], 90)),
        top1_agreement=float(top1[free].mean()),
        sampled_agreement=float(sampled[free].mean()),
        audio_snr_db=snr_db(ref_audio, var_audio),
        seconds=time.perf_counter() - started,
        max_kl_bound=bound,
    )


def table(records: list[QualityRecord]) -> str:
    """A Markdown table, one row per variant (the one benchmarks/README.md shows)."""
    lines = [
        "| variant | precision | KV cache | mean KL | max codebook KL | top-1 | sampled agree | audio SNR | gate |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in records:
        lines.append(
            f"| {r.variant} | {r.precision} | {r.kv_cache} | {r.mean_kl:.4f} | {r.max_codebook_kl:.4f} | "
            f"{100 * r.top1_agreement:.1f} % | {100 * r.sampled_agreement:.1f} % | {r.audio_snr_db:.1f} dB | "
            f"{'pass' if r.passed else 'FAIL'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reference", help="the fp32 export")
    p.add_argument("variants", nargs="+", help="exports to hold against it")
    p.add_argument("--steps", type=int, default=250, help="decoder steps per prompt (default 250: 5 s)")
    p.add_argument("--text", action="append", help="prompt (repeatable; default: two fixed prompts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int)
    p.add_argument("--max-kl", type=float, default=MAX_CODEBOOK_KL, help="gate: mean KL per codebook (nats)")
    p.add_argument("--json", "--out", help="write the JSON records here")
    args = p.parse_args(argv)
    texts = tuple(args.text) if args.text else TEXTS
    ref = MusicGen.load(args.reference, provider="cpu", threads=args.threads)
    records = []
    for variant in args.variants:
        with MusicGen.load(variant, provider="cpu", threads=args.threads) as var:
            record = compare(ref, var, texts=texts, steps=args.steps, seed=args.seed, name=variant, bound=args.max_kl)
        print(json.dumps({k: v for k, v in asdict(record).items() if k != "precision_plan"}), file=sys.stderr)
        records.append(record)
    print(table(records))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([asdict(r) for r in records], handle, indent=2)
            handle.write("\n")
    return 0 if all(r.passed for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
