"""benchmarks/realtime.py on the tiny export: the record and the table a run leaves (no timing asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import realtime


def test_realtime_records_whole_clip_streams_and_floor(exported_stereo, tmp_path, capsys):
    out = tmp_path / "realtime.json"
    argv = [str(exported_stereo), "--duration", "1", "--chunk", "0.5", "--streams", "2", "--threads", "1"]
    assert realtime.main([*argv, "--transformers-steps", "0", "--json", str(out)]) == 0
    record = json.loads(out.read_text())
    (entry,) = record["exports"]
    # a 1 s clip: RTF = wall time, the two rounded apart (2 and 3 decimals), so up to half a hundredth apart
    assert entry["whole"]["audio_s"] == 1.0 and abs(entry["whole"]["rtf"] - entry["whole"]["wall_s"]) <= 0.005 + 1e-9
    stream = entry["stream"]
    assert len(stream["first_audio_runs_s"]) == len(stream["pauses_runs"]) == len(stream["paused_s_runs"]) == 2
    assert [c["start_s"] for c in stream["chunks"]] == [0.0, 0.5]
    assert entry["floor"]["step_ms"] > 0 and record["transformers"] is None
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(f"| {exported_stereo.name}"))
    cell = realtime._pauses(stream)
    assert f"| {cell} |" in row and cell.count(" / ") == 1 and cell.endswith("of 2 without a pause")


def test_pauses_cell_of_one_run_and_of_several():
    one = {"pauses": 3, "paused_s": 0.4}
    assert realtime._pauses(one) == "3 (0.40 s)"
    several = {"pauses": 8, "paused_s": 1.26, "pauses_runs": [8, 0, 4], "paused_s_runs": [1.26, 0.0, 0.23]}
    assert realtime._pauses(several) == "8 (1.26 s) / 0 (0.00 s) / 4 (0.23 s); 1 of 3 without a pause"
    older = {"pauses": 8, "paused_s": 1.26, "pauses_runs": [8, 0, 0]}  # a record from before paused_s_runs
    assert realtime._pauses(older) == "8 / 0 / 0; 2 of 3 without a pause"
