"""Text prompts to padded token ids with the ``tokenizers`` library (no transformers needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer


class TextTokenizer:
    """Same ids as transformers' T5 tokenizer: ``</s>`` appended, right padding with ``pad_id``."""

    def __init__(self, path: Path, pad_id: int, max_tokens: int) -> None:
        self._tokenizer = Tokenizer.from_file(str(path))
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self.pad_id = pad_id
        self.max_tokens = max_tokens

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        encodings = self._tokenizer.encode_batch(list(texts))
        lengths = [len(e.ids) for e in encodings]
        for text, length in zip(texts, lengths, strict=True):
            if length > self.max_tokens:
                raise ValueError(
                    f"text prompt is {length} tokens long, the maximum is {self.max_tokens}: {text[:60]!r}..."
                )
        width = max(lengths)
        ids = np.full((len(texts), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), width), dtype=np.int64)
        for row, encoding in enumerate(encodings):
            ids[row, : len(encoding.ids)] = encoding.ids
            mask[row, : len(encoding.ids)] = 1
        return ids, mask
