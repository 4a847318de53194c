"""Profiling Tag: every Sonic stage downstream runs under Pyroscope tags (stage, duration, resolution, steps, yours)."""

from __future__ import annotations

import dataclasses

from comfy_api.v0_0_2 import io

from ..sonic_guard.errors import SonicGuardError
from ..sonic_guard.telemetry.profiling_config import ProfilingConfig
from ..sonic_guard.telemetry.tags import parse_tag_text
from . import ids
from .model_handle import SonicModelHandle, SonicModelType
from .services import services


class ProfilingTag(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=ids.PROFILING_TAG,
            display_name="Profiling Tag (Pyroscope)",
            category=ids.CATEGORY,
            description=(
                "Wraps the Sonic generation that uses this model: starts the Pyroscope agent (CPU time of all "
                "threads, torch included) and tags every stage (preprocess, audio_features, sampling, decode, "
                "interpolation, encode) with duration, resolution, inference_steps and your key=value tags. "
                "Without pyroscope-io (e.g. Windows) it passes through and says profiling is off."
            ),
            inputs=[
                SonicModelType.Input("sonic_model", tooltip="The model from Sonic Model Loader."),
                io.String.Input(
                    "server_address", default="",
                    tooltip="Pyroscope server, e.g. http://127.0.0.1:4040. Empty: SONIC_PYROSCOPE_SERVER, else off.",
                ),
                io.String.Input("application_name", default="",
                                tooltip="Service name shown in Pyroscope (letters, digits, _ . : -). Empty: "
                                "SONIC_PYROSCOPE_APPLICATION_NAME, else sonic_guard."),
                io.String.Input(
                    "tags", default="", multiline=True,
                    tooltip="key=value pairs, comma or newline separated. No paths or free text: values are "
                    "1-64 of letters, digits, _ . : -",
                ),
                io.String.Input("tenant_id", default="", optional=True,
                                tooltip="Grafana tenant (X-Scope-OrgID). Empty: SONIC_PYROSCOPE_TENANT."),
            ],
            outputs=[
                SonicModelType.Output("tagged_model", display_name="sonic_model",
                                      tooltip="The same model, with profiling attached."),
                io.String.Output("status", display_name="status",
                                 tooltip="Whether profiling is on, and why not if it is off."),
            ],
        )

    @classmethod
    def validate_inputs(cls, tags: str = "", application_name: str = "", **_) -> bool | str:
        try:
            parse_tag_text(tags)
            ProfilingConfig(application_name=application_name or "sonic_guard")
        except SonicGuardError as error:  # shown to the user as the validation message
            return str(error)
        return True

    @classmethod
    def execute(
        cls, sonic_model: SonicModelHandle, server_address: str, application_name: str, tags: str,
        tenant_id: str = "",
    ) -> io.NodeOutput:
        config = ProfilingConfig.from_settings(
            server_address=server_address, application_name=application_name, tenant_id=tenant_id,
            user_tags=parse_tag_text(tags),
        )
        status = services().telemetry.start_profiling(config)
        text = status.message
        wrapped = dataclasses.replace(sonic_model, profiling=config if status.active else None)
        return io.NodeOutput(wrapped, text, ui={"text": (text,)})
