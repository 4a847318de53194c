"""What one rank runs: join the process group, load the models from their folder, sample its share of windows.

Messages to the parent (a multiprocessing queue): ("progress", done, total) from rank 0 after every window,
("result", latents as a numpy array) from rank 0 at the end, ("error", rank, type name, message, traceback)
from any rank that fails; a failing rank then exits non-zero.
"""

from __future__ import annotations

import datetime
import logging
import traceback
from typing import Any

import torch
import torch.distributed as dist

from ..models.checkpoints import load_sonic_models
from ..runtime import RunHooks
from .exchange import CollectiveExchange
from .payload import RankJob

logger = logging.getLogger(__name__)


def run_rank(rank: int, world_size: int, port: int, plain_job: dict[str, Any], messages: Any) -> None:
    """Entry point of a worker process (spawned by `launcher.sample_on_devices`)."""
    try:
        job = RankJob.from_plain(plain_job)
        torch.set_num_threads(job.threads_per_rank)
        device = torch.device(job.devices[rank])
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
            world_size=world_size, timeout=datetime.timedelta(seconds=job.timeout_s),
            device_id=device if device.type == "cuda" else None,
        )
        try:
            latents = _sample(job, rank, world_size, device, messages)
        finally:
            dist.destroy_process_group()
        if rank == 0:
            messages.put(("result", latents.numpy()))
    except BaseException as exc:  # reported to the parent, then re-raised so the exit code says it failed
        messages.put(("error", rank, type(exc).__name__, str(exc), traceback.format_exc()))
        raise


def _sample(job: RankJob, rank: int, world_size: int, device: torch.device, messages: Any) -> torch.Tensor:
    # pipeline starts these workers (it imports the launcher), so the worker imports it only when it runs
    from ..pipeline import default_placer, sample_clip

    plan = job.plan
    models = load_sonic_models(job.model_paths, with_rife=False, dtype=plan.torch_dtype)
    logger.info("rank %d/%d on %s: models loaded from %s", rank, world_size, device, job.model_paths.root)

    def on_window(done: int, total: int) -> None:
        if rank == 0:
            messages.put(("progress", done, total))

    # every rank has its own placer (memory plan levers) on its own device
    return sample_clip(
        models, job.conditioning, job.settings, plan, default_placer(device, plan), device, RunHooks(),
        seed=job.seed, on_window=on_window, anchor_latents=job.anchor_latents,
        exchange=CollectiveExchange(rank, world_size, device),
    )
