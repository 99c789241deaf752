"""The CUDA-graph path, run on the CPU: the placement check on exported graphs, and the fixed-buffer
runner (bucketed shapes, buffers kept between generations, a graph id per buffer set) against the
plain runner and against transformers-equivalent generation."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from musicgen_onnx.export import export_model
from musicgen_onnx.export.cuda_graph_check import check_cuda_graph
from musicgen_onnx.runtime import MusicGen
from onnx import TensorProto, helper


@pytest.fixture(scope="module")
def exported_fp16(tiny_stereo_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("exports") / "stereo_fp16"
    export_model(str(tiny_stereo_checkpoint), out, precision="fp16", include_audio_encoder=False)
    return out


def _decoder(directory):
    return onnx.load(str(directory / "decoder.onnx"), load_external_data=False)


def test_static_decoder_passes_the_check_and_fp16_is_flagged(exported_stereo, exported_fp16):
    assert check_cuda_graph(_decoder(exported_stereo)).ok
    assert check_cuda_graph(_decoder(exported_fp16)).ok
    # CUDA GroupQueryAttention is fp16-only: only the fp16 export may be captured
    assert MusicGen.load(exported_fp16, provider="cpu").manifest.decoder.cuda_graph
    assert not MusicGen.load(exported_stereo, provider="cpu").manifest.decoder.cuda_graph


def test_concat_decoder_fails_the_check(exported_stereo_concat):
    report = check_cuda_graph(_decoder(exported_stereo_concat))
    assert not report.ok
    assert any("computed on the host but used on the device" in p for p in report.problems)


def _graph(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _f(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_check_rules_on_small_graphs():
    x = _f("x", ["n", 4])
    y = _f("y", None)
    shape_ok = _graph(
        [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Gather", ["s", "zero"], ["n"]),
            helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
            helper.make_node("Concat", ["n1", "four"], ["target"], axis=0),
            helper.make_node("Reshape", ["x", "target"], ["y"]),
        ],
        [x],
        [y],
        [
            helper.make_tensor("zero", TensorProto.INT64, [], [0]),
            helper.make_tensor("axes", TensorProto.INT64, [1], [0]),
            helper.make_tensor("four", TensorProto.INT64, [1], [4]),
        ],
    )
    assert check_cuda_graph(shape_ok).ok

    host_into_device = _graph(
        [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Cast", ["s"], ["sf"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["x", "sf"], ["y"]),
        ],
        [x],
        [y],
    )
    problems = check_cuda_graph(host_into_device).problems
    assert len(problems) == 1 and "Add" in problems[0]

    device_into_host_slot = _graph(
        [
            helper.make_node("Cast", ["x"], ["xi"], to=TensorProto.INT64),
            helper.make_node("Reshape", ["x", "xi"], ["y"]),
        ],
        [x],
        [y],
    )
    assert "read on the host" in check_cuda_graph(device_into_host_slot).problems[0]

    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "b", [], [_f("z", None)])
    control_flow = _graph(
        [
            helper.make_node("ReduceSum", ["x"], ["c"], keepdims=0),
            helper.make_node("Cast", ["c"], ["cb"], to=TensorProto.BOOL),
            helper.make_node("If", ["cb"], ["y"], then_branch=branch, else_branch=branch),
        ],
        [x],
        [y],
    )
    assert "control flow" in check_cuda_graph(control_flow).problems[0]


def test_generation_with_fixed_buffers_equals_plain(exported_stereo):
    """The CUDA-graph layout (fixed buffers, every row every step, prompts as forced tokens) on the CPU."""
    plain = MusicGen.load(exported_stereo, provider="cpu")
    fixed = MusicGen.load(exported_stereo, provider="cpu", fixed_buffers=True)  # what CUDA sets up
    assert fixed.batcher.full_rows and not plain.batcher.full_rows
    kwargs = dict(max_new_tokens=30, do_sample=False, guidance_scale=3.0)
    texts = ["an upbeat rock song", "calm piano with a slow melody"]
    reference = plain.generate_detailed(texts, **kwargs).codes
    for _ in range(2):  # the second run reuses the same buffers
        np.testing.assert_array_equal(fixed.generate_detailed(texts, **kwargs).codes, reference)


def test_cuda_graph_option_errors(exported_stereo):
    with pytest.raises(ValueError, match="cuda_graph=True needs the CUDA execution provider"):
        MusicGen.load(exported_stereo, provider="cpu", cuda_graph=True)
    model = MusicGen.load(exported_stereo, provider="cpu", cuda_graph=False)
    assert not model.cuda_graph and not model.batcher.full_rows


def test_fp16_export_runs_the_gpu_configuration_on_cpu(exported_fp16):
    """fp16 cache and logits, fixed buffers and the sampler graph together: what a GPU runs."""
    host = MusicGen.load(exported_fp16, provider="cpu")
    gpu_like = MusicGen.load(exported_fp16, provider="cpu", device_sampling=True, fixed_buffers=True)
    assert gpu_like.device_sampling and gpu_like.batcher.full_rows
    kwargs = dict(max_new_tokens=25, do_sample=True, top_k=50, guidance_scale=3.0, seed=2)
    expected = host.generate_detailed(["warm synth pads"], **kwargs).codes
    np.testing.assert_array_equal(gpu_like.generate_detailed(["warm synth pads"], **kwargs).codes, expected)


def test_refused_capture_falls_back_with_a_warning(exported_stereo, monkeypatch, caplog):
    """onnxruntime refuses CUDA graphs at load time for some graphs: the model must still load, uncaptured."""
    import onnxruntime as ort
    from musicgen_onnx.runtime import sessions

    real = ort.InferenceSession
    opened = []

    def fake_session(path, options=None, providers=None):
        opened.append(providers)
        if isinstance(providers[0], tuple):  # the CUDA-graph request
            raise RuntimeError("This session cannot use the CUDA Graph feature as requested by the user")
        return real(path, options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(sessions.ort, "InferenceSession", fake_session)
    path = exported_stereo / "decoder.onnx"
    with caplog.at_level("WARNING", logger="musicgen_onnx"):
        session, captured = sessions.open_decoder_session(
            path, ["CUDAExecutionProvider", "CPUExecutionProvider"], ort.SessionOptions(), cuda_graph=True
        )
    assert not captured and session is not None
    assert opened[0][0] == ("CUDAExecutionProvider", {"enable_cuda_graph": "1"})
    assert "CUDA graph capture unavailable" in caplog.text
