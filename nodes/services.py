"""The pack's per-server services (telemetry, run history), created once when ComfyUI loads the extension.

They hang off ComfyUI's PromptServer instance rather than a module global, so their lifetime is the server's.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from server import PromptServer

from ..sonic_guard.memory.history import RunHistory
from ..sonic_guard.telemetry.health import HealthThresholds
from ..sonic_guard.telemetry.hub import Telemetry
from .comfy_bridge import compute_device, user_directory

_ATTRIBUTE = "sonic_guard_services"
logger = logging.getLogger(__name__)


@dataclass
class PackServices:
    telemetry: Telemetry
    history: RunHistory
    estimators: dict[str, Any] = field(default_factory=dict)  # per model configuration: shape caches inside


def install_services() -> tuple[PackServices, bool]:
    """The server's services, and whether this call created them."""
    existing = getattr(PromptServer.instance, _ATTRIBUTE, None)
    if existing is not None:
        return existing, False
    # A worker started with --cpu is healthy without a GPU; one that should have a GPU is not.
    require_gpu = compute_device().type == "cuda"
    thresholds = HealthThresholds(
        require_gpu=require_gpu,
        min_free_gpu_bytes=_env_int("SONIC_HEALTH_MIN_FREE_GPU_MB", 1 << 20),
        max_queue_length=_env_int("SONIC_HEALTH_MAX_QUEUE", 1),
    )
    history_path = user_directory() / "sonic_guard" / "history.sqlite"
    history_path.parent.mkdir(parents=True, exist_ok=True)
    services = PackServices(
        telemetry=Telemetry(thresholds=thresholds),
        history=RunHistory(history_path),
    )
    setattr(PromptServer.instance, _ATTRIBUTE, services)
    return services, True


def _env_int(name: str, unit: int) -> int | None:
    """An optional health threshold from the environment (a load balancer's policy, not the pack's)."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(float(value) * unit)
    except ValueError:
        logger.warning("%s=%r is not a number; the threshold is off", name, value)
        return None


def services() -> PackServices:
    return install_services()[0]


def queue_length() -> int:
    running, pending = PromptServer.instance.prompt_queue.get_current_queue_volatile()
    return len(running) + len(pending)


def notify(event: str, data: dict) -> None:
    """Push an event to the editor (read by web/js with api.addEventListener)."""
    PromptServer.instance.send_sync(f"sonic_guard.{event}", data)
