"""``MusicGen``: load an export directory and generate music with onnxruntime (no torch)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from .audio import prepare_prompt_audio
from .batching import BatchEngine
from .cpus import block_weights_advice, cpu_vector_flags
from .engine import Engine
from .job import GenerationRequest
from .manifest import Manifest
from .melody import prepare_melody, resolve_melody_batch
from .options import SamplingOptions, batch_size, check_seed, check_texts, resolve_sampling_options
from .plan import DEFAULT_DURATION_CAP, plan_generation, resolve_window
from .streaming import AudioStream, chunk_frames
from .submission import GenerationResult, ProgressCallback, Submission
from .waves import RequestGroup, split_request, with_seed

logger = logging.getLogger("musicgen_onnx")


class MusicGen:
    """A MusicGen export directory opened with onnxruntime.

    >>> model = MusicGen.load("out/stereo-small")
    >>> audio = model.generate(["lo-fi beat with warm piano"], duration=8, seed=0)  # [1, 2, 256000]
    """

    #: Longest ``duration`` (seconds) generate / stream accept; long-form makes any length, this is a guard.
    duration_cap: float = DEFAULT_DURATION_CAP

    def __init__(self, engine: Engine, batcher: BatchEngine | None) -> None:
        """Use ``MusicGen.load``."""
        self.engine = engine
        #: The continuous-batching engine every request runs in (None for concat-cache exports).
        self.batcher = batcher

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
        fixed_buffers: bool | None = None,
        max_batch: int = 4,
        max_seconds: float | None = None,
        max_queued: int = 64,
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
        it, i.e. ``manifest.decoder.cuda_graph``: an fp16 static-cache export). ``fixed_buffers`` keeps
        the decoder buffers at bucketed shapes between generations, which capture needs (None: with CUDA
        graphs; True runs the same logic without them). ``device_sampling`` selects tokens with the
        exported sampler graph where the logits are, instead of copying them to numpy (None: on CUDA
        when the export has the graph; on the CPU numpy is as fast).

        Requests from any number of threads share one decoder loop (continuous batching, see ``submit``):
        ``max_batch`` prompts decode at once (each takes two decoder rows, for classifier-free guidance),
        ``max_seconds`` is the longest window one request may need (default: the checkpoint's window, 30 s
        for the hub's), and up to ``max_queued`` requests wait for a free slot before ``submit`` raises
        ``QueueFullError``. The KV cache for max_batch x max_seconds is sized here once; on the CPU its pages
        are only touched (and count in RSS) as rows use them.
        """
        engine = Engine.open(
            model_dir,
            provider=provider,
            threads=threads,
            verify=verify,
            cuda_graph=cuda_graph,
            device_sampling=device_sampling,
            allow_spinning=allow_spinning,
            fixed_buffers=fixed_buffers,
        )
        if engine.device == "cpu":
            advice = block_weights_advice(engine.manifest.precision_plan, cpu_vector_flags())
            if advice:
                logger.warning(advice)
        # concat caches, and melody checkpoints on fixed buffers (CUDA: a prefix is not token columns), run one
        # request at a time
        batcher = None
        melody_alone = engine.manifest.conditioning == "prefix" and engine.fixed_buffers
        if engine.manifest.decoder.kv_cache.in_place and not melody_alone:
            if max_seconds is None:
                max_seconds = resolve_window(engine.manifest, None, None)[0] / engine.manifest.audio.frame_rate
            batcher = BatchEngine(engine, max_batch=max_batch, max_seconds=max_seconds, max_queued=max_queued)
        return cls(engine, batcher)

    def close(self) -> None:
        """Stop the batching engine's thread (requests in flight are cancelled)."""
        if self.batcher is not None:
            self.batcher.close()

    def __enter__(self) -> MusicGen:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def manifest(self) -> Manifest:
        return self.engine.manifest

    @property
    def model_dir(self) -> Path:
        return self.engine.model_dir

    @property
    def providers(self) -> list[str]:
        return self.engine.providers

    @property
    def device(self) -> str:
        """ "cuda" or "cpu": where the sessions really run (see ``load``)."""
        return self.engine.device

    @property
    def cuda_graph(self) -> bool:
        """Whether the decoder step is captured as a CUDA graph."""
        return self.engine.cuda_graph

    @property
    def device_sampling(self) -> bool:
        """Whether tokens are selected by the exported sampler graph (on the device) rather than in numpy."""
        return self.engine.device_sampling

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
        overlapping windows advancing by ``extend_stride`` (default 18 s), see ``plan``; at most
        ``duration_cap`` seconds. ``prompt_audio`` ([B, C, L] or [C, L] at ``prompt_sample_rate``) is
        continued; the returned audio starts with the (re-synthesised) prompt, as transformers returns it.
        ``progress(frames_done, frames_total)`` is called after every step; returning False stops and the
        audio made so far is returned (``stopped_early``). Melody checkpoints only: ``melody`` ([L], [C, L],
        [B, C, L] or a list of clips, at ``melody_sample_rate``) is followed via its chromagram (see ``melody``);
        None uses the null melody, as transformers does.
        """
        submission = self.submit(
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
        try:
            return submission.result(progress)
        except BaseException:
            submission.cancel()  # interrupted (Ctrl-C, an error in progress): free the rows
            raise

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
        request = self.request(texts, **kwargs)
        chunk_frames(self.frame_rate, chunk_seconds)  # validated before any work starts
        return self._submit(request).stream(chunk_seconds, progress)

    def submit(self, texts: str | Sequence[str] | None = None, **kwargs) -> Submission:
        """Start generating (``generate_detailed``'s arguments, without ``progress``) and return at once.

        The request joins the model's decoder batch at the next step boundary, next to every other request
        in flight from any thread; ``Submission.result()`` waits for it, ``.stream()`` yields its audio as it
        is made, ``.cancel()`` frees its rows at the next step. Raises ``QueueFullError`` when ``max_queued``
        other requests are already waiting, and ValueError for a request that can never fit (a window longer
        than ``max_seconds``).

        Any number of prompts is accepted: rows beyond ``max_batch`` (or beyond the free slots) wait in the
        engine's queue and start one by one as slots free, and the call counts as one request against
        ``max_queued`` (``waves``). The seed belongs to the call: its rows draw from one random stream, so the
        codes are the same however many slots the model was loaded with; a call split this way without a seed
        gets a drawn one, reported in ``GenerationResult.seed``. Progress counts every row; stopping or
        cancelling also drops the rows still waiting; a stream yields every row's audio at the pace of the
        last rows to start.
        """
        return self._submit(self.request(texts, **kwargs))

    def _submit(self, request: GenerationRequest) -> Submission:
        if self.batcher is None:  # runs alone in result() / stream(), whatever its batch
            return Submission(self.engine, request, None)
        if request.batch <= self.batcher.max_batch:
            return Submission(self.engine, request, self.batcher.submit(request))
        request = with_seed(request)  # the parts share the call's random stream (rows.RowRandom)
        parts = self.batcher.submit_all(split_request(request))
        return Submission(self.engine, request, RequestGroup(request, parts))

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
        return self.engine.encode_text(texts)

    def encode_audio(self, audio: np.ndarray) -> np.ndarray:
        """Audio [B, channels, L] at the model's rate -> codes [B, K, ceil(L / hop)] (channels interleaved)."""
        return self.engine.encode_audio(audio)

    def decode_codes(self, codes: np.ndarray) -> np.ndarray:
        """Codes [B, K, F] -> audio [B, channels, hop * F]; stereo = left (even rows) + right (odd rows)."""
        return self.engine.decode_codes(codes)

    def warm_up_codec(self, seconds: float | None = None) -> float:
        """Run EnCodec once over ``seconds`` of codes (None: its longest call, 15 s of stereo) so that the first
        request that long does not pay for onnxruntime's fresh activation memory (~0.9 s for 10 s of stereo on a
        2-core VM); returns its seconds. Servers call it at start (``serving``); a one-off CLI run gains nothing.
        """
        return self.engine.warm_up_codec(seconds)

    # ---- requests ----------------------------------------------------------------------------------
    def request(
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
    ) -> GenerationRequest:
        """Validate every argument (``generate_detailed``'s) and plan the windows; nothing runs here."""
        text_list = check_texts(texts)
        seed = check_seed(seed)
        options = self.resolve_options(do_sample, guidance_scale, top_k, top_p, temperature)
        prompt = None
        if prompt_audio is not None:
            sr = self.sampling_rate if prompt_sample_rate is None else prompt_sample_rate
            prompt = prepare_prompt_audio(prompt_audio, sr, target_sr=self.sampling_rate, channels=self.channels)
        batch = batch_size(text_list, prompt)
        clips = None
        if melody is not None:
            if self.manifest.conditioning != "prefix":
                raise ValueError(
                    f"{self.model_dir} is not a melody checkpoint ({self.manifest.source}): melody= needs an export of "
                    "facebook/musicgen-melody, -melody-large, -stereo-melody or -stereo-melody-large"
                )
            clips = prepare_melody(melody, melody_sample_rate, self.manifest)
            batch = resolve_melody_batch(clips, batch, text_list is not None, prompt)
        if prompt is not None and prompt.shape[0] != batch:
            prompt = np.repeat(prompt, batch, axis=0) if prompt.shape[0] == 1 else prompt
        prompt_frames = 0 if prompt is None else math.ceil(prompt.shape[-1] / self.manifest.audio.hop_length)
        if window is None and self.batcher is not None:  # the default window never exceeds what the cache holds
            default = resolve_window(self.manifest, None, None)[0] / self.frame_rate
            window = min(default, self.batcher.max_seconds) if self.batcher.max_seconds < default else None
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
        texts_tuple = None if text_list is None else tuple(text_list)
        return GenerationRequest(texts_tuple, batch, options, seed, plan, prompt, clips)
