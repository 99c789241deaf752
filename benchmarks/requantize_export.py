"""Measurement helper: convert an fp32 export's decoder to int8 / int4 in place, in a process without torch.

The whole-model exporter quantized inside the export process while the PyTorch model was still loaded; at
1.5 B decoder parameters (musicgen-melody, -stereo-melody, -medium) that peaked above this 24 GB machine's
memory. The bounded exporter's ``musicgen-onnx export --precision int8`` now converts tensor by tensor (1.4 GB
peak anonymous RSS for stereo-melody, benchmarks/README.md), so this script is only for converting an existing
fp32 export. It applies ``export.precision.apply_precision`` to the exported fp32 decoder alone (loading it
whole) and rewrites the manifest (precision, checksums):

    python benchmarks/requantize_export.py out/sm --precision int8
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--precision", choices=("int8", "int4"), default="int8")
    args = parser.parse_args()

    from musicgen_onnx.export.onnx_io import external_data_files
    from musicgen_onnx.export.precision import apply_precision
    from musicgen_onnx.runtime.manifest import Manifest, sha256_file

    manifest = Manifest.load(args.model_dir)
    if manifest.precision != "fp32":
        raise SystemExit(f"{args.model_dir} is {manifest.precision}, not fp32")
    spec = manifest.graphs["decoder"]
    path = args.model_dir / spec.file
    started = time.perf_counter()
    apply_precision("decoder", path, args.precision)
    external = external_data_files(path)
    files = {k: v for k, v in manifest.files.items() if k not in spec.external_data}
    files.update({name: sha256_file(args.model_dir / name) for name in external})
    for stale in set(spec.external_data) - set(external):
        (args.model_dir / stale).unlink(missing_ok=True)
    graphs = dict(manifest.graphs)
    graphs["decoder"] = dataclasses.replace(spec, sha256=sha256_file(path), external_data=external)
    dataclasses.replace(manifest, precision=args.precision, graphs=graphs, files=files).save(args.model_dir)
    print(f"{args.model_dir}: decoder -> {args.precision} in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
