"""Benchmark child ``export``: builds the random-weights full-size export that the timed children load."""

from __future__ import annotations

import time
from typing import Any

from measure_common import log, peak_rss_bytes


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
    try:
        from musicgen_onnx.export.memory import PeakMemory
    except ImportError:  # an exporter from before the bounded-memory export
        PeakMemory = None
    if PeakMemory is not None:
        with PeakMemory() as memory:
            manifest = export_model(None, spec["out_dir"], **kwargs)
    else:
        manifest = export_model(None, spec["out_dir"], **kwargs)
    elapsed = time.perf_counter() - t0
    return {
        "system": "export",
        "export_s": elapsed,
        "peak_rss_bytes": peak_rss_bytes(),
        "peak_anon_rss_bytes": memory.peak_anon if PeakMemory is not None else None,
        "precision": manifest.precision,
        "exporter": manifest.exporter,
    }
