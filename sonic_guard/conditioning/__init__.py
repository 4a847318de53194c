"""Conditioning: what the denoiser is conditioned on.

In: the face crop of the portrait and the loaded audio. Out: `PreparedReference` (the square reference image and its
face mask) and `AudioFeatures` (whisper-tiny encoder layers per generated frame).
"""
