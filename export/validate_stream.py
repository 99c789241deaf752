"""Export-time checks of the stateful EnCodec graph (``graphs/encodec_stream.py``).

Two checks: one call of the graph against the PyTorch wrapper on inputs of other shapes than the trace's
(non-zero LSTM state and context included), and a whole clip decoded in uneven chunks by the runtime's
``StatefulStreamDecoder`` against transformers' own one-shot ``EncodecModel.decode``: the chunking, the
reflected codes at the clip's edges and the measured overlap are checked against the reference, not against
our own wrapper.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from musicgen_onnx.runtime.codec_stream import StatefulStreamDecoder
from musicgen_onnx.runtime.manifest import CodecStreamSpec

from .validate import Check, _compare, _session

ROLE = "encodec_stream"


def stream_spec(wrapper) -> CodecStreamSpec:
    """What the manifest records for the runtime: conv0's code context and the post stack's measured reach."""
    left, right = wrapper.post_stack_reach()
    return CodecStreamSpec(code_context=wrapper.pad, left_context=left, right_context=right)


def validate_encodec_stream(path: Path, model, wrapper, tol: float) -> list[Check]:
    import torch

    session = _session(path)
    names = [i.name for i in session.get_inputs()]
    checks = []
    for batch, frames, context in [(1, 1, 0), (3, 12, 2), (2, 5, 7)]:
        inputs = wrapper.example_inputs(batch, frames, context)
        with torch.no_grad():
            ref = wrapper(*inputs)
        ours = session.run(None, dict(zip(names, (x.numpy() for x in inputs), strict=True)))
        checks.append(_compare(ROLE, f"one call batch={batch} frames={frames} context={context}", ours, ref, tol))

    for (total, steps), (ref, audio) in zip(STREAM_CASES, stream_audio_pairs(session, model, wrapper), strict=True):
        checks.append(_compare(ROLE, f"stream of {total} frames in steps {steps}", [audio], [ref], tol))
    return checks


#: (total frames, frames ready at each step, frames per graph call) of the streamed clips checked at export;
#: call_frames 1: one sequence per graph call, so each sequence's carried state is checked on its own
_STREAMS = [(3, [3], 1500), (40, [5, 9, 17, 18, 30, 40], 1), (23, [8, 23], 1500)]
STREAM_CASES = [(total, steps) for total, steps, _ in _STREAMS]


def stream_audio_pairs(session, model, wrapper) -> list[tuple[np.ndarray, np.ndarray]]:
    """(reference, ours) per streamed clip: chunks through ``StatefulStreamDecoder`` against one-shot PyTorch."""
    import torch

    spec = stream_spec(wrapper)
    hop = int(np.prod(model.audio_encoder.config.upsampling_ratios))
    rng = np.random.default_rng(0)
    pairs = []
    for total, steps, call_frames in _STREAMS:
        codes = rng.integers(0, wrapper.quantizer.codebook_size, (2, wrapper.num_quantizers, total))
        with torch.no_grad():
            ref = model.audio_encoder.decode(torch.from_numpy(codes)[None], [None]).audio_values

        def one_shot(c: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model.audio_encoder.decode(torch.from_numpy(c)[None], [None]).audio_values.numpy()

        decoder = StatefulStreamDecoder(
            lambda feeds: session.run(None, feeds),
            one_shot,
            spec,
            hop,
            channels=1,
            call_frames=call_frames,
            lstm_shape=(wrapper.num_layers, wrapper.hidden),
        )
        parts = [decoder.step(codes, ready, final=ready == total) for ready in steps]
        pairs.append((ref.numpy(), np.concatenate(parts, axis=-1)))
    return pairs
