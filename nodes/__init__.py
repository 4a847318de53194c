"""ComfyUI glue: node declarations that validate, delegate to the core and report. No engine logic lives here."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .comfy_bridge import register_model_folders
from .generate import Generate
from .gpu_readout import GpuMemoryReadout
from .load_audio import LoadAudio
from .loader import ModelLoader
from .plan import Plan
from .profiling_tag import ProfilingTag
from .routes import register_routes
from .services import install_services

NODES: list[type[io.ComfyNode]] = [ModelLoader, LoadAudio, Generate, Plan, GpuMemoryReadout, ProfilingTag]


class SonicGuardExtension(ComfyExtension):
    async def on_load(self) -> None:
        register_model_folders()
        install_services()
        register_routes()

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)
