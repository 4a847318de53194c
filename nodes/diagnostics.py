"""GET /sonic/debug/resources: the route only; what it counts, and the SONIC_GUARD_DIAGNOSTICS switch that turns it
on (off by default), are `sonic_guard.telemetry.resources`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from ..sonic_guard.telemetry.resources import ROUTE, answer_resource_request


def register_diagnostics(routes: web.RouteTableDef, temporary_folders: Callable[[], list[Path]]) -> None:
    """Add GET /sonic/debug/resources to ComfyUI's route table; call once.

    `temporary_folders` names the folders whose half-written files count as leftovers (ComfyUI's output folder,
    which holds the job folders too).
    """

    async def resources(request: web.Request) -> web.Response:
        # The snapshot walks every object: in a worker thread, off the event loop.
        answer = await asyncio.to_thread(answer_resource_request, dict(request.query), temporary_folders)
        return web.json_response(answer.body, status=answer.status, headers={"Cache-Control": "no-store"})

    routes.get(ROUTE)(resources)
