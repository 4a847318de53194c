"""Sampling: the UNet denoising loop over overlapping 25-frame windows.

In: `ClipConditioning` and the execution plan. Out: the denoised latents [N, 4, h, w] on the CPU. `multi_device`
splits each step's windows over several worker processes.
"""
