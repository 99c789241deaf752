"""The compute gate: on the CPU one onnxruntime run of a model at a time, waiters served in arrival order,
while the batching engine steps and several streams decode EnCodec chunks (docs/design.md §11, §17)."""

from __future__ import annotations

import threading

import numpy as np
from musicgen_onnx.runtime import MusicGen
from musicgen_onnx.runtime.gate import ComputeGate
from musicgen_onnx.runtime.streaming import snr_db


def _wait_until(predicate, what: str) -> None:
    event = threading.Event()
    for _ in range(2000):
        if predicate():
            return
        event.wait(0.005)
    raise AssertionError(f"timed out waiting for {what}")


def test_waiters_are_served_in_arrival_order():
    gate = ComputeGate()
    order: list[int] = []
    gate.__enter__()
    threads = []
    for i in range(5):

        def take(i=i) -> None:
            with gate:
                order.append(i)

        thread = threading.Thread(target=take)
        thread.start()
        threads.append(thread)
        _wait_until(lambda i=i: gate.waiting == i + 1, f"waiter {i} to queue")
    gate.__exit__(None, None, None)
    for thread in threads:
        thread.join(timeout=10)
    assert order == list(range(5))
    assert gate.waiting == 0


def test_gate_is_reentrant_and_disabled_is_a_no_op():
    gate = ComputeGate()

    def take() -> None:
        with gate:
            pass

    with gate, gate:  # nested in one thread: no deadlock
        other = threading.Thread(target=take)
        other.start()
        _wait_until(lambda: gate.waiting == 1, "the other thread to queue")
    other.join(timeout=10)
    assert not other.is_alive()
    off = ComputeGate(enabled=False)
    with off:
        assert off.waiting == 0


class _CountingSession:
    """Wraps a real onnxruntime session and records the most runs of the model in flight at once."""

    def __init__(self, session, counter: dict) -> None:
        self._session, self._counter = session, counter

    def __getattr__(self, name):
        return getattr(self._session, name)

    def _enter(self) -> None:
        with self._counter["lock"]:
            self._counter["now"] += 1
            self._counter["max"] = max(self._counter["max"], self._counter["now"])
            self._counter["runs"] += 1

    def _exit(self) -> None:
        with self._counter["lock"]:
            self._counter["now"] -= 1

    def run(self, *args, **kwargs):
        self._enter()
        try:
            return self._session.run(*args, **kwargs)
        finally:
            self._exit()

    def run_with_iobinding(self, *args, **kwargs):
        self._enter()
        try:
            return self._session.run_with_iobinding(*args, **kwargs)
        finally:
            self._exit()


def test_streams_and_decoder_steps_never_run_at_once(exported_stereo):
    """Four streams in one batch: their EnCodec decodes and the engine's decoder steps take turns (on the CPU)."""
    counter = {"lock": threading.Lock(), "now": 0, "max": 0, "runs": 0}
    with MusicGen.load(exported_stereo, provider="cpu", max_batch=4) as model:
        engine = model.engine
        assert engine.gate.enabled
        engine.codec_decoder = _CountingSession(engine.codec_decoder, counter)
        engine.text_encoder = _CountingSession(engine.text_encoder, counter)
        engine.cross_kv = _CountingSession(engine.cross_kv, counter)
        model.batcher.decoder.session = _CountingSession(model.batcher.decoder.session, counter)
        audio: list[np.ndarray | None] = [None] * 4

        def client(i: int) -> None:
            with model.stream("calm piano", duration=1.0 + 0.2 * i, seed=i, chunk_seconds=0.1) as chunks:
                audio[i] = np.concatenate([c.audio for c in chunks], axis=-1)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        reference = model.generate("calm piano", duration=1.4, seed=2)
    assert counter["runs"] > 40  # steps and chunk decodes really went through the wrapped sessions
    assert counter["max"] == 1
    for i, clip in enumerate(audio):
        assert clip is not None and clip.shape == (1, 2, round((1.0 + 0.2 * i) * 32000))
    assert snr_db(reference, audio[2]) >= 40.0  # the request alone, decoded in one shot: streaming's bound
