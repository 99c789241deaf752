"""MusicGen generation semantics in numpy, exactly as transformers 5.24 implements them.

Everything here mirrors `transformers.models.musicgen.modeling_musicgen` (delay pattern, revert, stereo split)
and `transformers.generation` (CFG, temperature, top-k, top-p, greedy / multinomial selection) so that an
onnxruntime loop built on it produces the same token streams as `MusicgenForConditionalGeneration.generate`.
No torch / transformers imports: inference nodes only have numpy.

Layout conventions (shared with transformers):
- ids are [B, K, T] int64; K = num_codebooks rows. Stereo models interleave channels: rows L0, R0, L1, R1, ...,
  so row k belongs to codebook k // channels and C = K // channels codebooks are delayed per channel.
- logits are [rows, V] float32 with rows = B * K (flattened [B, K]); with classifier-free guidance the decoder
  batch is doubled: the first B * K rows are conditional, the last B * K unconditional.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "DelayPatternState",
    "apply_delay_pattern",
    "build_delay_pattern",
    "choose_tokens",
    "process_logits",
    "revert_delay_pattern",
    "select_tokens",
    "select_with_uniform",
    "split_channels",
]


def _check_layout(num_codebooks: int, channels: int) -> int:
    if channels not in (1, 2):
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    if num_codebooks <= 0 or num_codebooks % channels:
        raise ValueError(f"num_codebooks ({num_codebooks}) must be a positive multiple of channels ({channels})")
    return num_codebooks // channels


def build_delay_pattern(
    prompt_codes: np.ndarray | None,
    *,
    batch_size: int,
    num_codebooks: int,
    channels: int,
    max_length: int,
    pad_token_id: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (input_ids [B, K, start_len], pattern_mask [B, K, max_length]) like transformers.

    The decoder start token (= pad_token_id for MusicGen) is prepended to the prompt codes, as in
    `_prepare_decoder_input_ids_for_generation` (which skips the prepend only when *every* row already starts
    with it; EnCodec codes are < 2048 so real prompts always get it). Then `build_delay_pattern_mask`: row k
    (codebook c = k // channels) is shifted right by c, forced to pad at t <= c and t >= max_length - C + 1 + c,
    and -1 elsewhere that the prompt does not cover (the tokens to predict). When max_length < 2C - 1
    transformers applies no pattern at all (mask all -1, ids unshifted); that quirk is reproduced.
    With a pattern, start_len == 1 + P (decoding starts right after the prompt).
    """
    n_cb = _check_layout(num_codebooks, channels)
    B, K = int(batch_size), int(num_codebooks)
    start = np.full((B, K, 1), pad_token_id, dtype=np.int64)
    if prompt_codes is None or np.shape(prompt_codes)[-1] == 0:
        ids = start
    else:
        prompt = np.asarray(prompt_codes, dtype=np.int64)
        if prompt.ndim != 3 or prompt.shape[:2] != (B, K):
            raise ValueError(f"prompt_codes must be [batch_size={B}, num_codebooks={K}, P], got {prompt.shape}")
        ids = prompt if np.all(prompt[..., 0] == pad_token_id) else np.concatenate([start, prompt], axis=-1)
    seq_len = ids.shape[-1]

    pattern = np.full((B, K, max_length), -1, dtype=np.int64)
    if max_length < 2 * n_cb - 1:  # transformers returns the ids as they are, mask all -1
        return ids.copy(), pattern
    if seq_len + n_cb - 1 > max_length:  # transformers fails here with a shape-mismatch RuntimeError
        raise ValueError(
            f"max_length={max_length} is too short for {seq_len} prompt columns (start token included) "
            f"plus the {n_cb - 1} delay columns: need max_length >= {seq_len + n_cb - 1}"
        )
    cb = np.arange(K) // channels  # codebook of each row
    for k in range(K):
        pattern[:, k, cb[k] : cb[k] + seq_len] = ids[:, k]
    t = np.arange(max_length)
    forced_pad = (t[None, :] <= cb[:, None]) | (t[None, :] >= max_length - n_cb + 1 + cb[:, None])
    pattern[:, forced_pad] = pad_token_id

    free_cols = np.nonzero(pattern[:, 0, :] == -1)[1]
    start_len = int(free_cols.min()) if free_cols.size else seq_len
    return pattern[..., :start_len].copy(), pattern


