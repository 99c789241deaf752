"""Default thread count: the CPUs this process may use (affinity, cgroup v1 / v2 quota), not the host's cores."""

from __future__ import annotations

import os

import onnxruntime as ort
import pytest
from musicgen_onnx.runtime import MusicGen
from musicgen_onnx.runtime import cpus as cpus_module
from musicgen_onnx.runtime.cpus import available_cpus, cgroup_cpu_limit
from musicgen_onnx.runtime.sessions import make_session_options


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_of_own_group_and_parents(tmp_path):
    root, proc = tmp_path / "cg", tmp_path / "proc_cgroup"
    _write(proc, "0::/kubepods/pod1/ctr\n")
    _write(root / "cpu.max", "max 100000\n")
    _write(root / "kubepods/pod1/cpu.max", "250000 100000\n")  # the pod: 2.5 CPUs
    _write(root / "kubepods/pod1/ctr/cpu.max", "max 100000\n")
    assert cgroup_cpu_limit(root, proc) == pytest.approx(2.5)
    _write(root / "kubepods/pod1/ctr/cpu.max", "50000 100000\n")  # the container is tighter
    assert cgroup_cpu_limit(root, proc) == pytest.approx(0.5)


def test_cgroup_v1_quota(tmp_path):
    root, proc = tmp_path / "cg", tmp_path / "proc_cgroup"
    _write(proc, "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n")
    _write(root / "cpu,cpuacct/cpu.cfs_quota_us", "-1\n")
    _write(root / "cpu,cpuacct/cpu.cfs_period_us", "100000\n")
    _write(root / "cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "300000\n")
    _write(root / "cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    assert cgroup_cpu_limit(root, proc) == pytest.approx(3.0)


def test_hybrid_host_reads_the_unified_mount(tmp_path):
    root, proc = tmp_path / "cg", tmp_path / "proc_cgroup"
    _write(proc, "1:cpu:/\n0::/svc\n")
    _write(root / "unified/svc/cpu.max", "150000 100000\n")
    assert cgroup_cpu_limit(root, proc) == pytest.approx(1.5)


def test_no_cgroup_files_means_no_limit(tmp_path):
    assert cgroup_cpu_limit(tmp_path / "missing", tmp_path / "missing_proc") is None
    _write(tmp_path / "cg/cpu.max", "garbage\n")
    _write(tmp_path / "proc", "0::/\n")
    assert cgroup_cpu_limit(tmp_path / "cg", tmp_path / "proc") is None


def test_available_cpus_follows_affinity_and_quota(monkeypatch):
    affinity = len(os.sched_getaffinity(0))
    monkeypatch.setattr(cpus_module, "cgroup_cpu_limit", lambda: None)
    assert available_cpus() == affinity
    monkeypatch.setattr(cpus_module, "cgroup_cpu_limit", lambda: 1.5)
    assert available_cpus() == 1  # a fractional quota rounds down
    monkeypatch.setattr(cpus_module, "cgroup_cpu_limit", lambda: 0.2)
    assert available_cpus() == 1
    monkeypatch.setattr(cpus_module, "cgroup_cpu_limit", lambda: 64.0)
    assert available_cpus() == affinity


def test_one_allowed_cpu_gives_one_thread(exported_mono):
    """A process pinned to one CPU must not get onnxruntime's one-thread-per-host-core pool."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        assert make_session_options(None).intra_op_num_threads == 1
        model = MusicGen.load(exported_mono, provider="cpu")
        assert model.generate("x", max_new_tokens=6).shape[0] == 1
    finally:
        os.sched_setaffinity(0, before)
    assert make_session_options(None).intra_op_num_threads == available_cpus()


def test_spin_control_and_thread_errors():
    options = make_session_options(2, allow_spinning=False)
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert (
        make_session_options(1, allow_spinning=True).get_session_config_entry("session.intra_op.allow_spinning") == "1"
    )
    assert isinstance(make_session_options(None), ort.SessionOptions)
    # a model's graphs run one after another: no pool may keep spinning past its own run (docs/design.md §11)
    for spinning in (None, True, False):
        assert make_session_options(2, spinning).get_session_config_entry("session.force_spinning_stop") == "1"
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match=r"threads must be a positive integer, or None for the CPUs"):
            make_session_options(bad)
    with pytest.raises(ValueError, match="allow_spinning must be True, False or None"):
        make_session_options(None, allow_spinning="no")


def test_codec_sessions_plan_no_memory_pattern_and_warm_up(exported_stereo):
    """EnCodec's inputs change length call by call: its sessions keep no per-shape memory pattern (each new length's
    pattern was one more fresh block), the decoder's keep theirs; ``warm_up_codec`` decodes once ahead of requests."""
    assert make_session_options(2).enable_mem_pattern
    assert not make_session_options(2, memory_pattern=False).enable_mem_pattern
    with MusicGen.load(exported_stereo, provider="cpu") as model:
        engine = model.engine
        assert not engine.codec_decoder.get_session_options().enable_mem_pattern
        assert not engine.codec_stream.get_session_options().enable_mem_pattern
        assert engine.decoder.get_session_options().enable_mem_pattern
        calls = []
        real = engine.codec_decoder.run
        engine.codec_decoder.run = lambda names, feeds: calls.append(feeds["audio_codes"].shape) or real(names, feeds)
        assert model.warm_up_codec(0.5) > 0
        assert model.warm_up_codec() > 0
        frame_rate, channels = model.frame_rate, model.channels
        per_channel = model.manifest.decoder.num_codebooks // channels
        # one call each: every channel of 0.5 s, then of the longest call (CODEC_CALL_FRAMES in all)
        assert calls == [(channels, per_channel, int(0.5 * frame_rate)), (channels, per_channel, 1500 // channels)]
        for bad in (0, -1.0, True, "2", float("inf")):
            with pytest.raises(ValueError, match="seconds must be a positive number, or None for the longest call"):
                model.warm_up_codec(bad)


VNNI_PLAN = {"name": "cpu-fast-vnni", "default": "int8/b256", "matmuls": {"int4/b128": 20, "int8/b256": 125}}
AVX2 = frozenset({"sse2", "avx", "avx2", "fma"})


def test_cpu_vector_flags_reads_the_first_processor(tmp_path):
    info = tmp_path / "cpuinfo"
    first = "processor\t: 0\nmodel name\t: X\nflags\t\t: fpu sse2 avx2 avx512_vnni\n"
    info.write_text(first + "\nprocessor\t: 1\nflags\t: fpu\n")
    assert cpus_module.cpu_vector_flags(info) == {"fpu", "sse2", "avx2", "avx512_vnni"}
    assert cpus_module.cpu_vector_flags(tmp_path / "missing") is None
    (tmp_path / "noflags").write_text("processor\t: 0\n")
    assert cpus_module.cpu_vector_flags(tmp_path / "noflags") is None


def test_block_weight_advice_only_for_8bit_blocks_on_avx2_without_vnni():
    advice = cpus_module.block_weights_advice(VNNI_PLAN, AVX2)
    assert advice is not None and "125" in advice and "--precision cpu-fast" in advice
    # a CPU with VNNI runs the 8-bit block kernel fast: no advice
    assert cpus_module.block_weights_advice(VNNI_PLAN, AVX2 | {"avx512_vnni"}) is None
    assert cpus_module.block_weights_advice(VNNI_PLAN, AVX2 | {"avx_vnni"}) is None
    # per-tensor int8 and int4 exports, unknown CPUs and non-x86 CPUs: nothing to say
    int8_plan = {"name": "int8", "default": "int8", "matmuls": {"int8": 145}}
    assert cpus_module.block_weights_advice(int8_plan, AVX2) is None
    assert cpus_module.block_weights_advice({"name": "int4", "matmuls": {"int4/b128": 145}}, AVX2) is None
    assert cpus_module.block_weights_advice({}, AVX2) is None
    assert cpus_module.block_weights_advice(VNNI_PLAN, None) is None
    assert cpus_module.block_weights_advice(VNNI_PLAN, frozenset({"fp", "asimd", "asimddp"})) is None
