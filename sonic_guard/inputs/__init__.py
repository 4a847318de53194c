"""Inputs: the user's audio and portrait, read safely and checked.

In: file names (confined to the input folder) or ComfyUI AUDIO/IMAGE values. Out: `LoadedAudio` (mono float PCM at
16 kHz) and an RGB uint8 image, or a clear error saying what was wrong and how to fix it.
"""