def apply_delay_pattern(ids: np.ndarray, pattern_mask: np.ndarray) -> np.ndarray:
    """Force the mask's values wherever it is not -1 (transformers' apply_delay_pattern_mask)."""
    mask = pattern_mask[..., : ids.shape[-1]]
    return np.where(mask == -1, ids, mask)


def revert_delay_pattern(ids: np.ndarray, pad_token_id: int) -> np.ndarray:
    """Drop the pads: ids[ids != pad].reshape(B, K, -1), as transformers does at the end of generate.

    Call it on mask-applied ids of the full max_length; the result includes the prompt frames.
    """
    B, K = ids.shape[:2]
    kept = ids[ids != pad_token_id]
    if kept.size % (B * K):
        raise ValueError("rows hold different numbers of non-pad tokens; apply the delay pattern first")
    return kept.reshape(B, K, -1)


def split_channels(codes: np.ndarray, channels: int) -> list[np.ndarray]:
    """Codes for each mono EnCodec call: stereo rows are interleaved L0, R0, L1, R1, ... ([B, K/2, F] each)."""
    if channels == 1:
        return [codes]
    if channels != 2:
        raise ValueError(f"channels must be 1 or 2, got {channels}")
    return [np.ascontiguousarray(codes[:, 0::2]), np.ascontiguousarray(codes[:, 1::2])]


def _softmax32(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _guided(logits: np.ndarray, guidance_scale: float | None) -> np.ndarray:
    """[rows, V] float32 scores, classifier-free guided when guidance_scale > 1 (cond rows first)."""
    scores = np.asarray(logits, dtype=np.float32)
    if scores.ndim != 2:
        raise ValueError(f"logits must be [rows, vocab], got shape {scores.shape}")
    if guidance_scale is not None and guidance_scale > 1:
        if scores.shape[0] % 2:
            raise ValueError(f"CFG needs cond rows then uncond rows: got an odd row count {scores.shape[0]}")
        half = scores.shape[0] // 2
        cond, uncond = scores[:half], scores[half:]
        scores = uncond + (cond - uncond) * np.float32(guidance_scale)
    return scores


def _tempered(scores: np.ndarray, temperature: float | None) -> np.ndarray:
    if temperature is not None and temperature != 1.0:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature} (use do_sample=False)")
        scores = scores / np.float32(temperature)
    return scores


def _top_k_floor(scores: np.ndarray, top_k: int) -> np.ndarray:
    """Each row's k-th largest score, [rows, 1]: top-k keeps every score not below it (ties included)."""
    if int(top_k) != top_k or top_k < 0:
        raise ValueError(f"top_k must be a positive integer (or 0/None for off), got {top_k}")
    vocab = scores.shape[-1]
    k = min(int(top_k), vocab)
    return np.partition(scores, vocab - k, axis=-1)[:, vocab - k : vocab - k + 1]


