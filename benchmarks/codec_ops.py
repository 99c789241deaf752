"""Where EnCodec's decode time goes, by operator, and what int8 would buy there (docs/design.md §10).

    flock /tmp/musicgen-heavy.lock python benchmarks/codec_ops.py EXPORT_DIR [--seconds 10] [--threads 2] \\
        [--repeats 3] [--json OUT]

A 10 s stereo clip spends ~1.6 s of a 2-vCPU machine's time in the EnCodec decoder, after the decoder steps:
the second largest part of a clip. This profiles one warm decode of ``--seconds`` of random codes (every
channel of the export, sessions as the runtime opens them: no memory patterns) and sums onnxruntime's kernel
time per operator type and per node. Then it times the decode against two int8 variants that onnxruntime's own
dynamic quantizer makes of the same graph (its constants folded first, as the sub-pixel convolutions' weights
are computed from the checkpoint's), interleaved, each with the SNR of its audio against the fp32 decode:

- ``lstm-int8``: the two LSTM layers as ``DynamicQuantizeLSTM`` (int8 weights, per channel);
- ``conv-int8``: every convolution as ``ConvInteger`` (int8 weights per channel, uint8 activations).

Last, the ELU against Exp and Relu alone on a tensor the size of the last stage's activations: onnxruntime's
CPU Elu is an Eigen kernel, several times the cost of its vectorized Exp, and no exact graph of faster
standard ops replaces it (each extra elementwise pass over the tensor costs about what Relu does).

The table is the evidence for the exporter's choices (benchmarks/README.md): the CPU presets write the LSTM
layers in int8 (``--codec-lstm int8``, held at export to 40 dB SNR against PyTorch; 1.36 vs 1.62 s for 10 s of
stereo on a 2-vCPU AVX-512 VNNI machine), no preset quantizes the convolutions. Run it on an export whose EnCodec
is fp32 (``--precision fp32`` or ``int8``, or a preset with ``--codec-lstm fp32``): it is the baseline.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from measure_common import cpu_description, kernel_times_us
from musicgen_onnx.runtime.streaming import snr_db

logger = logging.getLogger("musicgen_onnx")

VARIANTS = {"lstm-int8": ["LSTM"], "conv-int8": ["Conv"]}
#: channels of the decoder's last stage: ``num_filters`` of the 32 kHz EnCodec every MusicGen checkpoint uses
LAST_STAGE_CHANNELS = 64


def session(path: Path, threads: int, profile: bool = False):
    import onnxruntime as ort
    from musicgen_onnx.runtime.sessions import make_session_options

    options = make_session_options(threads, memory_pattern=False)
    options.enable_profiling = profile
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def fold_constants(src: Path, dst: Path) -> None:
    """The graph with its constant subgraphs folded (onnxruntime's basic level), weights in one external file."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", dst.name + ".data")
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])


def quantized(src: Path, dst: Path, op_types: list[str]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        op_types_to_quantize=op_types,
        weight_type=QuantType.QInt8,
        per_channel=True,
        use_external_data_format=True,
    )


