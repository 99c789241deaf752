"""Static check that a graph can be captured as a CUDA graph by onnxruntime.

onnxruntime captures a session as a CUDA graph only when no compute node needs the CPU EP and no
host<->device copy (Memcpy node) would be inserted; nodes that only compute shapes on the host are
allowed. This module predicts that from the ONNX graph alone, so the exporter can record the result
in the manifest on a machine without a GPU:

    Shape / Size ──> host tensor ──> shape arithmetic (host) ──> a host-memory input slot   ok
                                                             └─> a device input slot        memcpy: refused
    device tensor ──────────────────────────────────────────────> a host-memory input slot   memcpy: refused

Host-memory slots are the inputs the CUDA kernels read on the CPU (a Reshape's shape, a Slice's
starts/ends, GroupQueryAttention's total_sequence_length, ...). Constants and initializers are
placed wherever their consumer wants them. The check is conservative: a node fed only by host
tensors is assumed to run on the CPU, so its output is a host tensor too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: (op type) -> input indices the CUDA kernels read from host memory.
HOST_INPUT_SLOTS: dict[str, frozenset[int]] = {
    "Reshape": frozenset({1}),
    "Expand": frozenset({1}),
    "Slice": frozenset({1, 2, 3, 4}),
    "Unsqueeze": frozenset({1}),
    "Squeeze": frozenset({1}),
    "ConstantOfShape": frozenset({0}),
    "Tile": frozenset({1}),
    "Range": frozenset({0, 1, 2}),
    "TopK": frozenset({1}),
    "Split": frozenset({1}),
    "Pad": frozenset({1, 2, 3}),
    "ReduceSum": frozenset({1}),
    "ReduceMax": frozenset({1}),
    "ReduceMean": frozenset({1}),
    "GroupQueryAttention": frozenset({6}),
}
#: Ops whose output lives in host memory whatever the input.
HOST_OUTPUT_OPS = frozenset({"Shape", "Size"})
#: Control flow cannot be captured.
CONTROL_FLOW_OPS = frozenset({"If", "Loop", "Scan"})


@dataclass
class CudaGraphReport:
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def check_cuda_graph(model, host_inputs: tuple[str, ...] = ("total_sequence_length",)) -> CudaGraphReport:
    """Predict whether onnxruntime can capture ``model`` (an onnx.ModelProto) as a CUDA graph.

    ``host_inputs`` are graph inputs the caller binds in host memory (they may only feed host slots).
    """
    graph = model.graph
    neutral = {init.name for init in graph.initializer} | {""}
    host: set[str] = {name for name in host_inputs if any(i.name == name for i in graph.input)}
    report = CudaGraphReport()
    for node in graph.node:  # ONNX graphs are topologically sorted
        label = f"{node.op_type} {node.name or node.output[0]!r}"
        if node.op_type in CONTROL_FLOW_OPS:
            report.problems.append(f"{label}: control flow cannot be captured")
            continue
        if node.op_type == "Constant":
            neutral.update(node.output)
            continue
        if node.op_type in HOST_OUTPUT_OPS:
            host.update(node.output)
            continue
        slots = HOST_INPUT_SLOTS.get(node.op_type, frozenset())
        data = [(i, name) for i, name in enumerate(node.input) if name not in neutral]
        if not data:  # constant subgraph: folded by onnxruntime
            neutral.update(node.output)
            continue
        if all(name in host for _, name in data):
            host.update(node.output)  # shape arithmetic on the host
            continue
        for i, name in data:
            if i in slots and name not in host:
                report.problems.append(f"{label}: input {i} ({name!r}) is on the device but read on the host")
            elif i not in slots and name in host:
                report.problems.append(f"{label}: input {i} ({name!r}) is computed on the host but used on the device")
    return report
