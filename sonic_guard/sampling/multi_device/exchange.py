"""The collective behind `sampler.WindowExchange`: all_gather of each rank's stepped window."""

from __future__ import annotations

import torch
import torch.distributed as dist


class CollectiveExchange:
    """Window results shared through the default process group (gloo: CPU tensors, NCCL: `device` tensors)."""

    def __init__(self, rank: int, world_size: int, device: torch.device) -> None:
        self._rank = rank
        self._world_size = world_size
        # NCCL moves only tensors on this rank's GPU; gloo works on the CPU copy directly
        self._device = device if device.type == "cuda" else torch.device("cpu")

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    def gather(self, mine: torch.Tensor) -> list[torch.Tensor]:
        sent = mine.to(device=self._device, dtype=torch.float32).contiguous()
        received = [torch.empty_like(sent) for _ in range(self._world_size)]
        dist.all_gather(received, sent)
        return [tensor.to("cpu") for tensor in received]
