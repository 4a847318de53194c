"""Render the README's results tables from bench/results/*.json, so no figure in them is typed by hand.

README.md holds marked blocks:

    <!-- results:NAME -->
    ...generated...
    <!-- /results:NAME -->

Each block is rendered from bench/results/NAME.json (a table, then where the file came from: its provenance
command, date and commit). A figure the file has as null is shown as "not measured" with the file's stated reason.

    python scripts/render_readme_tables.py           # rewrite README.md in place
    python scripts/render_readme_tables.py --check   # exit 1 with a diff if README.md differs (run in CI by
                                                     # tests/test_results_provenance.py)
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
RESULTS = REPO / "bench" / "results"
BLOCK = re.compile(r"(<!-- results:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /results:(?P=name) -->)", re.DOTALL)
MIB = 2**20


class RenderError(Exception):
    """A block names a results file that is missing, or the file lacks what its table needs."""


# --- small formatting helpers -----------------------------------------------------------------------------------
def not_measured(reason: str | None) -> str:
    return f"not measured: {reason or 'no reason given in the results file'}"


logger = logging.getLogger("render_readme_tables")


def percent(fraction: float, digits: int = 2, sign: bool = True) -> str:
    return f"{fraction * 100:+.{digits}f} %" if sign else f"{fraction * 100:.{digits}f} %"


def slash(values: list[Any], fmt: Callable[[Any], str] = str) -> str:
    return " / ".join("–" if v is None else fmt(v) for v in values)


def squared(sizes: list[str]) -> str:
    return " / ".join(f"{s}²" for s in sizes)


def arrow(pair: list[Any]) -> str:
    return f"{pair[0]} → {pair[1]}"


def table(rows: list[tuple[str, str]], header: tuple[str, str] = ("", "")) -> list[str]:
    lines = ["| " + " | ".join(header) + " |" if any(header) else "| | |", "|---|---|"]
    lines += [f"| {left} | {right} |" for left, right in rows]
    return lines


def source_line(name: str, data: dict[str, Any]) -> str:
    provenance = data.get("provenance")
    if not provenance:
        raise RenderError(f"bench/results/{name}.json has no provenance block: rerun its bench")
    versions, machine = provenance["versions"], provenance["machine"]
    gpu = machine.get("gpu")
    device = f"GPU {gpu['name']}" if gpu else "no GPU"
    commit = provenance.get("commit") or "unknown"
    commit = commit[:7] + (" + uncommitted changes" if commit.endswith("-dirty") else "")
    return (f"<sub>Rendered from `bench/results/{name}.json`, written by `{provenance['command']}` on "
            f"{provenance['date_utc'][:10]} (commit {commit}; torch {versions.get('torch')}, Python "
            f"{versions.get('python')}; {machine.get('cpus')} CPUs, {device}).</sub>")


# --- one renderer per results file ------------------------------------------------------------------------------
def render_estimator(data: dict[str, Any]) -> list[str]:
    predictions = data["predictions"]
    sizes = [p["resolution"].split("x")[0] for p in predictions]
    plan = data["plan_1024"]
    levers = ", ".join(plan["levers_applied"]) or "none"
    downgrades = ", ".join(plan["downgrades"]) or "no downgrades"
    return table([
        ("simulation vs real CPU allocator peak (small SonicUNet)", f"{percent(data['cpu_max_rel_error'], sign=False)}"
                                                                    " max error"),
        ("pre-flight, full-size model, 1024², fresh process: cold = imports + plan / after a restart (with imports)"
         " / asked again",
         f"{data['preflight_cold_s']:g} s = {data['preflight_cold_import_s']:g} s + {data['preflight_cold_plan_s']:g} s"
         f" / {data['preflight_restart_s']:.3f} s ({data['preflight_restart_with_imports_s']:g} s)"
         f" / {data['preflight_cached_s']:.4f} s"),
        (f"official settings, predicted peak at {squared(sizes)}",
         slash([p["official_plan"]["peak_gib"] for p in predictions], lambda v: f"{v:.2f}") + " GiB"),
        ("quality-neutral levers (no weight streaming), same sizes",
         slash([p["quality_neutral_levers_plan"]["peak_gib"] for p in predictions], lambda v: f"{v:.2f}") + " GiB"),
        ("same, 5 s / 60 s / 600 s of audio at 1024²",
         slash([v["peak_gib"] for v in predictions[-1]["by_audio_duration"].values()], lambda v: f"{v:.2f}")
         + " GiB"),
        (f"1024² plan found for {plan['free_gib']:g} GiB free",
         f"{data['plan_1024_peak_gib']:.2f} GiB predicted peak ({downgrades}; levers: {levers})"),
    ])


GPU_ROWS = (
    ("window_activations_largest_size", "simulated vs measured activations, one UNet window at the largest size"),
    ("tensor_peak_error_by_size", "simulated tensor peak vs `max_memory_allocated`, whole runs (policy off)"),
    ("least_needed_over_simulated_by_size", "least memory one window needs (bisection under a real cap) over its "
                                            "simulated peak"),
    ("run_under_cap", "a whole run under a hard cap (its prediction, 5 % below, the bare tensor peak)"),
    ("guard_auto_under_caps", "policy auto under real caps at the largest size"),
    ("guard_off_under_smallest_cap", "policy off under the smallest cap"),
    ("vram_ratio_60s_vs_5s", "peak VRAM, 60 s vs 5 s of speech"),
    ("seconds_per_unet_call_by_size", "seconds per UNet call, 3 guidance branches batched"),
    ("soak_allocated_growth_bytes", "device memory growth over the soak"),
)


def _gpu_value(key: str, value: Any) -> str:
    def by_size(mapping: dict[str, Any], fmt: Callable[[Any], str]) -> str:
        sizes = [k for k in mapping if k.isdigit()]
        return f"{squared(sizes)}: {slash([mapping[s] for s in sizes], fmt)}"

    def outcome(row: dict[str, Any]) -> str:
        cap = f"{row['cap_gib']:g} GiB" if row.get("cap_gib") is not None else "no cap"
        if not row["finished"]:
            return f"{cap}: failed ({row.get('error')})"
        levers = ", ".join(row.get("levers_applied") or []) or "none"
        downgrades = ", ".join(row.get("downgrades") or []) or "none"
        return f"{cap}: finished, {row.get('retries') or 0} retries, levers {levers}, downgrades {downgrades}"

    if key == "window_activations_largest_size":
        error = value.get("relative_error")
        return f"{value['simulated_gib']} vs {value['measured_gib']} GiB" + (
            f" ({percent(error, 1)})" if error is not None else "")
    if key == "tensor_peak_error_by_size":
        return by_size(value, lambda v: percent(v, 1))
    if key == "least_needed_over_simulated_by_size":
        return f"{value.get('allocator')}, " + by_size(value, lambda v: percent(v - 1, 1))
    if key == "run_under_cap":
        return "; ".join(f"{r['plan']} {r['size']}² under {r['cap']} ({r['cap_gib']} GiB): "
                         f"{'finished' if r['finished'] else 'did not finish'}" for r in value)
    if key == "guard_auto_under_caps":
        return "; ".join(outcome(row) for row in value)
    if key == "guard_off_under_smallest_cap":
        return outcome(value)
    if key == "vram_ratio_60s_vs_5s":
        return f"{value['allocated']:.3f}× (allocated), {value['reserved']:.3f}× (reserved)"
    if key == "seconds_per_unet_call_by_size":
        return by_size(value, lambda v: f"{v:.2f} s")
    if key == "soak_allocated_growth_bytes":
        return f"{value / MIB:+.2f} MiB"
    raise RenderError(f"gpu.json: no format for summary key {key!r}")


def render_gpu(data: dict[str, Any]) -> list[str]:
    summary = data["summary"]
    reasons = summary.get("not_measured", {})
    whole_run = data.get("not_measured_reason")  # nothing was measured at all: say why once
    rows = []
    for key, label in GPU_ROWS:
        value = summary.get(key)
        if value is not None:
            rows.append((label, _gpu_value(key, value)))
        else:
            rows.append((label, "not measured" if whole_run else not_measured(reasons.get(key))))
    lines = table(rows)
    if whole_run:
        lines += ["", f"**Nothing measured in this run:** {whole_run}."]
    elif data.get("dry_run_on_cpu"):
        lines += ["", "**A dry run on the CPU (`--tiny`): no GPU figure in it.**"]
    elif not data.get("complete"):
        lines += ["", "Not every requested phase finished in this run."]
    return lines


def render_memory_vs_duration(data: dict[str, Any]) -> list[str]:
    runs = data["runs"]
    labels = list(runs)
    long_vs_short = f"{labels[-1]}_vs_{labels[0]}"
    short, long = f"{labels[0][:-1]} s", f"{labels[-1][:-1]} s"
    vram = data.get(f"vram_ratio_{long_vs_short}")
    target = data.get("target", {}).get("host_ram_ratio_max")
    settings = data["settings"]
    return table([
        (f"peak host RAM of the whole process, {long} vs {short} of speech",
         f"{data[f'host_ram_ratio_{long_vs_short}']:.2f}×" + (f" (target ≤ {target:g}×)" if target else "")),
        (f"peak host RAM during `generate` alone, {long} vs {short}",
         f"{data[f'host_ram_during_generate_ratio_{long_vs_short}']:.2f}×"),
        (f"peak RSS, {short} / {long}", slash([r["peak_rss_bytes"] / MIB for r in runs.values()],
                                             lambda v: f"{v:.0f}") + " MiB"),
        (f"wall time, {short} / {long} ({settings['resolution']} px, {settings['steps']} step, "
         f"{settings['torch_threads']} torch thread)", slash([r["wall_seconds"] for r in runs.values()],
                                                            lambda v: f"{v:g}") + " s"),
        (f"peak VRAM, {long} vs {short}", not_measured(data.get("vram_not_measured_reason")) if vram is None
         else f"{vram:.3f}×"),
    ])


def _soak(soak: dict[str, Any], limit: float) -> str:
    ran = f"{soak['runs']} runs" + (f" of {soak['runs_requested']} (stopped by its time budget)"
                                    if soak["stopped_by_budget"] else "")
    growth = soak.get("object_growth") or {}
    objects = ", ".join(f"{name} +{count}" for name, count in list(growth.items())[:4]) or "none"
    gpu = (not_measured(soak.get("gpu_not_measured_reason")) if soak.get("gpu_allocated_growth_bytes") is None
           else f"{soak['gpu_allocated_growth_bytes'] / MIB:+.2f} MiB")
    return (f"{ran}, median {soak['run_seconds_median']} s per run: **RSS {percent(soak['rss_growth'])}** "
            f"({'within' if soak['rss_growth_within_limit'] else 'over'} the {percent(limit, 0, sign=False)} limit), "
            f"{soak['rss_mib_per_run']:+.3f} MiB per run, largest rise between samples 10 runs apart "
            f"{soak['rss_largest_rise_between_samples_mib']} MiB; live tensors {arrow(soak['live_tensors'])}, "
            f"threads {arrow(soak['threads'])}, open files {arrow(soak['open_files'])}, "
            f"{soak['temp_files_after']} temporary files left; object types that grew (census of the 60 most "
            f"numerous): {objects}; GPU allocator: {gpu}")


def render_reliability(data: dict[str, Any]) -> list[str]:
    rows = []
    if "bad_inputs_tried" in data:
        rows.append((
            f"Bad inputs ({data['bad_inputs_tried']} through the server, listed above)",
            f"**{data['bad_inputs_handled']} / {data['bad_inputs_tried']} handled.** "
            f"{data['refused_with_our_error']} refused with our own error type, {data['refused_at_queue']} refused "
            f"by ComfyUI's validation at queue time, {data['accepted_and_converted']} usable inputs converted and "
            f"run. Slowest refusal {data['slowest_refusal_s']} s. Server alive after every input: "
            f"{'yes' if data['server_alive_throughout'] else '**no**'}; next valid run {data['next_valid_run_s']} s; "
            f"RSS afterwards {percent(data['rss_change_after_bad_inputs'])} of the warm baseline."))
    limit = data["soak_rss_growth_limit"]
    if "soak_history_cleared" in data:
        rows.append(("Soak, ComfyUI's `/history` cleared after each run", _soak(data["soak_history_cleared"], limit)))
    if "soak_history_kept" in data:
        rows.append(("Soak, `/history` kept (ComfyUI keeps every prompt and its outputs, up to 10000)",
                     _soak(data["soak_history_kept"], limit)))
    if "cancel_latency_s" in data:
        latency = data["cancel_latency_s"]
        rows.append((
            "Cancel: `/interrupt` once the first segment of a segmented run is finished",
            (f"stopped {latency} s after the request" if latency is not None else "**no interrupt was sent**")
            + f" (longest gap between progress events {data['cancel_window_s']} s), ended "
            f"`{data['cancel_last_event']}`; {data['cancel_segments_kept']} finished segment(s) kept for resume, "
            f"{data['cancel_partial_files_left']} half-written files left; next run {data['cancel_next_run_s']} s."))
        rows.append((
            f"Load: {data['load_requests']} requests to `/sonic/metrics` and `/sonic/health` during a generation",
            f"{data['load_answered']} / {data['load_requests']} answered (status "
            f"{', '.join(map(str, data['load_statuses']))}; median {data['load_p50_s']} s, slowest "
            f"{data['load_max_s']} s). The generation {'succeeded' if data['load_run_succeeded'] else '**failed**'} "
            f"in {data['load_run_s']} s ({data['same_run_without_load_s']} s alone)."))
    if "crash_resume_ok" in data:
        crash, disk = data["crash_resume"], data["disk_full"]
        yes = {True: "yes", False: "**no**"}
        rows.append((
            "`kill -9` of the server mid segmented job, restart, same prompt; one finished segment damaged on disk",
            f"finished segments reused: {yes[data['crash_resume_ok']]}; damaged segment detected by its sha256 and "
            f"redone: {yes[data['corrupt_segment_redone']]}; result {crash['frames']} frames at {crash['fps']} fps "
            f"with {crash['audio_s']} s of audio; files left over: {len(crash['leftovers'])} ({crash['seconds']} s)."))
        rows.append((
            f"Disk full while encoding ({disk['disk']})",
            f"handled: {yes[data['disk_full_ok']]} (our `DiskFullError`, {len(disk['left_after_failure'])} files "
            f"left, next run {disk['next_run_frames']} frames)."))
    if "real_inputs_tried" in data:
        rows.append(("The official example pictures and speech/singing (table below)",
                     f"**{data['real_inputs_handled']} / {data['real_inputs_tried']} handled** (ran, or refused with "
                     "our error)."))
    server = data["server"]
    lines = table(rows, header=("Check", "Result"))
    lines += ["", f"Server: ComfyUI {server['comfyui_version']} {' '.join(server['flags'])}, OMP_NUM_THREADS="
                  f"{server['omp_num_threads']}, {server['models']}; each run "
                  f"{data['run']['generator_inputs']['duration']} s of {data['run']['audio']}, "
                  f"{data['run']['generator_inputs']['min_resolution']} px, "
                  f"{data['run']['generator_inputs']['inference_steps']} step, interpolation "
                  f"{data['run']['generator_inputs']['interpolation']}."]
    return lines


def _faces(row: dict[str, Any]) -> str:
    faces = row.get("opencv_faces")
    if faces is None:
        return "–"
    if not faces:
        return "none"
    return "; ".join(f"{', '.join(f'{v:g}' for v in f['box'])} ({percent(f['fraction_of_picture'], 1, False)})"
                     for f in faces)


def render_real_inputs(data: dict[str, Any]) -> list[str]:
    lines = ["| Input | Through the server | OpenCV boxes (x1, y1, x2, y2; share of the picture) |", "|---|---|---|"]
    for row in data["inputs"]:
        outcome = "ran to a video" if row["outcome"] == "success" else f"refused: `{row['error'] or row['outcome']}`"
        lines.append(f"| `{row['input']}` | {outcome}{'' if row['handled'] else ' **(not handled)**'} "
                     f"| {_faces(row)} |")
    run, inputs = data["run"], data["run"]["generator_inputs"]
    alive = "yes" if data["server_alive_after"] else "**no**"
    lines += ["", f"**{data['real_inputs_handled']} / {data['real_inputs_tried']} handled**; server alive after: "
                  f"{alive}. Pictures ran with `{run['speech_for_pictures']}`, sounds with "
                  f"`{run['picture_for_sounds']}`; "
                  f"{inputs['duration']} s, {inputs['min_resolution']} px, {inputs['inference_steps']} step, "
                  f"{run['models']}; detector: {run['face_detector']}."]
    return lines


def _by_size(data: dict[str, Any], key: str, fmt: Callable[[Any], str]) -> str:
    values = data.get(key)
    if values is None:
        return not_measured(data.get("not_measured", {}).get(key))
    return ", ".join(f"{size}²: {fmt(value)}" for size, value in values.items())


SPEED_SIDES = (("official", "official"), ("ours", "ours"), ("ours_levers", "ours, every memory lever"))
SPEED_STAGES = ("sampling", "decode", "interpolation", "encode")


def _speed_cells(run: dict[str, Any], pick: Callable[[dict[str, Any]], str]) -> list[str]:
    return [pick(run[side]) if run.get(side) else "not run" for side, _ in SPEED_SIDES]


def _attention_kernels(data: dict[str, Any]) -> str:
    """'128²: yes (_scaled_dot_product_flash_attention_for_cpu ×96)' per size, from each size's census."""
    cells = []
    for size, run in data["by_resolution"].items():
        census = run.get("attention_kernels_ours")
        if census:
            kernels = ", ".join(f"{name.removeprefix('aten::')} ×{count}" for name, count in census["kernels"].items())
            cells.append(f"{size}²: {'yes' if census['all_fused'] else 'NO'} ({kernels or 'no SDPA call'})")
    return "; ".join(cells) or "not measured"


