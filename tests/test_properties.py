"""Property-based tests (hypothesis): the length rules, and preprocess/find_length/encode agreement.

Every test is derandomized (a fixed seed per test, no example database), so CI runs the
same examples each time; deadlines are off because a test never asserts a wall-clock time.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import soxr
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from contaudio.audio import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from contaudio.encoders.qwen2_5_omni import qwen2_5_omni_rows
from contaudio.lengths import ceil_div, mel_frames, resampled_length

DETERMINISTIC = settings(derandomize=True, database=None, deadline=None, print_blob=True)
CHEAP = settings(DETERMINISTIC, max_examples=300)
ENCODER = settings(DETERMINISTIC, max_examples=30)

HOP = 160
SR = 16000
counts = st.integers(min_value=0, max_value=10**12)
rates = st.integers(min_value=MIN_SAMPLE_RATE, max_value=MAX_SAMPLE_RATE)
COMMON_RATES = (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000, 96000)


# --------------------------------------------------------------------------- pure arithmetic
@CHEAP
@given(a=counts, b=st.integers(min_value=1, max_value=10**6))
def test_ceil_div_is_the_ceiling(a: int, b: int) -> None:
    c = ceil_div(a, b)
    assert c == math.ceil(Fraction(a, b)) == (a + b - 1) // b
    assert (c - 1) * b < a <= c * b
    assert ceil_div(torch.tensor([a]), b).item() == c


@CHEAP
@given(n1=counts, n2=counts)
def test_mel_frames_is_monotone_and_exact(n1: int, n2: int) -> None:
    lo, hi = sorted((n1, n2))
    assert mel_frames(lo, HOP) <= mel_frames(hi, HOP)
    assert mel_frames(lo, HOP) == math.ceil(Fraction(lo, HOP))
    assert mel_frames(lo + HOP, HOP) == mel_frames(lo, HOP) + 1


@CHEAP
@given(m1=st.integers(min_value=0, max_value=10**9), m2=st.integers(min_value=0, max_value=10**9))
def test_qwen2_5_omni_rows_is_monotone_and_four_frames_per_row(m1: int, m2: int) -> None:
    lo, hi = sorted((m1, m2))
    assert qwen2_5_omni_rows(lo) <= qwen2_5_omni_rows(hi)
    # conv2 halves (ceil), the pool halves (floor): rows = ceil(M / 2) // 2
    assert qwen2_5_omni_rows(lo) == math.ceil(Fraction(lo, 2)) // 2
    if lo >= 1:
        assert qwen2_5_omni_rows(lo + 4) == qwen2_5_omni_rows(lo) + 1
    as_tensor = qwen2_5_omni_rows(torch.tensor([lo, hi]))
    assert as_tensor.tolist() == [qwen2_5_omni_rows(lo), qwen2_5_omni_rows(hi)]


@CHEAP
@given(
    num_samples=st.integers(min_value=1, max_value=20_000),
    orig_sr=st.one_of(st.sampled_from(COMMON_RATES), rates),
    target_sr=st.one_of(st.just(SR), rates),
)
def test_resampled_length_is_what_soxr_returns(num_samples: int, orig_sr: int, target_sr: int) -> None:
    expected = resampled_length(num_samples, orig_sr, target_sr)
    assume(expected <= 2_000_000)  # keep each example cheap
    assert len(soxr.resample(np.zeros(num_samples, np.float32), orig_sr, target_sr)) == expected
    assert expected == math.floor(Fraction(num_samples * target_sr, orig_sr) + Fraction(1, 2))


@CHEAP
@given(n1=counts, n2=counts, sr=rates)
def test_resampled_length_is_monotone(n1: int, n2: int, sr: int) -> None:
    lo, hi = sorted((n1, n2))
    assert resampled_length(lo, sr, SR) <= resampled_length(hi, sr, SR)


@CHEAP
@given(samples=st.lists(st.integers(min_value=0, max_value=10**10), min_size=1, max_size=8))
def test_find_length_int_and_tensor_agree(tiny_io, samples: list[int]) -> None:
    as_tensor = tiny_io.find_length(torch.tensor(samples))
    assert as_tensor.dtype == torch.long
    assert as_tensor.tolist() == [tiny_io.find_length(n) for n in samples]


# --------------------------------------------------------------------------- with the encoder
@ENCODER
@given(
    num_samples=st.lists(st.integers(min_value=1, max_value=70_000), min_size=1, max_size=3),
    sr=st.sampled_from(COMMON_RATES),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_preprocess_find_length_and_encoder_agree(tiny_io, num_samples: list[int], sr: int, seed: int) -> None:
    """For random clips (up to 4.4 s, > 2 attention chunks): T == find_length == encoder rows."""
    rng = np.random.default_rng(seed)
    mels, rows = [], []
    for n in num_samples:
        if resampled_length(n, sr, SR) == 0:
            continue  # preprocess and find_length both refuse it (tests/test_bad_inputs.py)
        wav = (rng.standard_normal(n) * 0.1).astype(np.float32)
        tokens, (t, mel), mask = tiny_io.preprocess((wav, sr))
        at_model_rate = resampled_length(n, sr, SR)
        assert mel.shape == (mel_frames(at_model_rate, HOP), tiny_io.n_mels)
        assert t == tiny_io.find_length((wav, sr)) == tiny_io.find_length(at_model_rate)
        assert tokens.shape == mask.shape == (t, 1)
        mels.append(mel)
        rows.append(t)
    assume(mels)
    lengths = torch.tensor([m.shape[0] for m in mels])
    batch = torch.zeros(len(mels), int(lengths.max()), tiny_io.n_mels)
    for i, mel in enumerate(mels):
        batch[i, : mel.shape[0]] = torch.from_numpy(mel)
    with torch.inference_mode():
        feats = tiny_io.encode_batch(batch, lengths)
    assert [f.shape[0] for f in feats] == rows
    assert all(f.shape[1] == tiny_io.feature_dim() and torch.isfinite(f).all() for f in feats)
