"""Gemma 3n's log-mel against HF's Gemma3nAudioFeatureExtractor called as Gemma3nProcessor calls it: values on every
valid frame, the frame count, 30 s pieces for longer clips, the settings it refuses, the bug the mutation injects."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.audio import noise
from transformers import Gemma3nAudioFeatureExtractor

from contaudio.features import featurizer_from_dict
from contaudio.features.gemma3n import MAX_LENGTH, Gemma3nLogMel

TOLERANCE = 1e-4  # the contract; measured <= 1e-6 (the FFT runs in float64, as HF's numpy rfft)
CFG = Gemma3nLogMel()
OFFICIAL = {  # the audio part of the Gemma 3n checkpoints' processor config, image processor keys included
    "feature_extractor_type": "Gemma3nAudioFeatureExtractor", "feature_size": 128, "sampling_rate": 16000,
    "frame_length": 512, "hop_length": 160, "fft_length": 1024, "fft_overdrive": True, "dither": 0.0,
    "input_scale_factor": 1.0, "max_frequency": 7600.0, "min_frequency": 125.0, "mel_floor": 1e-05,
    "padding_side": "right", "padding_value": 0.0, "per_bin_mean": None, "per_bin_stddev": None, "preemphasis": 0.97,
    "preemphasis_htk_flavor": True, "return_attention_mask": True, "image_processor_type": "SiglipImageProcessorFast",
    "image_mean": [0.5, 0.5, 0.5], "processor_class": "Gemma3nProcessor",
}  # fmt: skip
# around the first frame (513 samples after padding to 128), frame and padding edges, 1 s, and 30 s
LENGTHS = [1, 384, 385, 512, 513, 640, 641, 767, 768, 769, 800, 895, 896, 897, 1601, 16000, 16001, 40000,
           MAX_LENGTH - 1, MAX_LENGTH]  # fmt: skip


@pytest.fixture(scope="module")
def extractor() -> Gemma3nAudioFeatureExtractor:
    return CFG.hf_extractor()


def hf_frames(extractor: Gemma3nAudioFeatureExtractor, wav: np.ndarray) -> np.ndarray:
    """HF's valid frames ``[F, n_mels]`` as Gemma3nProcessor calls the extractor (its defaults)."""
    out = extractor(wav, return_tensors="np")
    return out["input_features"][0][out["input_features_mask"][0]]


def tone(num_samples: int, hz: float = 440.0) -> np.ndarray:
    """A pure tone: mel bands far from it sit ~1e-7 below the frame's peak (a float32 FFT misses them by 4e-2)."""
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(num_samples) / 16000)).astype(np.float32)


@pytest.mark.parametrize("num_samples", LENGTHS)
def test_matches_hf_on_every_valid_frame(extractor, rng, num_samples: int) -> None:
    wav = noise(rng, num_samples)
    ours = CFG.compute(torch.from_numpy(wav)).numpy()
    ref = hf_frames(extractor, wav)
    assert ours.shape == ref.shape == (CFG.frames(num_samples), 128)
    assert ours.size == 0 or np.abs(ours - ref).max() <= TOLERANCE


def test_matches_hf_on_speech_tones_and_near_silence(extractor, speech_clips, rng) -> None:
    clips = {**speech_clips, "tone": tone(24000), "quiet": noise(rng, 20000, scale=1e-5), "silence": np.zeros(9000)}
    for name, wav in clips.items():
        wav = wav.astype(np.float32)
        assert np.abs(CFG.compute(torch.from_numpy(wav)).numpy() - hf_frames(extractor, wav)).max() <= TOLERANCE, name


def test_frames_rule_equals_hfs_mask_for_every_length_and_is_integer_arithmetic(extractor) -> None:
    # every residue of N modulo 640 (the padding's 128 and the hop's 160) twice, and the last frames of 30 s
    lengths = list(range(0, 1300)) + [MAX_LENGTH - k for k in (640, 513, 512, 160, 128, 1, 0)]
    hf = [int(extractor(np.zeros(n, np.float32))["input_features_mask"][0].sum()) if n else 0 for n in lengths]
    assert CFG.frames(torch.tensor(lengths)).tolist() == hf == [CFG.frames(n) for n in lengths]
    assert CFG.frames(16000) == 97 and CFG.frames(512) == 0 and CFG.frames(513) == 1  # no 30 s padding, ever