def render_speed(data: dict[str, Any]) -> list[str]:
    lines = ["| " + " | ".join(["", *(title for _, title in SPEED_SIDES)]) + " |", "|---|---|---|---|"]
    fraction = lambda v: percent(v, 1, sign=False)  # noqa: E731
    for size, run in data["by_resolution"].items():
        def cells(pick: Callable[[dict[str, Any]], str], run: dict[str, Any] = run) -> list[str]:
            return _speed_cells(run, pick)

        rows = [
            (f"{size}²: end to end, s per s of video", cells(lambda r: f"{r['seconds_per_second_of_video']:g}")),
            (f"{size}²: UNet s per 3-branch window", cells(lambda r: f"{r['unet']['seconds_per_unet_window']:.3g}")),
            (f"{size}²: sampling / decode / interpolate / encode s",
             cells(lambda r: slash([r["stage_seconds"].get(k, 0.0) for k in SPEED_STAGES], lambda v: f"{v:.2f}"))),
            (f"{size}²: peak memory", cells(lambda r: f"{r['peak_memory']['peak_bytes'] / 2**30:.2f} GiB")),
        ]
        lines += ["| " + " | ".join([label, *values]) + " |" for label, values in rows]
        outputs = run.get("outputs", {})
        if outputs.get("official_vs_ours"):
            lines.append(f"| {size}²: final latents, max abs difference | vs ours: "
                         f"{outputs['official_vs_ours']['max_abs']:.2g} | (reference) | vs ours: "
                         f"{outputs['ours_levers_vs_ours']['max_abs']:.2g} (our own fp32 noise) |")
    lines += ["", *table([
        ("speed-up vs official, end to end", _by_size(data, "speedup_vs_official", lambda v: f"{v:.2f}×")),
        ("UNet fraction of the GPU's dense fp16/bf16 peak", _by_size(data, "unet_fraction_of_peak", fraction)),
        ("every memory lever on / unconstrained time",
         not_measured(data["not_measured"].get("levers_time_ratio")) if data.get("levers_time_ratio") is None
         else _by_size(data, "levers_time_ratio", lambda v: f"{v:.2f}×")),
        ("wall / (sampling + slowest of decode, interpolate, encode)",
         _by_size(data, "wall_over_critical_path", lambda v: f"{v:.2f}")),
        ("every attention of a UNet window on a fused SDPA kernel (torch.profiler)", _attention_kernels(data)),
    ])]
    return lines


