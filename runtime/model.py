"""``MusicGen``: load an export directory and generate music with onnxruntime (no torch)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .audio import prepare_prompt_audio
from .decoder_runner import BufferPool, make_runner
from .generation import DelayPatternState, build_delay_pattern, process_logits, select_tokens, split_channels
from .longform import DEFAULT_DURATION_CAP, CodeGenerator, Window, plan_generation
from .manifest import Manifest, verify_files
from .melody import MelodyCondition, MelodyDecoderRunner, prepare_melody, resolve_melody_batch
from .options import SamplingOptions, batch_size, check_seed, check_texts, resolve_sampling_options
from .sampler import GraphSampler
from .sessions import (
    check_session_providers,
    make_session_options,
    open_decoder_session,
    open_session,
    resolve_providers,
)
from .streaming import AudioStream, decode_long, stream_chunks
from .tokenizer import TextTokenizer

logger = logging.getLogger("musicgen_onnx")

#: progress(frames_done, frames_total); return False to stop early (the audio made so far is returned).
ProgressCallback = Callable[[int, int], "bool | None"]


@dataclass
class GenerationResult:
    """Audio plus what produced it: codes [B, K, frames] and per-stage timings in seconds."""

    audio: np.ndarray
    codes: np.ndarray
    sampling_rate: int
    timings: dict[str, float] = field(default_factory=dict)
    step_times: list[float] = field(default_factory=list)
    stopped_early: bool = False
    windows: list[Window] = field(default_factory=list)  # the generate calls made (one unless long-form)


class MusicGen:
    """A MusicGen export directory opened with onnxruntime.

    >>> model = MusicGen.load("out/stereo-small")
    >>> audio = model.generate(["lo-fi beat with warm piano"], duration=8, seed=0)  # [1, 2, 256000]
    """

    #: Longest ``duration`` (seconds) generate / stream accept; long-form makes any length, this is a guard.
    duration_cap: float = DEFAULT_DURATION_CAP

    def __init__(
        self,
        model_dir: Path,
        manifest: Manifest,
        providers: list[str],
        options: ort.SessionOptions,
        text_encoder: ort.InferenceSession,
        cuda_graph: bool = False,
        device_sampling: bool = False,
    ) -> None:
        """Use ``MusicGen.load``; this takes the already checked providers and the probed text encoder."""
        self.model_dir = model_dir
        self.manifest = manifest
        self.providers = providers
        self.device = "cuda" if providers[0] == "CUDAExecutionProvider" else "cpu"
        self._options = options
        graphs = manifest.graphs
        self._text_encoder = text_encoder
        self._cross_kv = self._melody_prefix = None  # text models: cross K/V; melody models: the prefix graph
        if "cross_kv" in graphs:
            self._cross_kv = self._open(graphs["cross_kv"].file)
        if manifest.conditioning == "prefix":
            self._melody_prefix = self._open(graphs["melody_prefix"].file)
            if cuda_graph:
                logger.warning("melody exports run the decoder without CUDA-graph capture for now")
            cuda_graph = False  # the prefix decoder runs uncaptured (its step inputs are rebound per call)
        self._decoder, self.cuda_graph = open_decoder_session(
            model_dir / graphs["decoder"].file, providers, self._options, cuda_graph
        )
        check_session_providers(self._decoder, providers, "cuda")
        #: fixed decoder buffers kept between generations: the captured CUDA graphs point at them
        self._buffer_pool: BufferPool | None = {} if self.cuda_graph else None
        self._sampler: ort.InferenceSession | None = None
        if device_sampling:
            self._sampler = self._open(graphs["sampler"].file)
        self._codec_decoder = self._open(graphs["encodec_decode"].file)
        self._codec_encoder = None  # opened on first audio prompt: most users never need it
        self.tokenizer = TextTokenizer(
            model_dir / manifest.text.tokenizer_file, manifest.text.pad_token_id, manifest.text.max_tokens
        )

    def _open(self, file: str) -> ort.InferenceSession:
        """A session on this model's providers; one that silently lost CUDA is an error (the probe had it)."""
        session = open_session(self.model_dir / file, self.providers, self._options)
        check_session_providers(session, self.providers, "cuda")
        return session

    @property
    def device_sampling(self) -> bool:
        """Whether tokens are selected by the exported sampler graph (on the device) rather than in numpy."""
        return self._sampler is not None

    # ---- construction ------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        provider: str = "auto",
        threads: int | None = None,
        verify: bool = True,
        cuda_graph: bool | None = None,
        device_sampling: bool | None = None,
        allow_spinning: bool | None = None,
    ) -> MusicGen:
        """Open an export directory. ``provider``: "auto" (CUDA when it starts, else the CPU), "cuda" or "cpu".

        "auto" checks which provider onnxruntime really gave the sessions: with onnxruntime-gpu on a node
        where CUDA cannot start it warns once and runs on the CPU; "cuda" then fails here with
        ``ProviderUnavailableError``. ``threads`` (None: the CPUs this process may use, affinity and cgroup
        quota included) and ``allow_spinning`` (None: onnxruntime's default, spinning workers; False for
        nodes shared with other busy processes) set onnxruntime's CPU thread pool.

        ``verify`` checks every file against the manifest's sha256 first, so a truncated copy fails
        here with a message rather than inside onnxruntime. ``cuda_graph`` captures the decoder step
        as a CUDA graph and replays it (None: whenever the model runs on CUDA and its export supports
        it, i.e. ``manifest.decoder.cuda_graph``: an fp16 static-cache export). ``device_sampling``
        selects tokens with the exported sampler graph where the logits are, instead of copying them
        to numpy (None: on CUDA when the export has the graph; on the CPU numpy is as fast).
        """
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
        on_cuda = providers[0] == "CUDAExecutionProvider"
        if cuda_graph is None:
            cuda_graph = on_cuda and manifest.decoder.cuda_graph
        elif cuda_graph and not on_cuda:
            raise ValueError("cuda_graph=True needs the CUDA execution provider (provider='cuda' or 'auto' on a GPU)")
        elif cuda_graph and not manifest.decoder.cuda_graph:
            raise ValueError(
                f"{model_dir} cannot run as a CUDA graph (precision {manifest.precision}, "
                f"{manifest.decoder.kv_cache} KV cache): re-export with --precision fp16 --kv-cache static"
            )
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
        model = cls(model_dir, manifest, providers, options, text_encoder, bool(cuda_graph), bool(device_sampling))
        logger.info(
            "loaded %s (%s) with %s%s",
            model_dir,
            manifest.source,
            providers[0],
            " + CUDA graphs" if model.cuda_graph else "",
        )
        if model.device == "cuda" and manifest.decoder.kv_cache == "static" and manifest.precision != "fp16":
            logger.warning(
                "%s has a %s static-cache decoder: onnxruntime's CUDA GroupQueryAttention runs fp16 only, so "
                "attention falls back to the CPU each step; export with --precision fp16 for GPUs",
                model_dir,
                manifest.precision,
            )
        return model

    @property
    def sampling_rate(self) -> int:
        return self.manifest.audio.sampling_rate

    @property
    def channels(self) -> int:
        return self.manifest.audio.channels

    @property
    def frame_rate(self) -> int:
        return self.manifest.audio.frame_rate

    # ---- public API --------------------------------------------------------------------------------
    def generate(self, texts: str | Sequence[str] | None = None, **kwargs) -> np.ndarray:
        """Generate audio [batch, channels, samples] float32; see ``generate_detailed`` for arguments."""
        return self.generate_detailed(texts, **kwargs).audio

    def generate_detailed(
        self,
        texts: str | Sequence[str] | None = None,
        *,
        duration: float | None = None,
        max_new_tokens: int | None = None,
        do_sample: bool | None = None,
        guidance_scale: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        prompt_audio: np.ndarray | None = None,
        prompt_sample_rate: int | None = None,
        melody: np.ndarray | Sequence[np.ndarray] | None = None,
        melody_sample_rate: int | None = None,
        window: float | None = None,
        extend_stride: float | None = None,
        progress: ProgressCallback | None = None,
    ) -> GenerationResult:
        """Generate music for ``texts`` (None: unconditional) and return audio, codes and timings.

        ``max_new_tokens`` means what it means in transformers (decoder steps; frames = steps + 1 - C);
        ``duration`` (seconds, prompt included) is the user-facing alternative and trims the audio to
        exactly that length. With neither, the checkpoint's ``max_length`` applies (30 s for the hub's).
        A ``duration`` longer than ``window`` (default 30 s, audiocraft's max_duration) is generated by
        overlapping windows advancing by ``extend_stride`` (default 18 s), see ``longform``; at most
        ``duration_cap`` seconds. ``prompt_audio`` ([B, C, L] or [C, L] at ``prompt_sample_rate``) is
        continued; the returned audio starts with the (re-synthesised) prompt, as transformers returns it.
        ``progress(frames_done, frames_total)`` is called after every step; returning False stops and the
        audio made so far is returned (``stopped_early``). Melody checkpoints only: ``melody`` ([L], [C, L],
        [B, C, L] or a list of clips, at ``melody_sample_rate``) is followed via its chromagram (see ``melody``);
        None uses the null melody, as transformers does.
        """
        t_start = time.perf_counter()
        job = self._job(
            texts,
            duration=duration,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            guidance_scale=guidance_scale,
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            seed=seed,
            prompt_audio=prompt_audio,
            prompt_sample_rate=prompt_sample_rate,
            melody=melody,
            melody_sample_rate=melody_sample_rate,
            window=window,
            extend_stride=extend_stride,
        )
        codes = job.run_to_end(progress)
        timings = job.stage_timings()
        t0 = time.perf_counter()
        audio = decode_long(self, codes)
        timings["audio_decode"] = time.perf_counter() - t0
        if job.plan.total_samples is not None and not job.stopped:
            audio = audio[..., : job.plan.total_samples]
        timings["total"] = time.perf_counter() - t_start
        windows = list(job.plan.windows)
        return GenerationResult(audio, codes, self.sampling_rate, timings, job.step_times, job.stopped, windows)

    def stream(
        self,
        texts: str | Sequence[str] | None = None,
        *,
        chunk_seconds: float = 1.0,
        progress: ProgressCallback | None = None,
        **kwargs,
    ) -> AudioStream:
        """Like ``generate_detailed`` (same keyword arguments), but yields ``AudioChunk``s while generating.

        Each chunk is audio [B, channels, n] float32 starting at ``chunk.start`` seconds; the last has
        ``final=True``. Concatenated, the chunks equal the one-shot decode of the same codes up to the
        bound stated in ``streaming`` (SNR >= 40 dB). Arguments are validated here, before the first chunk.
        A stream abandoned before its end holds its decoder buffers until ``close()``: use it as a context
        manager (``with model.stream(...) as chunks:``) or close it when stopping early.
        """
        job = self._job(texts, **kwargs)
        return stream_chunks(self, job, chunk_seconds=chunk_seconds, progress=progress)

    def resolve_options(
        self,
        do_sample: bool | None = None,
        guidance_scale: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
    ) -> SamplingOptions:
        """Fill unset options from the manifest's defaults and check each against its valid range."""
        return resolve_sampling_options(
            self.manifest.generation,
            self.manifest.decoder.vocab_size,
            do_sample=do_sample,
            guidance_scale=guidance_scale,
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
        )

    # ---- stages ------------------------------------------------------------------------------------
    def encode_text(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Text -> (encoder_hidden_states [B, T, H_dec], attention_mask [B, T])."""
        ids, mask = self.tokenizer(texts)
        (states,) = self._text_encoder.run(None, {"input_ids": ids, "attention_mask": mask})
        return states, mask

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
            self._codec_encoder = self._open(spec.file)
        batch, channels, length = audio.shape
        mono = np.ascontiguousarray(audio.transpose(1, 0, 2).reshape(channels * batch, 1, length), np.float32)
        (codes,) = self._codec_encoder.run(None, {"audio_values": mono})
        per_channel = codes.reshape(channels, batch, codes.shape[1], codes.shape[2])
        out = np.empty((batch, channels * codes.shape[1], codes.shape[2]), dtype=np.int64)
        for c in range(channels):
            out[:, c::channels] = per_channel[c]
        return out

    def decode_codes(self, codes: np.ndarray) -> np.ndarray:
        """Codes [B, K, F] -> audio [B, channels, hop * F]; stereo = left (even rows) + right (odd rows).

        One EnCodec call per clip and channel: the decoder's activations (tens of MB per second of
        audio) would otherwise set the process's peak memory; the arithmetic is the same.
        """
        parts = split_channels(np.asarray(codes, dtype=np.int64), self.channels)
        batch, frames = codes.shape[0], codes.shape[-1]
        audio = np.empty((batch, len(parts), self.manifest.audio.hop_length * frames), np.float32)
        for c, part in enumerate(parts):
            for b in range(batch):
                (out,) = self._codec_decoder.run(None, {"audio_codes": np.ascontiguousarray(part[b : b + 1])})
                audio[b, c] = out[0, 0]
        return audio

    # ---- internals ---------------------------------------------------------------------------------
    def _job(
        self,
        texts: str | Sequence[str] | None = None,
        *,
        duration: float | None = None,
        max_new_tokens: int | None = None,
        do_sample: bool | None = None,
        guidance_scale: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        prompt_audio: np.ndarray | None = None,
        prompt_sample_rate: int | None = None,
        melody: np.ndarray | Sequence[np.ndarray] | None = None,
        melody_sample_rate: int | None = None,
        window: float | None = None,
        extend_stride: float | None = None,
    ) -> CodeGenerator:
        """Validate every argument and plan the windows; nothing runs until the job is iterated."""
        text_list = check_texts(texts)
        seed = check_seed(seed)
        options = self.resolve_options(do_sample, guidance_scale, top_k, top_p, temperature)
        prompt = None
        if prompt_audio is not None:
            sr = self.sampling_rate if prompt_sample_rate is None else prompt_sample_rate
            prompt = prepare_prompt_audio(prompt_audio, sr, target_sr=self.sampling_rate, channels=self.channels)
        batch = batch_size(text_list, prompt)
        clips = None if melody is None else prepare_melody(melody, melody_sample_rate, self.manifest)
        if clips is not None:
            batch = resolve_melody_batch(clips, batch, text_list is not None, prompt)
        if prompt is not None and prompt.shape[0] != batch:
            prompt = np.repeat(prompt, batch, axis=0) if prompt.shape[0] == 1 else prompt
        prompt_frames = 0 if prompt is None else math.ceil(prompt.shape[-1] / self.manifest.audio.hop_length)
        plan = plan_generation(
            self.manifest,
            duration=duration,
            max_new_tokens=max_new_tokens,
            prompt_frames=prompt_frames,
            window=window,
            extend_stride=extend_stride,
            duration_cap=self.duration_cap,
        )
        if text_list is None and clips is None and options.guidance_scale > 1:
            options = replace(options, guidance_scale=1.0)  # unconditional: CFG would be a no-op
        rng = np.random.default_rng(seed)
        return CodeGenerator(self, text_list, prompt, batch, plan, options, rng, melody=clips)

    def _condition(self, texts: list[str] | None, batch: int, melody: list[np.ndarray] | None = None):
        """Cross-attention K/V and text mask for the conditional batch (unconditional: zeros, T = 1);
        for melody checkpoints a ``MelodyCondition`` (and None) that builds each window's prefix."""
        if self.manifest.conditioning == "prefix":
            return MelodyCondition(self, texts, batch, melody), None
        d = self.manifest.decoder
        if texts is None:
            zeros = np.zeros((batch, d.num_heads, 1, d.head_dim), np.float32)
            return [zeros] * (2 * d.num_layers), np.zeros((batch, 1), np.int64)
        states, mask = self.encode_text(texts)
        return self._cross_kv.run(None, {"encoder_hidden_states": states}), mask

    def _window_steps(
        self,
        cross_kv: list[np.ndarray],
        text_mask: np.ndarray,
        prompt_codes: np.ndarray | None,
        batch: int,
        steps: int,
        options: SamplingOptions,
        cfg: bool,
        rng: np.random.Generator,
        step_times: list[float],
        window_start: int = 0,
    ) -> Iterator[DelayPatternState]:
        """The delay-pattern loop of one generate call: prefill, then one decoder call per step, CFG and
        sampling in numpy (or in the sampler graph, on the device). Yields the state after every sampled
        column (the last one has ``done``)."""
        d = self.manifest.decoder
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
        if isinstance(cross_kv, MelodyCondition):  # melody: this window's prefix (the melody slice moves)
            runner = MelodyDecoderRunner(self._decoder, self.manifest, self.device)
            prefix, valid = cross_kv.prefix(window_start * self.manifest.audio.hop_length, cfg)
            runner.start(prefix, valid, max_length=1 + prompt_len + steps)
        else:
            if cfg:  # unconditional half: zero K/V and an all-zero text mask, exactly as transformers builds it
                cross_kv = [np.concatenate([kv, np.zeros_like(kv)], axis=0) for kv in cross_kv]
                text_mask = np.concatenate([text_mask, np.zeros_like(text_mask)], axis=0)
            runner = make_runner(self._decoder, self.manifest, self.device, self._buffer_pool)
            runner.start(cross_kv, text_mask, max_length=1 + prompt_len + steps)
        sampler = None
        if self._sampler is not None:
            sampler = GraphSampler(self._sampler, d.vocab_size, d.num_codebooks, self.device)
            scale = options.guidance_scale if cfg else 1.0
            sampler.start(batch, scale, options.temperature, options.top_k, options.top_p, options.do_sample)
        feed = state.prefill_ids(cfg)  # a view of the state without CFG: runners never keep what they are fed
        try:
            while True:
                t0 = time.perf_counter()
                if sampler is not None:
                    tokens = sampler.sample(runner.run(feed), rng)
                else:
                    logits = runner.step(feed)
                    scores = process_logits(
                        logits.reshape(-1, logits.shape[-1]),
                        guidance_scale=options.guidance_scale if cfg else None,
                        do_sample=options.do_sample,
                        temperature=options.temperature,
                        top_k=options.top_k or None,
                        top_p=options.top_p,
                    )
                    tokens = select_tokens(scores, do_sample=options.do_sample, rng=rng)
                state.write(tokens)
                step_times.append(time.perf_counter() - t0)
                yield state
                if state.done:
                    return
                feed = state.step_ids(cfg)
        finally:
            runner.release()
