"""``musicgen-onnx``: ``generate`` (runtime only), ``export`` (export extra) and ``serve`` (serve extra)."""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import time
from pathlib import Path

USAGE = """usage: musicgen-onnx {generate,export,serve,serve-keys} ...

  generate   make music from an export directory (numpy + onnxruntime only)
  export     export a checkpoint to ONNX (needs: pip install "musicgen-onnx[export]")
  serve      serve an export over HTTP with Ray Serve (needs: pip install "musicgen-onnx[serve]")
  serve-keys make, revoke and list the API keys of `serve --api-keys FILE`

run `musicgen-onnx COMMAND -h` for options
"""

#: command -> (module imported only for it, what it needs, how to install it)
OPTIONAL_COMMANDS = {
    "export": (
        "musicgen_onnx.export.cli",
        "torch, transformers and onnx",
        'pip install torch==2.13.0 && pip install "musicgen-onnx[export]"',
    ),
    "serve": ("musicgen_onnx.serving.cli", "ray[serve] and fastapi", 'pip install "musicgen-onnx[serve]"'),
    "serve-keys": ("musicgen_onnx.serving.keys_cli", "the runtime", 'pip install "musicgen-onnx"'),
}


def build_generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="musicgen-onnx generate",
        description="Generate music with an exported MusicGen model; writes one WAV per prompt.",
    )
    p.add_argument("model_dir", type=Path, help="export directory (made by `musicgen-onnx export`)")
    p.add_argument("texts", nargs="*", help="text prompts (none: unconditional generation)")
    p.add_argument("-o", "--output", type=Path, default=Path("musicgen.wav"), help="WAV path (numbered if several)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of audio, prompt included (default 10)")
    p.add_argument("--seed", type=int, help="random seed for reproducible sampling")
    p.add_argument("--guidance-scale", type=float, help="classifier-free guidance (>= 1; default from the model)")
    p.add_argument("--top-k", type=int, help="sample from the k most likely tokens (1..2048; 0 = no top-k filtering)")
    p.add_argument(
        "--top-p",
        type=float,
        help="nucleus sampling threshold in (0, 1]; 1 = off (0 is refused: audiocraft and transformers disagree)",
    )
    p.add_argument("--temperature", type=float, help="sampling temperature (> 0)")
    p.add_argument("--greedy", action="store_true", help="argmax decoding instead of sampling")
    p.add_argument("--prompt-audio", type=Path, help="audio file to continue (any sample rate)")
    p.add_argument(
        "--melody", type=Path, help="melody checkpoints: audio file whose chromagram to follow (any sample rate)"
    )
    p.add_argument("--provider", choices=("auto", "cuda", "cpu"), default="auto", help="execution provider")
    p.add_argument("--threads", type=int, help="onnxruntime intra-op threads (default: the CPUs this process may use)")
    p.add_argument(
        "--no-spin", action="store_true", help="idle onnxruntime workers sleep instead of spinning (shared nodes)"
    )
    p.add_argument(
        "--no-cuda-graph", action="store_true", help="on CUDA: run the decoder step without CUDA-graph capture"
    )
    p.add_argument(
        "--host-sampling", action="store_true", help="on CUDA: sample tokens in numpy instead of the sampler graph"
    )
    p.add_argument("--stream", action="store_true", help="write the WAV progressively while generating")
    p.add_argument("--chunk-seconds", type=float, default=1.0, help="with --stream: seconds per chunk (default 1)")
    p.add_argument("--window", type=float, help="long-form: window length in seconds (default 30)")
    p.add_argument("--extend-stride", type=float, help="long-form: seconds each window advances (default 18)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


class ProgressBar:
    """A one-line terminal bar fed by the model's progress callback; also the Ctrl-C stop switch."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.stop_requested = False
        self._start = time.perf_counter()
        self._last_draw = 0.0

    def __call__(self, done: int, total: int) -> bool:
        now = time.perf_counter()
        if self.enabled and (now - self._last_draw > 0.1 or done >= total):
            self._last_draw = now
            rate = done / max(now - self._start, 1e-9)
            width = 30
            filled = int(width * done / max(total, 1))
            bar = "#" * filled + "-" * (width - filled)
            sys.stderr.write(f"\r[{bar}] {done}/{total} frames  {rate:6.1f} frames/s")
            if done >= total:
                sys.stderr.write("\n")
            sys.stderr.flush()
        return not self.stop_requested

    def request_stop(self, *_: object) -> None:
        if self.stop_requested:  # a second Ctrl-C aborts for real
            raise KeyboardInterrupt
        self.stop_requested = True
        sys.stderr.write("\nstopping: saving what was generated so far (Ctrl-C again to abort)\n")


def _output_paths(output: Path, count: int) -> list[Path]:
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}_{i}{output.suffix or '.wav'}") for i in range(count)]


def run_generate(argv: list[str]) -> int:
    args = build_generate_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)

    from .audio import WavStreamWriter, read_audio, write_wav
    from .model import MusicGen
    from .sessions import ProviderUnavailableError

    try:
        model = MusicGen.load(
            args.model_dir,
            provider=args.provider,
            threads=args.threads,
            allow_spinning=False if args.no_spin else None,
            cuda_graph=False if args.no_cuda_graph else None,
            device_sampling=False if args.host_sampling else None,
        )
        prompt, prompt_sr = (None, None)
        if args.prompt_audio is not None:
            if not args.prompt_audio.is_file():
                raise FileNotFoundError(f"prompt audio not found: {args.prompt_audio}")
            prompt, prompt_sr = read_audio(args.prompt_audio)
        melody, melody_sr = (None, None)
        if args.melody is not None:
            if not args.melody.is_file():
                raise FileNotFoundError(f"melody file not found: {args.melody}")
            melody, melody_sr = read_audio(args.melody)
        kwargs = dict(
            duration=args.duration,
            seed=args.seed,
            guidance_scale=args.guidance_scale,
            top_k=args.top_k,
            top_p=args.top_p,
            temperature=args.temperature,
            do_sample=False if args.greedy else None,
            prompt_audio=prompt,
            prompt_sample_rate=prompt_sr,
        )
        if melody is not None:
            kwargs.update(melody=melody, melody_sample_rate=melody_sr)
        if args.extend_stride is not None:
            kwargs["extend_stride"] = args.extend_stride
        if args.window is not None:
            kwargs["window"] = args.window
        texts = args.texts or None
        count = len(args.texts) if args.texts else 1
        paths = _output_paths(args.output, count)
        for path in paths:
            path.parent.mkdir(parents=True, exist_ok=True)
        bar = ProgressBar(enabled=not args.quiet and sys.stderr.isatty())
        previous = signal.signal(signal.SIGINT, bar.request_stop)
        started = time.perf_counter()
        try:
            if args.stream:
                kwargs["chunk_seconds"] = args.chunk_seconds
                audio_seconds, timings = _stream_to_files(model, texts, kwargs, paths, bar, WavStreamWriter)
            else:
                result = model.generate_detailed(texts, progress=bar, **kwargs)
                for i, path in enumerate(paths):
                    write_wav(path, result.audio[i], model.sampling_rate)
                audio_seconds = result.audio.shape[-1] / model.sampling_rate
                timings = result.timings
        finally:
            signal.signal(signal.SIGINT, previous)
    except (ValueError, FileNotFoundError, ProviderUnavailableError) as exc:
        print(f"musicgen-onnx generate: error: {exc}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - started
    for path in paths:
        print(path)
    stages = "  ".join(f"{k} {v:.2f}s" for k, v in timings.items() if k != "total")
    print(
        f"{audio_seconds:.2f} s of audio in {wall:.2f} s (real-time factor {wall / max(audio_seconds, 1e-9):.2f})"
        f"{'  [stopped early]' if bar.stop_requested else ''}\n{stages}"
    )
    return 0


def _stream_to_files(model, texts, kwargs, paths, bar, writer_cls):
    """Write each chunk as it arrives, so a reader sees the WAV grow."""
    chunks = model.stream(texts, progress=bar, **kwargs)  # validates the arguments before any file is opened
    writers = [writer_cls(path, model.sampling_rate, model.channels) for path in paths]
    samples = 0
    first_audio = None
    started = time.perf_counter()
    try:
        for chunk in chunks:
            if first_audio is None:
                first_audio = time.perf_counter() - started
            for i, writer in enumerate(writers):
                writer.write(chunk.audio[i])
            samples += chunk.audio.shape[-1]
    finally:
        for writer in writers:
            writer.close()
    return samples / model.sampling_rate, {"time_to_first_audio": first_audio or 0.0}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "generate":
        return run_generate(rest)
    if command in OPTIONAL_COMMANDS:
        module, needs, install = OPTIONAL_COMMANDS[command]
        try:
            # Imported by name, only for this command: inference nodes never load torch or Ray.
            command_cli = importlib.import_module(module)
        except ImportError as exc:
            print(f"musicgen-onnx {command} needs {needs} ({exc.name} is missing):\n  {install}", file=sys.stderr)
            return 2
        return command_cli.main(rest)
    print(f"musicgen-onnx: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
