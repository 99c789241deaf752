"""One onnxruntime run at a time per model on the CPU, served in arrival order.

Every session of a model has its own intra-op thread pool, sized to all the CPUs the process may use
(``cpus.available_cpus``). Under continuous batching the engine thread runs decoder steps while every
streaming client decodes EnCodec chunks in its own thread; run at once, those pools put several times more
busy threads than cores on the CPUs, and each parallel section then waits for its slowest, descheduled worker.
On 2 cores with 4 streams that made a decoder step cost 190 ms instead of 70 ms (docs/design.md §11). So every
run of a model's sessions on the CPU passes through this gate: one pool computes at a time, with every core,
and the total work is the same. Waiters are served first come, first served, so a stream of chunk decodes
cannot starve the step loop, nor the step loop a client (Python's ``Lock`` makes no such promise).
"""

from __future__ import annotations

import threading

__all__ = ["ComputeGate"]


class ComputeGate:
    """A reentrant FIFO lock (a ticket lock): ``with gate:`` around each onnxruntime run.

    ``enabled=False`` makes it a no-op (used on CUDA, where the work is queued on the device and the host
    threads mostly wait; not measured there, so not imposed).
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._cond = threading.Condition()
        self._next_ticket = 0  # handed to the next thread that asks
        self._serving = 0  # the ticket that may run now
        self._owner: int | None = None
        self._depth = 0

    @property
    def waiting(self) -> int:
        """Threads waiting for their turn (the holder not counted)."""
        with self._cond:
            return self._next_ticket - self._serving - (1 if self._owner is not None else 0)

    def __enter__(self) -> ComputeGate:
        if not self.enabled:
            return self
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:  # nested use in one thread (e.g. a runner called under the gate)
                self._depth += 1
                return self
            ticket = self._next_ticket
            self._next_ticket += 1
            self._cond.wait_for(lambda: self._serving == ticket)
            self._owner, self._depth = me, 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self.enabled:
            return
        with self._cond:
            self._depth -= 1
            if self._depth == 0:
                self._owner = None
                self._serving += 1
                self._cond.notify_all()