def render_fleet(data: dict[str, Any]) -> list[str]:
    ranks = data["ranks"]["by_ranks"]
    kill, load, remote = data["kill"], data.get("load", {}), data["remote_write"]
    return table([
        ("one video on 2 / 3 ranks (CPU, gloo) equals one process bit for bit",
         f"{data['ranks_bitwise_equal']} ({slash([ranks[k]['speed_up_vs_single_process'] for k in sorted(ranks)])}"
         "× one process: spawn + model load dominate this small clip)"),
        ("speed-up per added GPU", not_measured(data.get("speed_up_per_added_rank_gpu_reason"))
         if data.get("speed_up_per_added_rank_gpu") is None else str(data["speed_up_per_added_rank_gpu"])),
        ("jobs submitted / finished / lost through HAProxy (2 workers)",
         f"{data['jobs_submitted']} / {data['jobs_finished']} / {data['jobs_lost']}"),
        (f"worker killed (SIGKILL) mid-batch of {kill['jobs']}",
         f"{data['worker_killed_mid_batch']}: each job done once ({kill['done_once']}), "
         f"{len(kill['jobs_retried_elsewhere'])} moved to the other worker, {kill['partial_files']} partial files; "
         f"marked DOWN {kill['down_after_kill_s']} s after the kill ({kill['haproxy_check']})"),
        (f"load test, {load.get('jobs', '?')} short jobs over 2 workers",
         f"{data['throughput_jobs_per_minute']} jobs/min, p50 {data['latency_p50_s']} s, "
         f"p95 {data['latency_p95_s']} s"),
        ("pack series received by a remote-write receiver (Prometheus agent from docs/fleet.md)",
         f"{data['remote_write_series_received']} in {remote['pushes']} pushes, tenant at the receiver: "
         f"{', '.join(remote['tenant_at_receiver'])} (set by docs/fleet/mimir-gateway.cfg; the agent sent it: "
         f"{remote['agent_sent_tenant_header']})"),
    ]) + ["", data["note"] + "."]


