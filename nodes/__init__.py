"""ComfyUI glue: node declarations that validate, delegate to the core and report. No engine logic lives here."""

from __future__ import annotations

from comfy_api.v0_0_2 import ComfyExtension, io

from .comfy_bridge import register_model_folders
from .generate import Generate
from .gpu_readout import GpuMemoryReadout
from .load_audio import LoadAudio
from .load_image import LoadPortrait
from .loader import ModelLoader
from .plan import Plan
from .profiling_tag import ProfilingTag
from .routes import register_routes
from .services import install_services

NODES: list[type[io.ComfyNode]] = [ModelLoader, LoadPortrait, LoadAudio, Generate, Plan, GpuMemoryReadout, ProfilingTag]


def _set_up_once() -> None:
    """Model folder, per-server services and HTTP routes; idempotent (the services mark that it ran)."""
    register_model_folders()
    _, created = install_services()
    if created:
        register_routes()


class SonicGuardExtension(ComfyExtension):
    async def on_load(self) -> None:
        _set_up_once()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        # ComfyUI 0.3.75 never calls on_load; it does call get_node_list once, before the routes are added.
        _set_up_once()
        return list(NODES)
