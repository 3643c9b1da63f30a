"""Qwen3-ASR's extractor on the clip alone: every valid frame equal to HF's ``Qwen3ASRFeatureExtractor`` as its
processor calls it (``padding=True``), frame counts equal to HF's mask, including the 0.5 s minimum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.audio import noise

from contaudio.features.qwen3_asr import Qwen3ASRFeatures

CFG = Qwen3ASRFeatures()
TOLERANCE = 1e-4
# below / at / above the 0.5 s minimum, around a hop, a window, 1 s, and a long clip
LENGTHS = [1, 199, 7999, 8000, 8001, 8159, 8160, 16000, 16159, 16160, 16161, 112123, 480001]


def hf_alone(wav: np.ndarray) -> tuple[np.ndarray, int]:
    out = CFG.hf_extractor()(wav, sampling_rate=16000, padding=True, truncation=False, return_attention_mask=True)
    valid = int(out["attention_mask"].sum())
    return out["input_features"][0][:, :valid].T.numpy(), valid


@pytest.mark.parametrize("num_samples", LENGTHS)
def test_every_valid_frame_equals_hfs_extractor(rng, num_samples: int) -> None:
    wav = noise(rng, num_samples, scale=rng.uniform(1e-3, 1.0))
    ref, valid = hf_alone(wav)
    ours = CFG.compute(torch.from_numpy(wav))
    assert ours.shape[0] == valid == CFG.frames(num_samples)
    assert np.abs(ours.numpy() - ref).max() <= TOLERANCE


def test_speech_like_clips(speech_clips) -> None:
    for name, wav in speech_clips.items():
        ref, _ = hf_alone(wav)
        assert np.abs(CFG.compute(torch.from_numpy(wav)).numpy() - ref).max() <= TOLERANCE, name


def test_frames_of_a_tensor_of_counts() -> None:
    counts = torch.tensor(LENGTHS)
    assert CFG.frames(counts).tolist() == [CFG.frames(n) for n in LENGTHS]


def test_known_bug_changes_a_decaying_clip(rng) -> None:
    wav = torch.from_numpy(noise(rng, 16000) * np.exp(-np.linspace(0, 30, 16000)).astype(np.float32))
    assert float((CFG.with_known_bug().compute(wav) - CFG.compute(wav)).abs().max()) > 0.1


def test_from_dict_reads_the_extractors_own_config() -> None:
    raw = CFG.hf_extractor().to_dict()
    assert Qwen3ASRFeatures.from_dict(raw) == CFG
    with pytest.raises(ValueError, match="dither"):
        Qwen3ASRFeatures.from_dict({**raw, "dither": 0.1})
