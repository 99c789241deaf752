"""Write one wrapper module to an ONNX file, with large weights in a single external-data file."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger("musicgen_onnx")

#: protobuf cannot hold more than 2 GiB; above this we store the weights beside the graph.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
DEFAULT_OPSET = 17


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

    The TorchScript exporter (dynamo=False) is used for every graph: DESIGN.md §4 found the dynamo
    exporter freezes EnCodec's lengths.
    """
    import shutil

    import onnx
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
        model = onnx.load(str(traced), load_external_data=True)
        size = sum(t.ByteSize() for t in model.graph.initializer)
        if size > EXTERNAL_DATA_THRESHOLD:
            data_name = path.name + ".data"
            onnx.save_model(
                model,
                str(path),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=1024,
            )
            return [data_name]
        if len(list(work.iterdir())) == 1:
            traced.replace(path)
        else:
            onnx.save_model(model, str(path))
        return []
    finally:
        shutil.rmtree(work, ignore_errors=True)
