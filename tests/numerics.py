"""Tolerances for numerical tests, from measured floating-point noise rather than guesses.

Two kinds of check:

* Algebra (chunking, regrouping, splitting a batch, another implementation of the same maths) runs in float64,
  where kernel choice moves results by ~1e-16 relative, so a tight bound holds on any machine:
  `FLOAT64_ALGEBRA_RTOL` of the output scale. The small random UNets of these tests amplify rounding by up to
  ~1e5 (measured in float32: errors up to 1.3e-2 of the output scale at eps 1.2e-7, at an 8 x 8 latent whose
  innermost block is 1 x 1); 1e6 * eps64 (2.2e-10) leaves a factor 10 over that.
* Float32 results of two kernels for the same maths (a batch of 3 vs 1, another chunk size) each carry their own
  rounding error; `fp32_tolerance` measures it in the test, as the float32 run's error against a float64 run of the
  same module, and allows `factor` times it (their difference is at most twice the error of each; the rest covers
  a kernel that rounds a little worse than the one measured).
"""

from __future__ import annotations

import torch

FLOAT32_EPS = torch.finfo(torch.float32).eps
FLOAT64_ALGEBRA_RTOL = 1e6 * torch.finfo(torch.float64).eps
FP32_NOISE_FACTOR = 8.0


def output_scale(tensor: torch.Tensor) -> float:
    """The largest magnitude in `tensor` (what tolerances are relative to)."""
    return float(tensor.detach().abs().max())


def algebra_atol(reference: torch.Tensor) -> float:
    """Absolute tolerance for a float64 algebra check against `reference`."""
    return FLOAT64_ALGEBRA_RTOL * output_scale(reference)


def fp32_noise(fp32: torch.Tensor, fp64: torch.Tensor) -> float:
    """The float32 run's own error: its largest difference from the float64 run of the same module and inputs."""
    return float((fp32.detach().double() - fp64.detach().double()).abs().max())


def fp32_tolerance(fp32: torch.Tensor, fp64: torch.Tensor, factor: float = FP32_NOISE_FACTOR) -> float:
    """Absolute tolerance for comparing another float32 kernel's result with `fp32`: `factor` times the measured
    float32 noise, floored at one float32 rounding step of the output scale (a run may round exactly)."""
    return factor * max(fp32_noise(fp32, fp64), FLOAT32_EPS * output_scale(fp64))