def profile_ops(path: Path, feeds: dict[str, np.ndarray], threads: int) -> dict[str, Any]:
    """Kernel ms per operator type and the 15 slowest nodes of the last of three decodes."""
    profiled = session(path, threads, profile=True)
    for _ in range(3):
        profiled.run(None, feeds)
    trace = Path(profiled.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    last_run = [e for e in events if e.get("name") == "model_run"][-1]
    by_op, by_node = kernel_times_us(events, last_run["ts"])
    return {
        "run_ms": last_run["dur"] / 1e3,
        "ops_ms": {op: round(us / 1e3, 1) for op, us in by_op.most_common()},
        "slowest_nodes_ms": {node: round(us / 1e3, 1) for node, us in by_node.most_common(15)},
    }


def elementwise_ms(shape: tuple[int, ...], threads: int, repeats: int = 5) -> dict[str, float]:
    """Best-of-``repeats`` ms of Elu, Exp and Relu alone on a float tensor of ``shape``."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    dims = [f"d{i}" for i in range(len(shape))]
    result = {}
    for op in ("Elu", "Exp", "Relu"):
        graph = helper.make_graph(
            [helper.make_node(op, ["x"], ["y"])],
            op,
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        elementwise = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        elementwise.run(None, {"x": x})
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            elementwise.run(None, {"x": x})
            best = min(best, time.perf_counter() - started)
        result[op] = best * 1e3
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0, help="audio to decode (default 10)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed decodes per variant, interleaved")
    parser.add_argument("--json", type=Path, help="write the record here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("onnxruntime").setLevel(logging.ERROR)
    logging.getLogger("root").setLevel(logging.ERROR)

    from musicgen_onnx.runtime.manifest import Manifest

    manifest = Manifest.load(args.export_dir)
    if manifest.codec_lstm_format() == "int8":
        parser.error(
            f"{args.export_dir} has int8 LSTM weights in EnCodec already (manifest codec_lstm): the baseline must be "
            "fp32; use an export made with --codec-lstm fp32, or with --precision fp32 / int8"
        )
    if not 0 < args.seconds <= 60:
        parser.error(f"--seconds must be in (0, 60], got {args.seconds}")
    frames = round(args.seconds * manifest.audio.frame_rate)
    spec = manifest.graphs["encodec_decode"]
    source = args.export_dir / spec.file
    channels = manifest.audio.channels
    codes = np.random.default_rng(0).integers(
        0, manifest.audio.codec_vocab_size, (channels, manifest.audio.codec_codebooks, frames)
    )
    feeds = {spec.inputs[0]: codes.astype(np.int64)}

    record: dict[str, Any] = {
        **cpu_description(),
        "export_dir": str(args.export_dir),
        "threads": args.threads,
        "seconds": args.seconds,
        "frames": frames,
        "channels": channels,
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load_average": os.getloadavg(),
    }
    logger.info("profiling the fp32 decode of %d frames x %d channels", frames, channels)
    record["profile"] = profile_ops(source, feeds, args.threads)

    with tempfile.TemporaryDirectory(prefix="codec-ops-") as tmp:
        work = Path(tmp)
        folded = work / "folded.onnx"
        fold_constants(source, folded)
        paths = {"fp32": source}
        for name, op_types in VARIANTS.items():
            paths[name] = work / f"{name}.onnx"
            logger.info("quantizing %s", name)
            quantized(folded, paths[name], op_types)
        sessions = {name: session(path, args.threads) for name, path in paths.items()}
        audio = {}
        for name, s in sessions.items():  # first decodes: arena growth, not timed
            audio[name] = s.run(None, feeds)[0]
            s.run(None, feeds)
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for _ in range(args.repeats):
            for name, s in sessions.items():
                started = time.perf_counter()
                s.run(None, feeds)
                times[name].append(time.perf_counter() - started)
    record["variants"] = [
        {
            "variant": name,
            "ms": statistics.median(times[name]) * 1e3,
            "ms_all": [t * 1e3 for t in times[name]],
            "snr_db_vs_fp32": snr_db(audio["fp32"], audio[name]) if name != "fp32" else None,
        }
        for name in sessions
    ]
    last_stage = (channels, LAST_STAGE_CHANNELS, frames * manifest.audio.hop_length)
    record["elementwise_shape"] = list(last_stage)
    record["elementwise_ms"] = elementwise_ms(last_stage, args.threads)
    record["load_average_after"] = os.getloadavg()

    print(f"CPU: {record['cpu_model']} ({' '.join(record['cpu_flags'])}), {args.threads} threads")
    print(f"fp32 decode of {args.seconds:g} s x {channels} channels, kernel ms by operator (profiled run):")
    print("| operator | ms |\n| --- | --- |")
    for op, ms in list(record["profile"]["ops_ms"].items())[:8]:
        print(f"| {op} | {ms:.0f} |")
    print("\n| variant | decode ms (median) | SNR vs fp32 |\n| --- | --- | --- |")
    for row in record["variants"]:
        snr = "-" if row["snr_db_vs_fp32"] is None else f"{row['snr_db_vs_fp32']:.1f} dB"
        print(f"| {row['variant']} | {row['ms']:.0f} | {snr} |")
    shape = "x".join(map(str, last_stage))
    print(f"\nalone on [{shape}]: " + ", ".join(f"{op} {ms:.1f} ms" for op, ms in record["elementwise_ms"].items()))
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
