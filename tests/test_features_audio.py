"""Audio features: a tiny random Whisper encoder on real speech (espeak-ng) and a 65 s synthetic signal."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
from scipy.io import wavfile
from scipy.signal import resample_poly
from torch import nn
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

from sonic_guard.conditioning.audio_features import AudioFeatures, extract_audio_features
from sonic_guard.errors import BadAudioError

C = 64


@pytest.fixture(scope="module")
def encoder() -> nn.Module:
    torch.manual_seed(0)
    config = WhisperConfig(
        d_model=C, encoder_layers=4, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80, max_source_positions=1500,
        vocab_size=64, max_target_positions=16, pad_token_id=1, bos_token_id=2, eos_token_id=2,
        decoder_start_token_id=3,
    )
    return WhisperModel(config).eval().encoder


@pytest.fixture(scope="module")
def extractor() -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor()


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "The quick brown fox jumps over the lazy dog."], check=True)
    rate, pcm = wavfile.read(path)
    assert rate == 22050 and pcm.dtype == np.int16
    return resample_poly(pcm.astype(np.float32) / 32768.0, 320, 441).astype(np.float32)


@pytest.fixture(scope="module")
def speech_features(speech: np.ndarray, encoder: nn.Module, extractor: WhisperFeatureExtractor) -> AudioFeatures:
    return extract_audio_features(speech, encoder, extractor, device="cpu")


def _piece_states(piece: np.ndarray, encoder: nn.Module, extractor: WhisperFeatureExtractor) -> torch.Tensor:
    mel = extractor(piece, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        out = encoder(mel, output_hidden_states=True)
    return torch.stack(out.hidden_states, dim=2)[0]


def test_one_pass_gives_both_reference_outputs(encoder: nn.Module) -> None:
    mel = torch.randn(1, 80, 3000) * 0.5
    with torch.no_grad():
        with_states = encoder(mel, output_hidden_states=True)
        plain = encoder(mel)
    assert len(with_states.hidden_states) == 5
    assert torch.equal(with_states.hidden_states[-1], with_states.last_hidden_state)
    assert torch.equal(with_states.hidden_states[-1], plain.last_hidden_state)


def test_speech_features_shapes_padding_and_values(
    speech: np.ndarray, speech_features: AudioFeatures, encoder: nn.Module, extractor: WhisperFeatureExtractor
) -> None:
    feats = speech_features
    frames = speech.shape[0] // 640
    w = 2 * frames
    assert feats.num_frames_25fps == frames
    assert feats.num_generated_frames == frames // 2
    assert feats.multi_layer.shape == (w + 10, 5, C)
    assert feats.last_layer.shape == (w + 50, 1, C)
    assert feats.multi_layer.device.type == "cpu" and feats.multi_layer.dtype == torch.float32
    # zero padding in hidden-state space
    assert not feats.multi_layer[:4].any() and not feats.multi_layer[-6:].any()
    assert not feats.last_layer[:24].any() and not feats.last_layer[-26:].any()
    expected = _piece_states(speech, encoder, extractor)[:w]
    assert torch.equal(feats.multi_layer[4:-6], expected)
    assert torch.equal(feats.last_layer[24:-26, 0], expected[:, -1])
    # real speech gives non-constant states over time
    assert expected[:, -1].std(dim=0).mean() > 1e-3


def test_window_arithmetic_by_hand(speech_features: AudioFeatures) -> None:
    feats = speech_features
    states = feats.multi_layer[4:-6]  # unpadded Whisper frames
    last = states[:, -1:]
    n = feats.num_generated_frames
    tok = feats.token_windows([0, 1, n - 1])
    bkt = feats.bucket_windows([0, 1, n - 1])
    assert tok.shape == (3, 10, 5, C) and bkt.shape == (3, 50, 1, C)
    # frame 0: 4 zero rows, then Whisper frames 0..5
    assert not tok[0, :4].any() and torch.equal(tok[0, 4:], states[0:6])
    # frame 1: Whisper frames 0..9 (4i-4 .. 4i+6)
    assert torch.equal(tok[1], states[0:10])
    # frame 0 bucket: 24 zero rows then Whisper frames 0..25; frame 1: 20 zeros then frames 0..29
    assert not bkt[0, :24].any() and torch.equal(bkt[0, 24:], last[0:26])
    assert not bkt[1, :20].any() and torch.equal(bkt[1, 20:], last[0:30])
    # last frame: Whisper frames [4(n-1)-4, 4(n-1)+6), zero rows only where that runs past W
    w = states.shape[0]
    lo, hi = 4 * (n - 1) - 4, 4 * (n - 1) + 6
    inside = min(hi, w) - lo
    assert torch.equal(tok[2, :inside], states[lo : lo + inside])
    assert not tok[2, inside:].any()
    blo, bhi = 4 * (n - 1) - 24, 4 * (n - 1) + 26
    binside = min(bhi, w) - blo
    assert torch.equal(bkt[2, :binside], last[blo : blo + binside]) and not bkt[2, binside:].any()
    with pytest.raises(IndexError):
        feats.token_windows([n])


def test_hand_made_states_index_rule() -> None:
    # states numbered by Whisper frame so every row says where it came from
    w = 20
    states = torch.arange(1, w + 1, dtype=torch.float32)[:, None, None].expand(w, 5, 2).clone()
    feats = AudioFeatures(
        multi_layer=torch.cat([torch.zeros(4, 5, 2), states, torch.zeros(6, 5, 2)]),
        last_layer=torch.cat([torch.zeros(24, 1, 2), states[:, -1:], torch.zeros(26, 1, 2)]),
        num_frames_25fps=10,
    )
    assert feats.num_generated_frames == 5
    rows = feats.token_windows([0, 1, 4])[:, :, 0, 0]
    assert rows[0].tolist() == [0, 0, 0, 0, 1, 2, 3, 4, 5, 6]
    assert rows[1].tolist() == list(range(1, 11))
    assert rows[2].tolist() == [13, 14, 15, 16, 17, 18, 19, 20, 0, 0]  # frames 12..19 then 2 zero rows
    buckets = feats.bucket_windows([4])[0, :, 0, 0]
    assert buckets.tolist() == [0.0] * 8 + list(range(1, 21)) + [0.0] * 22


class _PieceRecorder(nn.Module):
    """Wraps the real encoder and records the batch shape of every call."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, input_features: torch.Tensor, **kwargs: object) -> object:
        self.shapes.append(tuple(input_features.shape))
        return self.inner(input_features, **kwargs)


