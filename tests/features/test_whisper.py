"""Log-mel parity with HF's WhisperFeatureExtractor as Qwen2.5-Omni configures it (300 s padding)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers.audio import noise
from helpers.checkpoints import card_extractor
from helpers.families import needs_family
from transformers import WhisperFeatureExtractor

from contaudio.encoders import all_cards, get_family
from contaudio.features import FeatureConfig, featurizer_from_dict, frames_seen, log_mel, mel_filters
from contaudio.lengths import mel_frames

QWEN_CFG = FeatureConfig(chunk_length=300)
TOLERANCE = 1e-4
HOP = QWEN_CFG.hop_length
N_SAMPLES = QWEN_CFG.n_samples


@pytest.fixture(scope="module")
def extractor() -> WhisperFeatureExtractor:
    return WhisperFeatureExtractor(
        feature_size=128, chunk_length=300, n_fft=400, hop_length=HOP, sampling_rate=16000, return_attention_mask=True
    )


def hf_valid_frames(extractor: WhisperFeatureExtractor, wav: np.ndarray) -> np.ndarray:
    out = extractor(wav, sampling_rate=16000, padding="max_length", return_attention_mask=True, return_tensors="np")
    valid = int(out["attention_mask"].sum())
    return out["input_features"][0][:, :valid].T


LENGTHS = [
    1, 2, 100, 159, 160, 161, 199, 200, 201, 319, 320, 321, 399, 400, 401, 559, 560, 561,
    16000, 16001, 112123, N_SAMPLES - HOP - 1, N_SAMPLES - 201, N_SAMPLES - 1, N_SAMPLES,
]  # fmt: skip


@pytest.mark.parametrize("num_samples", LENGTHS)
def test_matches_hf_extractor_on_every_valid_frame(extractor, rng, num_samples: int) -> None:
    wav = (rng.standard_normal(num_samples) * 0.1).astype(np.float32)
    ours = log_mel(wav, QWEN_CFG).numpy()
    ref = hf_valid_frames(extractor, wav)
    assert ours.shape == ref.shape == (mel_frames(num_samples, HOP), 128)
    assert np.abs(ours - ref).max() <= TOLERANCE


def test_matches_hf_on_real_speech(extractor, speech_clips) -> None:
    for wav in speech_clips.values():
        assert np.abs(log_mel(wav, QWEN_CFG).numpy() - hf_valid_frames(extractor, wav)).max() <= TOLERANCE


def test_clamp_uses_frames_past_the_end(extractor) -> None:
    """A loud click in the last samples raises the clamp floor via frames beyond ceil(N/160)."""
    wav = np.full(1600, 1e-4, dtype=np.float32)
    wav[-5:] = 1.0
    assert frames_seen(len(wav), QWEN_CFG) > mel_frames(len(wav), HOP)
    assert np.abs(log_mel(wav, QWEN_CFG).numpy() - hf_valid_frames(extractor, wav)).max() <= TOLERANCE


def test_silence_is_floor(extractor) -> None:
    wav = np.zeros(3200, dtype=np.float32)
    np.testing.assert_allclose(log_mel(wav, QWEN_CFG).numpy(), hf_valid_frames(extractor, wav), atol=TOLERANCE)


def test_mel_filters_are_the_extractors(extractor) -> None:
    np.testing.assert_array_equal(mel_filters(QWEN_CFG).numpy(), extractor.mel_filters.astype(np.float32))


def test_from_dict_reads_preprocessor_config(extractor) -> None:
    cfg = FeatureConfig.from_dict(extractor.to_dict())
    assert cfg == QWEN_CFG and cfg.max_frames == 30000 and cfg.n_samples == 4_800_000


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"feature_extractor_type": "Wav2Vec2FeatureExtractor"}, "unsupported feature extractor"),
        ({"feature_extractor_type": "WhisperFeatureExtractor", "dither": 1e-4}, "dither"),
    ],
)
def test_from_dict_rejects_what_it_cannot_reproduce(raw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        featurizer_from_dict(raw)


def test_a_config_without_extractor_type_is_whispers(extractor) -> None:
    raw = {k: v for k, v in extractor.to_dict().items() if k != "feature_extractor_type"}
    assert featurizer_from_dict(raw) == QWEN_CFG


def test_known_bug_is_the_70_db_clamp_and_changes_loud_clips(rng) -> None:
    buggy = QWEN_CFG.with_known_bug()
    assert buggy.dynamic_range == 7.0 and buggy.to_dict() == QWEN_CFG.to_dict()
    wav = noise(rng, 16000) * np.exp(-np.linspace(0, 30, 16000)).astype(np.float32)  # decays by > 100 dB
    assert float((log_mel(wav, buggy) - log_mel(wav, QWEN_CFG)).abs().max()) > 0.1


WHISPER_CARDS = [
    pytest.param(name, marks=needs_family(card.family))
    for name, card in sorted(all_cards().items())
    if card.feature_extractor.get("feature_extractor_type", FeatureConfig.extractor_type)
    == FeatureConfig.extractor_type
]


CARD_SIZES = [1, 2, 159, 160, 161, 399, 400, 401, 16000, 16001, 112123]  # + the last samples of the padding


@pytest.mark.parametrize("card", WHISPER_CARDS)
def test_every_cards_features_match_its_own_extractor(rng, card: str) -> None:
    """Each shipped card's preprocessor config through HF's extractor vs our actual-length log-mel,
    up to the end of the extractor's padding (30 s for the window families, 300 s for Qwen-Omni)."""
    extractor = card_extractor(card)
    cfg = FeatureConfig.from_dict(extractor.to_dict())
    family = get_family(all_cards()[card].family)
    assert cfg.n_mels == all_cards()[card].encoder_config["num_mel_bins"]
    assert cfg.max_frames == (family.window_frames or family.default_features.max_frames)
    assert (cfg.sampling_rate, cfg.hop_length, cfg.n_fft) == (16000, HOP, 400)
    n = cfg.n_samples
    for num_samples in [*CARD_SIZES, n - HOP - 1, n - 201, n - 1, n]:
        wav = noise(rng, num_samples)
        out = extractor(wav, sampling_rate=16000, padding="max_length", return_attention_mask=True, return_tensors="np")
        ref = out["input_features"][0][:, : int(out["attention_mask"].sum())].T
        ours = log_mel(wav, cfg).numpy()
        assert ours.shape == ref.shape == (mel_frames(num_samples, HOP), cfg.n_mels), num_samples
        assert np.abs(ours - ref).max() <= TOLERANCE, num_samples
