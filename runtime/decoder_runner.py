"""Runs the KV-cached decoder graph step by step, keeping the cache between calls.

The generation loop only sees ``start(...)`` and ``step(ids) -> logits``; how the cache is held is this
module's business. Both runners keep every tensor as an OrtValue on the session's device ("cpu" or
"cuda") between steps: per step only the token ids go in and the logits come out. ``step`` keeps no
use of the ids it is given once it returns (the caller may pass a view of its own buffer and overwrite it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from .manifest import Manifest

#: onnxruntime's type strings of the decoder's float inputs and caches, as numpy types
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int8)": np.int8}


def input_dtype(session: ort.InferenceSession, name: str) -> type:
    """The numpy type of input ``name``: the float type of an export (fp32, fp16) is its cross K/V's, the
    cache's is its own (int8 for ``KVCache.STATIC_INT8``; docs/design.md §6)."""
    kind = next(i.type for i in session.get_inputs() if i.name == name)
    if kind not in _NUMPY_TYPES:
        raise ValueError(f"decoder input {name} has type {kind}, which this runtime does not handle")
    return _NUMPY_TYPES[kind]


def _device_value(array: np.ndarray, dtype, device: str) -> ort.OrtValue:
    """A private copy of ``array`` on ``device``: on CPU an OrtValue aliases its numpy buffer, and
    ``update_inplace`` would otherwise write into the caller's array (e.g. the delay-pattern state)."""
    return ort.OrtValue.ortvalue_from_numpy(np.array(array, dtype=dtype, order="C", copy=True), device, 0)


def _bind_prompt(session, cross_names, cross_kv, encoder_attention_mask, dtype, device: str) -> ort.IOBinding:
    """A new binding holding the per-prompt inputs (text mask, every layer's cross K/V) on ``device``."""
    binding = session.io_binding()
    binding.bind_ortvalue_input("encoder_attention_mask", _device_value(encoder_attention_mask, np.int64, device))
    for name, value in zip(cross_names, cross_kv, strict=True):
        binding.bind_ortvalue_input(name, _device_value(value, dtype, device))
    return binding


class ConcatDecoderRunner:
    """Concat-style cache: each step's ``present`` outputs become the next step's ``past`` inputs.

    Outputs are bound as OrtValues on the session's device and re-bound as inputs, so the cache is
    never converted to numpy between steps; only token ids go in and logits come out.
    """

    def __init__(self, session: ort.InferenceSession, manifest: Manifest, device: str = "cpu") -> None:
        self.session = session
        self.device = device
        spec = manifest.graphs["decoder"]
        self.num_layers = manifest.decoder.num_layers
        self.num_heads = manifest.decoder.num_heads
        self.head_dim = manifest.decoder.head_dim
        self.output_names = spec.outputs
        n = self.num_layers
        self.cross_names = spec.inputs[2 : 2 + 2 * n]
        self.past_names = spec.inputs[2 + 2 * n :]
        self._binding: ort.IOBinding | None = None

    def start(self, cross_kv: list[np.ndarray], encoder_attention_mask: np.ndarray, max_length: int) -> None:
        """Bind the per-prompt inputs (cross K/V, text mask) once and reset the cache to empty."""
        rows = encoder_attention_mask.shape[0]
        binding = _bind_prompt(
            self.session, self.cross_names, cross_kv, encoder_attention_mask, np.float32, self.device
        )
        empty = _device_value(np.zeros((rows, self.num_heads, 0, self.head_dim)), np.float32, self.device)
        for name in self.past_names:
            binding.bind_ortvalue_input(name, empty)
        self._binding = binding

    def release(self) -> None:
        """Drop the cache and per-prompt inputs (they are rebuilt by the next ``start``)."""
        self._binding = None

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        """Feed ``input_ids`` [rows, K, S] after the cached positions; return logits [rows, K, vocab]."""
        return self.run(input_ids).numpy()

    def run(self, input_ids: np.ndarray) -> ort.OrtValue:
        """Like ``step``, but the logits stay an OrtValue on the device."""
        binding = self._binding
        if binding is None:
            raise RuntimeError("DecoderRunner.step called before start()")
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids, np.int64))
        # Output shapes change every step, so outputs are re-declared each time (docs/design.md §6).
        binding.clear_binding_outputs()
        for name in self.output_names:
            binding.bind_output(name, self.device)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        for name, value in zip(self.past_names, outputs[1:], strict=True):
            binding.bind_ortvalue_input(name, value)
        return outputs[0]


@dataclass
class _Buffers:
    """The device tensors of one generation, and the binding its single-token steps reuse."""

    length: int  # cache positions
    cache: list[ort.OrtValue]
    cross: list[ort.OrtValue]
    mask: ort.OrtValue
    logits: ort.OrtValue
    step_ids: ort.OrtValue
    step_positions: ort.OrtValue
    step_total: ort.OrtValue  # host memory: GroupQueryAttention reads it on the CPU
    step_binding: ort.IOBinding


