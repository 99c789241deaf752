"""Which rows of a caller's batch a request holds, and the random numbers those rows draw.

A ``generate`` call with more prompts than the engine has slots runs as several parts (``waves``), each holding
some rows of the caller's batch. A seed belongs to the call, not to a row: a batch of B prompts draws, at every
sampling step, one block of B x K uniforms from ``np.random.default_rng(seed)`` (K per row, rows in order), and
that is what it has always done in one piece. ``RowRandom`` gives a part exactly its rows' share of each block,
without the other parts: numpy's PCG64 produces one 64-bit output per uniform and can jump ahead (``advance``),
so a part seeks to its rows' offset in each block and draws only those. The codes of a call therefore do not
depend on how its rows were split, nor on when each part ran (docs/design.md §17).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["RowRandom", "RowSlice", "row_random"]


@dataclass(frozen=True)
class RowSlice:
    """Rows [lo, hi) of a caller's batch of ``of`` rows."""

    lo: int
    hi: int
    of: int

    def __post_init__(self) -> None:
        if not 0 <= self.lo < self.hi <= self.of:
            raise ValueError(f"rows [{self.lo}, {self.hi}) are not a non-empty slice of a batch of {self.of}")

    @property
    def count(self) -> int:
        return self.hi - self.lo


class RowRandom:
    """The uniforms rows ``rows`` of a batch get from the batch's one stream ``default_rng(seed)``.

    Only ``random(n)`` is provided, the one method the samplers call (``generation.choose_tokens``,
    ``sampler.GraphSampler``); ``n`` is this part's rows x a per-row width, and the whole batch's draw is
    ``rows.of`` x that width."""

    def __init__(self, seed: int, rows: RowSlice) -> None:
        self.rows = rows
        self._bits = np.random.PCG64(seed)  # what default_rng(seed) wraps
        self._generator = np.random.Generator(self._bits)
        self._block = 0  # outputs the batch's stream has produced before the next block
        self._at = 0  # outputs this generator has produced or skipped

    def random(self, n: int) -> np.ndarray:
        rows = self.rows
        width, rest = divmod(int(n), rows.count)
        if rest:
            raise ValueError(f"{n} uniforms asked for {rows.count} rows: not a whole number per row")
        start = self._block + rows.lo * width
        self._bits.advance(start - self._at)
        out = self._generator.random(n)
        self._at = start + n
        self._block += rows.of * width
        return out


def row_random(seed: int | None, rows: RowSlice | None) -> np.random.Generator | RowRandom:
    """The random stream of a request: the whole batch's, or its rows' share of the caller's (``rows``)."""
    if rows is None:
        return np.random.default_rng(seed)
    if seed is None:
        raise ValueError("the parts of a split batch need the batch's seed (waves.split_request draws one)")
    return RowRandom(seed, rows)
