"""HTTP routes on ComfyUI's own server: Prometheus metrics, a load-balancer health check, pre-flight plans, and
the model download action."""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web
from server import PromptServer

from ..sonic_guard.errors import SonicGuardError
from ..sonic_guard.telemetry.health import health_http_status
from .comfy_bridge import output_directory, sonic_search_folders
from .diagnostics import register_diagnostics
from .model_downloads import register_model_downloads
from .services import queue_length, services

logger = logging.getLogger(__name__)


async def metrics(request: web.Request) -> web.Response:
    body, content_type = await asyncio.to_thread(services().telemetry.render_metrics)
    # aiohttp wants the charset apart from the media type.
    media_type, _, params = content_type.partition(";")
    charset = params.split("charset=")[-1].strip() if "charset=" in params else None
    return web.Response(body=body, content_type=media_type.strip(), charset=charset)


async def health(request: web.Request) -> web.Response:
    snapshot = await asyncio.to_thread(services().telemetry.health_snapshot, queue_length())
    return web.json_response(snapshot, status=health_http_status(snapshot))


async def plan(request: web.Request) -> web.Response:
    """The pre-flight plan for the generator's current widget values (the editor's badge asks this)."""
    from .planning import plan_from_widgets

    try:
        widgets = await request.json()
    except json.JSONDecodeError:
        return web.json_response({"error": "body must be a JSON object of widget values"}, status=400)
    if not isinstance(widgets, dict):
        return web.json_response({"error": "body must be a JSON object of widget values"}, status=400)
    try:
        answer = await asyncio.to_thread(plan_from_widgets, widgets)
    except SonicGuardError as error:
        return web.json_response({"verdict": "error", "error": str(error)}, status=200)
    return web.json_response(answer)


def register_routes() -> None:
    routes = PromptServer.instance.routes
    routes.get("/sonic/metrics")(metrics)
    routes.get("/sonic/health")(health)
    routes.post("/sonic/plan")(plan)
    register_diagnostics(routes, lambda: [output_directory()])
    # models/sonic itself (registered first, as the default): a new model folder goes inside it.
    register_model_downloads(routes, lambda: sonic_search_folders()[0])
