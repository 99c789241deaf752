"""Side by side: the melody decoder step vs the text decoder step at the same width, on this machine.

Builds stereo-melody and stereo-medium (both 1536 wide, 24 heads, 8 codebooks) with random weights but only
``--layers`` decoder layers (default 8: small enough to export in a minute), exports both fp32, then times
``--seconds`` of generation with CFG (batch 1), alternating the two ``--rounds`` times. Prints the median ms/step
of each and their ratio: the melody step has no cross-attention but a longer self-attention (235 + T prefix
positions) with an attention bias.

    python benchmarks/melody_vs_text.py /tmp/mvt --layers 8 --seconds 5 --rounds 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np


def build(name: str, layers: int, out: Path) -> Path:
    import torch
    import transformers
    from musicgen_onnx.export.random_weights import (
        is_melody,
        load_shipped_config,
        load_shipped_generation_config,
        randomize_codebooks,
    )
    from musicgen_onnx.export.standin_tokenizer import build_standin_tokenizer, save_standin_tokenizer

    config = load_shipped_config(name)
    config.decoder.num_hidden_layers = layers
    cls = (
        transformers.MusicgenMelodyForConditionalGeneration
        if is_melody(name)
        else transformers.MusicgenForConditionalGeneration
    )
    torch.manual_seed(0)
    model = cls(config).eval()
    randomize_codebooks(model)
    model.generation_config = transformers.GenerationConfig(**load_shipped_generation_config(name))
    model.save_pretrained(out)
    save_standin_tokenizer(build_standin_tokenizer(config.text_encoder.vocab_size), out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work_dir", type=Path)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from musicgen_onnx.export import export_model
    from musicgen_onnx.runtime import MusicGen

    exports = {}
    for name in ("facebook/musicgen-stereo-melody", "facebook/musicgen-stereo-medium"):
        short = name.split("-", 1)[1]
        ckpt = build(name, args.layers, args.work_dir / f"{short}-ckpt")
        export_model(str(ckpt), args.work_dir / short, overwrite=True, include_audio_encoder=False, validate=False)
        exports[short] = args.work_dir / short
    models = {k: MusicGen.load(v, provider="cpu", threads=args.threads, verify=False) for k, v in exports.items()}
    t = np.arange(10 * 32000) / 32000
    tune = (0.4 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.rounds):
        for key, model in models.items():
            extra = {"melody": tune} if model.manifest.conditioning == "prefix" else {}
            t0 = time.perf_counter()
            result = model.generate_detailed("jazz trio", duration=args.seconds, seed=0, top_k=250, **extra)
            times[key] += [s * 1e3 for s in result.step_times[1:]]
            print(f"{key}: {len(result.step_times)} steps in {time.perf_counter() - t0:.1f} s", flush=True)
    medians = {k: statistics.median(v) for k, v in times.items()}
    for key, value in medians.items():
        print(f"{key}: median {value:.1f} ms/step, mean {statistics.fmean(times[key]):.1f} ({args.layers} layers)")
    melody, text = medians["stereo-melody"], medians["stereo-medium"]
    print(f"melody / text step time: {melody / text:.2f}")


if __name__ == "__main__":
    main()
