"""Decoder rows of a melody checkpoint shared by many requests: the prefix decoder over fixed slots.

The melody decoder has no cross-attention: its conditioning (projected one-hot chroma + text states) is a prefix
of the sequence in each row's cache (docs/design.md §18). In the continuous-batching engine (§17) every slot
therefore starts a window with a multi-token prefill of its own prefix plus the window's start columns, on the
slot's two rows alone (compact CPU layout), and then steps with every other busy row:

* **No padding.** A slot's prefix is trimmed to its own length (chroma frames + its own text tokens), so the
  conditional and unconditional rows of a slot hold exactly what the prompt holds alone: no masked positions,
  and the sinusoid position of every token is its cache index.
* **Per-row offsets.** The engine counts positions in window columns, as for the text models; this decoder adds
  each row's prefix length (``offsets``) to get the cache index, which is the row's ``position_ids`` and, at a
  single-token step, its ``seqlens_k``. GroupQueryAttention attends each row over its own length, so rows with
  different prefixes and at different columns share one step; ``attention_bias`` is zero (nothing to mask).

Only the compact layout exists: a prefix is embeddings, not tokens, so it cannot be fed as forced token columns
the way the CUDA fixed-buffer layout feeds prompts; melody requests on CUDA run one at a time instead
(``job.CodeGenerator``).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from .manifest import Manifest

__all__ = ["MelodySlotDecoder", "prefix_budget"]


def _ortvalue(array: np.ndarray) -> ort.OrtValue:
    return ort.OrtValue.ortvalue_from_numpy(array)


def prefix_budget(manifest: Manifest) -> int:
    """Cache positions a slot keeps for its prefix: chroma frames + the tokenizer's longest text."""
    spec = manifest.melody
    if spec is None:
        raise ValueError(f"{manifest.source} is not a melody checkpoint")
    return spec.chroma_length + manifest.text.max_tokens