def render_native_models(data: dict[str, Any]) -> list[str]:
    unet = data["unet_load"]
    load = data["unet_load_s"]
    unet_row = not_measured(unet.get("reason")) if load is None else (
        f"{load['pth']:.2f} s / {load['safetensors']:.2f} s; RSS growth {unet['pth']['rss_growth_bytes'] / 1e9:.2f}"
        f" / {unet['safetensors']['rss_growth_bytes'] / 1e9:.2f} GB (UNet width {unet['unet_width']:g})")
    return table([
        ("ComfyUI's svd_xt.safetensors vs the diffusers folder, max relative error (CLIP embeds, VAE mean, decode)",
         f"{data['single_file_vs_folder_max_rel_error']:.2g} (bound 1e-3)"),
        ("interrupted download resumes with a Range request, files byte-identical", str(data["download_resume_ok"])),
        ("UNet load to fp16: unet.pth / unet.fp16.safetensors", unet_row),
        ("ComfyUI's own video nodes around ours (real server, files decoded with PyAV)",
         f"{data['interop_cases_passed']} / {data['interop_cases']} cases"),
    ])


RENDERERS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "fleet": render_fleet,
    "native_models": render_native_models,
    "speed": render_speed,
    "estimator": render_estimator,
    "gpu": render_gpu,
    "memory_vs_duration": render_memory_vs_duration,
    "reliability": render_reliability,
    "real_inputs": render_real_inputs,
}


