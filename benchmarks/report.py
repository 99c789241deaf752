"""Derived numbers, the stdout table and the step-latency plot of a benchmark record (see run.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from measure_common import percentile

GB = 1e9


def by_past_length(step_times_ms: list[float], width: int = 100) -> list[dict[str, Any]]:
    """Median step time per bin of past lengths [a, b); step i (i >= 1) runs with past length i."""
    bins = []
    n = len(step_times_ms)
    for a in range(1, n, width):
        b = min(a + width, n)
        bins.append({"past_from": a, "past_to": b, "median_ms": percentile(step_times_ms[a:b], 50)})
    return bins


def derive(result: dict[str, Any], frame_rate: int) -> None:
    """Add the numbers computed from the raw ones: RTF, frames/s, steps by past length."""
    audio_s = result["frames"] / frame_rate
    result["audio_seconds"] = audio_s
    result["rtf"] = result["end_to_end_s"] / audio_s
    result["frames_per_s"] = result["batch"] * result["frames"] / result["end_to_end_s"]
    result["steps_per_s"] = result["num_steps"] / result["decode_loop_s"]
    result["step_by_past_length"] = by_past_length(result["step_times_ms"])


def ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """ours / transformers per batch size (< 1 means ours is faster / smaller)."""
    out = []
    for batch in sorted({r["batch"] for r in results}):
        pair = {r["system"]: r for r in results if r["batch"] == batch}
        if "ours" not in pair or "transformers" not in pair:
            continue
        o, t = pair["ours"], pair["transformers"]
        out.append(
            {
                "batch": batch,
                "step_median": o["step_median_ms"] / t["step_median_ms"],
                "end_to_end": o["end_to_end_s"] / t["end_to_end_s"],
                "peak_rss": o["peak_rss_bytes"] / t["peak_rss_bytes"],
                "peak_rss_token_loop": o["peak_rss_token_loop_bytes"] / t["peak_rss_token_loop_bytes"],
            }
        )
    return out


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(record: dict[str, Any]) -> str:
    """Markdown table (prints fine on a terminal too)."""
    cols = [
        ("system", lambda r: r["system"]),
        ("batch", lambda r: str(r["batch"])),
        ("text enc ms", lambda r: _fmt(r["text_encode_ms"], ".0f")),
        ("prefill ms", lambda r: _fmt(r["prefill_ms"], ".1f")),
        ("step med ms", lambda r: _fmt(r["step_median_ms"], ".1f")),
        ("step p90 ms", lambda r: _fmt(r["step_p90_ms"], ".1f")),
        ("step ms past<100", lambda r: _fmt(r["step_by_past_length"][0]["median_ms"], ".1f")),
        ("step ms last 100", lambda r: _fmt(percentile(r["step_times_ms"][-100:], 50), ".1f")),
        ("EnCodec ms", lambda r: _fmt(r["audio_decode_ms"], ".0f")),
        ("end-to-end s", lambda r: _fmt(r["end_to_end_s"], ".1f")),
        ("RTF", lambda r: _fmt(r["rtf"], ".2f")),
        ("frames/s", lambda r: _fmt(r["frames_per_s"], ".1f")),
        ("peak RSS GB", lambda r: _fmt(r["peak_rss_bytes"] / GB, ".2f")),
        ("RSS loop GB", lambda r: _fmt(r["peak_rss_token_loop_bytes"] / GB, ".2f")),
        ("anon RSS gen GB", lambda r: _fmt((r.get("peak_anon_rss_generate_bytes") or 0) / GB or None, ".2f")),
        ("py overhead %", lambda r: _fmt(r.get("python_overhead", {}).get("percent_of_step"), ".1f")),
        ("other CPU %", lambda r: _fmt(r.get("other_cpu_percent"), ".0f")),
    ]
    if any("gpu_max_allocated_bytes" in r or "gpu_used_delta_bytes" in r for r in record["results"]):
        cols.append(
            (
                "GPU GB",
                lambda r: _fmt(
                    (r.get("gpu_max_allocated_bytes") or r.get("gpu_used_delta_bytes") or 0) / GB or None, ".2f"
                ),
            )
        )
    rows = [[name for name, _ in cols]]
    for r in sorted(record["results"], key=lambda r: (r["batch"], r["system"] != "transformers")):
        rows.append([fn(r) for _, fn in cols])
    lines = [_md_row(rows[0]), _md_row(["---"] * len(cols))] + [_md_row(row) for row in rows[1:]]
    if record.get("ratios"):
        lines += ["", _md_row(["batch", "ours/transformers step median", "end-to-end", "peak RSS", "RSS loop"])]
        lines.append(_md_row(["---"] * 5))
        for q in record["ratios"]:
            lines.append(
                _md_row(
                    [
                        str(q["batch"]),
                        f"{q['step_median']:.2f}",
                        f"{q['end_to_end']:.2f}",
                        f"{q['peak_rss']:.2f}",
                        f"{q['peak_rss_token_loop']:.2f}",
                    ]
                )
            )
    return "\n".join(lines)


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _rolling_median(values: list[float], window: int) -> list[float]:
    half = window // 2
    return [percentile(values[max(0, i - half) : i + half + 1], 50) for i in range(len(values))]


def plot(record: dict[str, Any], path: Path) -> None:
    """Step latency vs past length: one line (rolling median, window 15) per system x batch, raw points faint."""
    try:
        import matplotlib
    except ImportError as exc:
        raise SystemExit("the plot needs matplotlib: pip install 'musicgen-onnx[bench]'") from exc

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = record["config"]
    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    colors = {"transformers": "tab:red", "ours": "tab:blue"}
    styles = ["-", "--", ":", "-."]
    batches = sorted({r["batch"] for r in record["results"]})
    for r in record["results"]:
        steps = r["step_times_ms"][1:]  # step 0 is the prefill
        past = list(range(1, len(steps) + 1))
        color = colors.get(r["system"], "tab:gray")
        style = styles[batches.index(r["batch"]) % len(styles)]
        ax.plot(past, steps, ".", color=color, alpha=0.12, markersize=2)
        ax.plot(past, _rolling_median(steps, 15), style, color=color, label=f"{r['label']}, batch {r['batch']}")
    ax.set_xlabel("past length (decoder positions already cached)")
    ax.set_ylabel("step time, ms (decoder + logits processing + sampling)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    machine = record["machine"]
    ax.set_title(
        f"{cfg['model']} ({cfg['precision']}, random weights), CFG {cfg['guidance_scale']}, top-k {cfg['top_k']}\n"
        f"{cfg['device']} {machine['cpu_model']}, {cfg['threads']} threads",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
