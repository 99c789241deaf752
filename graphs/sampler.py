"""Sampler graph: classifier-free guidance, temperature, top-k, top-p and one draw per row, on the device.

On a GPU, copying [2B, K, 2048] logits to the host and sampling them in numpy costs about as much
as the decoder step itself (docs/design.md §7). This graph reads the decoder's logits where they are
and returns only the token ids. It computes what
``runtime.generation.process_logits`` + ``select_tokens`` compute (transformers' order and rules)
and consumes the same uniform numbers, so a seed gives the same tokens either way up to float32
rounding at a bucket edge:

    logits [R, K, V] (R = 2B with CFG, cond rows first; R = B without)
      │ cond = logits[:B], uncond = logits[R-B:]    (without CFG both are the same rows: guided = cond)
      │ guided = uncond + (cond - uncond) * guidance_scale ; / temperature          -> scores [B*K, V]
      ├─ TopK(scores, top_k) ─> values (descending)
      │    softmax(values) ─> exclusive cumsum < top_p ─> n kept ─> cut = values[n - 1]
      │ keep = scores >= cut                    (top-k keeps ties with the k-th value, as transformers)
      │ p = exp(scores - max) * keep ; cdf = cumsum(p)              (vocabulary order, as the host path)
      └─ token = min(count(cdf <= uniform * cdf[-1]), argmax(cdf))    -> tokens [B, K] int64

Greedy decoding is top_k = 1 with uniform = 0 (the first maximum, like argmax). Inputs the runtime
fills: ``uniform`` [B, K] in [0, 1), ``guidance_scale``, ``temperature``, ``top_p`` (float32 scalars;
top_p = inf disables it) and ``top_k`` (int64 [1]; the vocabulary size disables it).
"""

from __future__ import annotations

import torch
from torch import nn

INPUT_NAMES = ["logits", "uniform", "guidance_scale", "temperature", "top_k", "top_p"]
OUTPUT_NAMES = ["tokens"]
DYNAMIC_AXES = {"logits": {0: "rows"}, "uniform": {0: "batch"}, "tokens": {0: "batch"}}


class _TopKValues(torch.autograd.Function):
    """torch.topk with a tensor ``k``: the tracer would freeze a Python int, so emit ONNX TopK directly."""

    @staticmethod
    def forward(ctx, scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        return torch.topk(scores, int(k.reshape(-1)[0]), dim=-1).values

    @staticmethod
    def symbolic(g, scores, k):
        values, _ = g.op("TopK", scores, k, axis_i=-1, largest_i=1, sorted_i=1, outputs=2)
        values.setType(scores.type().with_sizes([None, None]))
        return values


class TokenSampler(nn.Module):
    def __init__(self, num_codebooks: int, vocab_size: int, logits_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.num_codebooks = num_codebooks
        self.vocab_size = vocab_size
        self.logits_dtype = logits_dtype

    def forward(
        self,
        logits: torch.Tensor,
        uniform: torch.Tensor,
        guidance_scale: torch.Tensor,
        temperature: torch.Tensor,
        top_k: torch.Tensor,
        top_p: torch.Tensor,
    ) -> torch.Tensor:
        batch = uniform.shape[0]
        scores = logits.float()
        cond, uncond = scores[:batch], scores[scores.shape[0] - batch :]
        scores = (uncond + (cond - uncond) * guidance_scale) / temperature
        scores = scores.reshape(-1, self.vocab_size)

        values = _TopKValues.apply(scores, top_k)
        best = values[:, :1]
        sorted_probs = torch.softmax(values, dim=-1)
        exclusive = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        kept = (exclusive < top_p).to(torch.int64).sum(dim=-1, keepdim=True).clamp(min=1)  # top_p=0: the best
        cut = torch.gather(values, 1, kept - 1)

        weights = torch.exp(scores - best) * (scores >= cut).to(scores.dtype)
        cdf = torch.cumsum(weights, dim=-1)
        threshold = uniform.reshape(-1, 1) * cdf[:, -1:]
        index = (cdf <= threshold).to(torch.int64).sum(dim=-1)
        # rounding can put the threshold on the total: never step past the last kept token
        index = torch.minimum(index, torch.argmax(cdf, dim=-1))
        return index.reshape(batch, self.num_codebooks)

    def example_inputs(self, batch: int = 2, cfg: bool = True) -> tuple[torch.Tensor, ...]:
        rows = 2 * batch if cfg else batch
        return (
            torch.randn(rows, self.num_codebooks, self.vocab_size).to(self.logits_dtype),
            torch.rand(batch, self.num_codebooks),
            torch.tensor(3.0),
            torch.tensor(1.0),
            torch.tensor([min(250, self.vocab_size)], dtype=torch.int64),
            torch.tensor(0.9),
        )