def process_logits(
    logits: np.ndarray,
    *,
    guidance_scale: float | None = None,
    do_sample: bool = False,
    temperature: float | None = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> np.ndarray:
    """Turn raw decoder logits into scores [B*K, V] float32 like transformers' processor list.

    Order (see `_get_logits_processor` + MusicGen's generate): classifier-free guidance when guidance_scale > 1
    (cond rows first: uncond + (cond - uncond) * scale), then, only when do_sample, temperature (if != 1),
    top-k (if not None/0; keeps every token tied with the k-th value), top-p (if < 1; removes the ascending-sorted
    tokens whose cumulative probability is <= 1 - top_p, always keeping the best one). Filtered scores are -inf.
    Note top_p=0.0 keeps one token here (as in transformers); audiocraft's "top_p=0 means off" is top_p=None.
    Ties straddling the top-p cut are resolved by a stable sort (lower ids dropped first); torch's unstable
    sort makes that choice arbitrary in transformers, but the kept values are the same.
    """
    scores = _guided(logits, guidance_scale)
    if not do_sample:
        return scores
    scores = _tempered(scores, temperature)
    if top_k is not None and top_k != 0:
        scores = np.where(scores < _top_k_floor(scores, top_k), np.float32(-np.inf), scores)
    if top_p is not None and top_p < 1.0:
        if top_p < 0:
            raise ValueError(f"top_p must be in [0, 1], got {top_p}")
        order = np.argsort(scores, axis=-1, kind="stable")
        sorted_scores = np.take_along_axis(scores, order, axis=-1)
        # torch's float32 cumsum accumulates in double on CPU; do the same
        cum = np.cumsum(_softmax32(sorted_scores), axis=-1, dtype=np.float64).astype(np.float32)
        remove_sorted = cum <= np.float32(1.0 - top_p)
        remove_sorted[:, -1] = False  # min_tokens_to_keep = 1
        remove = np.empty_like(remove_sorted)
        np.put_along_axis(remove, order, remove_sorted, axis=-1)
        scores = np.where(remove, np.float32(-np.inf), scores)
    return scores


def select_tokens(scores: np.ndarray, *, do_sample: bool, rng: np.random.Generator | None = None) -> np.ndarray:
    """Pick one token per row: greedy argmax (first max on ties, like torch) or a draw from softmax(scores).

    Sampling is inverse-CDF with one uniform per row from `rng` (reproducible for a seeded Generator; not
    bit-compatible with torch.multinomial, only equal in distribution). Returns int64 [rows].
    """
    if not do_sample:
        return np.argmax(scores, axis=-1).astype(np.int64)
    if rng is None:
        raise ValueError("sampling needs an np.random.Generator (rng=...)")
    return select_with_uniform(scores, rng.random(scores.shape[0]))


def select_with_uniform(scores: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Inverse-CDF draw per row from softmax(scores), in vocabulary order, with the given uniforms in [0, 1).

    The sampler graph applies the same rule to the same numbers, so both paths agree draw for draw
    (up to float32 rounding on a bucket edge). Returns int64 [rows].
    """
    x = np.asarray(scores, dtype=np.float64)
    p = np.exp(x - x.max(axis=-1, keepdims=True))
    cdf = np.cumsum(p, axis=-1)
    u = np.asarray(uniform, dtype=np.float64).reshape(-1) * cdf[:, -1]
    idx = np.count_nonzero(cdf <= u[:, None], axis=-1)
    # u can round onto the total; never return a zero-probability (filtered) token
    last_positive = x.shape[-1] - 1 - np.argmax(p[:, ::-1] > 0, axis=-1)
    return np.minimum(idx, last_positive).astype(np.int64)


def choose_tokens(
    logits: np.ndarray,
    *,
    guidance_scale: float | None,
    do_sample: bool,
    temperature: float | None,
    top_k: int | None,
    top_p: float | None,
    rng: np.random.Generator | None,
) -> np.ndarray:
    """``select_tokens(process_logits(logits, ...), ...)``: the tokens of one decoder step, int64 [rows].

    With top-k sampling and no top-p (MusicGen's default: top-k 250 of 2048) the draw is made over the kept
    tokens only. That is the same draw, token for token: the filtered tokens have probability exactly 0, so in
    the vocabulary-order float64 cumulative sum they only add +0.0, which changes no partial sum, and the first
    bucket past the uniform is always a kept token. A stereo-small step's sampling (8 rows of 2048) took 0.47
    instead of 0.59 ms on a 2-vCPU VM, of a ~16 ms step (docs/design.md §5). Ties with the k-th score, or a
    NaN, take the full-vocabulary path.
    """
    if not (do_sample and top_k and (top_p is None or top_p >= 1.0)):
        scores = process_logits(
            logits,
            guidance_scale=guidance_scale,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
        )
        return select_tokens(scores, do_sample=do_sample, rng=rng)
    if rng is None:
        raise ValueError("sampling needs an np.random.Generator (rng=...)")
    scores = _tempered(_guided(logits, guidance_scale), temperature)
    kept = ~(scores < _top_k_floor(scores, top_k))  # what process_logits keeps (a NaN too)
    uniform = rng.random(scores.shape[0])
    rows, vocab = scores.shape
    k = min(int(top_k), vocab)
    values = scores[kept]  # row-major: each row's kept scores in vocabulary order
    if values.size != rows * k or np.isnan(values).any():  # ties at the k-th score, or NaN
        return select_with_uniform(np.where(kept, scores, np.float32(-np.inf)), uniform)
    ids = np.nonzero(kept)[1].reshape(rows, k)
    picks = select_with_uniform(values.reshape(rows, k), uniform)
    return ids[np.arange(rows), picks]


class DelayPatternState:
    """Token buffer of one generate call: the delay-pattern mask, the ids so far, what to feed next.

    The [max_length, B, K] buffer is allocated once (time-major, so writing a column is one contiguous copy);
    each step costs a [B, K] `np.where`. Usage::

        ids, mask = build_delay_pattern(...)
        st = DelayPatternState(ids, mask, pad_token_id=2048, channels=2)
        logits = run_decoder(st.prefill_ids(cfg=True))          # [2B, K, start_len]
        while True:
            st.write(select_tokens(process_logits(logits, ...), ...))
            if st.done: break
            logits = run_decoder(st.step_ids(cfg=True))         # [2B, K, 1]
        codes = st.codes()                                      # [B, K, max_length - C], prompt frames included
    """

    def __init__(self, input_ids: np.ndarray, pattern_mask: np.ndarray, *, pad_token_id: int, channels: int):
        B, K, L = pattern_mask.shape
        self.num_codebooks_per_channel = _check_layout(K, channels)
        self.channels = channels
        self.pad_token_id = int(pad_token_id)
        self.pattern_mask = pattern_mask
        self.max_length = L
        self._mask_t = np.ascontiguousarray(pattern_mask.transpose(2, 0, 1))  # [L, B, K]
        self._free_t = self._mask_t == -1
        self._buf = np.full((L, B, K), self.pad_token_id, dtype=np.int64)
        n = input_ids.shape[-1]
        if n > L:
            raise ValueError(f"input_ids has {n} columns, more than max_length={L}")
        self._buf[:n] = input_ids.transpose(2, 0, 1)
        self.start_length = n
        self.length = n
        self._cb = np.arange(K) // channels
        # the delay pattern is only applied when max_length >= 2C - 1 (see build_delay_pattern)
        self.delayed = 2 * self.num_codebooks_per_channel - 1 <= L

    @property
    def done(self) -> bool:
        """True once max_length columns exist (transformers' MaxLengthCriteria)."""
        return self.length >= self.max_length

    @property
    def num_steps(self) -> int:
        """Decoder calls that sample a token: max_length - start_len (the prefill is the first)."""
        return self.max_length - self.start_length

    @property
    def ids(self) -> np.ndarray:
        """Mask-applied ids so far, [B, K, length] (a view)."""
        return self._buf[: self.length].transpose(1, 2, 0)

    @staticmethod
    def _cfg(x: np.ndarray, cfg: bool) -> np.ndarray:
        return np.concatenate([x, x], axis=0) if cfg else np.ascontiguousarray(x)

    def prefill_ids(self, cfg: bool = False) -> np.ndarray:
        """[B, K, start_len] (or [2B, ...] with CFG: the batch repeated, cond first) to prefill the decoder."""
        return self._cfg(self._buf[: self.start_length].transpose(1, 2, 0), cfg)

    def step_ids(self, cfg: bool = False) -> np.ndarray:
        """[B, K, 1] (or [2B, K, 1]) last column, mask applied: the next decoder input."""
        return self._cfg(self._buf[self.length - 1][:, :, None], cfg)

    def write(self, tokens: np.ndarray) -> np.ndarray:
        """Store sampled tokens ([B*K] or [B, K]) as column `length`, forcing the mask; return that column [B, K]."""
        t = self.length
        if t >= self.max_length:
            raise RuntimeError("generation already reached max_length")
        col = self._buf[t]
        np.copyto(col, self._mask_t[t])
        np.copyto(col, np.reshape(tokens, col.shape), where=self._free_t[t])
        self.length = t + 1
        return col

    @property
    def frames_ready(self) -> int:
        """Output frames whose K tokens are all final (frame j of row k sits at column j + k // channels + 1).

        Always 0 in transformers' no-pattern case (max_length < 2C - 1): use codes() once done.
        """
        if not self.delayed:
            return 0
        return max(0, self.length - self.num_codebooks_per_channel)

    def frames(self, start: int, stop: int) -> np.ndarray:
        """Codes [B, K, stop - start] of output frames [start, stop) (prompt frames first), for streaming."""
        if not 0 <= start <= stop <= self.frames_ready:
            raise ValueError(f"frames [{start}, {stop}) not ready (frames_ready={self.frames_ready})")
        cols = np.arange(start, stop)[None, :] + self._cb[:, None] + 1  # [K, n]
        rows = np.arange(self._buf.shape[2])[:, None]
        return self._buf[cols, :, rows].transpose(2, 0, 1)  # [K, n, B] -> [B, K, n]

    def codes(self) -> np.ndarray:
        """Final codes [B, K, frames] exactly as transformers returns them (needs done)."""
        if not self.done:
            raise RuntimeError(f"generation not finished ({self.length}/{self.max_length} columns)")
        return revert_delay_pattern(self.ids, self.pad_token_id)
