"""Orchestrate an export: load, trace each graph, validate it, write tokenizer and manifest, atomically."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from musicgen_onnx.runtime.manifest import (
    FORMAT_VERSION,
    AudioSpec,
    CodecStreamSpec,
    DecoderSpec,
    GenerationDefaults,
    GraphSpec,
    KVCache,
    Manifest,
    TextSpec,
    check_start_token,
    sha256_file,
)

from . import kv_quant, onnx_io
from .codec_lstm import CODEC_ROLES, CodecLSTM, choose_codec_lstm, int8_codec_graph
from .cuda_graph_check import check_cuda_graph
from .lazy_precision import convert_precision, precision_changes
from .loading import LoadedCheckpoint, load_checkpoint, load_random_weights, resolved_generation_defaults
from .melody import is_melody_model, melody_plans, melody_spec
from .memory import return_freed_memory_to_os
from .onnx_io import DEFAULT_OPSET
from .precision import check_precision, precision_name
from .precision_plan import PrecisionPlan, plan_for
from .random_weights import canonical_name
from .staging import StagingDir
from .validate import FP32_TOLERANCE, smoke_test, validate_graph
from .validate_stream import stream_spec
from .weightless import trace_weightless
from .weights_writer import write_model

logger = logging.getLogger("musicgen_onnx")

TOKENIZER_FILE = "tokenizer.json"
#: where --random-weights puts the decoder's weights while exporting (inside the temporary directory)
RANDOM_WEIGHTS_SCRATCH = ".random-weights.bin"
#: T5's relative attention has no hard limit; this bounds memory and matches the T5 tokenizer.
MAX_TEXT_TOKENS = 512


@dataclass
class GraphPlan:
    role: str
    file: str
    build: Callable[[Any], Any]  # model -> wrapper nn.Module
    inputs: Callable[[Any, Any], tuple]  # (model, wrapper) -> example inputs for tracing
    names: Callable[[Any], tuple[list[str], list[str], dict]]  # wrapper -> (inputs, outputs, dynamic axes)
    validator: Callable | None = None  # (path, model, wrapper, tol) -> checks; default: validate.VALIDATORS[role]
    smoke: Callable | None = None  # (path, model, wrapper) for reduced precision; default: validate.smoke_test
    available: Callable | None = None  # model -> whether this checkpoint gets the graph (optional graphs)


KV_CACHES = tuple(cache.value for cache in KVCache)


def _decoder_plan(kv_cache: KVCache) -> GraphPlan:
    from musicgen_onnx.graphs import DecoderStep, decoder, decoder_static
    from musicgen_onnx.graphs.decoder_static import DecoderStaticStep

    if kv_cache.in_place:  # an int8 cache is the same graph, converted after validation (export.kv_quant)
        return GraphPlan(
            "decoder",
            "decoder.onnx",
            DecoderStaticStep,
            lambda m, w: w.example_inputs(2, 3, 2, 5, m.decoder.config.vocab_size, 16),
            lambda w: (
                decoder_static.input_names(w.num_layers),
                decoder_static.output_names(w.num_layers),
                decoder_static.dynamic_axes(w.num_layers),
            ),
        )
    return GraphPlan(
        "decoder",
        "decoder.onnx",
        DecoderStep,
        lambda m, w: w.example_inputs(2, 3, 2, 5, m.decoder.config.vocab_size),
        lambda w: (
            decoder.input_names(w.num_layers),
            decoder.output_names(w.num_layers),
            decoder.dynamic_axes(w.num_layers),
        ),
    )


def _sampler_plan(precision: str) -> GraphPlan:
    import torch
    from musicgen_onnx.graphs import sampler

    logits_dtype = torch.float16 if precision == "fp16" else torch.float32
    return GraphPlan(
        "sampler",
        "sampler.onnx",
        lambda m: sampler.TokenSampler(m.decoder.config.num_codebooks, m.decoder.config.vocab_size, logits_dtype),
        lambda m, w: w.example_inputs(2, cfg=True),
        lambda w: (sampler.INPUT_NAMES, sampler.OUTPUT_NAMES, sampler.DYNAMIC_AXES),
    )


def _codec_stream_plan() -> GraphPlan:
    """The stateful EnCodec decoder (optional role: the runtime streams without it, through the overlap path)."""
    from musicgen_onnx.graphs import encodec_stream

    from .validate_stream import validate_encodec_stream

    return GraphPlan(
        "encodec_stream",
        "encodec_stream.onnx",
        encodec_stream.EncodecDecodeStateful,
        lambda m, w: w.example_inputs(2, 9, 2),
        lambda w: (encodec_stream.INPUT_NAMES, encodec_stream.OUTPUT_NAMES, encodec_stream.DYNAMIC_AXES),
        validator=validate_encodec_stream,
        available=encodec_stream.supports_stateful,
    )


def _plans(include_audio_encoder: bool, kv_cache: str, precision: str) -> list[GraphPlan]:
    from musicgen_onnx.graphs import (
        CrossKV,
        EncodecDecode,
        EncodecEncode,
        TextEncoder,
        cross_kv,
        encodec_decode,
        encodec_encode,
        text_encoder,
    )

    plans = [
        GraphPlan(
            "text_encoder",
            "text_encoder.onnx",
            TextEncoder,
            lambda m, w: w.example_inputs(2, 7, m.text_encoder.config.vocab_size),
            lambda w: (text_encoder.INPUT_NAMES, text_encoder.OUTPUT_NAMES, text_encoder.DYNAMIC_AXES),
        ),
        GraphPlan(
            "cross_kv",
            "cross_kv.onnx",
            CrossKV,
            lambda m, w: (__import__("torch").randn(2, 5, m.decoder.config.hidden_size),),
            lambda w: (
                cross_kv.INPUT_NAMES,
                cross_kv.output_names(w.num_layers),
                cross_kv.dynamic_axes(w.num_layers),
            ),
        ),
        _decoder_plan(KVCache(kv_cache)),
        _sampler_plan(precision),
        GraphPlan(
            "encodec_decode",
            "encodec_decode.onnx",
            EncodecDecode,
            lambda m, w: w.example_inputs(2, 9),
            lambda w: (encodec_decode.INPUT_NAMES, encodec_decode.OUTPUT_NAMES, encodec_decode.DYNAMIC_AXES),
        ),
    ]
    plans.append(_codec_stream_plan())
    if include_audio_encoder:
        plans.append(
            GraphPlan(
                "encodec_encode",
                "encodec_encode.onnx",
                EncodecEncode,
                lambda m, w: w.example_inputs(2, 640 * 9 + 123),
                lambda w: (
                    encodec_encode.INPUT_NAMES,
                    encodec_encode.OUTPUT_NAMES,
                    encodec_encode.DYNAMIC_AXES,
                ),
            )
        )
    return plans


def _describe_size(path: Path, external: list[str]) -> str:
    size = path.stat().st_size + sum((path.parent / name).stat().st_size for name in external)
    return f"{size / 1e6:.1f} MB"


def _cuda_graph_ready(path: Path, precision: str, kv_cache: str) -> bool:
    """Whether the runtime may capture this decoder as a CUDA graph (recorded in the manifest)."""
    import onnx

    if kv_cache is not KVCache.STATIC:
        return False
    report = check_cuda_graph(onnx.load(str(path), load_external_data=False))
    if not report.ok:
        logger.warning("decoder cannot be captured as a CUDA graph: %s", "; ".join(report.problems[:5]))
        return False
    # onnxruntime's CUDA GroupQueryAttention is fp16/bf16 only: other precisions fall back to the CPU EP
    return precision == "fp16"


def _build_manifest(
    ckpt: LoadedCheckpoint,
    graphs: dict[str, GraphSpec],
    files: dict[str, str],
    precision: str,
    kv_cache: str,
    cuda_graph: bool,
) -> Manifest:
    model = ckpt.model
    dec = model.decoder.config
    codec = model.audio_encoder.config
    melody = is_melody_model(model)
    hop = 1
    for ratio in codec.upsampling_ratios:
        hop *= int(ratio)
    num_quantizers = model.audio_encoder.quantizer.get_num_quantizers_for_bandwidth(codec.target_bandwidths[0])
    return Manifest(
        source=ckpt.source,
        random_weights=ckpt.random_weights,
        precision=precision,
        audio=AudioSpec(
            sampling_rate=int(codec.sampling_rate),
            frame_rate=int(codec.sampling_rate) // hop,
            hop_length=hop,
            channels=int(dec.audio_channels),
            codec_codebooks=int(num_quantizers),
            codec_vocab_size=int(codec.codebook_size),
        ),
        decoder=DecoderSpec(
            num_codebooks=int(dec.num_codebooks),
            vocab_size=int(dec.vocab_size),
            num_layers=int(dec.num_hidden_layers),
            num_heads=int(dec.num_attention_heads),
            head_dim=int(dec.hidden_size // dec.num_attention_heads),
            hidden_size=int(dec.hidden_size),
            max_positions=int(dec.max_position_embeddings),
            pad_token_id=int(dec.pad_token_id),
            decoder_start_token_id=_start_token_id(model),
            kv_cache=kv_cache,
            cuda_graph=cuda_graph,
        ),
        text=TextSpec(
            tokenizer_file=TOKENIZER_FILE,
            pad_token_id=int(model.text_encoder.config.pad_token_id or 0),
            hidden_size=int(model.text_encoder.config.d_model),
            max_tokens=MAX_TEXT_TOKENS,
        ),
        generation=GenerationDefaults(**resolved_generation_defaults(model)),
        graphs=graphs,
        files=files,
        exporter=_versions(),
        format_version=FORMAT_VERSION,
        conditioning="prefix" if melody else "cross_attention",
        melody=melody_spec(model, MAX_TEXT_TOKENS) if melody else None,
        codec_stream=_codec_stream_spec(model) if "encodec_stream" in graphs else None,
    )


def _codec_stream_spec(model) -> CodecStreamSpec:
    from musicgen_onnx.graphs.encodec_stream import EncodecDecodeStateful

    return stream_spec(EncodecDecodeStateful(model))


def _start_token_id(model) -> int:
    start = model.generation_config.decoder_start_token_id
    return int(model.decoder.config.pad_token_id if start is None else start)


def _versions() -> dict[str, str]:
    import onnx
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__, "onnx": onnx.__version__}


def _prepare_target(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} exists and is not a directory")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"{output_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace it")


def export_model(
    source: str | None,
    output_dir: str | os.PathLike,
    *,
    random_weights: str | None = None,
    seed: int = 0,
    overwrite: bool = False,
    include_audio_encoder: bool = True,
    validate: bool = True,
    tolerance: float = FP32_TOLERANCE,
    opset: int = DEFAULT_OPSET,
    revision: str | None = None,
    precision: str | PrecisionPlan = "fp32",
    kv_cache: KVCache | str = KVCache.STATIC,
    codec_lstm: CodecLSTM | str | None = None,
) -> Manifest:
    """Export ``source`` (hub id or local dir) or ``random_weights`` (a released checkpoint's name).

    Everything is written to a temporary directory beside ``output_dir`` and renamed at the end: a
    failed or interrupted export leaves no half-written model directory, and the temp directories of
    killed exports are removed by the next export of the same target (``staging``).
    """
    if (source is None) == (random_weights is None):
        raise ValueError("give exactly one of a checkpoint source or random_weights=NAME")
    check_precision(precision)
    if kv_cache not in KV_CACHES:
        raise ValueError(f"kv_cache must be one of {KV_CACHES}, got {kv_cache!r}")
    kv_cache = KVCache(kv_cache)
    if precision == "fp16" and kv_cache is not KVCache.STATIC:
        raise ValueError(
            "precision='fp16' needs kv_cache='static' (GroupQueryAttention keeps the fp16 cache in place; the int8 "
            "cache is for the CPU)"
        )
    lstm_choice, lstm_explicit = choose_codec_lstm(codec_lstm, precision)
    output_dir = Path(output_dir).expanduser().resolve()
    _prepare_target(output_dir, overwrite)

    started = time.perf_counter()
    return_freed_memory_to_os()
    if random_weights:
        canonical_name(random_weights)  # unknown names fail before anything is written
    else:
        ckpt = load_checkpoint(source, revision=revision)  # memory-mapped: its weights are file-backed pages
        check_start_token(_start_token_id(ckpt.model), int(ckpt.model.decoder.config.pad_token_id))

    with StagingDir(output_dir) as stage:
        tmp = stage.path
        scratch = tmp / RANDOM_WEIGHTS_SCRATCH
        if random_weights:
            # the decoder's random weights go to a scratch file, mapped back like a checkpoint's
            ckpt = load_random_weights(random_weights, seed=seed, scratch=scratch)
        logger.info("loaded %s in %.1f s", ckpt.source, time.perf_counter() - started)
        plans = _plans(include_audio_encoder, kv_cache, precision)
        plans = [plan for plan in plans if plan.available is None or plan.available(ckpt.model)]
        if is_melody_model(ckpt.model):
            if kv_cache is not KVCache.STATIC:
                raise ValueError("melody checkpoints are exported with kv_cache='static' only (the prefix decoder)")
            plans = melody_plans(GraphPlan, plans, MAX_TEXT_TOKENS)
        graphs: dict[str, GraphSpec] = {}
        files: dict[str, str] = {}
        cuda_graph = False
        matmul_counts: dict[str, int] = {}
        codec_record: dict = {}
        for plan in plans:
            t0 = time.perf_counter()
            wrapper = plan.build(ckpt.model).eval()
            in_names, out_names, axes = plan.names(wrapper)
            path = tmp / plan.file
            graph = trace_weightless(
                wrapper,
                plan.inputs(ckpt.model, wrapper),
                input_names=in_names,
                output_names=out_names,
                dynamic_axes=axes,
                opset=opset,
            )
            converts = precision_changes(plan.role, precision)
            kv_int8 = plan.role == "decoder" and kv_cache is KVCache.STATIC_INT8
            lstm_int8 = plan.role in CODEC_ROLES and lstm_choice is CodecLSTM.INT8
            external = write_model(
                graph.copy() if converts or kv_int8 or lstm_int8 else graph, path, onnx_io.EXTERNAL_DATA_MIN_BYTES
            )
            t1 = time.perf_counter()
            if validate:
                validate_graph(plan.role, path, ckpt.model, wrapper, tolerance, plan.validator)
            if kv_int8:  # scales from the validated fp32 graph, before its file is replaced
                calibration = kv_quant.calibrate(path, ckpt.model, ckpt.tokenizer)
            if converts or kv_int8:
                converted = convert_precision(plan.role, graph, precision) if converts else graph
                matmul_counts.update(converted.matmul_counts if plan.role == "decoder" else {})
                if kv_int8:
                    kv_quant.quantize_cache(converted, calibration.scales)
                external = write_model(converted, path, onnx_io.EXTERNAL_DATA_MIN_BYTES)
                del converted
                (plan.smoke or smoke_test)(plan.role, path, ckpt.model, wrapper)
                if kv_int8:
                    error = kv_quant.check_quantized(path, calibration)
                    logger.info("int8 KV cache: logits within %.3g of the fp32 graph's (relative, probe)", error)
            if lstm_int8:  # after the fp32 graph passed its parity check
                external = int8_codec_graph(plan.role, graph, path, ckpt.model, wrapper, lstm_explicit, codec_record)
            del graph
            t2 = time.perf_counter()
            logger.info(
                "%-15s %-22s %10s  export %5.1f s  validate %5.1f s",
                plan.role,
                plan.file,
                _describe_size(path, external),
                t1 - t0,
                t2 - t1,
            )
            graphs[plan.role] = GraphSpec(
                file=plan.file,
                inputs=in_names,
                outputs=out_names,
                sha256=sha256_file(path),
                external_data=external,
            )
            files.update({name: sha256_file(tmp / name) for name in external})
            if plan.role == "decoder":
                cuda_graph = _cuda_graph_ready(path, precision, kv_cache)
        scratch.unlink(missing_ok=True)  # still mapped by the model until it is freed, but not shipped
        ckpt.tokenizer.save(str(tmp / TOKENIZER_FILE))
        files[TOKENIZER_FILE] = sha256_file(tmp / TOKENIZER_FILE)
        matmul_plan = plan_for(precision)
        manifest = _build_manifest(ckpt, graphs, files, precision_name(precision), kv_cache, cuda_graph)
        if matmul_plan is not None:
            manifest = dataclasses.replace(manifest, precision_plan=matmul_plan.to_record(matmul_counts))
        if codec_record:
            manifest = dataclasses.replace(manifest, codec_lstm=codec_record)
        manifest.save(tmp)
        stage.commit()
    logger.info("export finished in %.1f s: %s", time.perf_counter() - started, output_dir)
    return manifest
