"""Start one worker process per device, forward rank 0's progress, collect the latents, reap every worker.

The parent is not a rank: it only watches. A worker that dies (killed, crashed driver, an exception) is seen
within `poll_s`, the others are stopped, and the run fails with `RankFailedError`; nothing outlives the call.

Workers are fresh interpreters running `python -m sonic_guard.sampling.multi_device.worker`, not multiprocessing
children: inside ComfyUI, a spawned child would re-run ComfyUI's main script and could not import the pack by
the file-path name ComfyUI gave it. They talk to the parent over an authenticated loopback connection
(multiprocessing.connection), which carries the job in and progress, errors and the latents out.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection, Listener
from pathlib import Path
from typing import Any

import torch

from ...errors import SonicGuardError
from .channel import AUTHKEY_ENV, receive_plain, send_plain
from .payload import RankJob
from .rank_plan import RankPlan, RankWontFitError

logger = logging.getLogger(__name__)

STOP_GRACE_S = 5.0  # how long a worker gets to exit after SIGTERM before SIGKILL
DEFAULT_TIMEOUT_S = 900.0  # init_process_group / collective timeout, and the longest wait without a message
WORKER_MODULE = "sonic_guard.sampling.multi_device.worker"
# the folder that holds the `sonic_guard` package: workers import the core by its own name from there
CORE_PARENT = Path(__file__).resolve().parents[3]


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


def worker_command(rank: int, world_size: int, rendezvous_port: int, parent_port: int) -> list[str]:
    return [sys.executable, "-m", WORKER_MODULE, "--rank", str(rank), "--world-size", str(world_size),
            "--rendezvous-port", str(rendezvous_port), "--parent-port", str(parent_port)]


def _worker_env(authkey: bytes) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(CORE_PARENT), *filter(None, [env.get("PYTHONPATH")])])
    env[AUTHKEY_ENV] = authkey.hex()  # in the environment, not the command line other users can read
    return env


def sample_on_devices(
    job: RankJob, on_window: Callable[[int, int], None], *, poll_s: float = 0.1,
    on_rank_plan: Callable[[RankPlan], None] = lambda plan: None,
) -> torch.Tensor:
    """The clip's latents [N, 4, h, w] (CPU, float32) sampled by one rank per `job.devices` entry.

    `on_window(done, total)` runs here, in the parent, for rank 0's windows; whatever it raises (a cancel)
    stops the workers and propagates. `on_rank_plan` gets each rank's own memory plan (`rank_plan`) as it
    reports it; a rank whose device cannot fit the run fails it with RankWontFitError.
    """
    world_size = len(job.devices)
    authkey = secrets.token_bytes(32)
    messages: queue.Queue = queue.Queue()
    workers: list[subprocess.Popen] = []
    port = free_loopback_port()
    with Listener(("127.0.0.1", 0), authkey=authkey) as listener:
        threading.Thread(target=_serve, args=(listener, job.to_plain(), world_size, messages), daemon=True,
                         name="sonic-rank-listener").start()
        logger.info("sampling on %d ranks (%s), rendezvous on 127.0.0.1:%d", world_size, ",".join(job.devices),
                    port)
        try:
            for rank in range(world_size):
                workers.append(subprocess.Popen(worker_command(rank, world_size, port, listener.address[1]),
                                                env=_worker_env(authkey), cwd=CORE_PARENT))
            result = _watch(workers, messages, job, on_window, on_rank_plan, poll_s)
            for worker in workers:
                _wait(worker, STOP_GRACE_S)
            return result
        finally:
            _reap(workers)


def _serve(listener: Listener, plain_job: dict[str, Any], world_size: int, messages: queue.Queue) -> None:
    """Accept each worker's connection, send it the job, and forward what it sends to `messages`."""
    accepted = 0
    while accepted < world_size:  # a refused stray connection does not take a worker's place
        try:
            connection = listener.accept()
        except (OSError, EOFError):  # the listener was closed: the run is over (or failed before all joined)
            return
        except Exception as exc:  # a wrong authkey or a stray connection: the run's watch reports the rank
            logger.warning("a worker connection was refused: %s", exc)
            continue
        accepted += 1
        send_plain(connection, plain_job)
        threading.Thread(target=_forward, args=(connection, messages), daemon=True,
                         name="sonic-rank-reader").start()


