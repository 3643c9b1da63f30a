"""Generic frame arithmetic: ceil division, resampled and mel lengths, conv outputs, windows.

Each rule is checked against the thing it predicts (soxr's output, a torch conv's output, an
explicit cut into windows). The families' length rules are checked in their own test files.
"""

from __future__ import annotations

import numpy as np
import pytest
import soxr
import torch

from contaudio.lengths import ceil_div, conv_out, mel_frames, resampled_length, windowed_rows

HOP = 160


def test_ceil_div_on_ints_and_tensors() -> None:
    values = torch.arange(0, 1000)
    expected = [-(-v // 160) for v in values.tolist()]
    assert [ceil_div(v, 160) for v in values.tolist()] == expected
    assert ceil_div(values, 160).tolist() == expected


@pytest.mark.parametrize("k", [1, 2, 100, 30000])
@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_mel_frames_around_hop_multiples(k: int, delta: int) -> None:
    n = k * HOP + delta
    assert mel_frames(n, HOP) == -(-n // HOP) == ceil_div(n, HOP)
    assert int(mel_frames(torch.tensor(n), HOP)) == mel_frames(n, HOP)


@pytest.mark.parametrize(("orig_sr", "target_sr"), [(44100, 16000), (22050, 16000), (8000, 16000), (48000, 24000)])
def test_resampled_length_is_what_soxr_returns(orig_sr: int, target_sr: int) -> None:
    for num_samples in (1, 2, 3, 7, 100, 441, 1001, 44100, 44101, 96007):
        out = soxr.resample(np.zeros(num_samples, dtype=np.float32), orig_sr, target_sr)
        assert resampled_length(num_samples, orig_sr, target_sr) == len(out), num_samples


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_conv_out_is_a_k3_p1_convs_output_length(stride: int) -> None:
    conv = torch.nn.Conv1d(1, 1, kernel_size=3, stride=stride, padding=1)
    lengths_t = torch.arange(1, 60)
    with torch.inference_mode():
        torch_lengths = [conv(torch.zeros(1, 1, n)).shape[-1] for n in lengths_t.tolist()]
    assert [conv_out(n, stride) for n in lengths_t.tolist()] == torch_lengths
    assert conv_out(lengths_t, stride).tolist() == torch_lengths


def test_windowed_rows_sums_the_rule_over_an_explicit_cut_into_windows() -> None:
    window = 30
    for m in range(0, 200):
        pieces = [min(window, m - start) for start in range(0, m, window)]
        assert windowed_rows(m, conv_out, window) == sum(conv_out(p) for p in pieces), m
    ms = torch.arange(0, 200)
    assert windowed_rows(ms, conv_out, window).tolist() == [windowed_rows(m, conv_out, window) for m in range(200)]
