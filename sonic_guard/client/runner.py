"""Run a batch over several servers: skip finished jobs, send each to the best server, retry when one goes away."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from .api import ComfyClient
from .batch import STATE_FILE_NAME, BatchJob, BatchState, fingerprint
from .errors import EXIT_OK, ClientError, ServerUnreachableError
from .remote_run import run_workflow
from .servers import ServerSnapshot, choose, probe_all
from .workflow import Overrides

logger = logging.getLogger(__name__)

EventCallback = Callable[[str, dict[str, Any]], None]


@dataclass
class BatchOutcome:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, ClientError] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 when nothing failed, else the highest exit code among the failed jobs (3 beats 2 beats 1)."""
        return max((error.exit_code for error in self.failed.values()), default=EXIT_OK)


class _InFlight:
    """This runner's jobs per server, so that parallel jobs spread over the servers."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def claim(self, snapshots: Sequence[ServerSnapshot], avoid: Sequence[str]) -> ServerSnapshot | None:
        with self.lock:
            chosen = choose(snapshots, avoid=avoid, busy=self.counts)
            if chosen is not None:
                self.counts[chosen.url] += 1
            return chosen

    def release(self, url: str) -> None:
        with self.lock:
            self.counts[url] -= 1


@dataclass
class BatchRunner:
    """Runs jobs (one at a time, or `parallel` at once); the state file in out_dir makes a rerun skip finished ones."""

    servers: Sequence[ComfyClient]
    workflow: Mapping[str, Any]
    overrides: Overrides  # everything but image and audio, which come from each job
    out_dir: Path
    max_attempts: int = 3
    wait_for_server_s: float = 120.0
    poll_interval_s: float = 2.0
    timeout_s: float = 3600.0
    parallel: int = 1
    progress_stream: TextIO | None = None
    on_event: EventCallback | None = None

    def run(self, jobs: Sequence[BatchJob]) -> BatchOutcome:
        state = BatchState(self.out_dir / STATE_FILE_NAME)
        outcome = BatchOutcome()
        settings = self.overrides.fingerprint_data()
        pending: list[tuple[str, BatchJob, str]] = []
        for position, job in enumerate(jobs, start=1):
            job_fingerprint = fingerprint(job, self.workflow, settings)
            if state.is_done(job, job_fingerprint):
                logger.info("Skipped %s: finished before with the same inputs", job.name)
                outcome.skipped.append(job.name)
                self._emit("skipped", job=job.name)
            else:
                pending.append((f"[{position}/{len(jobs)}] {job.name}", job, job_fingerprint))
        in_flight = _InFlight()

        def work(item: tuple[str, BatchJob, str]) -> tuple[str, ClientError | None]:
            label, job, job_fingerprint = item
            return job.name, self._run_job(job, job_fingerprint, label, state, in_flight)

        if self.parallel <= 1:
            results = [work(item) for item in pending]
        else:
            with ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="sonic-batch") as pool:
                results = list(pool.map(work, pending))
        for name, error in results:
            if error is None:
                outcome.done.append(name)
            else:
                outcome.failed[name] = error
        return outcome

    def _run_job(self, job: BatchJob, job_fingerprint: str, label: str, state: BatchState,
                 in_flight: _InFlight) -> ClientError | None:
        """Attempts on the best servers; None when done, else the last error (also written to the state)."""
        failed_on: list[str] = []
        last_error: ClientError | None = None
        for attempt in range(1, self.max_attempts + 1):
            try:
                server = self._wait_for_server(failed_on, in_flight)
            except ServerUnreachableError as err:
                last_error = err
                break
            self._emit("chosen", job=job.name, server=server.url, attempt=attempt,
                       free_bytes=server.free_bytes, queue_length=server.queue_length)
            # A fresh key per attempt: behind a balancer the retry is hashed anew, away from a worker that died.
            client = server.client.pinned(f"{job.name}.{attempt}.{uuid.uuid4().hex[:8]}")
            try:
                result = run_workflow(
                    client, self.workflow, replace(self.overrides, image=job.image, audio=job.audio),
                    self.out_dir / job.name, label=label, progress_stream=self.progress_stream,
                    progress_redraw=False if self.parallel > 1 else None, timeout_s=self.timeout_s,
                    on_queued=lambda prompt_id, name=job.name, url=server.url, number=attempt, pinned=client: (
                        self._emit("queued", job=name, server=url, prompt_id=prompt_id, attempt=number,
                                   worker=pinned.worker)),
                )
            except ClientError as err:
                last_error = err
                if not err.retryable:
                    break
                failed_on.append(server.url)
                state.record(job, job_fingerprint, "failed", retryable=True, server=server.url,
                             worker=client.worker, attempt=attempt, error=str(err))
                self._emit("retry", job=job.name, server=server.url, attempt=attempt, error=str(err))
                logger.warning("%s: attempt %d on %s failed (%s); trying again", job.name, attempt,
                               server.url, err.problem)
                continue
            finally:
                in_flight.release(server.url)
            state.record(job, job_fingerprint, "done", server=result.server, worker=result.worker,
                         prompt_id=result.prompt_id, attempt=attempt,
                         outputs=state.relative(result.outputs), elapsed_s=round(result.elapsed_s, 1))
            self._emit("done", job=job.name, server=result.server, outputs=[str(p) for p in result.outputs])
            return None
        assert last_error is not None
        state.record(job, job_fingerprint, "failed", retryable=last_error.retryable, error=str(last_error),
                     exit_code=last_error.exit_code)
        self._emit("failed", job=job.name, error=str(last_error))
        logger.error("%s failed: %s", job.name, last_error)
        return last_error

    def _wait_for_server(self, failed_on: Sequence[str], in_flight: _InFlight) -> ServerSnapshot:
        """The best answering server, claimed for one job; waits (bounded) while none answers."""
        deadline = time.monotonic() + self.wait_for_server_s
        while True:
            chosen = in_flight.claim(probe_all(self.servers), failed_on)
            if chosen is not None:
                return chosen
            if time.monotonic() >= deadline:
                urls = ", ".join(client.url for client in self.servers)
                raise ServerUnreachableError(
                    urls, f"none answered /sonic/health for {self.wait_for_server_s:.0f} s")
            self._emit("waiting", servers=[client.url for client in self.servers])
            time.sleep(self.poll_interval_s)

    def _emit(self, kind: str, **info: Any) -> None:
        if self.on_event is not None:
            self.on_event(kind, info)