class StaticDecoderRunner:
    """Preallocated cache of the generation's full length, updated in place by the graph.

    Each ``past_key.i`` buffer is bound as both the input and the ``present_key.i`` output, so
    onnxruntime writes only the new rows (docs/design.md §6). All inputs and outputs are OrtValues on the
    session's device, bound once per generation: a single-token step costs one ``run_with_iobinding``
    plus two tiny host copies in place (token ids, positions) and the logits out. Single-token steps
    (the prefill too, when there is no audio prompt) share one binding; a multi-token prefill gets its own.
    This runs one request alone; requests that share a decoder batch run in ``slots.SlotDecoder``.
    """

    def __init__(self, session: ort.InferenceSession, manifest: Manifest, device: str = "cpu") -> None:
        self.session = session
        self.device = device
        spec = manifest.graphs["decoder"]
        d = manifest.decoder
        self.num_heads, self.head_dim, self.num_codebooks, self.vocab = (
            d.num_heads,
            d.head_dim,
            d.num_codebooks,
            d.vocab_size,
        )
        self.max_positions = d.max_positions
        n = d.num_layers
        self.cross_names = spec.inputs[4 : 4 + 2 * n]
        self.past_names = spec.inputs[4 + 2 * n :]
        self.present_names = spec.outputs[1:]
        # fp16 exports keep the cache, cross K/V and logits in fp16 (the loop casts logits to fp32); an int8 cache
        # is int8 next to fp32 everything else
        self.dtype = input_dtype(session, self.cross_names[0])
        self.cache_dtype = input_dtype(session, self.past_names[0])
        self._buffers: _Buffers | None = None
        self._past = 0
        # never captured: the buffers live for one generation (a CUDA-graph session captures only when asked)
        self._uncaptured = ort.RunOptions()
        self._uncaptured.add_run_config_entry("gpu_graph_id", "-1")

    def release(self) -> None:
        """Free this generation's buffers."""
        self._buffers = None

    def start(self, cross_kv: list[np.ndarray], encoder_attention_mask: np.ndarray, max_length: int) -> None:
        if max_length > self.max_positions:
            raise ValueError(f"max_length {max_length} exceeds the decoder's {self.max_positions} positions")
        self._buffers, self._past = self._allocate(max_length, cross_kv, encoder_attention_mask), 0

    def _allocate(self, length: int, cross_kv: list[np.ndarray], mask: np.ndarray) -> _Buffers:
        def new(shape, dtype) -> ort.OrtValue:
            return ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, self.device, 0)

        rows = mask.shape[0]
        buffers = _Buffers(
            length=length,
            cache=[new([rows, self.num_heads, length, self.head_dim], self.cache_dtype) for _ in self.past_names],
            cross=[_device_value(a, self.dtype, self.device) for a in cross_kv],
            mask=_device_value(mask, np.int64, self.device),
            logits=new([rows, self.num_codebooks, self.vocab], self.dtype),
            step_ids=new([rows, self.num_codebooks, 1], np.int64),
            step_positions=new([rows, 1], np.int64),
            step_total=_device_value(np.array(length, np.int32), np.int32, "cpu"),
            step_binding=self.session.io_binding(),
        )
        self._bind(buffers, buffers.step_binding, buffers.step_ids, buffers.step_positions, buffers.step_total)
        return buffers

    def _bind(self, buffers: _Buffers, binding: ort.IOBinding, ids, positions, total) -> None:
        binding.bind_ortvalue_input("input_ids", ids)
        binding.bind_ortvalue_input("position_ids", positions)
        binding.bind_ortvalue_input("total_sequence_length", total)
        binding.bind_ortvalue_input("encoder_attention_mask", buffers.mask)
        for name, value in zip(self.cross_names, buffers.cross, strict=True):
            binding.bind_ortvalue_input(name, value)
        for past, present, value in zip(self.past_names, self.present_names, buffers.cache, strict=True):
            binding.bind_ortvalue_input(past, value)
            binding.bind_ortvalue_output(present, value)
        binding.bind_ortvalue_output("logits", buffers.logits)

    def run(self, input_ids: np.ndarray) -> ort.OrtValue:
        """Feed ``input_ids`` [rows, K, S] after the cached positions; the logits stay on the device."""
        buffers = self._buffers
        if buffers is None:
            raise RuntimeError("StaticDecoderRunner.run called before start()")
        ids = np.ascontiguousarray(input_ids, np.int64)
        seq_len = ids.shape[2]
        if self._past + seq_len > buffers.length:
            raise ValueError(f"the cache holds {buffers.length} positions; {self._past + seq_len} requested")
        if seq_len == 1:
            buffers.step_ids.update_inplace(ids)
            buffers.step_positions.update_inplace(np.full((ids.shape[0], 1), self._past, np.int64))
            buffers.step_total.update_inplace(np.array(self._past + 1, np.int32))
            self.session.run_with_iobinding(buffers.step_binding, self._uncaptured)
        else:
            if self._past:
                raise ValueError("a multi-token input is only supported as the first call (the prefill)")
            binding = self.session.io_binding()
            positions = np.tile(np.arange(seq_len, dtype=np.int64), (ids.shape[0], 1))
            self._bind(
                buffers,
                binding,
                _device_value(ids, np.int64, self.device),
                _device_value(positions, np.int64, self.device),
                _device_value(np.array(seq_len, np.int32), np.int32, "cpu"),
            )
            self.session.run_with_iobinding(binding, self._uncaptured)
        self._past += seq_len
        return buffers.logits

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        return self.run(input_ids).numpy()


def make_runner(session: ort.InferenceSession, manifest: Manifest, device: str = "cpu"):
    """The runner matching the exported decoder graph (manifest.decoder.kv_cache)."""
    if manifest.decoder.kv_cache.in_place:
        return StaticDecoderRunner(session, manifest, device)
    return ConcatDecoderRunner(session, manifest, device)