def test_longer_clips_are_30s_pieces_each_as_hf_gives_it_never_cut(extractor, rng) -> None:
    wav = noise(rng, MAX_LENGTH + 40000)
    assert int(extractor(wav)["input_features_mask"][0].sum()) == CFG.frames(MAX_LENGTH)  # HF cuts at 30 s
    ours = CFG.compute(torch.from_numpy(wav)).numpy()
    pieces = np.concatenate([hf_frames(extractor, wav[:MAX_LENGTH]), hf_frames(extractor, wav[MAX_LENGTH:])])
    assert ours.shape == pieces.shape == (CFG.frames(len(wav)), 128) == (2997 + 248, 128)
    assert np.abs(ours - pieces).max() <= TOLERANCE


@pytest.mark.parametrize(
    "settings",
    [{"preemphasis": 0.0}, {"preemphasis_htk_flavor": False}, {"input_scale_factor": 2.0, "padding_value": 0.5},
     {"feature_size": 32, "fft_overdrive": False, "frame_length_ms": 25.0, "min_frequency": 0.0},
     {"per_bin_mean": np.linspace(-10, -5, 128).tolist(), "per_bin_stddev": np.linspace(1, 3, 128).tolist()}],
    ids=["no-preemphasis", "plain-preemphasis", "scaled-padded", "other-frames", "per-bin-statistics"],
)  # fmt: skip
def test_other_settings_match_hf(rng, settings: dict) -> None:
    cfg = Gemma3nLogMel.from_dict({"feature_extractor_type": CFG.extractor_type, **settings})
    extractor = cfg.hf_extractor()
    for num_samples in (cfg.frame_length + 1, 1000, 16001):
        wav = noise(rng, num_samples)
        ours, ref = cfg.compute(torch.from_numpy(wav)).numpy(), hf_frames(extractor, wav)
        assert ours.shape == ref.shape and np.abs(ours - ref).max() <= TOLERANCE, num_samples


def test_reads_the_checkpoints_config_and_hfs_own_saved_config() -> None:
    assert featurizer_from_dict(OFFICIAL) == CFG
    assert featurizer_from_dict(CFG.hf_extractor().to_dict()) == CFG
    statistics = {"per_bin_mean": [[list(range(128))]], "per_bin_stddev": [1.0] * 128}  # HF saves [1, 1, n_mels]
    assert featurizer_from_dict({**OFFICIAL, **statistics}).per_bin_mean == tuple(float(v) for v in range(128))


@pytest.mark.parametrize(
    ("change", "message"),
    [({"dither": 1e-4}, "dither"), ({"padding_side": "left"}, "padding_side"),
     ({"frame_length": 400}, "frame_length_ms"), ({"hop_length": 256}, "hop_length_ms"),
     ({"fft_length": 512}, "fft_overdrive"), ({"per_bin_mean": [0.0] * 64}, "per_bin_mean")],
)  # fmt: skip
def test_refuses_what_it_cannot_reproduce_and_says_which_key(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        featurizer_from_dict({**OFFICIAL, **change})


def test_known_bug_is_far_from_hf_with_the_same_frames(extractor, rng) -> None:
    wav = noise(rng, 16000)
    buggy = CFG.with_known_bug()
    assert buggy.frames(16000) == CFG.frames(16000) and buggy.hf_extractor().to_dict() == extractor.to_dict()
    assert np.abs(buggy.compute(torch.from_numpy(wav)).numpy() - hf_frames(extractor, wav)).max() > 1.0


def test_batch_equals_one_by_one(rng) -> None:
    wavs = [torch.from_numpy(noise(rng, n)) for n in (100, 513, 16000, 41000)]
    for ours, alone in zip(CFG.compute_batch(wavs), [CFG.compute(w) for w in wavs], strict=True):
        torch.testing.assert_close(ours, alone, atol=0, rtol=0)