class MelodySlotDecoder:
    """``slots`` x 2 rows of the melody decoder, each with a cache of ``length`` positions (prefix included).

    The interface is ``slots.SlotDecoder``'s compact layout (``ids``, ``positions``, ``step``, ``prefill``), with
    the slot's prefix given to ``prefill`` instead of text conditioning given to ``set_text``."""

    full_rows = False
    graph_id = -1

    def __init__(
        self, session: ort.InferenceSession, manifest: Manifest, slots: int, length: int, device: str = "cpu"
    ) -> None:
        if device != "cpu":
            raise ValueError("the melody slot decoder binds numpy views of its cache: it runs on the CPU only")
        d = manifest.decoder
        spec = manifest.graphs["decoder"]
        table = manifest.melody.position_table if manifest.melody is not None else d.max_positions
        if length > table:
            raise ValueError(f"a cache of {length} positions exceeds the melody decoder's {table} positions")
        n = d.num_layers
        self.session = session
        self.slots, self.rows, self.length = slots, 2 * slots, length
        self.num_codebooks, self.vocab, self.hidden = d.num_codebooks, d.vocab_size, d.hidden_size
        self.past_names = spec.inputs[6 : 6 + 2 * n]
        self.present_names = spec.outputs[1:]
        past_type = next(i.type for i in session.get_inputs() if i.name == self.past_names[0])
        self.dtype = np.float16 if past_type == "tensor(float16)" else np.float32
        # host-side inputs of every step: ids and window columns filled by the engine, prefix lengths by prefill
        self.ids = np.zeros((self.rows, self.num_codebooks, 1), np.int64)
        self.positions = np.zeros((self.rows, 1), np.int64)
        self.offsets = np.zeros((self.rows, 1), np.int64)
        self._cache_index = np.zeros((self.rows, 1), np.int64)
        self._seqlens = np.zeros(self.rows, np.int32)
        self._total = np.zeros((), np.int32)
        self._no_prefix = np.zeros((self.rows, 0, self.hidden), self.dtype)
        self._zero_bias = np.zeros(self.rows * length, self.dtype)  # views of it: [n, 1, 1, total], all zero
        self.logits = np.zeros((self.rows, self.num_codebooks, self.vocab), self.dtype)
        shape = (self.rows, d.num_heads, length, d.head_dim)
        self.cache = [np.zeros(shape, self.dtype) for _ in self.past_names]  # calloc: pages touched as rows use them
        self._bindings: dict[tuple[int, int], ort.IOBinding] = {}

    def _bind_cache(self, binding: ort.IOBinding, rows: slice) -> None:
        for past, present, array in zip(self.past_names, self.present_names, self.cache, strict=True):
            value = _ortvalue(array[rows])
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)

    def _binding(self, first: int, rows: int) -> ort.IOBinding:
        binding = self._bindings.get((first, rows))
        if binding is None:
            binding = self.session.io_binding()
            binding.bind_ortvalue_input("input_ids", _ortvalue(self.ids[first:rows]))
            binding.bind_ortvalue_input("prefix", _ortvalue(self._no_prefix[first:rows]))
            binding.bind_ortvalue_input("position_ids", _ortvalue(self._cache_index[first:rows]))
            binding.bind_ortvalue_input("seqlens_k", _ortvalue(self._seqlens[first:rows]))
            binding.bind_ortvalue_input("total_sequence_length", _ortvalue(self._total))
            binding.bind_ortvalue_output("logits", _ortvalue(self.logits[first:rows]))
            self._bind_cache(binding, slice(first, rows))
            self._bindings[(first, rows)] = binding
        return binding

    def step(self, rows: int, first: int = 0) -> np.ndarray:
        """One single-token step of rows [first, rows): ``ids`` and ``positions`` (window columns) as filled by the
        caller, each row at cache index ``offsets + positions``; returns logits [rows - first, K, vocab] float32
        (a view until the next step)."""
        if not 0 <= first < rows <= self.rows or first % 2:
            raise ValueError(f"rows [{first}, {rows}) are not whole slots of the {self.rows} rows")
        index = self._cache_index
        np.add(self.positions, self.offsets, out=index)
        top = int(index[first:rows].max())
        if top >= self.length:
            raise ValueError(f"a row reached cache position {top}; the cache holds {self.length}")
        self._seqlens[:] = index[:, 0]
        self._total[...] = top + 1
        binding = self._binding(first, rows)
        bias = self._zero_bias[: (rows - first) * (top + 1)].reshape(rows - first, 1, 1, top + 1)
        binding.bind_ortvalue_input("attention_bias", _ortvalue(bias))
        self.session.run_with_iobinding(binding)
        return self.logits[first:rows].astype(np.float32, copy=False)

    def prefill(self, slot: int, ids: np.ndarray, prefix: np.ndarray) -> np.ndarray:
        """Feed ``prefix`` [2, P, H] and ``ids`` [2, K, S] (the slot's two rows) at cache positions 0..P+S-1 of
        ``slot`` alone; later steps of the slot start at cache index P. Returns the logits of the last column,
        [2, K, vocab] float32."""
        prefix_len, seq_len = prefix.shape[1], ids.shape[-1]
        count = prefix_len + seq_len
        if count > self.length:
            raise ValueError(f"a prefix of {prefix_len} and {seq_len} columns do not fit the cache of {self.length}")
        rows = slice(2 * slot, 2 * slot + 2)
        binding = self.session.io_binding()
        binding.bind_ortvalue_input("input_ids", _ortvalue(np.ascontiguousarray(ids, np.int64)))
        binding.bind_ortvalue_input("prefix", _ortvalue(np.ascontiguousarray(prefix, self.dtype)))
        binding.bind_ortvalue_input("position_ids", _ortvalue(np.tile(np.arange(count, dtype=np.int64), (2, 1))))
        binding.bind_ortvalue_input("seqlens_k", _ortvalue(np.full(2, count - 1, np.int32)))
        binding.bind_ortvalue_input("total_sequence_length", _ortvalue(np.array(count, np.int32)))
        binding.bind_ortvalue_input("attention_bias", _ortvalue(np.zeros((2, 1, count, count), self.dtype)))
        self._bind_cache(binding, rows)
        logits = np.zeros((2, self.num_codebooks, self.vocab), self.dtype)
        binding.bind_ortvalue_output("logits", _ortvalue(logits))
        self.session.run_with_iobinding(binding)
        self.offsets[rows] = prefix_len
        return logits.astype(np.float32, copy=False)
