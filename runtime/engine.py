"""The onnxruntime side of one export: its sessions, text and audio conditioning, the step loop, EnCodec.

``Engine`` is what the ``MusicGen`` facade, long-form jobs, streaming and benchmarks build on. It imports
only the layers below it (manifest, options, generation, sessions, runners, sampler, tokenizer), never the
facade, so the runtime imports one way (docs/design.md §1).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .codec_stream import StatefulStreamDecoder
from .decoder_runner import make_runner
from .gate import ComputeGate
from .generation import DelayPatternState, build_delay_pattern, choose_tokens, split_channels
from .manifest import KVCache, Manifest, verify_files
from .melody import MelodyCondition, MelodyDecoderRunner
from .options import SamplingOptions, is_real
from .sampler import GraphSampler
from .sessions import (
    check_session_providers,
    make_session_options,
    open_decoder_session,
    open_session,
    resolve_providers,
)
from .tokenizer import TextTokenizer

logger = logging.getLogger("musicgen_onnx")

_CUDA = "CUDAExecutionProvider"

#: Frames (sequences x frames) one EnCodec decoder call may hold. The activations of a call set the process's
#: peak memory; this is one 30 s channel, the longest one-shot decode, so batching channels and clips into one
#: call (cheaper per frame: EnCodec's LSTM steps through time once for the whole batch) never raises the peak.
CODEC_CALL_FRAMES = 1500


@dataclass(frozen=True)
class Conditioning:
    """The text conditioning of B prompts: every decoder layer's cross-attention K/V and the text mask."""

    cross_kv: list[np.ndarray]  # [B, heads, T, head_dim] per layer and K / V
    text_mask: np.ndarray  # [B, T]
    unconditional: bool  # no texts: zero K/V, T = 1

    @property
    def batch(self) -> int:
        return self.text_mask.shape[0]

    def with_cfg(self) -> tuple[list[np.ndarray], np.ndarray]:
        """The decoder rows of classifier-free guidance: the conditional rows, then the unconditional ones with
        zero K/V and an all-zero text mask, exactly as transformers builds them."""
        cross = [np.concatenate([kv, np.zeros_like(kv)], axis=0) for kv in self.cross_kv]
        return cross, np.concatenate([self.text_mask, np.zeros_like(self.text_mask)], axis=0)


