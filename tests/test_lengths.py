"""Length rules vs the real encoder, exhaustively over a range of mel lengths."""

from __future__ import annotations

import doctest

import pytest
import torch

import contaudio.lengths as lengths
from contaudio.lengths import ceil_div, mel_frames, qwen2_5_omni_rows

CHUNK_FRAMES = 200  # Qwen2.5-Omni: 2 * n_window
HOP = 160


def test_doctests() -> None:
    assert doctest.testmod(lengths).failed == 0


def test_qwen2_5_omni_rule_equals_real_encoder_for_every_m(tiny_io) -> None:
    """Every M in 1..650 (crosses three 200-frame chunk boundaries), one padded batch per block."""
    dim = tiny_io.feature_dim()
    for start in range(1, 651, 50):
        ms = torch.arange(start, start + 50)
        mel = torch.randn(len(ms), int(ms.max()), tiny_io.n_mels)
        with torch.inference_mode():
            feats = tiny_io.encode_batch(mel, ms)
        got = [f.shape[0] for f in feats]
        assert got == qwen2_5_omni_rows(ms).tolist(), f"mismatch for M in {start}..{start + 49}"
        assert all(f.shape[1] == dim for f in feats)


def test_qwen2_5_omni_rule_equals_hf_output_lengths(tiny_io) -> None:
    """Same numbers as HF's own _get_feat_extract_output_lengths for every M in 1..5000."""
    ms = torch.arange(1, 5001)
    _, hf_rows = tiny_io.encoder._get_feat_extract_output_lengths(ms)
    assert torch.equal(qwen2_5_omni_rows(ms), torch.clamp(hf_rows, min=0))


@pytest.mark.parametrize("m", [1, 2, 3, 4, 199, 200, 201, 399, 400, 401, 30000, 30001])
def test_int_and_tensor_rules_agree(m: int) -> None:
    assert qwen2_5_omni_rows(m) == int(qwen2_5_omni_rows(torch.tensor([m]))[0])


@pytest.mark.parametrize("k", [1, 2, 100, 30000])
@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_mel_frames_around_hop_multiples(k: int, delta: int) -> None:
    n = k * HOP + delta
    assert mel_frames(n, HOP) == -(-n // HOP) == ceil_div(n, HOP)
    assert int(mel_frames(torch.tensor(n), HOP)) == mel_frames(n, HOP)
