"""UNet weight offload: keep the big blocks in host memory and bring each one to the device only while it runs.

The memory planner's last quality-neutral lever. It trades host-to-device copies (time) for the ~3 GB of resident
UNet weights; results are bit-identical because the same weights run the same ops.

What keeps it cheap: every block keeps one host copy of its tensors for the whole run, so sending a block back
only drops its device copy (weights never change: nothing is copied back). On CUDA the host copies are pinned and
the next block's copy runs on a side stream while the current block computes. At most two blocks are on the
device at once (the running one and the next), which is what the memory model counts
(`memory.meta_models.streamed_unet_bytes`); before a third is fetched the CPU waits until the GPU has finished
with the block that left, so the allocator can reuse its memory instead of growing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)


def streamed_blocks(unet: nn.Module) -> list[nn.Module]:
    """The UNet's down, mid and up blocks, in the order the forward runs them: nearly all its weights."""
    inner = getattr(unet, "unet", unet)
    blocks: list[nn.Module] = [*inner.down_blocks, inner.mid_block, *inner.up_blocks]
    return blocks


@dataclass
class _Slot:
    module: nn.Module
    name: str
    host: torch.Tensor | nn.Parameter  # the module's own Parameter object (host data) or its host buffer


class BlockTensors:
    """One block's parameters and buffers: their host copies, and swapping device copies in and out.

    The module's own Parameter objects never change device (an optimizer or hook holding one sees host data);
    while the block runs, stand-ins wrapping the device copies take their places.
    """

    def __init__(self, block: nn.Module, *, pin: bool) -> None:
        self.slots: list[_Slot] = []
        for module in block.modules():
            for name, parameter in module._parameters.items():
                if parameter is not None:
                    parameter.data = _host_copy(parameter.data, pin)
                    self.slots.append(_Slot(module, name, parameter))
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    module._buffers[name] = _host_copy(buffer, pin)
                    self.slots.append(_Slot(module, name, module._buffers[name]))

    def copy_to(self, device: torch.device, *, non_blocking: bool) -> list[torch.Tensor]:
        return [slot.host.detach().to(device, non_blocking=non_blocking) for slot in self.slots]

    def install(self, tensors: list[torch.Tensor]) -> None:
        """The block runs on `tensors`: a stand-in Parameter per weight (the module's own keeps its host data)."""
        for slot, tensor in zip(self.slots, tensors, strict=True):
            if isinstance(slot.host, nn.Parameter):
                slot.module._parameters[slot.name] = nn.Parameter(tensor, requires_grad=False)
            else:
                slot.module._buffers[slot.name] = tensor

    def restore(self) -> None:
        """Put the host Parameters and buffers back; the device copies are dropped, not copied back."""
        for slot in self.slots:
            if isinstance(slot.host, nn.Parameter):
                slot.module._parameters[slot.name] = slot.host
            else:
                slot.module._buffers[slot.name] = slot.host


def _host_copy(tensor: torch.Tensor, pin: bool) -> torch.Tensor:
    if not pin or tensor.is_pinned():
        return tensor
    try:
        return tensor.pin_memory()
    except RuntimeError as error:  # page-locked memory is a limited resource; pageable copies still work
        logger.warning("cannot pin %d bytes of UNet weights (%s); streaming them from pageable memory",
                       tensor.numel() * tensor.element_size(), error)
        return tensor


class BlockStreamer:
    """Brings each block in for its turn and fetches the next one ahead (`unet.block_residency`)."""

    def __init__(self, blocks: list[nn.Module], device: torch.device) -> None:
        self.device = device
        self._cuda = device.type == "cuda"
        self._index = {id(block): i for i, block in enumerate(blocks)}
        self._tensors = [BlockTensors(block, pin=self._cuda) for block in blocks]
        self._side = torch.cuda.Stream(device) if self._cuda else None
        self._fetched: dict[int, tuple[list[torch.Tensor], torch.cuda.Event | None]] = {}
        self._released: torch.cuda.Event | None = None  # the compute stream is done with the block that left
        self.fetch_log: list[int] = []  # block indices in the order they were fetched (tests read it)

    def resident_count(self) -> int:
        """Blocks whose device copies exist now (the running one and those fetched ahead)."""
        return len(self._fetched)

    @contextlib.contextmanager
    def resident(self, block: nn.Module) -> Iterator[None]:
        index = self._index[id(block)]
        if index not in self._fetched:
            self._fetch(index)
        tensors, ready = self._fetched[index]
        if ready is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(ready)
            for tensor in tensors:  # freed later, their memory must wait for the compute stream too
                tensor.record_stream(compute)
        self._tensors[index].install(tensors)
        following = (index + 1) % len(self._tensors)
        if following not in self._fetched:
            self._fetch(following)
        try:
            yield
        finally:
            self._tensors[index].restore()
            del self._fetched[index]
            del tensors
            if self._cuda:
                self._released = torch.cuda.Event()
                self._released.record(torch.cuda.current_stream(self.device))

    def _fetch(self, index: int) -> None:
        self.fetch_log.append(index)
        if self._side is None:
            self._fetched[index] = (self._tensors[index].copy_to(self.device, non_blocking=False), None)
            return
        if self._released is not None:  # bound the run-ahead: the leaving block's memory is reusable first
            self._released.synchronize()
        with torch.cuda.stream(self._side):
            tensors = self._tensors[index].copy_to(self.device, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record(self._side)
        self._fetched[index] = (tensors, ready)

    def close(self) -> None:
        """Drop blocks fetched ahead (the next call's first block) and wait for copies still in flight."""
        if self._side is not None:
            self._side.synchronize()
        self._fetched.clear()
        for tensors in self._tensors:
            tensors.restore()


@contextlib.contextmanager
def stream_weights(unet: nn.Module, device: torch.device, offload_device: torch.device | str = "cpu"
                   ) -> Iterator[nn.Module]:
    """Everything but the big blocks goes to `device`; each block moves there for its turn (see the module)."""
    blocks = streamed_blocks(unet)
    block_ids = {id(block) for block in blocks}
    for block in blocks:
        block.to(offload_device)
    for child in _non_block_leaves(unet, block_ids):
        child.to(device)
    streamer = BlockStreamer(blocks, torch.device(device))
    unet.block_residency = streamer.resident
    try:
        yield unet
    finally:
        streamer.close()
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
