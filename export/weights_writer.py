"""Write a weightless graph's initializers tensor by tensor: ``NAME.onnx`` + (for big graphs) ``NAME.onnx.data``.

Each :class:`~export.lazy_weights.Lazy` is computed, appended to the data file (aligned like onnx's own
external-data writer: tensors >= 1 MB start at a multiple of 64 KiB, so onnxruntime can map them), and
dropped before the next one: peak memory is one tensor, whatever the model's size. The file layout is
the one ``onnx.save_model(..., save_as_external_data=True, all_tensors_to_one_file=True)`` produces:
small graphs (<= ``EXTERNAL_DATA_MIN_BYTES`` of weights) are one self-contained file, and in big ones
tensors under ``SIZE_THRESHOLD`` bytes stay inline.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .weightless import WeightlessGraph

logger = logging.getLogger("musicgen_onnx")

#: same thresholds as the earlier ``onnx.save_model`` based writer (``onnx_io``)
SIZE_THRESHOLD = 1024
ALIGN_THRESHOLD = 1 << 20
ALIGNMENT = 1 << 16


def _check(name: str, array: np.ndarray, tensor) -> np.ndarray:
    from onnx import helper

    expected = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    if array.dtype != expected or tuple(array.shape) != tuple(tensor.dims):
        raise RuntimeError(
            f"initializer {name}: computed {array.dtype}{list(array.shape)}, graph says {expected}{list(tensor.dims)}"
        )
    return np.ascontiguousarray(array)


def _inline(tensor, array: np.ndarray) -> None:
    from onnx import numpy_helper

    tensor.CopyFrom(numpy_helper.from_array(array, tensor.name))


def write_model(graph: WeightlessGraph, path: Path, external_min_bytes: int) -> list[str]:
    """Write ``graph`` to ``path``; return the external-data file names (``[]`` or ``[NAME.onnx.data]``)."""
    from onnx import TensorProto

    model = graph.model
    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    pending = [t for t in model.graph.initializer if t.name in graph.weights]
    total = sum(graph.weights[t.name].nbytes for t in pending)
    if total <= external_min_bytes:
        for tensor in pending:
            _inline(tensor, _check(tensor.name, graph.weights[tensor.name].compute(), tensor))
        path.write_bytes(model.SerializeToString())
        return []

    with open(data, "wb") as handle:
        for tensor in pending:
            array = _check(tensor.name, graph.weights[tensor.name].compute(), tensor)
            if array.nbytes < SIZE_THRESHOLD:
                _inline(tensor, array)
                continue
            offset = handle.tell()
            if array.nbytes >= ALIGN_THRESHOLD and offset % ALIGNMENT:
                offset += ALIGNMENT - offset % ALIGNMENT
                handle.seek(offset)
            handle.write(memoryview(array.reshape(-1).view(np.uint8)))
            del tensor.external_data[:]
            for key, value in (("location", data.name), ("offset", str(offset)), ("length", str(array.nbytes))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            tensor.data_location = TensorProto.EXTERNAL
            del array
        handle.truncate()
    # onnx's writer makes the data file owner-only (0600) and this one follows the umask: an export is
    # shipped to other machines and users, so make it readable like the graph file
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(data, 0o666 & ~umask)
    path.write_bytes(model.SerializeToString())
    logger.debug("wrote %s: %.1f MB of weights in %s", path.name, total / 1e6, data.name)
    return [data.name]
