"""Headless client for ComfyUI servers running the pack: queue a workflow with overrides, follow its progress,
download the outputs; batches over several servers with resume. Standard library plus websocket-client; never
imports ComfyUI or torch.
"""

from .api import ComfyClient
from .batch import BatchJob, BatchState, jobs_from_csv, jobs_from_folder
from .errors import (
    ClientError,
    ExecutionFailedError,
    PromptRejectedError,
    RunTimeoutError,
    ServerUnreachableError,
    WorkflowError,
)
from .remote_run import JobResult, run_workflow
from .runner import BatchOutcome, BatchRunner
from .servers import ServerSnapshot, choose, probe_all, rank
from .workflow import Overrides, apply_overrides, find_nodes, load_workflow, parse_set

__all__ = [
    "BatchJob", "BatchOutcome", "BatchRunner", "BatchState", "ClientError", "ComfyClient", "ExecutionFailedError",
    "JobResult", "Overrides", "PromptRejectedError", "RunTimeoutError", "ServerSnapshot", "ServerUnreachableError",
    "WorkflowError", "apply_overrides", "choose", "find_nodes", "jobs_from_csv", "jobs_from_folder",
    "load_workflow", "parse_set", "probe_all", "rank", "run_workflow",
]
