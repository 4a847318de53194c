"""Every node id of the pack, in one place. Ids are stable: retire a node with `is_deprecated`, never rename."""

PREFIX = "SonicGuard"
CATEGORY = "Sonic Guard"

MODEL_LOADER = f"{PREFIX}ModelLoader"
GENERATE = f"{PREFIX}Generate"
PLAN = f"{PREFIX}Plan"
LOAD_AUDIO = f"{PREFIX}LoadAudio"
LOAD_IMAGE = f"{PREFIX}LoadImage"
GPU_MEMORY = f"{PREFIX}GpuMemoryReadout"
PROFILING_TAG = f"{PREFIX}ProfilingTag"

ALL_NODE_IDS = (MODEL_LOADER, GENERATE, PLAN, LOAD_IMAGE, LOAD_AUDIO, GPU_MEMORY, PROFILING_TAG)
