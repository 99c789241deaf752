"""Token selection on the device: runs the exported ``sampler.onnx`` on the decoder's logits in place.

On CUDA this replaces copying [2B, K, vocab] logits to the host and sampling them in numpy, which
costs about as much as a whole GPU decoder step (docs/design.md §7); only [B, K] token ids come back.
The graph consumes the same uniform numbers as the numpy path (``generation.select_with_uniform``),
so a seed gives the same music either way. On the CPU it is no faster than numpy, so it is used
there only when asked for.
"""

from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort


def sampler_feeds(
    vocab_size: int, guidance_scale: float, temperature: float, top_k: int, top_p: float, do_sample: bool
) -> dict[str, np.ndarray]:
    """The per-generation scalar inputs of the sampler graph (greedy = top-1, temperature and top-p off)."""
    if not do_sample:
        top_k, temperature, top_p = 1, 1.0, math.inf
    return {
        "guidance_scale": np.array(guidance_scale, np.float32),
        "temperature": np.array(temperature, np.float32),
        "top_k": np.array([top_k if top_k else vocab_size], np.int64),
        "top_p": np.array(top_p if top_p < 1 else math.inf, np.float32),
    }


class GraphSampler:
    """Binds the sampler graph's inputs once per generation; per step only the uniforms go in."""

    def __init__(self, session: ort.InferenceSession, vocab_size: int, num_codebooks: int, device: str = "cpu"):
        self.session = session
        self.vocab_size = vocab_size
        self.num_codebooks = num_codebooks
        self.device = device
        self._binding: ort.IOBinding | None = None
        self._uniform: ort.OrtValue | None = None
        self._tokens: ort.OrtValue | None = None
        self._do_sample = True

    def start(
        self, batch: int, guidance_scale: float, temperature: float, top_k: int, top_p: float, do_sample: bool
    ) -> None:
        binding = self.session.io_binding()
        for name, value in sampler_feeds(self.vocab_size, guidance_scale, temperature, top_k, top_p, do_sample).items():
            # TopK reads k in host memory on every execution provider
            device = "cpu" if name == "top_k" else self.device
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, device, 0))
        shape = [batch, self.num_codebooks]
        self._uniform = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.float32, self.device, 0)
        self._uniform.update_inplace(np.zeros(shape, np.float32))
        binding.bind_ortvalue_input("uniform", self._uniform)
        self._tokens = ort.OrtValue.ortvalue_from_shape_and_type(shape, np.int64, "cpu", 0)
        binding.bind_ortvalue_output("tokens", self._tokens)
        self._binding, self._do_sample = binding, do_sample

    def sample(self, logits: ort.OrtValue, rng: np.random.Generator) -> np.ndarray:
        """Tokens [B * K] int64 for the decoder's ``logits`` OrtValue (consumes B * K uniforms when sampling)."""
        if self._binding is None:
            raise RuntimeError("GraphSampler.sample called before start()")
        if self._do_sample:
            shape = self._uniform.shape()
            self._uniform.update_inplace(rng.random(shape[0] * shape[1]).astype(np.float32).reshape(shape))
        self._binding.bind_ortvalue_input("logits", logits)
        self.session.run_with_iobinding(self._binding)
        return self._tokens.numpy().reshape(-1).copy()
