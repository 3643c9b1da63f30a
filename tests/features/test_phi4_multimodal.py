"""Phi-4-multimodal's featurizer against HF's own ``Phi4MultimodalFeatureExtractor``.

Values within 1e-4 on every frame (noise, speech, speech-like clips with silences, edge lengths around
the 400-sample window and 160-sample hop, a clip past one FFT block); the frame rule against the
extractor's features and its batch attention mask; what ``from_dict`` refuses; the known bug.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.audio import noise
from helpers.checkpoints import TINY_PHI4_MULTIMODAL, card_extractor

from contaudio.encoders import find_card
from contaudio.features import featurizer_from_dict, samples_for_frames
from contaudio.features.phi4_multimodal import BLOCK_FRAMES, Phi4MultimodalFeatures
from experiments.common import speechlike_clip

pytestmark = pytest.mark.usefixtures("one_thread")
FEATURES = Phi4MultimodalFeatures()
TOLERANCE = 1e-4  # the bound; measured <= 1.9e-6 (float32 ulps of log values up to ~20)
WIN, HOP = FEATURES.win_length, FEATURES.hop_length
# the shortest clip (one window), edges of the hop past it, 1 s, odd sizes
EDGE_SIZES = [WIN, WIN + 1, WIN + HOP - 1, WIN + HOP, WIN + HOP + 1, 16000, 16001, 16159, 16160, 16161, 112123]
LONG_SIZE = (BLOCK_FRAMES + 2) * HOP + WIN  # frames in two FFT blocks


def hf_features(extractor, wav: np.ndarray) -> torch.Tensor:
    """HF's extractor on one audio as ``Phi4MultimodalProcessor`` passes it: ``[F, 80]``."""
    return extractor([wav], sampling_rate=16000, return_tensors="pt")["audio_input_features"][0]


def assert_equal_to_hf(extractor, clips: dict[str, np.ndarray], features: Phi4MultimodalFeatures = FEATURES) -> None:
    for name, wav in clips.items():
        reference = hf_features(extractor, wav)
        ours = features.compute(torch.from_numpy(wav))
        assert ours.shape == reference.shape == (features.frames(len(wav)), features.n_mels), name
        assert float((ours - reference).abs().max()) <= TOLERANCE, name


def test_equals_hfs_extractor_on_noise_speech_and_edge_lengths(rng, speech_clips) -> None:
    clips = {f"noise {n}": noise(rng, n) for n in EDGE_SIZES}
    clips |= {f"loud {n}": noise(rng, n, scale=0.9) for n in (WIN, 16000)}
    clips |= {f"quiet {n}": noise(rng, n, scale=1e-4) for n in (WIN, 16000)}
    clips |= {f"speech-like {n}": speechlike_clip(rng, n, 16000) for n in (16000, 48000)}
    clips |= {f"{name} ({len(wav)})": wav for name, wav in speech_clips.items()}
    clips |= {f"{name} cut to {n}": wav[:n] for name, wav in speech_clips.items() for n in (12345, 32001)}
    clips |= {f"two FFT blocks {LONG_SIZE}": noise(rng, LONG_SIZE)}
    assert_equal_to_hf(FEATURES.hf_extractor(), clips)


def test_equals_hf_with_other_settings(rng) -> None:
    """Every setting HF reads is reproduced, not just the defaults."""
    features = Phi4MultimodalFeatures(feature_size=64, hop_length=100, n_fft=1024, win_length=512, preemphasis=0.9,
                                      mel_min_frequency=50.0, mel_max_frequency=8000.0)  # fmt: skip
    assert_equal_to_hf(features.hf_extractor(), {f"noise {n}": noise(rng, n) for n in (512, 613, 16000)}, features)


def test_frames_equal_hfs_features_and_batch_mask() -> None:
    """``frames(N) = (N - 400) // 160 + 1`` is the extractor's frame count (its mask next to a 1 s clip, its
    features alone) from one window to 0.1 s and at every hop edge, as an int and as a tensor; below one
    window there are none and HF's extractor raises."""
    extractor = FEATURES.hf_extractor()
    sizes = sorted(
        {*range(WIN, WIN + 4 * HOP, 7), *(WIN + k * HOP + d for k in range(4) for d in (-1, 0, 1))} - {WIN - 1}
    )
    longer = np.zeros(16000, dtype=np.float32)
    masks = [extractor([np.zeros(n, dtype=np.float32), longer], sampling_rate=16000, return_tensors="pt")
             ["audio_attention_mask"][0] for n in sizes]  # fmt: skip
    ours = FEATURES.frames(torch.tensor(sizes))
    assert ours.dtype == torch.long and ours.tolist() == [int(mask.sum()) for mask in masks]
    for n in sizes[::10]:
        alone = hf_features(extractor, np.zeros(n, dtype=np.float32)).shape[0]
        assert FEATURES.frames(n) == alone == int(FEATURES.frames(torch.tensor(n))), n
    for n in (0, 1, HOP, WIN - 1):
        assert FEATURES.frames(n) == 0 and FEATURES.compute(torch.zeros(n)).shape == (0, FEATURES.n_mels)
    with pytest.raises(RuntimeError):
        hf_features(extractor, np.zeros(WIN - 1, dtype=np.float32))


def test_m_frames_come_from_one_hop_of_sample_counts() -> None:
    """``M >= 1`` frames: ``(M - 1) * 160 + 400 .. M * 160 + 399`` samples (what length_check's extreme N are)."""
    for frames in range(1, 50):
        first = (frames - 1) * HOP + WIN
        assert samples_for_frames(FEATURES, frames) == (first, first + HOP - 1)


def test_card_and_config_round_trip() -> None:
    """The shipped cards hold the preprocessor config HF saves (which omits the mel range: HF rebuilds it from its
    defaults), it picks this featurizer with HF's defaults, and ``to_dict`` round-trips."""
    card = find_card(TINY_PHI4_MULTIMODAL)
    assert card.feature_extractor == card_extractor(TINY_PHI4_MULTIMODAL).to_dict()
    assert card.feature_extractor == FEATURES.hf_extractor().to_dict()
    assert featurizer_from_dict(card.feature_extractor) == FEATURES
    assert featurizer_from_dict(FEATURES.to_dict()) == FEATURES


@pytest.mark.parametrize(
    ("setting", "message"),
    [({"audio_feat_stride": 2}, "audio_feat_stride=2"), ({"audio_compression_rate": 4}, "audio_compression_rate=4"),
     ({"audio_downsample_rate": 2}, "audio_downsample_rate=2"), ({"n_fft": 256}, "n_fft=256"),
     ({"feature_extractor_type": "WhisperFeatureExtractor"}, "is not Phi4MultimodalFeatureExtractor")],
)  # fmt: skip
def test_from_dict_refuses_what_it_cannot_reproduce(setting: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Phi4MultimodalFeatures.from_dict({**FEATURES.to_dict(), **setting})


def test_known_bug_changes_values_not_frames(rng) -> None:
    """``with_known_bug`` (a periodic Hamming window) moves the features far past the tolerance, frames unchanged."""
    wav = noise(rng, 16000)
    buggy = FEATURES.with_known_bug()
    reference = hf_features(FEATURES.hf_extractor(), wav)
    assert buggy.frames(len(wav)) == FEATURES.frames(len(wav))
    assert float((buggy.compute(torch.from_numpy(wav)) - reference).abs().max()) > 100 * TOLERANCE
    assert "periodic_window" not in buggy.to_dict()
