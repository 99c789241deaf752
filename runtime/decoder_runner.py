"""Runs the KV-cached decoder graph step by step, keeping the cache between calls.

The generation loop only sees ``start(...)`` and ``step(ids) -> logits``; how the cache is held (numpy
arrays here, device-resident buffers in faster variants) is this module's business.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from .manifest import Manifest


class DecoderRunner:
    """Concat-style cache: each step's ``present`` outputs become the next step's ``past`` inputs.

    Outputs are bound as OrtValues on the session's device and re-bound as inputs, so the cache is
    never converted to numpy between steps; only token ids go in and logits come out.
    """

    def __init__(self, session: ort.InferenceSession, manifest: Manifest) -> None:
        self.session = session
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

    def start(self, cross_kv: list[np.ndarray], encoder_attention_mask: np.ndarray) -> None:
        """Bind the per-prompt inputs (cross K/V, text mask) once and reset the cache to empty."""
        rows = encoder_attention_mask.shape[0]
        binding = self.session.io_binding()
        binding.bind_cpu_input("encoder_attention_mask", np.ascontiguousarray(encoder_attention_mask, np.int64))
        for name, value in zip(self.cross_names, cross_kv, strict=True):
            binding.bind_cpu_input(name, np.ascontiguousarray(value, np.float32))
        empty = np.zeros((rows, self.num_heads, 0, self.head_dim), np.float32)
        for name in self.past_names:
            binding.bind_cpu_input(name, empty)
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
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        for name, value in zip(self.past_names, outputs[1:], strict=True):
            binding.bind_ortvalue_input(name, value)
        self._past_len += input_ids.shape[2]
        return outputs[0].numpy()
