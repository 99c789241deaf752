"""Reduced-precision exports: recorded in the manifest, runnable, and close to fp32 in tokens.

Quality on the full-size model is measured by benchmarks/precision_quality.py (KL, top-1 agreement);
here the tiny checkpoint's greedy tokens under int8 / int4 weights must agree with fp32's.
"""

from __future__ import annotations

import numpy as np
import pytest
from musicgen_onnx.export import export_model
from musicgen_onnx.runtime import Manifest, MusicGen

TEXTS = ["an upbeat rock song with electric guitars", "calm piano"]
#: share of teacher-free greedy tokens equal to fp32's; a diverging early token changes what follows,
#: so this is a lower bound on per-step agreement.
MIN_AGREEMENT = {"int8": 0.90, "int4": 0.60, "fp16": 0.90}


@pytest.fixture(scope="module")
def fp32_codes(exported_stereo):
    model = MusicGen.load(exported_stereo)
    return model.generate_detailed(TEXTS, do_sample=False, max_new_tokens=40).codes


@pytest.mark.parametrize("precision", ["int8", "int4", "fp16"])
def test_quantized_export_agrees_with_fp32(tiny_stereo_checkpoint, tmp_path_factory, fp32_codes, precision):
    out = tmp_path_factory.mktemp(precision) / "model"
    export_model(str(tiny_stereo_checkpoint), out, precision=precision, include_audio_encoder=False)
    manifest = Manifest.load(out)
    assert manifest.precision == precision
    model = MusicGen.load(out)
    result = model.generate_detailed(TEXTS, do_sample=False, max_new_tokens=40)
    agreement = float(np.mean(result.codes == fp32_codes))
    assert agreement >= MIN_AGREEMENT[precision], agreement
    assert np.isfinite(result.audio).all()


def test_unknown_precision(tiny_stereo_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="precision must be one of"):
        export_model(str(tiny_stereo_checkpoint), tmp_path / "x", precision="int3")
    assert not (tmp_path / "x").exists()
