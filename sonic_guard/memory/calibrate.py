"""Calibrate the allocator overhead on a real CUDA device and store it in the run history.

One UNet window (random weights: memory does not depend on their values) runs at a few sizes with the
quality-neutral plan; the caching allocator's reserved peak is recorded next to the simulated tensor peak, and
`RunHistory.calibration()` fits fixed bytes + fragmentation from those rows (and from real runs later on).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..models.unet import build_sonic_unet
from .calibration import AllocatorCalibration
from .estimator import MemoryEstimator
from .free_memory import measure_device_peak, torch_free_memory
from .history import RunHistory
from .model_specs import ModelConfigs
from .plan import ExecutionPlan
from .report import RunReport

logger = logging.getLogger(__name__)

_BACKENDS = {"flash": SDPBackend.FLASH_ATTENTION, "mem_efficient": SDPBackend.EFFICIENT_ATTENTION,
             "math": SDPBackend.MATH}


def calibrate_on_device(history: RunHistory, device: str = "cuda", *, sizes: Sequence[int] = (512, 768),
                        configs: ModelConfigs | None = None, attention: str = "flash") -> AllocatorCalibration:
    """Measure UNet windows on `device` (CUDA only), store them in `history`, return the refitted calibration."""
    target = torch.device(device)
    if target.type != "cuda":
        raise ValueError(f"allocator calibration needs a CUDA device, got {target.type!r}")
    configs = configs or ModelConfigs.full_size()
    estimator = MemoryEstimator(configs, AllocatorCalibration(0, 0.0, "raw"))
    name = torch.cuda.get_device_name(target)
    for size in sizes:
        plan = ExecutionPlan(min_resolution=size, width=size, height=size, cfg_batch=1, ff_chunk=4,
                             attention=attention, offload_idle_models=True)
        stage = estimator.estimate(plan, exact=True).stages["unet_window"]
        unet_bytes = estimator.models.weight_bytes("unet", plan.torch_dtype, estimator.block)
        raw = unet_bytes + stage.activation_bytes  # the UNet alone is on the device here
        free_before = torch_free_memory(target).free_bytes
        torch.cuda.empty_cache()
        with measure_device_peak(target) as reading:
            _run_window(plan, configs, target)
        torch.cuda.empty_cache()
        measured = reading.run_peak_bytes
        logger.info("calibration %s %dpx: simulated %d B, reserved peak %s B", name, size, raw, measured)
        history.record(RunReport(
            plan=plan.to_dict(), predicted_peak_bytes=raw, raw_predicted_bytes=raw, measured_peak_bytes=measured,
            free_before_bytes=free_before, levers_applied=list(plan.levers_applied),
            hardware={"device_name": name, "torch": torch.__version__}, outcome="calibration",
        ))
    return history.calibration(device=name)


def _run_window(plan: ExecutionPlan, configs: ModelConfigs, device: torch.device) -> None:
    unet = build_sonic_unet(configs.unet, device=device, dtype=plan.torch_dtype)
    unet.set_feed_forward_chunking(plan.ff_chunk)
    h, w = plan.latent_size
    frames, dim, dtype = configs.window_frames, int(configs.unet["cross_attention_dim"]), plan.torch_dtype
    backend = sdpa_kernel(_BACKENDS[plan.attention]) if plan.attention in _BACKENDS else contextlib.nullcontext()
    with torch.no_grad(), backend:
        outputs = []
        for _ in range(3 // plan.cfg_batch):  # the CFG branches, as the engine runs them
            outputs.append(unet(
                torch.randn(plan.cfg_batch, frames, 8, h, w, device=device, dtype=dtype), 0.5,
                torch.randn(plan.cfg_batch, 1, dim, device=device, dtype=dtype),
                torch.randn(plan.cfg_batch, frames, configs.audio_tokens, dim, device=device, dtype=dtype),
                torch.randn(plan.cfg_batch, 3, device=device, dtype=dtype),
                torch.rand(1, 1, plan.height, plan.width, device=device, dtype=dtype),
            ))
        torch.cuda.synchronize(device)
    del outputs, unet