class Engine:
    """The sessions of one export directory and the delay-pattern loop that drives them.

    Use ``Engine.open`` (or ``MusicGen.load``, which wraps it). Sessions are opened once; every method is
    safe to call from several threads (onnxruntime sessions are), and generations in flight at once get
    separate decoder buffers.
    """

    def __init__(
        self,
        model_dir: Path,
        manifest: Manifest,
        providers: list[str],
        options: ort.SessionOptions,
        text_encoder: ort.InferenceSession,
        cuda_graph: bool = False,
        device_sampling: bool = False,
        fixed_buffers: bool | None = None,
        codec_options: ort.SessionOptions | None = None,
    ) -> None:
        self.model_dir = model_dir
        self.manifest = manifest
        self.providers = providers
        self.device = "cuda" if providers[0] == _CUDA else "cpu"
        self.session_options = options
        #: EnCodec's sessions: the same, without per-shape memory patterns (``make_session_options``)
        self.codec_options = options if codec_options is None else codec_options
        #: Every onnxruntime run of this model on the CPU holds the gate: one thread pool computes at a time
        #: (the decoder loop and the clients' EnCodec decodes would otherwise oversubscribe the cores, see gate).
        self.gate = ComputeGate(enabled=self.device == "cpu")
        graphs = manifest.graphs
        self.text_encoder = text_encoder
        # text models: every layer's cross K/V; melody models: the prefix graph (chroma + text states)
        self.cross_kv = self._open(graphs["cross_kv"].file) if "cross_kv" in graphs else None
        self.melody_prefix = None
        if manifest.conditioning == "prefix":
            self.melody_prefix = self._open(graphs["melody_prefix"].file)
            if cuda_graph:
                logger.warning("melody exports run the decoder without CUDA-graph capture for now")
            cuda_graph = False  # the prefix decoder runs uncaptured (its step inputs are rebound per call)
        self.decoder, self.cuda_graph = open_decoder_session(
            model_dir / graphs["decoder"].file, providers, options, cuda_graph
        )
        check_session_providers(self.decoder, providers, "cuda")
        #: Decoder buffers at fixed addresses, every step over all rows: what CUDA-graph capture needs (on with
        #: CUDA; ``fixed_buffers=True`` runs the same layout on the CPU). Used by the batching engine.
        self.fixed_buffers = self.device != "cpu" if fixed_buffers is None else bool(fixed_buffers)
        self.sampler = self._open(graphs["sampler"].file) if device_sampling else None
        self.codec_decoder = self._open(graphs["encodec_decode"].file, codec=True)
        self._codec_encoder: ort.InferenceSession | None = None  # opened on the first audio prompt
        #: the stateful EnCodec decoder of streams (docs/design.md §10), opened now: a stream's first chunk must
        #: not wait for a session to open while the decoder loop runs ahead
        self.codec_stream = self._open(graphs["encodec_stream"].file, codec=True) if self.has_stateful_codec else None
        self.tokenizer = TextTokenizer(
            model_dir / manifest.text.tokenizer_file, manifest.text.pad_token_id, manifest.text.max_tokens
        )

    # ---- construction ------------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        model_dir: str | Path,
        provider: str = "auto",
        threads: int | None = None,
        verify: bool = True,
        cuda_graph: bool | None = None,
        device_sampling: bool | None = None,
        allow_spinning: bool | None = None,
        fixed_buffers: bool | None = None,
    ) -> Engine:
        """Open an export directory; the arguments are ``MusicGen.load``'s (documented there)."""
        model_dir = Path(model_dir).expanduser()
        manifest = Manifest.load(model_dir)
        providers = resolve_providers(provider)
        options = make_session_options(threads, allow_spinning)
        if verify:
            verify_files(model_dir, manifest, ("text_encoder",))
        # the smallest always-needed graph doubles as the probe of which provider onnxruntime really starts
        text_encoder = open_session(model_dir / manifest.graphs["text_encoder"].file, providers, options)
        checked = check_session_providers(text_encoder, providers, provider)
        if checked != providers:
            logger.warning(
                "onnxruntime lists the CUDA execution provider but could not start it (no usable GPU, or missing "
                "CUDA / cuDNN libraries): running on the CPU; pass provider='cpu' to skip the attempt"
            )
            providers = checked
            text_encoder = open_session(model_dir / manifest.graphs["text_encoder"].file, providers, options)
        on_cuda = providers[0] == _CUDA
        if on_cuda and manifest.decoder.kv_cache is KVCache.STATIC_INT8:
            raise ValueError(
                f"{model_dir} keeps its KV cache in int8, which onnxruntime's GroupQueryAttention reads on the CPU "
                "only (its decoder computes in fp32): load it with provider='cpu', or export for GPUs with "
                "--precision fp16 --kv-cache static"
            )
        if cuda_graph is None:
            cuda_graph = on_cuda and manifest.decoder.cuda_graph
        elif cuda_graph and not on_cuda:
            raise ValueError("cuda_graph=True needs the CUDA execution provider (provider='cuda' or 'auto' on a GPU)")
        elif cuda_graph and not manifest.decoder.cuda_graph:
            raise ValueError(
                f"{model_dir} cannot run as a CUDA graph (precision {manifest.precision}, "
                f"{manifest.decoder.kv_cache} KV cache): re-export with --precision fp16 --kv-cache static"
            )
        if fixed_buffers and not manifest.decoder.kv_cache.in_place:
            raise ValueError(f"fixed_buffers=True needs a static-cache export; {model_dir} has a concat cache")
        has_sampler = "sampler" in manifest.graphs
        if device_sampling is None:
            device_sampling = on_cuda and has_sampler
        elif device_sampling and not has_sampler:
            raise ValueError(
                f"device_sampling=True needs the sampler graph, which {model_dir} lacks (exported by an older "
                "musicgen-onnx); re-export it, or use device_sampling=False"
            )
        if verify:
            skip = ("text_encoder", "encodec_encode") + (() if device_sampling else ("sampler",))
            verify_files(model_dir, manifest, tuple(r for r in manifest.graphs if r not in skip))
        sessions = (providers, options, text_encoder)
        codec_options = make_session_options(threads, allow_spinning, memory_pattern=False)
        engine = cls(
            model_dir, manifest, *sessions, bool(cuda_graph), bool(device_sampling), fixed_buffers, codec_options
        )
        logger.info(
            "loaded %s (%s) with %s%s",
            model_dir,
            manifest.source,
            providers[0],
            " + CUDA graphs" if engine.cuda_graph else "",
        )
        if engine.device == "cuda" and manifest.decoder.kv_cache.in_place and manifest.precision != "fp16":
            logger.warning(
                "%s has a %s static-cache decoder: onnxruntime's CUDA GroupQueryAttention runs fp16 only, so "
                "attention falls back to the CPU each step; export with --precision fp16 for GPUs",
                model_dir,
                manifest.precision,
            )
        return engine

    def _open(self, file: str, codec: bool = False) -> ort.InferenceSession:
        """A session on this engine's providers; one that silently lost CUDA is an error (the probe had it)."""
        options = self.codec_options if codec else self.session_options
        session = open_session(self.model_dir / file, self.providers, options)
        check_session_providers(session, self.providers, "cuda")
        return session

    @property
    def device_sampling(self) -> bool:
        """Whether tokens are selected by the exported sampler graph (on the device) rather than in numpy."""
        return self.sampler is not None

    @property
    def channels(self) -> int:
        return self.manifest.audio.channels

    # ---- conditioning ------------------------------------------------------------------------------
    def encode_text(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Text -> (encoder_hidden_states [B, T, H_dec], attention_mask [B, T])."""
        ids, mask = self.tokenizer(texts)
        with self.gate:
            (states,) = self.text_encoder.run(None, {"input_ids": ids, "attention_mask": mask})
        return states, mask

    def condition(
        self, texts: Sequence[str] | None, batch: int, melody: list[np.ndarray] | None = None
    ) -> Conditioning | MelodyCondition:
        """Cross-attention K/V and text mask of the conditional rows (``texts`` None: zeros, T = 1); for melody
        checkpoints a ``MelodyCondition`` that builds each window's prefix."""
        if self.melody_prefix is not None:
            text_list = None if texts is None else list(texts)
            return MelodyCondition(self.manifest, self.encode_text, self.melody_prefix, text_list, batch, melody)
        d = self.manifest.decoder
        if texts is None:
            zeros = np.zeros((batch, d.num_heads, 1, d.head_dim), np.float32)
            return Conditioning([zeros] * (2 * d.num_layers), np.zeros((batch, 1), np.int64), True)
        states, mask = self.encode_text(texts)
        with self.gate:
            cross_kv = self.cross_kv.run(None, {"encoder_hidden_states": states})
        return Conditioning(cross_kv, mask, False)

    def encode_audio(self, audio: np.ndarray) -> np.ndarray:
        """Audio [B, channels, L] at the model's rate -> codes [B, K, ceil(L / hop)] (channels interleaved)."""
        if self._codec_encoder is None:
            spec = self.manifest.graphs.get("encodec_encode")
            if spec is None:
                raise ValueError(
                    f"{self.model_dir} was exported without the EnCodec encoder (--no-audio-encoder); "
                    "re-export it to use audio prompts"
                )
            verify_files(self.model_dir, self.manifest, ("encodec_encode",))
            self._codec_encoder = self._open(spec.file, codec=True)
        batch, channels, length = audio.shape
        mono = np.ascontiguousarray(audio.transpose(1, 0, 2).reshape(channels * batch, 1, length), np.float32)
        with self.gate:
            (codes,) = self._codec_encoder.run(None, {"audio_values": mono})
        per_channel = codes.reshape(channels, batch, codes.shape[1], codes.shape[2])
        out = np.empty((batch, channels * codes.shape[1], codes.shape[2]), dtype=np.int64)
        for c in range(channels):
            out[:, c::channels] = per_channel[c]
        return out

    # ---- audio -------------------------------------------------------------------------------------
    def decode_codes(self, codes: np.ndarray) -> np.ndarray:
        """Codes [B, K, F] -> audio [B, channels, hop * F]; stereo = left (even rows) + right (odd rows).

        Every (clip, channel) is one mono EnCodec sequence; as many as fit ``CODEC_CALL_FRAMES`` go through one
        call (both channels of a stereo clip up to 15 s, every chunk of a stream): per frame a batch of 2 costs
        ~17 % less than two calls (measured in docs/design.md §10). Longer sequences go one per call, as before.
        """
        parts = split_channels(np.asarray(codes, dtype=np.int64), self.channels)
        batch, frames = codes.shape[0], codes.shape[-1]
        audio = np.empty((batch, len(parts), self.manifest.audio.hop_length * frames), np.float32)
        sequences = [(b, c) for b in range(batch) for c in range(len(parts))]
        per_call = max(1, CODEC_CALL_FRAMES // max(frames, 1))
        for first in range(0, len(sequences), per_call):
            group = sequences[first : first + per_call]
            stacked = np.stack([parts[c][b] for b, c in group])
            with self.gate:  # per call: the decoder loop can step between calls
                (out,) = self.codec_decoder.run(None, {"audio_codes": stacked})
            for row, (b, c) in enumerate(group):
                audio[b, c] = out[row, 0]
        return audio

    def warm_up_codec(self, seconds: float | None = None) -> float:
        """Decode ``seconds`` of codes (every channel; at most one call's ``CODEC_CALL_FRAMES``, which None means)
        once and return the seconds it took.

        onnxruntime keeps the activation memory of a call in its arena for the calls after it. On a VM the
        first touch of that much fresh memory (~2 GB for 10 s of stereo) made a process's first long decode
        ~0.9 s slower than the next (2.3-2.5 vs 1.6 s on 2 cores); a server pays it here, at start, instead of
        in its first request (docs/design.md §10).
        """
        longest = CODEC_CALL_FRAMES // self.channels
        if seconds is None:
            frames = longest
        elif not is_real(seconds) or seconds <= 0:
            raise ValueError(f"seconds must be a positive number, or None for the longest call, got {seconds!r}")
        else:
            frames = max(1, min(int(np.ceil(seconds * self.manifest.audio.frame_rate)), longest))
        started = time.perf_counter()
        self.decode_codes(np.zeros((1, self.manifest.decoder.num_codebooks, frames), np.int64))
        return time.perf_counter() - started

    @property
    def has_stateful_codec(self) -> bool:
        """Whether streams decode with the stateful EnCodec graph (exports before it use the overlap path)."""
        return "encodec_stream" in self.manifest.graphs and self.manifest.codec_stream is not None

    def stateful_decoder(self) -> StatefulStreamDecoder:
        """A decoder for one stream that carries EnCodec's LSTM state between chunks (docs/design.md §10)."""
        session = self.codec_stream
        if session is None:
            raise ValueError(f"{self.model_dir} has no stateful EnCodec graph (exported before it): re-export it")
        h0 = next(i for i in session.get_inputs() if i.name == "lstm_h")
        layers, hidden = int(h0.shape[0]), int(h0.shape[2])

        def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            with self.gate:  # per call: the decoder loop can step between calls
                return session.run(None, feeds)

        audio = self.manifest.audio
        spec = self.manifest.codec_stream
        return StatefulStreamDecoder(
            run, self.decode_codes, spec, audio.hop_length, self.channels, CODEC_CALL_FRAMES, (layers, hidden)
        )

    # ---- the step loop -----------------------------------------------------------------------------
    def decoder_runner(self):
        """A runner for one generation alone (``start`` / ``step`` / ``release``) over this engine's decoder."""
        return make_runner(self.decoder, self.manifest, self.device)

    def window_steps(
        self,
        conditioning: Conditioning | MelodyCondition,
        prompt_codes: np.ndarray | None,
        steps: int,
        options: SamplingOptions,
        rng: np.random.Generator,
        step_times: list[float],
        window_start: int = 0,
    ) -> Iterator[DelayPatternState]:
        """The delay-pattern loop of one generate call: prefill, then one decoder call per step, CFG and
        sampling in numpy (or in the sampler graph, on the device). Yields the state after every sampled
        column (the last one has ``done``); closing the iterator releases the decoder buffers. ``window_start``
        (frames) places a melody checkpoint's melody slice (long-form re-slices the melody per window)."""
        d = self.manifest.decoder
        batch = conditioning.batch
        cfg = not conditioning.unconditional and options.guidance_scale > 1
        prompt_len = 0 if prompt_codes is None else prompt_codes.shape[-1]
        ids, pattern = build_delay_pattern(
            prompt_codes,
            batch_size=batch,
            num_codebooks=d.num_codebooks,
            channels=self.channels,
            max_length=1 + prompt_len + steps,
            pad_token_id=d.pad_token_id,
        )
        state = DelayPatternState(ids, pattern, pad_token_id=d.pad_token_id, channels=self.channels)
        if isinstance(conditioning, MelodyCondition):  # this window's prefix (the melody slice moves)
            runner = MelodyDecoderRunner(self.decoder, self.manifest, self.device)
            with self.gate:
                prefix, valid = conditioning.prefix(window_start * self.manifest.audio.hop_length, cfg)
            runner.start(prefix, valid, max_length=1 + prompt_len + steps)
        else:
            cross_kv, text_mask = conditioning.with_cfg() if cfg else (conditioning.cross_kv, conditioning.text_mask)
            runner = self.decoder_runner()
            runner.start(cross_kv, text_mask, max_length=1 + prompt_len + steps)
        sampler = None
        if self.sampler is not None:
            sampler = GraphSampler(self.sampler, d.vocab_size, d.num_codebooks, self.device)
            scale = options.guidance_scale if cfg else 1.0
            sampler.start(batch, scale, options.temperature, options.top_k, options.top_p, options.do_sample)
        feed = state.prefill_ids(cfg)  # a view of the state without CFG: runners never keep what they are fed
        try:
            while True:
                t0 = time.perf_counter()
                if sampler is not None:
                    with self.gate:
                        tokens = sampler.sample(runner.run(feed), rng)
                else:
                    with self.gate:
                        logits = runner.step(feed)
                    tokens = choose_tokens(
                        logits.reshape(-1, logits.shape[-1]),
                        guidance_scale=options.guidance_scale if cfg else None,
                        do_sample=options.do_sample,
                        temperature=options.temperature,
                        top_k=options.top_k or None,
                        top_p=options.top_p,
                        rng=rng,
                    )
                state.write(tokens)
                step_times.append(time.perf_counter() - t0)
                yield state
                if state.done:
                    return
                feed = state.step_ids(cfg)
        finally:
            runner.release()
