"""GPU Memory Readout: NVML, torch allocator and host RAM, side by side and labelled. Passes any value through."""

from __future__ import annotations

from comfy_api.v0_0_2 import io

from ..sonic_guard.telemetry.gpu_table import format_table
from . import ids
from .services import notify, services


class GpuMemoryReadout(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=ids.GPU_MEMORY,
            display_name="GPU Memory Readout",
            category=ids.CATEGORY,
            description=(
                "Reads GPU memory per device (NVML: total/used/free, utilisation, temperature, power, this "
                "process) beside torch's allocated/reserved/peak and host RAM. Place it before or after any node: "
                "the pass-through input orders it in the graph. Works without an NVIDIA GPU and says why."
            ),
            inputs=[
                io.AnyType.Input(
                    "passthrough", optional=True,
                    tooltip="Any value; it is returned unchanged so this node runs after the node that made it.",
                ),
            ],
            outputs=[
                io.AnyType.Output("passthrough_out", display_name="passthrough",
                                  tooltip="The input value, unchanged."),
                io.String.Output("table", display_name="table",
                                 tooltip="A readable table of every figure, labelled by source."),
                io.Float.Output("gpu_free_gib", display_name="gpu_free_gib",
                                tooltip="NVML free memory of the first GPU in GiB (0 without a GPU)."),
                io.Float.Output("torch_allocated_gib", display_name="torch_allocated_gib",
                                tooltip="torch's live tensors on all CUDA devices in GiB (0 without CUDA)."),
                io.Float.Output("host_available_gib", display_name="host_available_gib",
                                tooltip="Host RAM available in GiB."),
            ],
            is_output_node=True,
            not_idempotent=True,
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs) -> float:
        return float("nan")  # a readout is never served from the cache

    @classmethod
    def execute(cls, passthrough=None) -> io.NodeOutput:
        readout = services().telemetry.read_gpu_memory()
        table = format_table(readout)
        numbers = readout.key_numbers()
        notify("gpu_memory", {"numbers": numbers, "status": readout.status})

        def gib(key: str) -> float:
            value = numbers.get(key)
            return round(float(value) / 2**30, 3) if value is not None else 0.0

        return io.NodeOutput(
            passthrough, table, gib("gpu_free_bytes"), gib("torch_allocated_bytes"), gib("host_available_bytes"),
            ui={"text": (table,)},
        )
