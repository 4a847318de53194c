"""decode_stream with a real (small, random) diffusers AutoencoderKLTemporalDecoder."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKLTemporalDecoder

from sonic_guard.video.decode import SVD_LATENT_SCALE, decode_stream, vae_chunk_decoder


@pytest.fixture(scope="module")
def vae() -> AutoencoderKLTemporalDecoder:
    torch.manual_seed(0)
    vae = AutoencoderKLTemporalDecoder(block_out_channels=(32,), layers_per_block=1, latent_channels=4)
    return vae.eval()


def _latents(frames: int = 7) -> torch.Tensor:
    return torch.randn(frames, 4, 16, 16, generator=torch.Generator().manual_seed(1)) * SVD_LATENT_SCALE


def test_frames_match_a_chunked_decode_of_unscaled_latents(vae: AutoencoderKLTemporalDecoder) -> None:
    latents = _latents(7)
    progress: list[tuple[int, int]] = []
    frames = list(
        decode_stream(
            latents, vae_chunk_decoder(vae), chunk_size=3, on_chunk=lambda d, t: progress.append((d, t))
        )
    )
    assert progress == [(3, 7), (6, 7), (7, 7)]
    assert len(frames) == 7
    expected = []
    with torch.no_grad():
        for start in range(0, 7, 3):
            chunk = latents[start : start + 3] / SVD_LATENT_SCALE
            expected.append(vae.decode(chunk, num_frames=chunk.shape[0]).sample * 0.5 + 0.5)
    reference = torch.cat(expected).clamp(0, 1)
    for index, frame in enumerate(frames):
        assert frame.shape == (3, 16, 16) and frame.dtype == torch.float32 and frame.device.type == "cpu"
        assert 0.0 <= frame.min() and frame.max() <= 1.0
        torch.testing.assert_close(frame, reference[index], atol=1e-5, rtol=1e-5)
    # The temporal decoder mixes frames inside a call: chunking is a real choice, not a no-op.
    with torch.no_grad():
        whole = (vae.decode(latents / SVD_LATENT_SCALE, num_frames=7).sample * 0.5 + 0.5).clamp(0, 1)
    assert not torch.allclose(whole, reference, atol=1e-4)


def test_decoding_is_lazy_and_each_frame_owns_its_memory(vae: AutoencoderKLTemporalDecoder) -> None:
    calls: list[int] = []
    decoder = vae_chunk_decoder(vae)

    def counting(chunk: torch.Tensor) -> torch.Tensor:
        calls.append(chunk.shape[0])
        return decoder(chunk)

    stream = decode_stream(_latents(10), counting, chunk_size=4, dtype=torch.float32)
    first = next(stream)
    assert calls == [4]  # only the first chunk exists so far
    # A kept frame does not pin its whole chunk.
    assert first.untyped_storage().nbytes() == first.numel() * first.element_size()
    rest = list(stream)
    assert calls == [4, 4, 2] and len(rest) == 9


def test_on_chunk_can_cancel(vae: AutoencoderKLTemporalDecoder) -> None:
    class Cancelled(RuntimeError):
        pass

    def cancel(done: int, total: int) -> None:
        if done >= 4:
            raise Cancelled

    seen = []
    with pytest.raises(Cancelled):
        for frame in decode_stream(_latents(10), vae_chunk_decoder(vae), chunk_size=4, on_chunk=cancel):
            seen.append(frame)
    assert seen == []  # cancelled before the first chunk's frames were handed on


def test_reduced_precision_decode_returns_float32_frames(vae: AutoencoderKLTemporalDecoder) -> None:
    bf16 = AutoencoderKLTemporalDecoder(block_out_channels=(32,), layers_per_block=1).eval()
    bf16.load_state_dict(vae.state_dict())
    bf16.to(torch.bfloat16)
    frames = list(decode_stream(_latents(3), vae_chunk_decoder(bf16), chunk_size=2, dtype=torch.bfloat16))
    reference = list(decode_stream(_latents(3), vae_chunk_decoder(vae), chunk_size=2))
    assert all(frame.dtype == torch.float32 for frame in frames)
    for low, high in zip(frames, reference):
        assert (low - high).abs().max() < 0.05


def test_rejects_bad_shapes(vae: AutoencoderKLTemporalDecoder) -> None:
    with pytest.raises(ValueError):
        next(decode_stream(torch.zeros(4, 16, 16), vae_chunk_decoder(vae), chunk_size=2))
    with pytest.raises(ValueError):
        next(decode_stream(_latents(2), vae_chunk_decoder(vae), chunk_size=0))


def test_out_of_memory_halves_the_chunk_and_keeps_going(vae: AutoencoderKLTemporalDecoder) -> None:
    decoder = vae_chunk_decoder(vae)
    sizes: list[int] = []

    def fits_two(chunk: torch.Tensor) -> torch.Tensor:
        sizes.append(chunk.shape[0])
        if chunk.shape[0] > 2:  # a device with room for two frames at a time
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return decoder(chunk)

    downgrades: list[tuple[int, int]] = []
    stream = decode_stream(
        _latents(7), fits_two, chunk_size=8, on_downgrade=lambda old, new: downgrades.append((old, new))
    )
    frames = list(stream)
    assert downgrades == [(8, 4), (4, 2)]
    assert sizes == [7, 4, 2, 2, 2, 1]
    # The same frames as a plain run with chunks of two.
    reference = list(decode_stream(_latents(7), decoder, chunk_size=2))
    assert len(frames) == 7 and all(torch.equal(a, b) for a, b in zip(frames, reference))

    def never_fits(chunk: torch.Tensor) -> torch.Tensor:
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(torch.OutOfMemoryError):
        next(decode_stream(_latents(3), never_fits, chunk_size=4))