def test_65s_crosses_30s_boundaries_as_independent_pieces(
    encoder: nn.Module, extractor: WhisperFeatureExtractor
) -> None:
    t = np.arange(65 * 16000) / 16000
    # a chirp with an amplitude envelope so the pieces differ
    audio = (0.3 * np.sin(2 * np.pi * (200 + 20 * t) * t) * (0.6 + 0.4 * np.sin(0.7 * t))).astype(np.float32)
    recorder = _PieceRecorder(encoder)
    feats = extract_audio_features(audio, recorder, extractor)
    assert recorder.shapes == [(1, 80, 3000)] * 3  # one 30 s piece at a time
    frames = 65 * 16000 // 640
    assert feats.num_frames_25fps == frames == 1625
    assert feats.multi_layer.shape[0] == 2 * frames + 10
    second = _piece_states(audio[480_000:960_000], encoder, extractor)
    third = _piece_states(audio[960_000:], encoder, extractor)
    body = feats.multi_layer[4:-6]
    # no context across the boundary: rows 1500.. are exactly the second piece encoded alone
    assert torch.equal(body[1500:3000], second)
    assert torch.equal(body[3000:], third[: 2 * frames - 3000])
    # a generated frame whose token window straddles the 30 s boundary (frame 375 starts at Whisper row 1500)
    tok = feats.token_windows([375])[0]
    assert torch.equal(tok[:4], body[1496:1500]) and torch.equal(tok[4:], second[:6])


@pytest.mark.parametrize(
    ("waveform", "word"),
    [
        (np.zeros((2, 16000), dtype=np.float32), "mono"),
        (np.zeros(16000, dtype=np.int16), "float"),
        (np.full(16000, np.nan, dtype=np.float32), "NaN"),
        (np.zeros(1279, dtype=np.float32), "too short"),
    ],
)
def test_bad_waveforms_say_what_to_do(
    waveform: np.ndarray, word: str, encoder: nn.Module, extractor: WhisperFeatureExtractor
) -> None:
    with pytest.raises(BadAudioError) as err:
        extract_audio_features(waveform, encoder, extractor)
    assert word in str(err.value) and "Fix:" in str(err.value)


def test_shortest_valid_clip_has_one_frame(encoder: nn.Module, extractor: WhisperFeatureExtractor) -> None:
    feats = extract_audio_features(np.zeros(1280, dtype=np.float32), encoder, extractor)
    assert feats.num_generated_frames == 1
    assert feats.token_windows([0]).shape == (1, 10, 5, C)
