"""Random weights one module at a time, optionally straight into a memory-mapped scratch file.

The decoder of a large checkpoint is 13 GB of fp32: built the ordinary way (``Model(config)``) its random
weights all live in anonymous memory at once. Here the decoder is built on the meta device (no storage),
then each of its modules in turn gets real tensors, transformers' own ``_init_weights`` under a seed derived
from the module's name (so the result does not depend on the order or on where the tensors are stored),
and, with a :class:`ScratchFile`, is written to disk and replaced by a read-only memory-mapped view. The
model then behaves like one loaded from a safetensors checkpoint by ``from_pretrained``: its weights are
file-backed pages the kernel can drop and re-read, not anonymous memory.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("musicgen_onnx")

ALIGNMENT = 64


class ScratchFile:
    """Tensors appended to one file, then mapped back (copy-on-write, never written) as the module's own."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.handle = open(self.path, "wb")  # noqa: SIM115 - closed in finish()
        self.pending: list[tuple[Any, str, bool, int, tuple[int, ...], np.dtype]] = []
        self.where: dict[tuple[int, str], int] = {}

    def alias(self, module, name: str, is_param: bool, source: tuple[Any, str, bool]) -> None:
        """``module.name`` reads the bytes already written for ``source`` (tied weights)."""
        entry = self.pending[self.where[(id(source[0]), source[1])]]
        self.pending.append((module, name, is_param, *entry[3:]))

    def put(self, module, name: str, tensor, is_param: bool) -> None:
        import torch

        array = tensor.detach().contiguous().numpy()
        offset = self.handle.tell()
        if offset % ALIGNMENT:
            offset += ALIGNMENT - offset % ALIGNMENT
            self.handle.seek(offset)
        self.handle.write(memoryview(array.reshape(-1).view(np.uint8)))
        self.pending.append((module, name, is_param, offset, tuple(array.shape), array.dtype))
        self.where[(id(module), name)] = len(self.pending) - 1
        _assign(module, name, torch.empty(tensor.shape, dtype=tensor.dtype, device="meta"), is_param)

    def finish(self) -> None:
        """Map the file and point every written tensor at its bytes."""
        import torch

        self.handle.close()
        if not self.pending:
            return
        mapped = np.memmap(self.path, dtype=np.uint8, mode="c")
        for module, name, is_param, offset, shape, dtype in self.pending:
            count = int(np.prod(shape, dtype=np.int64))
            view = mapped[offset : offset + count * dtype.itemsize].view(dtype).reshape(shape)
            _assign(module, name, torch.from_numpy(view), is_param)
        self.pending.clear()


def _assign(module, name: str, tensor, is_param: bool) -> None:
    from torch import nn

    if is_param:
        module._parameters[name] = nn.Parameter(tensor, requires_grad=False)
    else:
        module._buffers[name] = tensor


def module_seed(seed: int, name: str) -> int:
    return zlib.crc32(f"{seed}:{name}".encode())


def materialize(root, owner, seed: int, store: ScratchFile | None = None) -> None:
    """Give every meta tensor under ``root`` real random values, one module at a time.

    ``owner`` is the ``PreTrainedModel`` whose ``_init_weights`` defines the initialization (for a
    composite, the sub-model ``root`` belongs to). A tensor shared by two modules (tied weights) is
    initialized once; both then read the same values.
    """
    import torch
    from transformers import initialization

    first: dict[int, tuple[Any, str, bool]] = {}  # id of a meta tensor -> where its values went
    with torch.random.fork_rng(devices=[]), torch.no_grad(), initialization.guard_torch_init_functions():
        for name, module in root.named_modules(remove_duplicate=False):
            fresh = []
            for is_param, table in ((True, module._parameters), (False, module._buffers)):
                for key, tensor in list(table.items()):
                    if tensor is None or not tensor.is_meta:
                        continue
                    if id(tensor) in first:
                        fresh.append((key, is_param, first[id(tensor)]))
                        continue
                    first[id(tensor)] = (module, key, is_param)
                    _assign(module, key, torch.empty(tensor.shape, dtype=tensor.dtype), is_param)
                    fresh.append((key, is_param, None))
            if not fresh:
                continue
            torch.manual_seed(module_seed(seed, name))
            owner._init_weights(module)
            for key, is_param, tied in fresh:
                if tied is not None:
                    if store is not None:
                        store.alias(module, key, is_param, tied)
                    else:
                        source, source_key, source_is_param = tied
                        table = source._parameters if source_is_param else source._buffers
                        _assign(module, key, table[source_key].data, is_param)
                elif store is not None:
                    tensor = module._parameters[key] if is_param else module._buffers[key]
                    store.put(module, key, tensor, is_param)
    if store is not None:
        store.finish()
