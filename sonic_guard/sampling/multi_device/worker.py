"""What one rank runs: join the process group, load the models from their folder, sample its share of windows.

Started by the launcher as `python -m sonic_guard.sampling.multi_device.worker --rank R ...`; it connects back to the
parent (authkey in the environment), receives the job and sends messages over that connection:
("plan", rank, its RankPlan as plain data) from every rank once it has planned its device,
("progress", done, total) from rank 0 after every window,
("result", the latents tensor) from rank 0 at the end, ("refused", rank, problem, expected, fix) from a rank whose
device cannot fit the run, ("error", rank, type name, message, traceback) from any rank that fails otherwise;
a failing rank then exits non-zero.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import sys
import traceback
from multiprocessing.connection import Client, Connection
from typing import Any

import torch
import torch.distributed as dist

from ...memory.estimator import MemoryEstimator
from ...memory.free_memory import planned_free_bytes
from ...models.checkpoints import load_sonic_models
from ...runs.runtime import RunHooks
from .channel import AUTHKEY_ENV, receive_plain, send_plain
from .devices import compute_device
from .exchange import CollectiveExchange
from .payload import RankJob
from .rank_plan import RankWontFitError, plan_rank

logger = logging.getLogger(__name__)


def run_rank(rank: int, world_size: int, port: int, plain_job: dict[str, Any], messages: Any) -> None:
    """Entry point of a worker process (spawned by `launcher.sample_on_devices`)."""
    try:
        job = RankJob.from_plain(plain_job)
        torch.set_num_threads(job.threads_per_rank)
        device = compute_device(job.devices[rank])
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
            messages.put(("result", latents.contiguous()))
    except RankWontFitError as exc:  # the parent raises it again as it is: a plan refusal, not a crash
        messages.put(("refused", rank, exc.problem, exc.expected, exc.fix))
        raise
    except BaseException as exc:  # reported to the parent, then re-raised so the exit code says it failed
        messages.put(("error", rank, type(exc).__name__, str(exc), traceback.format_exc()))
        raise


def _sample(job: RankJob, rank: int, world_size: int, device: torch.device, messages: Any) -> torch.Tensor:
    # pipeline starts these workers (it imports the launcher), so the worker imports it only when it runs
    from ...job import model_configs_of
    from ...runs.pipeline import default_placer, sample_clip

    name = job.devices[rank]
    free_bytes = planned_free_bytes(name)  # before loading: the plan counts the weights itself
    models = load_sonic_models(job.model_paths, with_rife=False, dtype=job.plan.torch_dtype)
    logger.info("rank %d/%d on %s: models loaded from %s", rank, world_size, name, job.model_paths.root)
    estimator = MemoryEstimator(model_configs_of(models), device_type=device.type)
    plan, reported = plan_rank(job.plan, rank, name, free_bytes, estimator)
    logger.info("%s", reported.note())
    messages.put(("plan", rank, reported.to_plain()))

    def on_window(done: int, total: int) -> None:
        if rank == 0:
            messages.put(("progress", done, total))

    # every rank has its own placer (memory plan levers) on its own device
    return sample_clip(
        models, job.conditioning, job.settings, plan, default_placer(device, plan), device, RunHooks(),
        seed=job.seed, on_window=on_window, anchor_latents=job.anchor_latents,
        exchange=CollectiveExchange(rank, world_size, device),
    )


class ParentChannel:
    """The connection to the parent, with the `put` the rank code sends through."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def put(self, message: tuple) -> None:
        send_plain(self._connection, message)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One rank of a multi-device Sonic run (started by the pack).")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world-size", type=int, required=True)
    parser.add_argument("--rendezvous-port", type=int, required=True)
    parser.add_argument("--parent-port", type=int, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank {args.rank} %(name)s: %(message)s")
    authkey = bytes.fromhex(os.environ.pop(AUTHKEY_ENV))
    with Client(("127.0.0.1", args.parent_port), authkey=authkey) as connection:
        plain_job = receive_plain(connection)
        try:
            run_rank(args.rank, args.world_size, args.rendezvous_port, plain_job, ParentChannel(connection))
        except BaseException:  # already reported to the parent by run_rank; the exit code says it failed
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
