"""Sonic Generate: portrait + speech -> talking video, planned to fit memory, recovered on OOM, reported."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..sonic_guard.errors import BadInputError
from ..sonic_guard.memory.planner import POLICIES
from ..sonic_guard.memory.presets import PRESET_CHOICES
from ..sonic_guard.sampling.multi_device.devices import EXAMPLES as DEVICES_EXAMPLES
from ..sonic_guard.sampling.multi_device.devices import check_devices_present, parse_devices
from ..sonic_guard.settings import widget_number_problem
from . import ids
from .generate_call import run_generate_node
from .model_handle import SonicModelHandle, SonicModelType


def generation_widgets() -> list[io.Input]:
    """Widgets shared by the generator and the planning node, in the same order."""
    return [
        io.Float.Input("duration", default=0.0, min=0.0, max=3600.0, step=0.1,
                       tooltip="Seconds of audio to use. 0 = the whole audio. Longer than the audio pads with "
                       "silence; shorter trims. Either is reported."),
        io.Int.Input("min_resolution", default=512, min=128, max=2048, step=64,
                     tooltip="Short side of the video in px (multiple of 64). The memory guard may lower it in "
                     "64-px steps if nothing else fits (policy auto) and says so."),
        io.Float.Input("expand_ratio", default=0.5, min=0.0, max=2.0, step=0.05,
                       tooltip="How much the face box grows on each side before the square crop (official 0.5)."),
        io.Boolean.Input("crop_face", default=True,
                         tooltip="Crop a square around the largest face (recommended; the official demo does)."),
        io.Int.Input("inference_steps", default=25, min=1, max=100,
                     tooltip="Denoising steps. More steps cost time, not memory."),
        io.Float.Input("dynamic_scale", default=1.0, min=0.0, max=4.0, step=0.05,
                       tooltip="Scales both motion buckets (official 'dynamic_scale', usual range 0.5-2)."),
        io.Float.Input("motion_scale", default=1.0, min=0.0, max=4.0, step=0.05,
                       tooltip="Ours: scales only the head-motion bucket (lips keep their expression). 1 = "
                       "official behaviour, <1 calmer head, >1 livelier."),
        io.Int.Input("seed", default=0, min=0, max=2**63 - 1, control_after_generate=True,
                     tooltip="Noise seed; 0 is a seed like any other (the official code ignored it)."),
        io.Boolean.Input("lip_sync_correction", default=False,
                         tooltip="Measure the audio-video offset of the result and shift the audio to cancel it."),
        io.Float.Input("smooth_motion", default=0.0, min=0.0, max=1.0, step=0.05,
                       tooltip="Temporal smoothing of the output frames (0 = off). Holds no growing state."),
        io.Combo.Input("interpolation", options=["rife", "blend", "none"], default="rife",
                       tooltip="rife: 25 fps with RIFE (needs RIFE/flownet.pkl). blend: 25 fps cross-fade. "
                       "none: the generated 12.5 fps."),
        io.Combo.Input("rife_fallback", options=["none", "blend"], default="none",
                       tooltip="What to do when RIFE weights are missing: 12.5 fps, or a cheap blend."),
        io.Combo.Input("memory_policy", options=list(POLICIES), default="auto",
                       tooltip="auto: downgrade to fit (quality-neutral levers first, then resolution). strict: "
                       "refuse before running if the request does not fit. off: no planning."),
        io.Combo.Input("preset", options=list(PRESET_CHOICES), default="custom",
                       tooltip="fast (768 px, 20 steps), hd (1024 px, 30 steps, dynamic 1.2), minimal (384 px, "
                       "15 steps), resolved against this GPU. custom: use the widgets."),
        io.Float.Input("time_budget_s", default=0.0, min=0.0, max=86400.0, step=1.0,
                       tooltip="Optional time budget in seconds; steps are lowered only to meet it. 0 = none."),
    ]


def float_widget_problems(schema: io.Schema, values: dict[str, object]) -> bool | str:
    """Queue-time check of the float widgets in `values` (None = linked, checked when it runs): True or why not.

    A node that names an input in `validate_inputs` takes over ComfyUI's min/max check for it, so this checks
    the declared range as well as NaN and infinity.
    """
    declared = {item.id: item for item in schema.inputs if isinstance(item, io.Float.Input)}
    problems = [widget_number_problem(name, float(value), declared[name].min, declared[name].max)
                for name, value in values.items() if value is not None and name in declared]
    found = [problem for problem in problems if problem]
    return " ".join(found) if found else True


class Generate(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=ids.GENERATE,
            display_name="Sonic Generate (memory-guarded)",
            category=ids.CATEGORY,
            description=(
                "Turns a portrait and speech into a lip-synced talking video with Sonic. Before running it predicts "
                "peak GPU memory and bends the run to fit; on out-of-memory it frees, takes the next rung and "
                "retries. Frames are encoded to mp4 (with the audio) as they are made, so memory does not grow "
                "with the audio's length. Reports predicted and measured peak, levers, downgrades and timings."
            ),
            inputs=[
                SonicModelType.Input("sonic_model", tooltip="From Sonic Model Loader (optionally via Profiling Tag)."),
                io.Image.Input("image", tooltip="The portrait. The largest face is used; batches use the first."),
                io.Audio.Input("audio", tooltip="The speech (any rate, mono or stereo)."),
                *generation_widgets(),
                io.Float.Input("segment_seconds", default=0.0, min=0.0, max=600.0, step=1.0,
                               tooltip="Long audio: generate in segments of this many seconds, joined without a "
                               "visible seam and stitched without re-encoding; a cancelled or crashed run resumes "
                               "from the finished segments when rerun with the same inputs and seed (new generators "
                               "start with the seed fixed). 0 = automatic: one clip up to 30 s, 20 s segments above."),
                io.Boolean.Input("output_frames", default=False,
                                 tooltip="Also return all frames as IMAGE for downstream nodes. Costs host RAM: "
                                 "about 3 MB per frame at 512², 190 MB per second of video."),
                io.String.Input("filename_prefix", default="sonic/talking",
                                tooltip="Where the mp4 goes, inside ComfyUI's output folder."),
                io.String.Input("devices", default="", optional=True,
                                tooltip="Several devices for one video, e.g. " + DEVICES_EXAMPLES + ". One "
                                "worker process per device; each denoising step's windows are split between them. "
                                "The size is planned for the device with the least free memory; each worker "
                                "picks its own memory levers, so the result equals the one-device run (within "
                                "fp32 noise when a worker runs the guidance branches one at a time)."),
                io.Boolean.Input("compile_unet", default=False, optional=True,
                                 tooltip="Run the UNet through torch.compile for faster sampling. The first run "
                                 "of a size compiles first (minutes on a GPU, the time is in the report); the "
                                 "result is cached on disk, so later runs and restarts skip most of that. Needs a "
                                 "C++ compiler (and Triton on a GPU); without one the run goes on uncompiled. "
                                 "Skipped when the memory plan streams UNet weights. Output changes by float32 "
                                 "noise only."),
            ],
            outputs=[
                io.Video.Output("video", display_name="video", tooltip="The mp4 with audio (ComfyUI VIDEO)."),
                io.Image.Output("frames", display_name="frames",
                                tooltip="All frames (only with output_frames; else one frame)."),
                io.Audio.Output("audio_used", display_name="audio",
                                tooltip="The audio as used (trimmed or padded to the duration)."),
                io.Float.Output("fps", display_name="fps",
                                tooltip="Frame rate of the video (25 with interpolation, else 12.5)."),
                io.String.Output("report", display_name="report",
                                 tooltip="JSON: plan, predicted and measured peak, levers, downgrades, "
                                 "retries, stage times."),
            ],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, duration=None, expand_ratio=None, dynamic_scale=None, motion_scale=None,
                        smooth_motion=None, time_budget_s=None, segment_seconds=None, devices=None) -> bool | str:
        floats = float_widget_problems(cls.define_schema(), {
            "duration": duration, "expand_ratio": expand_ratio, "dynamic_scale": dynamic_scale,
            "motion_scale": motion_scale, "smooth_motion": smooth_motion, "time_budget_s": time_budget_s,
            "segment_seconds": segment_seconds})
        if floats is not True or not devices:
            return floats
        try:  # a bad devices list is the user's to fix: its message goes back with the queue's answer
            check_devices_present(parse_devices(str(devices)))
        except BadInputError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, sonic_model: SonicModelHandle, image, audio, **widgets) -> io.NodeOutput:
        return run_generate_node(cls, sonic_model, image, audio, widgets)
