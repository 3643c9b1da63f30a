"""Batched log-mel (``log_mel_batch``) and ``preprocess_batch`` equal their one-clip-at-a-time versions.

Equal within ``BATCHED_ATOL`` (1e-6), not bit for bit: a batched STFT and GEMM run other vectorised
kernels than a single clip's, and which ones depends on the CPU (AVX2, AVX-512, AMX); the last float32
bit may differ (1 ulp measured). The maths is the same; a wrong padding or clamp differs by far more.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.audio import SAMPLE_RATE, noise

from contaudio.features import (
    BATCHED_ATOL,
    FeatureConfig,
    fits_batched_stft,
    log_mel,
    log_mel_batch,
    stft_blocks,
    stft_length,
    whisper,
)

QWEN_CFG = FeatureConfig(chunk_length=300)
ONE_SECOND_CFG = FeatureConfig(chunk_length=1)  # n_samples = 16000: the extractor's cap is cheap to reach
HOP = QWEN_CFG.hop_length
HALF_WINDOW = QWEN_CFG.n_fft // 2
# around one hop, one window, and the 1-s cap (n_samples - n_fft // 2 - 1 is the last clip that batches)
LENGTHS = [1, 2, 159, 160, 161, 399, 400, 401, 3200, 16000 - HALF_WINDOW - 1, 16000 - HALF_WINDOW, 15999, 16000, 16001]
BLOCK_BUDGETS = [None, 1, 64, 1024]


def per_clip(wavs: list[np.ndarray], cfg: FeatureConfig) -> list[torch.Tensor]:
    return [log_mel(wav, cfg) for wav in wavs]


@pytest.mark.parametrize("cfg", [QWEN_CFG, ONE_SECOND_CFG], ids=["300s", "1s-cap"])
@pytest.mark.parametrize("budget", BLOCK_BUDGETS)
def test_equals_per_clip(rng, cfg: FeatureConfig, budget: int | None) -> None:
    wavs = [noise(rng, n, scale=rng.uniform(1e-3, 1.0)) for n in LENGTHS]
    batched = log_mel_batch(wavs, cfg, max_block_frames=budget)
    for wav, ours, ref in zip(wavs, batched, per_clip(wavs, cfg), strict=True):
        assert ours.shape == ref.shape, len(wav)
        torch.testing.assert_close(ours, ref, atol=BATCHED_ATOL, rtol=0, msg=f"{len(wav)} samples")


def test_cap_fallback_is_needed(monkeypatch) -> None:
    """Near the cap the extractor's end mirror holds clip samples: a batch padded past it would differ."""
    near_cap = [16000 - HALF_WINDOW - 1, 16000 - HALF_WINDOW, 16000, 16001]
    assert [fits_batched_stft(n, ONE_SECOND_CFG) for n in near_cap] == [True, False, False, True]
    wavs = [np.linspace(-1.0, 1.0, 16000 - 1, dtype=np.float32), np.zeros(16001, dtype=np.float32)]
    monkeypatch.setattr(whisper, "fits_batched_stft", lambda num_samples, cfg: True)
    naive = log_mel_batch(wavs, ONE_SECOND_CFG, max_block_frames=None)[0]
    assert (naive - log_mel(wavs[0], ONE_SECOND_CFG)).abs().max() > 1000 * BATCHED_ATOL


def test_each_clip_clamps_to_its_own_maximum(rng) -> None:
    """A loud clip next to a quiet one in the same STFT must not raise the quiet clip's floor."""
    quiet = noise(rng, 4000, scale=1e-4)
    quiet[::400] = 1e-2  # structure spanning > 8 log10 units below a loud clip's peak
    loud = noise(rng, 4800, scale=10.0)
    click = np.full(1600, 1e-4, dtype=np.float32)
    click[-5:] = 1.0  # peak only in frames past ceil(N / hop): the clamp must see them
    wavs = [quiet, loud, click]
    for ours, ref in zip(log_mel_batch(wavs, QWEN_CFG, max_block_frames=None), per_clip(wavs, QWEN_CFG), strict=True):
        torch.testing.assert_close(ours, ref, atol=BATCHED_ATOL, rtol=0)


def test_outputs_own_their_memory(rng) -> None:
    out = log_mel_batch([noise(rng, 1600), noise(rng, 3200)], QWEN_CFG, max_block_frames=None)
    assert all(mel.is_contiguous() and mel.untyped_storage().nbytes() == mel.nbytes for mel in out)


def test_blocks_cover_every_clip_within_budget() -> None:
    sizes = [16000, 160, 480000, 3200, 3199, 1, 64000]
    budget = 512
    blocks = stft_blocks(sizes, QWEN_CFG, budget)
    assert sorted(i for block in blocks for i in block) == list(range(len(sizes)))
    for block in blocks:
        padded_frames = len(block) * max(stft_length(sizes[i], QWEN_CFG) // HOP + 1 for i in block)
        assert len(block) == 1 or padded_frames <= budget
    assert stft_blocks(sizes, QWEN_CFG, None) == [sorted(range(len(sizes)), key=lambda i: -sizes[i])]
    assert stft_blocks([], QWEN_CFG, budget) == []


def test_rejects_multichannel() -> None:
    with pytest.raises(ValueError, match="mono"):
        log_mel_batch([np.zeros((2, 1600), dtype=np.float32)], QWEN_CFG)


def test_preprocess_batch_equals_preprocess(tiny_io, rng) -> None:
    stereo = np.stack([noise(rng, 22050), noise(rng, 22050)])  # resampled and downmixed
    batch = [(noise(rng, 16000), SAMPLE_RATE), (noise(rng, 100), SAMPLE_RATE), (stereo, 22050), (noise(rng, 7), 16000)]
    for data, ours in zip(batch, tiny_io.preprocess_batch(batch), strict=True):
        ref = tiny_io.preprocess(data)
        assert ours[1][0] == ref[1][0]
        np.testing.assert_allclose(ours[1][1], ref[1][1], atol=BATCHED_ATOL, rtol=0)
        assert np.array_equal(ours[0], ref[0]) and np.array_equal(ours[2], ref[2])
