"""Exports write into a locked temp directory; what a killed export leaves behind is removed by the next one."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from musicgen_onnx.export import export_model
from musicgen_onnx.export.staging import LOCK_NAME, temp_dirs
from musicgen_onnx.runtime import Manifest
from musicgen_onnx.runtime.manifest import ManifestError


def _export_then_sleep_script(checkpoint, target) -> str:
    """A child process that starts a real export and is SIGKILLed while it is writing graphs."""
    return textwrap.dedent(
        f"""
        import time
        from musicgen_onnx.export import exporter

        real = exporter.write_model

        def slow(*args, **kwargs):
            out = real(*args, **kwargs)
            print("WROTE", flush=True)
            time.sleep(600)  # the parent kills us here, mid-export
            return out

        exporter.write_model = slow
        exporter.export_model({str(checkpoint)!r}, {str(target)!r}, include_audio_encoder=False)
        """
    )


def test_sigkilled_export_is_cleaned_up_by_the_next(tiny_mono_checkpoint, tmp_path, caplog):
    target = tmp_path / "out"
    child = subprocess.Popen(
        [sys.executable, "-c", _export_then_sleep_script(tiny_mono_checkpoint, target)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        line = ""
        while "WROTE" not in line and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line and child.poll() is not None:
                break
        assert "WROTE" in line, "the child export never wrote its first graph"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    leftovers = temp_dirs(target)
    assert len(leftovers) == 1 and any(leftovers[0].iterdir())  # what SIGKILL leaves: a half-written temp dir
    assert not target.exists()

    with caplog.at_level("WARNING", logger="musicgen_onnx"):
        export_model(str(tiny_mono_checkpoint), target, include_audio_encoder=False)
    assert temp_dirs(target) == []
    assert any("left by an interrupted export" in r.getMessage() for r in caplog.records)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert not (target / LOCK_NAME).exists()
    Manifest.load(target)


def test_a_live_exports_temp_dir_is_left_alone(tiny_mono_checkpoint, tmp_path):
    target = tmp_path / "out"
    live = tmp_path / ".out.tmp-live0001"
    live.mkdir()
    fd = os.open(live / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # what a running export holds
    try:
        export_model(str(tiny_mono_checkpoint), target, include_audio_encoder=False)
        assert live.is_dir() and (live / LOCK_NAME).exists()
    finally:
        os.close(fd)
    recent_unlocked = tmp_path / ".out.tmp-new00002"  # no lock yet: may be an export starting this instant
    recent_unlocked.mkdir()
    export_model(str(tiny_mono_checkpoint), target, include_audio_encoder=False, overwrite=True)
    assert recent_unlocked.is_dir()
    assert not live.exists()  # its owner is gone now: the second export removed it


def test_start_token_other_than_pad_is_refused_at_export(tiny_mono_checkpoint, tmp_path):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    for f in tiny_mono_checkpoint.iterdir():
        (ckpt / f.name).symlink_to(f)
    (ckpt / "generation_config.json").unlink()
    config = json.loads((tiny_mono_checkpoint / "generation_config.json").read_text())
    config["decoder_start_token_id"] = 2047
    (ckpt / "generation_config.json").write_text(json.dumps(config))
    with pytest.raises(ManifestError, match=r"decoder_start_token_id \(2047\) differs from pad_token_id \(2048\)"):
        export_model(str(ckpt), tmp_path / "out", include_audio_encoder=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
