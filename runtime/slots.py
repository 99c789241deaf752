"""Decoder rows shared by many requests: the static-cache decoder driven one step at a time over fixed slots.

A slot holds one prompt of one request: two decoder rows, conditional (row 2s) and unconditional (row 2s + 1)
for classifier-free guidance. Every row has its own cache rows, its own text conditioning (cross K/V padded to
the slot width and masked) and its own position: the format-3 decoder graph takes per-row positions, so rows
that joined at different times share one step (docs/design.md §17).

Two buffer layouts:

* compact (CPU): the buffers are numpy arrays that onnxruntime reads and writes in place (a CPU OrtValue
  made from a numpy array shares its memory). A step runs only the busy range of rows, [2 x lowest busy slot,
  2 x (highest busy slot + 1)): the bindings are contiguous views of those rows. A multi-token prefill (audio
  prompt, the prompt of a long-form window) runs on the slot's two rows alone, through views of those rows.
* full (CUDA, and CUDA graphs): device buffers that never move, every step runs all rows with the buffer
  length as ``total_sequence_length``, so the step can be captured once and replayed. Views of device memory
  are not available from Python, so prompts are fed as forced tokens, one column per step.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from .decoder_runner import input_dtype
from .manifest import Manifest

__all__ = ["MIN_TEXT_WIDTH", "SlotDecoder"]

#: Text conditioning is padded to a power of two of at least this many tokens (masked out).
MIN_TEXT_WIDTH = 16


def _ortvalue(array: np.ndarray) -> ort.OrtValue:
    """A CPU OrtValue sharing ``array``'s memory (views of leading rows of a C-contiguous array qualify)."""
    return ort.OrtValue.ortvalue_from_numpy(array)


