"""Write one wrapper module to an ONNX file, with large weights in a single external-data file."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

#: Graphs whose weights exceed this are stored as ``NAME.onnx`` + ``NAME.onnx.data``: protobuf cannot
#: hold more than 2 GiB, and onnxruntime maps an external-data file instead of parsing and copying the
#: weights (full-size stereo-small decoder: load 3.2 -> 1.7 s, load peak RSS 2.31 -> 1.57 GB).
EXTERNAL_DATA_MIN_BYTES = 64_000_000
DEFAULT_OPSET = 17


def external_data_files(path: Path) -> list[str]:
    data = path.with_name(path.name + ".data")
    return [data.name] if data.exists() else []


def save_onnx(model, path: Path) -> list[str]:
    """Write ``model`` (weights loaded) to ``path``; big weights go to one aligned ``.data`` file."""
    import onnx

    data = path.with_name(path.name + ".data")
    data.unlink(missing_ok=True)
    size = sum(t.ByteSize() for t in model.graph.initializer)
    if size <= EXTERNAL_DATA_MIN_BYTES:
        onnx.save_model(model, str(path))
        return []
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=1024,
    )
    # onnx creates the data file owner-only (0600); an export is shipped to other machines and users
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(data, 0o666 & ~umask)
    return [data.name]


def load_onnx(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=True)


def export_module(
    module,
    example_inputs: Sequence,
    path: Path,
    *,
    input_names: list[str],
    output_names: list[str],
    dynamic_axes: dict[str, dict[int, str]],
    opset: int = DEFAULT_OPSET,
) -> list[str]:
    """Trace ``module`` with the TorchScript exporter; return the external-data file names written.

    The TorchScript exporter (dynamo=False) is used for every graph: the dynamo exporter freezes
    EnCodec's lengths (docs/design.md §15).
    """
    import shutil

    import torch

    work = path.parent / f".work-{path.stem}"
    work.mkdir(parents=True, exist_ok=True)
    try:
        traced = work / path.name
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                tuple(example_inputs),
                str(traced),
                input_names=input_names,
                output_names=output_names,
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        # Large models come out of the exporter with one external file per tensor: gather them.
        return save_onnx(load_onnx(traced), path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