def _forward(connection: Connection, messages: queue.Queue) -> None:
    with connection:
        while True:
            try:
                messages.put(receive_plain(connection))
            except (EOFError, OSError):  # the worker exited; its exit code tells the watch why
                return


def _wait(worker: subprocess.Popen, timeout_s: float) -> None:
    try:
        worker.wait(timeout_s)
    except subprocess.TimeoutExpired:
        pass  # _reap stops it


def _watch(workers: list[subprocess.Popen], messages: queue.Queue, job: RankJob, on_window: Callable[[int, int], None],
           on_rank_plan: Callable[[RankPlan], None], poll_s: float) -> Any:
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
            elif kind == "plan":
                plan = RankPlan.from_plain(message[2])
                logger.info("%s", plan.note())
                on_rank_plan(plan)
            else:
                reported = _reported_error(message, workers, job)
                if reported is not None:
                    raise reported
            continue
        failed = [rank for rank, worker in enumerate(workers) if worker.poll() not in (None, 0)]
        if failed:
            killed = [rank for rank in failed if workers[rank].returncode < 0]
            if killed:  # the root cause: its peers then fail in the collective, or exit themselves
                raise _death_error(job, killed[0], workers[killed[0]].returncode)
            raise _late_error(messages, workers, job) or _death_error(job, failed[0], workers[failed[0]].returncode)
        # all exited cleanly: the result is in the pipe or never comes (wait ~1 s for it)
        quiet_after_exit = quiet_after_exit + 1 if all(w.poll() == 0 for w in workers) else 0
        if quiet_after_exit * poll_s > 1.0:
            raise _death_error(job, 0, 0)
        if time.monotonic() - last_message > job.timeout_s:
            raise RankFailedError(
                problem=f"the multi-device run ({','.join(job.devices)}) sent nothing for {job.timeout_s:.0f} s",
                expected="rank 0 to report every finished window",
                fix="check the devices are not busy with another job, or leave devices empty to run on one "
                    "device",
            )


def _dead_peer(workers: list[subprocess.Popen], job: RankJob, reporter: int) -> RankFailedError | None:
    """The death error of another rank killed by a signal, if one is found within a moment."""
    deadline = time.monotonic() + 1.0
    while True:
        for rank, worker in enumerate(workers):
            code = worker.poll()
            if rank != reporter and code is not None and code < 0:
                return _death_error(job, rank, code)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def _late_error(messages: queue.Queue, workers: list[subprocess.Popen], job: RankJob) -> SonicGuardError | None:
    """The error a rank reported just before exiting, if it arrives within a moment (it beats an exit code)."""
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            message = messages.get(timeout=0.1)
        except queue.Empty:
            continue
        reported = _reported_error(message, workers, job)
        if reported is not None:
            return reported
    return None


def _reported_error(message: tuple, workers: list[subprocess.Popen], job: RankJob) -> SonicGuardError | None:
    """The error a rank's "refused" or "error" message stands for; None for any other message."""
    if message[0] == "refused":  # before any collective: the cause, whatever the peers do next
        return RankWontFitError(*message[2:])
    if message[0] == "error":
        # a rank whose peer was killed fails in the collective: name the dead peer, the root cause
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


def _reap(workers: list[subprocess.Popen]) -> None:
    """Stop and wait for every started worker: SIGTERM, then SIGKILL after STOP_GRACE_S."""
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for worker in workers:
        try:
            worker.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("worker %d ignored SIGTERM; killing it", worker.pid)
            worker.kill()
            worker.wait()
