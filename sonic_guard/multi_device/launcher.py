"""Start one worker process per device, forward rank 0's progress, collect the latents, reap every worker.

The parent is not a rank: it only watches. A worker that dies (killed, crashed driver, an exception) is seen
within `poll_s`, the others are stopped, and the run fails with `RankFailedError`; nothing outlives the call.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.multiprocessing as mp

from ..errors import SonicGuardError
from .payload import RankJob
from .worker import run_rank

logger = logging.getLogger(__name__)

STOP_GRACE_S = 5.0  # how long a worker gets to exit after SIGTERM before SIGKILL
DEFAULT_TIMEOUT_S = 900.0  # init_process_group / collective timeout, and the longest wait without a message


class RankFailedError(SonicGuardError):
    """A worker process of a multi-device run failed or stopped before the end."""

    reason = "rank_failed"


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 now, for the process group's rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def default_threads_per_rank(world_size: int) -> int:
    """CPU threads per worker so that the ranks together do not oversubscribe the cores."""
    return max(1, (os.cpu_count() or 1) // world_size)


def sample_on_devices(
    job: RankJob, on_window: Callable[[int, int], None], *, poll_s: float = 0.1
) -> torch.Tensor:
    """The clip's latents [N, 4, h, w] (CPU, float32) sampled by one rank per `job.devices` entry.

    `on_window(done, total)` runs here, in the parent, for rank 0's windows; whatever it raises (a cancel)
    stops the workers and propagates.
    """
    world_size = len(job.devices)
    context = mp.get_context("spawn")
    messages = context.Queue()
    port = free_loopback_port()
    plain = job.to_plain()
    workers = [
        context.Process(target=run_rank, args=(rank, world_size, port, plain, messages), daemon=True,
                        name=f"sonic-rank-{rank}")
        for rank in range(world_size)
    ]
    logger.info("sampling on %d ranks (%s), rendezvous on 127.0.0.1:%d", world_size, ",".join(job.devices), port)
    try:
        for worker in workers:
            worker.start()
        result = _watch(workers, messages, job, on_window, poll_s)
        for worker in workers:
            worker.join(STOP_GRACE_S)
        return torch.from_numpy(result)
    finally:
        _reap(workers)
        messages.close()
        messages.join_thread()


def _watch(workers: list[Any], messages: Any, job: RankJob, on_window: Callable[[int, int], None],
           poll_s: float) -> Any:
    last_message = time.monotonic()
    quiet_after_exit = 0
    while True:
        try:
            message = messages.get(timeout=poll_s)
        except queue.Empty:
            message = None
        if message is not None:
            last_message = time.monotonic()
            kind = message[0]
            if kind == "result":
                return message[1]
            if kind == "progress":
                on_window(message[1], message[2])
            elif kind == "error":
                # a rank whose peer was killed fails in the collective: name the dead peer, the root cause
                raise _dead_peer(workers, job, message[1]) or _rank_error(job, *message[1:])
            continue
        failed = [rank for rank, worker in enumerate(workers) if worker.exitcode not in (None, 0)]
        if failed:
            killed = [rank for rank in failed if workers[rank].exitcode < 0]
            if killed:  # the root cause: its peers then fail in the collective, or exit themselves
                raise _death_error(job, killed[0], workers[killed[0]].exitcode)
            raise _late_error(messages, workers, job) or _death_error(job, failed[0], workers[failed[0]].exitcode)
        # all exited cleanly: the result is in the pipe or never comes (wait ~1 s for it)
        quiet_after_exit = quiet_after_exit + 1 if all(w.exitcode == 0 for w in workers) else 0
        if quiet_after_exit * poll_s > 1.0:
            raise _death_error(job, 0, 0)
        if time.monotonic() - last_message > job.timeout_s:
            raise RankFailedError(
                problem=f"the multi-device run ({','.join(job.devices)}) sent nothing for {job.timeout_s:.0f} s",
                expected="rank 0 to report every finished window",
                fix="check the devices are not busy with another job, or leave devices empty to run on one "
                    "device",
            )


def _dead_peer(workers: list[Any], job: RankJob, reporter: int) -> RankFailedError | None:
    """The death error of another rank killed by a signal, if one is found within a moment."""
    deadline = time.monotonic() + 1.0
    while True:
        for rank, worker in enumerate(workers):
            if rank != reporter and worker.exitcode is not None and worker.exitcode < 0:
                return _death_error(job, rank, worker.exitcode)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def _late_error(messages: Any, workers: list[Any], job: RankJob) -> RankFailedError | None:
    """The error a rank reported just before exiting, if it arrives within a moment (it beats an exit code)."""
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            message = messages.get(timeout=0.1)
        except queue.Empty:
            continue
        if message[0] == "error":
            return _dead_peer(workers, job, message[1]) or _rank_error(job, *message[1:])
    return None


def _rank_error(job: RankJob, rank: int, type_name: str, text: str, trace: str) -> RankFailedError:
    logger.error("rank %d (%s) failed:\n%s", rank, job.devices[rank], trace)
    return RankFailedError(
        problem=f"rank {rank} of the multi-device run (device {job.devices[rank]}) failed: {type_name}: {text}",
        expected="every device to load the models and denoise its windows",
        fix=f"fix what the message says for {job.devices[rank]} (the log has the worker's traceback), remove "
            "that device from devices, or leave devices empty to run on one device",
    )


def _death_error(job: RankJob, rank: int, exitcode: int) -> RankFailedError:
    how = f"was killed by signal {-exitcode}" if exitcode < 0 else f"exited with code {exitcode}"
    if exitcode == 0:
        how = "exited without sending the latents"
    return RankFailedError(
        problem=f"worker rank {rank} of the multi-device run (device {job.devices[rank]}) {how} mid-run; the "
                "other workers were stopped",
        expected="every worker process to run until the last denoising step",
        fix="look for an out-of-memory kill (dmesg) or a driver error for that device, free memory or remove the "
            "device from devices, then queue again; leave devices empty to run on one device",
    )


def _reap(workers: list[Any]) -> None:
    """Stop and join every started worker: SIGTERM, then SIGKILL after STOP_GRACE_S."""
    started = [worker for worker in workers if worker.pid is not None]
    for worker in started:
        if worker.is_alive():
            worker.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for worker in started:
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            logger.warning("worker %s ignored SIGTERM; killing it", worker.name)
            worker.kill()
            worker.join()
    for worker in started:
        worker.close()
