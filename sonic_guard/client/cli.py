"""`python -m sonic_guard.client`: queue a workflow on ComfyUI servers from the command line, alone or in batches."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from .api import ComfyClient
from .batch import jobs_from_csv, jobs_from_folder
from .errors import EXIT_OK, EXIT_REJECTED, ClientError, ExecutionFailedError, PromptRejectedError
from .remote_run import run_workflow
from .runner import BatchRunner
from .servers import choose, probe_all
from .workflow import Overrides, load_workflow, parse_set

logger = logging.getLogger(__name__)

DEFAULT_WORKFLOW = Path(__file__).resolve().parents[2] / "workflows" / "sonic_basic_api.json"
DEFAULT_SERVER = "http://127.0.0.1:8188"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sonic_guard.client",
        description="Queue a ComfyUI workflow headless: upload the inputs, follow the progress, download the outputs."
        " Exit codes: 0 done, 1 a node failed, 2 the server refused the workflow (or bad options), 3 no server.",
    )
    parser.add_argument("--workflow", type=Path, default=DEFAULT_WORKFLOW,
                        help="API-format workflow JSON (default: the pack's sonic_basic_api.json)")
    parser.add_argument("--server", action="append", default=[],
                        help=f"ComfyUI server URL, repeatable (default {DEFAULT_SERVER}); each job goes to the one "
                        "with most free GPU memory, else the shortest queue")
    parser.add_argument("--out", type=Path, default=Path("sonic_out"), help="folder for the downloaded outputs")
    parser.add_argument("--image", type=Path, help="portrait to upload and use in the LoadImage node")
    parser.add_argument("--audio", type=Path, help="audio to upload and use in the Load Audio (Sonic) node")
    parser.add_argument("--min-resolution", type=int, help="short side of the video in px (multiple of 64)")
    parser.add_argument("--steps", type=int, help="inference steps")
    parser.add_argument("--seed", type=int, help="noise seed")
    parser.add_argument("--duration", type=float, help="seconds of audio to use (0 = all)")
    parser.add_argument("--policy", help="memory policy: auto, strict or off")
    parser.add_argument("--preset", help="preset: custom, fast, hd or minimal")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="NODE.input=value",
                        help="any input of a node id or of every node of a class_type; the value is read as JSON "
                        "when it parses (10, true, \"text\"), else as text; repeatable")
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument("--batch", type=Path, metavar="PAIRS.csv", help="CSV with columns image,audio[,name]")
    batch.add_argument("--batch-dir", type=Path, metavar="DIR", help="folder of pairs matched by stem (a.png+a.wav)")
    parser.add_argument("--parallel", type=int, default=1,
                        help="batch jobs in flight at once, spread over the servers (default 1)")
    parser.add_argument("--max-attempts", type=int, default=3, help="tries per batch job when a server goes away")
    parser.add_argument("--wait-for-server", type=float, default=120.0,
                        help="seconds a batch waits for any server to answer before a job fails")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds one run may take")
    parser.add_argument("--verbose", "-v", action="store_true", help="log what the client does")
    return parser


def overrides_from_args(args: argparse.Namespace) -> Overrides:
    return Overrides(
        image=args.image, audio=args.audio, min_resolution=args.min_resolution, steps=args.steps, seed=args.seed,
        duration=args.duration, policy=args.policy, preset=args.preset,
        sets=tuple(parse_set(text) for text in args.sets),
    )


def main(argv: Sequence[str] | None = None, stderr: TextIO | None = None) -> int:
    """Run the command; the exit code is returned (0 done, 1 failed, 2 refused, 3 unreachable)."""
    err = stderr if stderr is not None else sys.stderr
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=err)
    try:
        return _run(args, err)
    except ClientError as error:
        err.write(format_error(error, with_traceback=args.verbose) + "\n")
        return error.exit_code
    except KeyboardInterrupt:
        err.write("cancelled\n")
        return 130


def _run(args: argparse.Namespace, err: TextIO) -> int:
    overrides = overrides_from_args(args)
    workflow = load_workflow(args.workflow)
    clients = [ComfyClient(url) for url in args.server or [DEFAULT_SERVER]]
    if args.batch or args.batch_dir:
        if args.image or args.audio:
            err.write("--image/--audio do not go with --batch/--batch-dir (the pairs give them)\n")
            return EXIT_REJECTED
        jobs = jobs_from_csv(args.batch) if args.batch else jobs_from_folder(args.batch_dir)
        runner = BatchRunner(clients, workflow, overrides, args.out, max_attempts=args.max_attempts,
                             wait_for_server_s=args.wait_for_server, timeout_s=args.timeout,
                             parallel=max(1, args.parallel), progress_stream=err)
        outcome = runner.run(jobs)
        for name, error in outcome.failed.items():
            err.write(f"{name}: {format_error(error)}\n")
        err.write(f"batch: {len(outcome.done)} done, {len(outcome.skipped)} skipped, {len(outcome.failed)} failed; "
                  f"state in {args.out}\n")
        return outcome.exit_code
    for path in (args.image, args.audio):
        if path is not None and not path.is_file():
            err.write(f"error: {path} does not exist\n")
            return EXIT_REJECTED
    server = choose(probe_all(clients)) if len(clients) > 1 else None
    client = server.client if server is not None else clients[0]
    result = run_workflow(client, workflow, overrides, args.out, label="sonic", progress_stream=err,
                          timeout_s=args.timeout)
    for path in result.outputs:
        sys.stdout.write(f"{path}\n")
    return EXIT_OK


def format_error(error: ClientError, with_traceback: bool = False) -> str:
    """The server's own words first: node errors of a refusal, `type: message` of a failed node."""
    if isinstance(error, PromptRejectedError):
        lines = [f"error: the server refused the workflow (HTTP {error.status})"]
        if isinstance(error.error, dict) and error.error:
            lines.append(f"  error: {error.error.get('type', '')}: {error.error.get('message', '')}"
                         + (f" ({error.error['details']})" if error.error.get("details") else ""))
        for node_id, node in sorted(error.node_errors.items()):
            for item in node.get("errors", []) if isinstance(node, dict) else []:
                lines.append(f"  node {node_id} ({node.get('class_type', '?')}): {item.get('type', 'error')}: "
                             f"{item.get('message', '')}" + (f" - {item['details']}" if item.get("details") else ""))
        if error.node_errors:
            lines.append("  node_errors: " + json.dumps(error.node_errors, sort_keys=True)[:4000])
        return "\n".join(lines)
    if isinstance(error, ExecutionFailedError):
        where = f" (node {error.node_id} {error.node_type})" if error.node_id else ""
        trace = error.details.get("traceback") if with_traceback else None
        lines = "".join(trace) if isinstance(trace, list) else ""
        return f"{lines}error{where}: {error.summary}"
    return f"error: {error}"
