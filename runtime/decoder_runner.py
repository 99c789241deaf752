"""Runs the KV-cached decoder graph step by step, keeping the cache between calls.

The generation loop only sees ``start(...)`` and ``step(ids) -> logits``; how the cache is held is this
module's business. Both runners keep every tensor as an OrtValue on the session's device ("cpu" or
"cuda") between steps: per step only the token ids go in and the logits come out. ``step`` keeps no
use of the ids it is given once it returns (the caller may pass a view of its own buffer and overwrite it).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from .manifest import Manifest


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
        self.input_names = spec.inputs
        self.output_names = spec.outputs
        n = self.num_layers
        self.cross_names = spec.inputs[2 : 2 + 2 * n]
        self.past_names = spec.inputs[2 + 2 * n :]
        self.present_names = spec.outputs[1:]
        self._binding: ort.IOBinding | None = None
        self._past_len = 0

    @property
    def past_length(self) -> int:
        return self._past_len

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
        self._past_len = 0

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        """Feed ``input_ids`` [rows, K, S] after the cached positions; return logits [rows, K, vocab]."""
        binding = self._binding
        if binding is None:
            raise RuntimeError("DecoderRunner.step called before start()")
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(input_ids, np.int64))
        # Output shapes change every step, so outputs are re-declared each time (DESIGN.md §5).
        binding.clear_binding_outputs()
        for name in self.output_names:
            binding.bind_output(name, self.device)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        for name, value in zip(self.past_names, outputs[1:], strict=True):
            binding.bind_ortvalue_input(name, value)
        self._past_len += input_ids.shape[2]
        return outputs[0].numpy()


class StaticDecoderRunner:
    """Preallocated cache of the generation's full length, updated in place by the graph.

    Each ``past_key.i`` buffer is bound as both the input and the ``present_key.i`` output, so
    onnxruntime writes only the new rows (DESIGN.md §5). All inputs and outputs are OrtValues on
    the session's device, bound once per phase: a step costs one ``run_with_iobinding`` plus two
    tiny host copies (the token ids and the past length in, the logits out).
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
        n = d.num_layers
        self.cross_names = spec.inputs[3 : 3 + 2 * n]
        self.past_names = spec.inputs[3 + 2 * n :]
        self.present_names = spec.outputs[1:]
        # fp16 exports keep the cache, cross K/V and logits in fp16 (the loop casts logits to fp32)
        past_type = next(i.type for i in session.get_inputs() if i.name == self.past_names[0])
        self.dtype = np.float16 if past_type == "tensor(float16)" else np.float32
        self._binding: ort.IOBinding | None = None
        self._rows = 0
        self._ids: ort.OrtValue | None = None
        self._past_length = np.zeros((), np.int64)
        self._past_value: ort.OrtValue | None = None
        self._logits: ort.OrtValue | None = None

    @property
    def past_length(self) -> int:
        return int(self._past_length)

    def start(self, cross_kv: list[np.ndarray], encoder_attention_mask: np.ndarray, max_length: int) -> None:
        rows = encoder_attention_mask.shape[0]
        binding = _bind_prompt(
            self.session, self.cross_names, cross_kv, encoder_attention_mask, self.dtype, self.device
        )
        shape = [rows, self.num_heads, max_length, self.head_dim]
        for past, present in zip(self.past_names, self.present_names, strict=True):
            buffer = ort.OrtValue.ortvalue_from_shape_and_type(shape, self.dtype, self.device, 0)
            binding.bind_ortvalue_input(past, buffer)
            binding.bind_ortvalue_output(present, buffer)
        self._logits = ort.OrtValue.ortvalue_from_shape_and_type(
            [rows, self.num_codebooks, self.vocab], self.dtype, self.device, 0
        )
        binding.bind_ortvalue_output("logits", self._logits)
        self._past_length[...] = 0
        self._past_value = _device_value(self._past_length, np.int64, self.device)
        binding.bind_ortvalue_input("past_length", self._past_value)
        self._binding, self._rows, self._ids = binding, rows, None

    def step(self, input_ids: np.ndarray) -> np.ndarray:
        binding = self._binding
        if binding is None:
            raise RuntimeError("StaticDecoderRunner.step called before start()")
        ids = np.ascontiguousarray(input_ids, np.int64)
        if self._ids is None or tuple(self._ids.shape()) != ids.shape:
            self._ids = _device_value(
                ids, np.int64, self.device
            )  # prefill, then the first single step: rebind once each
            binding.bind_ortvalue_input("input_ids", self._ids)
        else:
            self._ids.update_inplace(ids)
        self._past_value.update_inplace(self._past_length)
        self.session.run_with_iobinding(binding)
        self._past_length += ids.shape[2]
        return self._logits.numpy()


def make_runner(session: ort.InferenceSession, manifest: Manifest, device: str = "cpu"):
    """The runner matching the exported decoder graph (manifest.decoder.kv_cache)."""
    if manifest.decoder.kv_cache == "static":
        return StaticDecoderRunner(session, manifest, device)
    return ConcatDecoderRunner(session, manifest, device)
