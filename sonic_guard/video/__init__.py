"""Video: latents to a playable mp4 with audio, streamed.

In: latents, the VAE, RIFE and the audio. Out: frames decoded chunk by chunk, interpolated to 25 fps, smoothed,
encoded as they arrive (PyAV), with the lip-sync offset measured; nothing grows with the length of the audio.
"""