class SlotDecoder:
    """``slots`` x 2 decoder rows with a cache of ``length`` positions; see the module docstring."""

    def __init__(
        self,
        session: ort.InferenceSession,
        manifest: Manifest,
        slots: int,
        length: int,
        device: str = "cpu",
        full_rows: bool = False,
        graph_id: int = -1,
    ) -> None:
        if not full_rows and device != "cpu":
            raise ValueError("the compact layout needs CPU memory; use full_rows=True on a GPU")
        d = manifest.decoder
        spec = manifest.graphs["decoder"]
        n = d.num_layers
        self.session, self.device, self.full_rows = session, device, full_rows
        self.slots, self.rows, self.length = slots, 2 * slots, length
        self.num_heads, self.head_dim = d.num_heads, d.head_dim
        self.num_codebooks, self.vocab = d.num_codebooks, d.vocab_size
        self.cross_names = spec.inputs[4 : 4 + 2 * n]
        self.past_names = spec.inputs[4 + 2 * n :]
        self.present_names = spec.outputs[1:]
        self.dtype = input_dtype(session, self.cross_names[0])  # cross K/V and logits: fp32, or fp16 for CUDA
        self.cache_dtype = input_dtype(session, self.past_names[0])  # the float type, or int8 (docs/design.md §6)
        self.text_width = MIN_TEXT_WIDTH
        self.graph_id = graph_id  # CUDA-graph annotation of the step (-1: never captured)
        # host-side inputs of every step
        self.ids = np.zeros((self.rows, self.num_codebooks, 1), np.int64)
        self.positions = np.zeros((self.rows, 1), np.int64)
        self._total = np.zeros((), np.int32)
        self.logits = np.zeros((self.rows, self.num_codebooks, self.vocab), self.dtype)
        # np.zeros is calloc: cache pages cost memory only once a row has written them
        shape = (self.rows, self.num_heads, length, self.head_dim)
        if full_rows:
            self.cache = [self._device(shape, self.cache_dtype) for _ in self.past_names]
        else:
            self.cache = [np.zeros(shape, self.cache_dtype) for _ in self.past_names]
        self._allocate_text(self.text_width)

    # ---- buffers ---------------------------------------------------------------------------------
    def _device(self, shape, dtype) -> ort.OrtValue:
        """Uninitialised device memory: the cache is written before it is read, the rest is uploaded."""
        return ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, self.device, 0)

    def _allocate_text(self, width: int) -> None:
        """(Re)allocate the cross K/V and text-mask rows at ``width`` tokens, keeping what they hold."""
        shape = (self.rows, self.num_heads, width, self.head_dim)
        old = getattr(self, "cross", None)
        self.cross = [np.zeros(shape, self.dtype) for _ in self.cross_names]
        mask = np.zeros((self.rows, width), np.int64)
        if old is not None:
            keep = min(width, self.text_width)
            for new, previous in zip(self.cross, old, strict=True):
                new[:, :, :keep] = previous[:, :, :keep]
            mask[:, :keep] = self.mask[:, :keep]
        self.mask, self.text_width = mask, width
        self._bindings: dict[int, ort.IOBinding] = {}
        if self.full_rows and old is not None and self.graph_id >= 0:
            self.graph_id += 1  # new buffer addresses: a captured graph must not be replayed on them
        self._run_options = ort.RunOptions()
        self._run_options.add_run_config_entry("gpu_graph_id", str(self.graph_id if self.full_rows else -1))
        if self.full_rows:
            self._cross_values = [self._device(shape, self.dtype) for _ in self.cross_names]
            self._mask_value = self._device(self.mask.shape, np.int64)
            self._upload_text()

    def _upload_text(self) -> None:
        for value, array in zip(self._cross_values, self.cross, strict=True):
            value.update_inplace(array)
        self._mask_value.update_inplace(self.mask)

    def set_text(self, slot: int, cross_kv: list[np.ndarray], mask: np.ndarray) -> None:
        """Write one prompt's conditioning (cross K/V [heads, T, head_dim] per layer, mask [T]) into ``slot``'s
        conditional row; its unconditional row gets an all-zero mask (no text: zero cross-attention)."""
        width = mask.shape[-1]
        if width > self.text_width:
            self._allocate_text(max(MIN_TEXT_WIDTH, 1 << (width - 1).bit_length()))
        cond, uncond = 2 * slot, 2 * slot + 1
        for buffer, kv in zip(self.cross, cross_kv, strict=True):
            buffer[cond, :, :width] = kv
        self.mask[cond] = 0
        self.mask[cond, :width] = mask
        self.mask[uncond] = 0
        if self.full_rows:
            self._upload_text()

    # ---- running ---------------------------------------------------------------------------------
    def _binding(self, first: int, rows: int) -> ort.IOBinding:
        binding = self._bindings.get((first, rows))
        if binding is not None:
            return binding
        binding = self.session.io_binding()
        if self.full_rows:
            self._step_values = [
                self._device(self.ids.shape, np.int64),
                self._device(self.positions.shape, np.int64),
            ]
            binding.bind_ortvalue_input("input_ids", self._step_values[0])
            binding.bind_ortvalue_input("position_ids", self._step_values[1])
            total = np.array(self.length, np.int32)  # constant: every replay sees the same host input
            self._total_value = ort.OrtValue.ortvalue_from_numpy(total)
            binding.bind_ortvalue_input("total_sequence_length", self._total_value)
            binding.bind_ortvalue_input("encoder_attention_mask", self._mask_value)
            for name, value in zip(self.cross_names, self._cross_values, strict=True):
                binding.bind_ortvalue_input(name, value)
            for past, present, value in zip(self.past_names, self.present_names, self.cache, strict=True):
                binding.bind_ortvalue_input(past, value)
                binding.bind_ortvalue_output(present, value)
            self._logits_value = self._device(self.logits.shape, self.dtype)
            binding.bind_ortvalue_output("logits", self._logits_value)
        else:
            ids, positions = _ortvalue(self.ids[first:rows]), _ortvalue(self.positions[first:rows])
            self._bind_rows(binding, slice(first, rows), ids, positions)
            binding.bind_ortvalue_input("total_sequence_length", _ortvalue(self._total))
            binding.bind_ortvalue_output("logits", _ortvalue(self.logits[first:rows]))
        self._bindings[(first, rows)] = binding
        return binding

    def _bind_rows(self, binding: ort.IOBinding, rows: slice, ids: ort.OrtValue, positions: ort.OrtValue) -> None:
        binding.bind_ortvalue_input("input_ids", ids)
        binding.bind_ortvalue_input("position_ids", positions)
        binding.bind_ortvalue_input("encoder_attention_mask", _ortvalue(self.mask[rows]))
        for name, array in zip(self.cross_names, self.cross, strict=True):
            binding.bind_ortvalue_input(name, _ortvalue(array[rows]))
        for past, present, array in zip(self.past_names, self.present_names, self.cache, strict=True):
            value = _ortvalue(array[rows])
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)

    def step(self, rows: int, first: int = 0) -> np.ndarray:
        """One single-token step of rows [first, rows) with ``ids`` and ``positions`` as filled by the caller;
        returns logits [rows - first, K, vocab] float32 (a view until the next step in the compact layout).

        The compact layout runs only those rows (contiguous views), so busy slots at the end or in the middle do
        not pay for idle ones below them; the full layout always runs every row (``first`` is then 0)."""
        if self.full_rows:
            first, rows = 0, self.rows
        if not 0 <= first < rows <= self.rows or first % 2:
            raise ValueError(f"rows [{first}, {rows}) are not whole slots of the {self.rows} rows")
        if int(self.positions[first:rows].max()) >= self.length:
            raise ValueError(f"a row reached position {int(self.positions.max())}; the cache holds {self.length}")
        binding = self._binding(first, rows)
        if self.full_rows:
            self._step_values[0].update_inplace(self.ids)
            self._step_values[1].update_inplace(self.positions)
            self.session.run_with_iobinding(binding, self._run_options)
            return self._logits_value.numpy().astype(np.float32, copy=False)
        self._total[...] = int(self.positions[first:rows].max()) + 1
        self.session.run_with_iobinding(binding)
        return self.logits[first:rows].astype(np.float32, copy=False)

    def prefill(self, slot: int, ids: np.ndarray) -> np.ndarray:
        """Feed ``ids`` [2, K, S] (the slot's two rows) at positions 0..S-1 of ``slot`` alone (compact layout);
        returns the logits of the last column, [2, K, vocab] float32."""
        if self.full_rows:
            raise RuntimeError("the full-rows layout feeds prompts as forced tokens, one column per step")
        seq_len = ids.shape[-1]
        if seq_len > self.length:
            raise ValueError(f"a prompt of {seq_len} columns does not fit the cache of {self.length} positions")
        rows = slice(2 * slot, 2 * slot + 2)
        binding = self.session.io_binding()
        positions = np.tile(np.arange(seq_len, dtype=np.int64), (2, 1))
        self._bind_rows(binding, rows, _ortvalue(np.ascontiguousarray(ids, np.int64)), _ortvalue(positions))
        binding.bind_ortvalue_input("total_sequence_length", _ortvalue(np.array(seq_len, np.int32)))
        logits = np.zeros((2, self.num_codebooks, self.vocab), self.dtype)
        binding.bind_ortvalue_output("logits", _ortvalue(logits))
        self.session.run_with_iobinding(binding)
        return logits.astype(np.float32, copy=False)
