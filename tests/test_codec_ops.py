"""benchmarks/codec_ops.py on the tiny export: the profile and the two int8 variants it times (no timing asserted)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import codec_ops


def test_codec_ops_profiles_and_quantizes_the_decode(exported_stereo, tmp_path, capsys):
    out = tmp_path / "codec-ops.json"
    assert codec_ops.main([str(exported_stereo), "--seconds", "0.5", "--repeats", "1", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["channels"] == 2 and record["frames"] > 0
    assert {"Conv", "LSTM"} <= set(record["profile"]["ops_ms"])
    variants = {row["variant"]: row for row in record["variants"]}
    assert set(variants) == {"fp32", "lstm-int8", "conv-int8"}
    assert variants["fp32"]["snr_db_vs_fp32"] is None
    for name in ("lstm-int8", "conv-int8"):  # quantized, so not bit-identical, but the same audio
        assert math.isfinite(variants[name]["snr_db_vs_fp32"]) and variants[name]["snr_db_vs_fp32"] > 10
    assert set(record["elementwise_ms"]) == {"Elu", "Exp", "Relu"}
    assert "| lstm-int8 |" in capsys.readouterr().out


def test_codec_ops_rejects_a_bad_duration(exported_stereo):
    with pytest.raises(SystemExit):
        codec_ops.main([str(exported_stereo), "--seconds", "0"])
