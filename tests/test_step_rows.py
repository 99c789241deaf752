"""benchmarks/step_rows.py on the tiny export: the step table, its floors from the shared bandwidth probe, and the
per-operator profile (no timing asserted)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import measure_common
import step_rows


def test_read_bandwidth_is_a_positive_rate():
    rate = measure_common.read_bandwidth(1, megabytes=16, repeats=3)
    assert math.isfinite(rate) and rate > 1e8  # bytes/s: any machine streams 16 MB faster than 100 MB/s


def test_step_rows_records_steps_floors_and_profile(exported_stereo, tmp_path, capsys):
    out = tmp_path / "step-rows.json"
    argv = [str(exported_stereo), "--positions", "3", "7", "--prompts", "1", "2", "--repeats", "1"]
    assert step_rows.main([*argv, "--threads", "1", "--profile-at", "5", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["read_bandwidth_gb_s"] > 0
    (entry,) = record["exports"]
    for table in (entry["step_ms"], entry["floor_ms"]):
        assert set(table) == {"3", "7"} and all(set(row) == {"1", "2"} for row in table.values())
    # the floor counts weights once and each row's cache up to the position: more rows or positions read more
    assert entry["floor_ms"]["7"]["2"] >= entry["floor_ms"]["3"]["1"] > 0
    profile = entry["profile_ms_per_step"]
    assert set(profile) == {"1", "2"} and all(p["ops"] for p in profile.values())
    assert "| position |" in capsys.readouterr().out


def test_decoder_weight_bytes_leaves_out_only_the_gathered_tables(exported_stereo):
    """The floor's weight count: every decoder initializer except the tables a Gather reads one row of (the
    codebooks' token embeddings and the sinusoidal positions), counted here from the graph's own tensors."""
    import numpy as np
    import onnx

    manifest = json.loads((exported_stereo / "manifest.json").read_text())
    decoder_file = exported_stereo / manifest["graphs"]["decoder"]["file"]
    graph = onnx.load(decoder_file, load_external_data=False).graph
    sizes = {
        t.name: int(np.prod(t.dims, dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        for t in graph.initializer
    }
    decoder = manifest["decoder"]
    token_tables = decoder["num_codebooks"] * (decoder["vocab_size"] + 1) * decoder["hidden_size"] * 4
    gathered = sum(sizes[name] for node in graph.node if node.op_type == "Gather" for name in node.input[:1]
                   if name in sizes)  # fmt: skip
    assert gathered >= token_tables  # the token tables (fp32 in the tiny export), maybe the positions too
    counted = measure_common.decoder_weight_bytes(decoder_file)
    assert counted == sum(sizes.values()) - gathered
    assert counted > 0
