"""Slot 0's teacher-forced logits, alone and next to rows at other positions: the continuous-batching
independence check, shared by the fp32-cache and int8-cache tests."""

from __future__ import annotations

import numpy as np
from musicgen_onnx.runtime.slots import SlotDecoder


def slot0_logits(engine, conds, tokens: np.ndarray, rng, other_rows: bool, length: int, lead: int) -> list:
    """Feed ``tokens`` to slot 0 (rows 0-1); with ``other_rows``, slots 1 and 2 start ``lead`` steps earlier at
    different times and get random tokens, so every step mixes three positions."""
    d = engine.manifest.decoder
    dec = SlotDecoder(engine.decoder, engine.manifest, slots=3, length=length)
    for slot, cond in enumerate(conds):
        dec.set_text(slot, [kv[0] for kv in cond.cross_kv], cond.text_mask[0])
    out, lead = [], lead if other_rows else 0
    for t in range(lead + len(tokens)):
        dec.ids[:] = d.pad_token_id
        dec.positions[:] = 0
        if other_rows:  # slots 1 and 2 started earlier, at different times
            for slot, start in ((1, 0), (2, 3)):
                dec.ids[2 * slot : 2 * slot + 2, :, 0] = rng.integers(0, d.vocab_size, d.num_codebooks)
                dec.positions[2 * slot : 2 * slot + 2] = max(0, t - start)
        if t >= lead:
            dec.ids[0:2, :, 0] = tokens[t - lead]
            dec.positions[0:2] = t - lead
            out.append(dec.step(6 if other_rows else 2)[0:2].copy())
        else:
            dec.step(6)
    return out


def assert_slot0_independent(engine, conds, tokens: np.ndarray, rng, length: int, lead: int) -> None:
    """Slot 0's logits in the mixed batch equal its logits alone within 1e-4."""
    mixed = slot0_logits(engine, conds, tokens, rng, True, length, lead)
    alone = slot0_logits(engine, conds, tokens, rng, False, length, lead)
    for m, a in zip(mixed, alone, strict=True):
        np.testing.assert_allclose(m, a, atol=1e-4, rtol=0)
