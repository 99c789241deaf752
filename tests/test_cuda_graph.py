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
from musicgen_onnx.runtime.decoder_runner import CACHE_LENGTH_STEP, MAX_BUFFER_SETS, StaticDecoderRunner
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


def _prompt(manifest, rows, text_len, rng):
    d = manifest.decoder
    cross = [rng.standard_normal((rows, d.num_heads, text_len, d.head_dim)).astype(np.float32)]
    mask = np.ones((rows, text_len), np.int64)
    mask[-1, text_len // 2 :] = 0
    return cross * (2 * d.num_layers), mask


def test_fixed_buffer_runner_matches_plain_runner(exported_stereo):
    model = MusicGen.load(exported_stereo, provider="cpu")
    manifest, session = model.manifest, model.engine.decoder
    d = manifest.decoder
    rng = np.random.default_rng(0)
    pool = {}
    for rows, text_len, prefill, steps in [(2, 5, 3, 20), (4, 11, 1, 12), (2, 9, 1, 30)]:
        cross, mask = _prompt(manifest, rows, text_len, rng)
        plain = StaticDecoderRunner(session, manifest)
        fixed = StaticDecoderRunner(session, manifest, pool=pool)
        for runner in (plain, fixed):
            runner.start(cross, mask, max_length=prefill + steps)
        ids = rng.integers(0, d.vocab_size + 1, (rows, d.num_codebooks, prefill + steps))
        for t in range(steps + 1):
            feed = ids[..., :prefill] if t == 0 else ids[..., prefill + t - 1 : prefill + t]
            np.testing.assert_allclose(fixed.step(feed), plain.step(feed), atol=1e-5, rtol=0)
        plain.release()
        fixed.release()
    # (2, 5) and (2, 9) share text bucket 16 and cache length 256: one buffer set, one graph id
    assert sorted(pool) == [(2, CACHE_LENGTH_STEP, 16), (4, CACHE_LENGTH_STEP, 16)]
    assert sorted(b.graph_id for b in pool.values()) == [1, 2]


def test_fixed_buffers_are_reused_and_never_shared(exported_stereo):
    model = MusicGen.load(exported_stereo, provider="cpu")
    rng = np.random.default_rng(1)
    pool = {}
    cross, mask = _prompt(model.manifest, 2, 4, rng)
    first = StaticDecoderRunner(model.engine.decoder, model.manifest, pool=pool)
    first.start(cross, mask, max_length=40)
    kept = first.buffers
    second = StaticDecoderRunner(model.engine.decoder, model.manifest, pool=pool)
    second.start(cross, mask, max_length=40)  # same shape while the first is running: a private set
    assert second.buffers is not kept and second.buffers.graph_id == -1
    first.release()
    second.release()
    third = StaticDecoderRunner(model.engine.decoder, model.manifest, pool=pool)
    third.start(cross, mask, max_length=200)
    assert third.buffers is kept  # same bucket again: the captured graph's addresses stay valid
    third.release()
    for rows in range(3, 3 + MAX_BUFFER_SETS):
        runner = StaticDecoderRunner(model.engine.decoder, model.manifest, pool=pool)
        runner.start(*_prompt(model.manifest, rows, 4, rng), max_length=10)
        runner.release()
    assert len(pool) == MAX_BUFFER_SETS and runner.buffers is None


def test_generation_with_fixed_buffers_equals_plain(exported_stereo):
    plain = MusicGen.load(exported_stereo, provider="cpu")
    fixed = MusicGen.load(exported_stereo, provider="cpu", fixed_buffers=True)  # what cuda_graph=True sets up
    kwargs = dict(max_new_tokens=30, do_sample=False, guidance_scale=3.0)
    texts = ["an upbeat rock song", "calm piano with a slow melody"]
    reference = plain.generate_detailed(texts, **kwargs).codes
    for _ in range(2):  # the second run replays on the same buffers
        np.testing.assert_array_equal(fixed.generate_detailed(texts, **kwargs).codes, reference)
    assert len(fixed.engine.buffer_sets()) == 1


def test_cuda_graph_option_errors(exported_stereo):
    with pytest.raises(ValueError, match="cuda_graph=True needs the CUDA execution provider"):
        MusicGen.load(exported_stereo, provider="cpu", cuda_graph=True)
    model = MusicGen.load(exported_stereo, provider="cpu", cuda_graph=False)
    assert not model.cuda_graph and model.engine.buffer_sets() == []


def test_fp16_export_runs_the_gpu_configuration_on_cpu(exported_fp16):
    """fp16 cache and logits, fixed buffers and the sampler graph together: what a GPU runs."""
    host = MusicGen.load(exported_fp16, provider="cpu")
    gpu_like = MusicGen.load(exported_fp16, provider="cpu", device_sampling=True, fixed_buffers=True)
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
