"""Routes behind the loader's "Download missing models" action; what is fetched, how, and the one-at-a-time rule
are `sonic_guard.models.download`.

POST /sonic/models/download      {"folder": "<name>", "what": ["sonic", ...] | null} -> 202 {"job_id", ...}
GET  /sonic/models/download/{id} -> the job's progress (state, bytes, files, error)
GET  /sonic/models/missing?folder=<name> -> the parts that folder lacks (a local look, no network)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from ..sonic_guard.models.download import (
    DEFAULT_PARTS,
    DownloadBusyError,
    DownloadError,
    DownloadJobs,
    missing_parts,
    model_folder_name,
)


def register_model_downloads(routes: web.RouteTableDef, models_root: Callable[[], Path]) -> None:
    """Add the download routes; `models_root` names ComfyUI's models/sonic folder (the new folder goes inside)."""
    jobs = DownloadJobs()  # lives as long as the server's route table

    async def start(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except json.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return web.json_response({"error": 'body must be a JSON object such as {"folder": "sonic"}'}, status=400)
        try:
            dest = models_root() / model_folder_name(body.get("folder"))
            job_id = jobs.start(dest, body.get("what"))
        except DownloadBusyError as error:
            return web.json_response({"error": str(error)}, status=409)
        except DownloadError as error:
            return web.json_response({"error": str(error)}, status=400)
        return web.json_response(jobs.status(job_id), status=202)

    async def progress(request: web.Request) -> web.Response:
        job = jobs.status(request.match_info["job_id"])
        if job is None:
            return web.json_response({"error": "no such download job (the server may have restarted)"}, status=404)
        return web.json_response(job, headers={"Cache-Control": "no-store"})

    async def missing(request: web.Request) -> web.Response:
        try:
            name = model_folder_name(request.query.get("folder"))
        except DownloadError as error:
            return web.json_response({"error": str(error)}, status=400)
        return web.json_response({"folder": name, "missing": missing_parts(models_root() / name, DEFAULT_PARTS)})

    routes.post("/sonic/models/download")(start)
    routes.get("/sonic/models/download/{job_id}")(progress)
    routes.get("/sonic/models/missing")(missing)
