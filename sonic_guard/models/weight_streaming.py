"""UNet weight offload: keep the big blocks in host memory and bring each one to the device only while it runs.

The memory planner's last quality-neutral lever. It trades PCIe transfers (time) for the ~3 GB of resident UNet
weights; results are bit-identical because the same weights run the same ops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def streamed_blocks(unet: nn.Module) -> list[nn.Module]:
    """The UNet's down, mid and up blocks: the modules that hold nearly all its weights."""
    inner = getattr(unet, "unet", unet)
    blocks: list[nn.Module] = [*inner.down_blocks, inner.mid_block, *inner.up_blocks]
    return blocks


@contextlib.contextmanager
def stream_weights(unet: nn.Module, device: torch.device, offload_device: torch.device | str = "cpu"
                   ) -> Iterator[nn.Module]:
    """Everything but the big blocks goes to `device`; each block moves there for its turn and back after."""
    blocks = streamed_blocks(unet)
    block_ids = {id(block) for block in blocks}

    @contextlib.contextmanager
    def resident(block: nn.Module) -> Iterator[None]:
        block.to(device)
        try:
            yield
        finally:
            block.to(offload_device)

    for block in blocks:
        block.to(offload_device)
    for child in _non_block_leaves(unet, block_ids):
        child.to(device)
    unet.block_residency = resident
    try:
        yield unet
    finally:
        unet.block_residency = None
        unet.to(offload_device)


def _non_block_leaves(module: nn.Module, block_ids: set[int]) -> Iterator[nn.Module]:
    """Submodules outside the streamed blocks (conv_in, embeddings, conv_out, ...), as large as possible."""
    for child in module.children():
        if id(child) in block_ids:
            continue
        if any(id(grandchild) in block_ids for grandchild in child.modules()):
            yield from _non_block_leaves(child, block_ids)
        else:
            yield child
