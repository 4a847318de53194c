"""Sonic Guard: Sonic talking-portrait video for ComfyUI that predicts GPU memory and never dies of OOM.

ComfyUI imports this file. It stays import-light so tools (pytest, linters) can import it without ComfyUI: the
nodes, which need ComfyUI, load only when ComfyUI calls `comfy_entrypoint`.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import SonicGuardExtension

    return SonicGuardExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