# --- the README ---------------------------------------------------------------------------------------------
def render_block(name: str, results_dir: Path = RESULTS) -> str:
    if name not in RENDERERS:
        raise RenderError(f"README block results:{name} has no renderer (known: {', '.join(RENDERERS)})")
    path = results_dir / f"{name}.json"
    if not path.is_file():
        raise RenderError(f"README block results:{name} needs {path.relative_to(REPO)}: run its bench")
    data = json.loads(path.read_text())
    try:
        lines = RENDERERS[name](data)
    except (KeyError, TypeError, IndexError) as error:
        raise RenderError(f"{path.name} lacks what the README table needs ({type(error).__name__}: {error})") from error
    return "\n".join([*lines, "", source_line(name, data)]) + "\n"


def render(text: str, results_dir: Path = RESULTS) -> str:
    return BLOCK.sub(lambda m: m.group(1) + render_block(m.group("name"), results_dir) + m.group(4), text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 with a diff if the README is not up to date")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    current = args.readme.read_text()
    if not BLOCK.search(current):
        logger.error("%s: no <!-- results:NAME --> blocks", args.readme)
        return 1
    try:
        wanted = render(current)
    except RenderError as error:
        logger.error("%s", error)
        return 1
    if args.check:
        if wanted == current:
            return 0
        sys.stdout.writelines(difflib.unified_diff(current.splitlines(keepends=True), wanted.splitlines(keepends=True),
                                                   f"{args.readme.name} (now)", f"{args.readme.name} (rendered)"))
        logger.error("%s differs from bench/results/*.json: run python scripts/render_readme_tables.py",
                     args.readme.name)
        return 1
    if wanted != current:
        args.readme.write_text(wanted)
        logger.info("rewrote %s", args.readme)
    return 0


if __name__ == "__main__":
    sys.exit(main())
