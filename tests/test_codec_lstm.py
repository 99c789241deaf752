"""int8 LSTM weights in EnCodec's decoder graphs (``--codec-lstm int8``, the CPU presets' choice; export/codec_lstm.py).

The rewrite must be onnxruntime's own LSTM quantization (held equal, weight for weight, to ``quantize_dynamic``),
the audio must stay within the streaming bound of transformers' EnCodec (checked here against transformers, not
against the export's own measurement), and a checkpoint whose audio misses the bound must either keep fp32 (a
preset's default) or fail the export without leaving a directory (an explicit request).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from musicgen_onnx.runtime import MusicGen
from musicgen_onnx.runtime.manifest import Manifest
from musicgen_onnx.runtime.streaming import stream_decoder
from test_streaming import check_snr

CODEC_ROLES = ("encodec_decode", "encodec_stream")


def _ops(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}


@pytest.fixture(scope="module")
def exported_lstm_int8(tiny_stereo_checkpoint, tmp_path_factory):
    from musicgen_onnx.export import export_model

    out = tmp_path_factory.mktemp("exports") / "stereo_codec_lstm_int8"
    export_model(str(tiny_stereo_checkpoint), out, codec_lstm="int8")
    return out


def test_the_decoder_graphs_get_int8_lstms_and_the_manifest_says_so(exported_lstm_int8, exported_stereo):
    manifest = Manifest.load(exported_lstm_int8)
    assert manifest.codec_lstm["graphs"] == {role: "int8" for role in CODEC_ROLES}
    assert [manifest.codec_lstm_format(role) for role in CODEC_ROLES] == ["int8", "int8"]
    assert manifest.codec_lstm["min_snr_db"] == 40.0
    assert all(manifest.codec_lstm["snr_db"][role] >= 40.0 for role in CODEC_ROLES)
    for role in CODEC_ROLES:
        ops = _ops(exported_lstm_int8 / manifest.graphs[role].file)
        assert "DynamicQuantizeLSTM" in ops and "LSTM" not in ops
    assert "LSTM" in _ops(exported_lstm_int8 / "encodec_encode.onnx")  # audio prompts' encoder stays fp32
    assert Manifest.load(exported_stereo).codec_lstm == {}  # the default export keeps fp32
    assert Manifest.load(exported_stereo).codec_lstm_format() == "fp32"
    assert "LSTM" in _ops(exported_stereo / "encodec_decode.onnx")


def _lstm_initializers(path) -> list[np.ndarray]:
    """W, R and their scales and zero points of every DynamicQuantizeLSTM, in node order."""
    from onnx.external_data_helper import load_external_data_for_model

    model = onnx.load(str(path), load_external_data=False)
    load_external_data_for_model(model, str(path.parent))
    tensors = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    out = []
    for node in model.graph.node:
        if node.op_type == "DynamicQuantizeLSTM":
            out += [tensors[node.input[i]] for i in (1, 2, 8, 9, 10, 11)]
    return out


def test_the_rewrite_is_onnxruntime_quantize_dynamic(exported_lstm_int8, exported_stereo, tmp_path):
    """Same weights, scales and zero points as onnxruntime's own pass over the fp32 graph (which also fixes the
    input order and the [directions, input, 4 * hidden] layout DynamicQuantizeLSTM expects)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    theirs = tmp_path / "encodec_decode.onnx"
    quantize_dynamic(
        str(exported_stereo / "encodec_decode.onnx"),
        str(theirs),
        op_types_to_quantize=["LSTM"],
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    expected = _lstm_initializers(theirs)
    ours = _lstm_initializers(exported_lstm_int8 / "encodec_decode.onnx")
    assert len(ours) == len(expected) > 0
    for a, b in zip(ours, expected, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


def _transformers_decode(checkpoint, codes: np.ndarray) -> np.ndarray:
    """transformers' EnCodec on each channel's codebooks (stereo: even rows left, odd rows right)."""
    import torch
    from transformers import MusicgenForConditionalGeneration

    model = MusicgenForConditionalGeneration.from_pretrained(str(checkpoint)).eval()
    channels = []
    with torch.no_grad():
        for c in range(2):
            part = torch.from_numpy(codes[:, c::2])
            channels.append(model.audio_encoder.decode(part[None], [None]).audio_values[:, 0].numpy())
    return np.stack(channels, axis=1)


def test_audio_stays_within_the_bound_of_transformers(exported_lstm_int8, tiny_stereo_checkpoint):
    codes = np.random.default_rng(3).integers(0, 2048, (2, 8, 120))
    reference = _transformers_decode(tiny_stereo_checkpoint, codes)
    model = MusicGen.load(exported_lstm_int8, provider="cpu")
    one_shot = model.decode_codes(codes)
    check_snr(reference, one_shot, "int8 LSTM one-shot decode vs transformers")
    decoder = stream_decoder(model.engine)
    streamed = np.concatenate([decoder.step(codes, ready, final=ready == 120) for ready in (50, 120)], axis=-1)
    check_snr(reference, streamed, "int8 LSTM stateful stream vs transformers")
    assert np.abs(one_shot - reference).max() > 0  # it is the int8 graph: not float-exact


def test_choice_defaults_and_errors():
    from musicgen_onnx.export.codec_lstm import CodecLSTM, choose_codec_lstm

    assert choose_codec_lstm(None, "cpu-fast") == (CodecLSTM.INT8, False)
    assert choose_codec_lstm(None, "cpu-fast-vnni") == (CodecLSTM.INT8, False)
    assert choose_codec_lstm(None, "int8") == (CodecLSTM.FP32, False)
    assert choose_codec_lstm(None, "fp32") == (CodecLSTM.FP32, False)
    assert choose_codec_lstm("fp32", "cpu-fast") == (CodecLSTM.FP32, True)
    assert choose_codec_lstm("int8", "fp32") == (CodecLSTM.INT8, True)
    with pytest.raises(ValueError, match=r"codec_lstm must be one of \('fp32', 'int8'\), got 'int4'"):
        choose_codec_lstm("int4", "fp32")
    with pytest.raises(ValueError, match="CPU format"):
        choose_codec_lstm("int8", "fp16")


def test_cli_passes_the_choice(monkeypatch, tmp_path):
    from musicgen_onnx.export import cli

    seen = {}

    def fake_export(source, output, **kwargs):
        seen.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr("musicgen_onnx.export.export_model", fake_export)
    for argv, expected in [([], None), (["--codec-lstm", "fp32"], "fp32"), (["--codec-lstm", "int8"], "int8")]:
        seen.clear()
        assert cli.main(["some/checkpoint", str(tmp_path / "out"), "--precision", "cpu-fast", *argv]) == 2
        assert seen["codec_lstm"] == expected
    with pytest.raises(SystemExit):
        cli.main(["some/checkpoint", str(tmp_path / "out"), "--codec-lstm", "int4"])


def test_below_the_bound_a_preset_keeps_fp32_and_a_request_fails(tiny_stereo_checkpoint, tmp_path, monkeypatch):
    from musicgen_onnx.export import codec_lstm, exporter
    from musicgen_onnx.export.validate import ValidationError

    monkeypatch.setattr(codec_lstm, "MIN_SNR_DB", 500.0)  # no int8 graph can reach it
    preset = tmp_path / "preset"
    manifest = exporter.export_model(
        str(tiny_stereo_checkpoint), preset, precision="cpu-fast", include_audio_encoder=False, validate=False
    )
    assert manifest.codec_lstm["graphs"] == {role: "fp32" for role in CODEC_ROLES}
    assert manifest.codec_lstm["min_snr_db"] == 500.0
    for role in CODEC_ROLES:
        ops = _ops(preset / manifest.graphs[role].file)
        assert "LSTM" in ops and "DynamicQuantizeLSTM" not in ops
    model = MusicGen.load(preset, provider="cpu")  # loads and decodes with the fp32 graphs it kept
    assert np.isfinite(model.decode_codes(np.zeros((1, 8, 4), np.int64))).all()

    requested = tmp_path / "requested"
    with pytest.raises(ValidationError, match=r"below the 500 dB bound; export with codec_lstm='fp32'"):
        exporter.export_model(
            str(tiny_stereo_checkpoint), requested, codec_lstm="int8", include_audio_encoder=False, validate=False
        )
    assert not requested.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["preset"]


def test_codec_ops_wants_an_fp32_baseline(exported_lstm_int8, capsys):
    """benchmarks/codec_ops.py times int8 LSTMs against the export's graph: on an int8 one it would compare int8
    with itself, so it refuses and says which export to use."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import codec_ops

    with pytest.raises(SystemExit):
        codec_ops.main([str(exported_lstm_int8), "--seconds", "0.5"])
    assert "--codec-lstm fp32" in capsys.readouterr().err
