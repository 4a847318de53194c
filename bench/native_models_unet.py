"""UNet load time and peak RSS during load: Sonic/unet.pth (fp32 pickle) vs Sonic/unet.fp16.safetensors.

`measure_unet_load(folder)` loads each file that is there in a fresh Python process (so one file's pages and
allocator state cannot help the other), the way the loader does (`checkpoints.load_unet`, then `.to(dtype)`: fp16
is what a GPU run asks for), then reads every weight once (mmap pages are only read when touched). A thread samples
the process RSS with psutil every few milliseconds. `write_random_unet(folder, width)` writes a random UNet in
the official layout: width 1.0 is the full-size SVD-xt UNet (6.1 GB fp32), a smaller width scales every
block's channels (documented in the result as `unet_config`). Used by bench/bench_native_models.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SAMPLE_S = 0.005
FILES = {"pth": "unet.pth", "safetensors": "unet.fp16.safetensors"}


def unet_config(width: float = 1.0) -> dict[str, Any]:
    """SVD-xt's UNet config with every block's channels scaled by `width` (1.0: the real size)."""
    from sonic_guard.models.configs import SVD_XT_UNET_CONFIG

    config = dict(SVD_XT_UNET_CONFIG)
    if width != 1.0:
        heads = config["num_attention_heads"]
        step = 8 * (max(heads) if isinstance(heads, (list, tuple)) else heads)
        config["block_out_channels"] = [max(step, round(c * width / step) * step)
                                        for c in config["block_out_channels"]]
    return config


def write_random_unet(folder: Path, width: float = 1.0, seed: int = 0) -> Path:
    """Random fp32 weights at `folder`/Sonic/unet.pth, with the config the loader reads beside it."""
    import torch

    from sonic_guard.models.tiny import write_json
    from sonic_guard.models.unet import build_sonic_unet

    config = unet_config(width)
    write_json(folder / "stable-video-diffusion-img2vid-xt" / "unet" / "config.json", config)
    (folder / "Sonic").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    unet = build_sonic_unet(config, device="cpu", dtype=torch.float32)
    torch.save(unet.state_dict(), folder / "Sonic" / "unet.pth")
    return folder / "Sonic" / "unet.pth"


def _child(folder: Path, file_name: str, dtype_name: str) -> dict[str, Any]:
    """One load, in this (fresh) process."""
    import psutil
    import torch

    from sonic_guard.models.checkpoint_paths import ModelPaths, WhisperSearch
    from sonic_guard.models.checkpoints import load_unet, read_unet_config

    process = psutil.Process()
    paths = dataclasses.replace(ModelPaths.from_root(folder, whisper=WhisperSearch(None, ())),
                                unet=folder / "Sonic" / file_name)
    config = read_unet_config(paths)
    peak, stop = [process.memory_info().rss], threading.Event()
    baseline = peak[0]

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    unet = load_unet(paths, config).to(getattr(torch, dtype_name))
    loaded = time.perf_counter()
    with torch.no_grad():
        checksum = sum(float(p.sum(dtype=torch.float32)) for p in unet.parameters())
    touched = time.perf_counter()
    stop.set()
    sampler.join()
    peak[0] = max(peak[0], process.memory_info().rss)
    return {
        "file": file_name, "file_bytes": (folder / "Sonic" / file_name).stat().st_size, "dtype": dtype_name,
        "load_s": round(loaded - started, 3), "load_and_read_all_s": round(touched - started, 3),
        "peak_rss_bytes": peak[0], "rss_before_load_bytes": baseline, "rss_growth_bytes": peak[0] - baseline,
        "parameters": sum(p.numel() for p in unet.parameters()), "checksum": checksum,
    }


def measure_unet_load(folder: Path | str, dtype: str = "float16", timeout_s: float = 1800.0) -> dict[str, Any]:
    """Load time and peak RSS for each UNet file in `folder`/Sonic (pth, and its safetensors conversion when
    there), each in a fresh subprocess. Keys: "pth" / "safetensors" (None when that file is absent)."""
    folder = Path(folder)
    results: dict[str, Any] = {"folder": str(folder), "dtype": dtype}
    for label, name in FILES.items():
        if not (folder / "Sonic" / name).is_file():
            results[label] = None
            continue
        done = subprocess.run([sys.executable, "-m", "bench.native_models_unet", "--child", str(folder), name,
                               dtype], cwd=REPO, capture_output=True, text=True, timeout=timeout_s, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"loading {name} failed:\n{done.stderr[-3000:]}")
        results[label] = json.loads(done.stdout.strip().splitlines()[-1])
    pth, st = results["pth"], results["safetensors"]
    if pth and st:
        results["load_speedup"] = round(pth["load_s"] / max(st["load_s"], 1e-9), 2)
        results["peak_rss_ratio"] = round(st["rss_growth_bytes"] / max(pth["rss_growth_bytes"], 1), 3)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=3, metavar=("FOLDER", "FILE", "DTYPE"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help="model folder to measure (written when --width is given)")
    parser.add_argument("--width", type=float, help="write a random UNet of this width first (1.0 = full size)")
    args = parser.parse_args()
    if args.child:
        folder, name, dtype = args.child
        print(json.dumps(_child(Path(folder), name, dtype)))  # noqa: T201 - the parent reads this line
        return 0
    if args.width is not None:
        from sonic_guard.models.convert_unet import convert_unet

        write_random_unet(args.folder, args.width)
        convert_unet(args.folder, force=True)
    result = measure_unet_load(args.folder)
    config = args.folder / "stable-video-diffusion-img2vid-xt" / "unet" / "config.json"
    result["unet_config"] = json.loads(config.read_text()) if config.is_file() else unet_config(1.0)
    print(json.dumps(result, indent=1))  # noqa: T201 - a bench prints its result
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
