"""ComfyUI glue: node declarations that validate, delegate to the core and report. No engine logic lives here."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io


class SonicGuardExtension(ComfyExtension):
    async def on_load(self) -> None:
        pass

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return []
