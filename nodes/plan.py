"""Sonic Plan: the memory plan the generator would use, without generating."""

from __future__ import annotations

import json

from comfy_api.v0_0_2 import io

from . import ids
from .generate import float_widget_problems, generation_widgets
from .model_handle import SonicModelHandle, SonicModelType
from .planning import estimator_for, plan_from_widgets


class Plan(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=ids.PLAN,
            display_name="Sonic Plan (memory pre-flight)",
            category=ids.CATEGORY,
            description=(
                "Predicts the peak GPU memory of a Sonic run with these settings and shows the plan the generator "
                "would use on this machine: fits, will downgrade (which levers, which resolution), or will not "
                "fit (and what would). Nothing is generated."
            ),
            inputs=[
                SonicModelType.Input("sonic_model", optional=True,
                                     tooltip="Plan for this model; without it, for the full-size Sonic model."),
                *generation_widgets(),
            ],
            outputs=[
                io.String.Output("plan", display_name="plan",
                                 tooltip="JSON: verdict, plan, predicted peak per stage, rungs tried."),
                io.Boolean.Output("fits", display_name="fits",
                                  tooltip="True when the run fits (possibly after downgrades)."),
                io.Int.Output("planned_min_resolution", display_name="min_resolution",
                              tooltip="The resolution the plan would use."),
            ],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, duration=None, expand_ratio=None, dynamic_scale=None, motion_scale=None,
                        smooth_motion=None, time_budget_s=None) -> bool | str:
        return float_widget_problems(cls.define_schema(), {
            "duration": duration, "expand_ratio": expand_ratio, "dynamic_scale": dynamic_scale,
            "motion_scale": motion_scale, "smooth_motion": smooth_motion, "time_budget_s": time_budget_s})

    @classmethod
    def execute(cls, sonic_model: SonicModelHandle | None = None, **widgets) -> io.NodeOutput:
        if sonic_model is not None:  # the loaded model: its configuration and dtype, as the generator plans
            answer = plan_from_widgets(widgets, dtype=sonic_model.dtype, estimator=estimator_for(sonic_model))
        else:
            answer = plan_from_widgets(widgets)
        fits = answer["verdict"] in ("fits", "downgrade")
        plan = (answer.get("plan") or {}).get("plan", {})
        text = json.dumps(answer, indent=1, default=str)
        return io.NodeOutput(
            text, fits, int(plan.get("min_resolution", widgets.get("min_resolution", 512))),
            ui={"text": (answer["badge"], text)},
        )
