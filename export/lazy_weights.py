"""Weights that are computed only when they are written: a tensor of the loaded model, or a recipe over others.

A weightless trace (``export.weightless``) leaves every weight as a graph input. Each becomes a :class:`Lazy`:
``FromTensor`` for a parameter or buffer of the (memory-mapped) model, ``Folded`` for a constant subgraph over
weights (a transpose, the fused Q/K/V concatenation, EnCodec's weight norm), and the precision passes wrap
them again (``export.lazy_precision``). ``compute()`` runs at write time, one tensor at a time, so the
exporter never holds more than one weight (plus its inputs) in anonymous memory.

The folded ONNX ops are evaluated with torch, as the TorchScript exporter's own constant folding does, so
the written values are the ones ``do_constant_folding=True`` would have stored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


class Lazy:
    """A tensor known by shape and dtype now, computed on demand."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def compute(self) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def torch(self):
        import torch

        array = np.ascontiguousarray(self.compute())
        if not array.flags.writeable:  # small constants (onnx's numpy views of a Constant node)
            array = array.copy()
        return torch.from_numpy(array)

    def meta(self):
        """A meta-device tensor of this shape and dtype: for shape inference without data."""
        import torch

        return torch.empty(self.shape, dtype=_torch_dtype(self.dtype), device="meta")


def _torch_dtype(dtype: np.dtype):
    import torch

    return torch.from_numpy(np.zeros(0, dtype)).dtype


class FromTensor(Lazy):
    """A parameter or buffer of the loaded model (its storage may be a memory-mapped file).

    ``name`` is its state-dict name in the traced wrapper: the precision plan (``export.precision_plan``)
    picks a weight format per module from it.
    """

    def __init__(self, tensor: Any, name: str = "") -> None:
        self.tensor, self.name = tensor, name
        self.shape = tuple(int(d) for d in tensor.shape)
        self.dtype = np.dtype(str(tensor.dtype).replace("torch.", ""))

    def compute(self) -> np.ndarray:
        tensor = self.tensor.detach()
        if not tensor.is_contiguous():
            tensor = tensor.contiguous()
        return tensor.numpy()

    def torch(self):
        return self.tensor.detach()


class Constant(Lazy):
    """A small value known at trace time (the output of a Constant node)."""

    def __init__(self, value: np.ndarray) -> None:
        self.value = np.asarray(value)
        self.shape = tuple(self.value.shape)
        self.dtype = self.value.dtype

    def compute(self) -> np.ndarray:
        return self.value


def _ints(value: Any) -> list[int]:
    return [int(v) for v in np.asarray(value).reshape(-1)]


def _reshape(x, shape):
    shape = _ints(shape)
    target = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(target)


def _slice(x, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
        if step != 1:
            raise NotImplementedError("Slice with a step other than 1 is not folded")
        size = x.shape[axis]
        start = max(0, min(size, start + size if start < 0 else start))
        end = max(0, min(size, end + size if end < 0 else end))
        index[axis] = slice(start, end)
    return x[tuple(index)]


def _reduce(fn: Callable) -> Callable:
    def run(x, axes_input=None, *, axes=None, keepdims=1):
        dims = axes if axes is not None else (_ints(axes_input) if axes_input is not None else None)
        dims = list(range(x.dim())) if dims is None else dims
        return fn(x, dims, bool(keepdims))

    return run


def _op_table() -> dict[str, Callable]:
    import torch

    def cast(x, *, to):
        from onnx import helper

        return x.to(_torch_dtype(helper.tensor_dtype_to_np_dtype(to)))

    return {
        "Transpose": lambda x, *, perm=None: x.permute(*(perm if perm is not None else reversed(range(x.dim())))),
        "Concat": lambda *xs, axis: torch.cat(xs, dim=axis),
        "Unsqueeze": lambda x, axes: _unsqueeze(x, _ints(axes)),
        "Squeeze": lambda x, axes=None: x.squeeze() if axes is None else _squeeze(x, _ints(axes)),
        "Reshape": lambda x, shape, *, allowzero=0: _reshape(x, shape),
        "Slice": _slice,
        "Cast": cast,
        "Mul": torch.mul,
        "Div": lambda a, b: torch.div(a, b, rounding_mode=None if a.is_floating_point() else "trunc"),
        "Add": torch.add,
        "Sub": torch.sub,
        "Pow": torch.pow,
        "Sqrt": torch.sqrt,
        "Neg": torch.neg,
        "ReduceL2": _reduce(lambda x, dims, keep: torch.norm(x, 2, dims, keep)),
        "ReduceSum": _reduce(lambda x, dims, keep: torch.sum(x, dims, keep)),
    }


def _unsqueeze(x, axes: list[int]):
    rank = x.dim() + len(axes)
    for axis in sorted(a + rank if a < 0 else a for a in axes):
        x = x.unsqueeze(axis)
    return x


def _squeeze(x, axes: list[int]):
    for axis in sorted((a + x.dim() if a < 0 else a for a in axes), reverse=True):
        x = x.squeeze(axis)
    return x


#: ONNX ops a constant subgraph over weights may contain to be folded at write time.
FOLDABLE_OPS = frozenset(
    {
        "Transpose",
        "Concat",
        "Unsqueeze",
        "Squeeze",
        "Reshape",
        "Slice",
        "Cast",
        "Mul",
        "Div",
        "Add",
        "Sub",
        "Pow",
        "Sqrt",
        "Neg",
        "ReduceL2",
        "ReduceSum",
    }
)
#: inputs read as values (shapes, axes, indices), not as tensors to compute with
_VALUE_INPUTS = {
    "Unsqueeze": (1,),
    "Squeeze": (1,),
    "Reshape": (1,),
    "Slice": (1, 2, 3, 4),
    "ReduceL2": (1,),
    "ReduceSum": (1,),
}


class Folded(Lazy):
    """Output ``index`` of ONNX op ``op`` applied to lazy inputs, evaluated with torch."""

    def __init__(self, op: str, inputs: Sequence[Lazy | None], attrs: dict[str, Any], index: int = 0) -> None:
        self.op, self.inputs, self.attrs, self.index = op, list(inputs), dict(attrs), index
        result = self._run(meta=True)
        self.shape = tuple(int(d) for d in result.shape)
        self.dtype = np.dtype(str(result.dtype).replace("torch.", ""))

    def _run(self, meta: bool):
        values = []
        for i, x in enumerate(self.inputs):
            if x is None:
                values.append(None)
            elif i in _VALUE_INPUTS.get(self.op, ()):
                values.append(x.compute())  # small constants (shapes, axes)
            elif meta:
                values.append(x.meta())
            else:
                values.append(x.torch())
        while values and values[-1] is None:
            values.pop()
        return _op_table()[self.op](*values, **self.attrs)

    def torch(self):
        import torch

        with torch.no_grad():
            return self._run(meta=False).contiguous()

    def compute(self) -> np.ndarray:
        return self.torch().numpy()
