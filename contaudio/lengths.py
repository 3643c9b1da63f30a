"""Frame arithmetic: samples -> mel frames -> encoder rows.

Every function here is pure integer arithmetic with no STFT and no model, so
``find_length`` can run over millions of clips before training. Each rule is
proven against the real encoder in ``tests/test_lengths.py`` for every mel
length in a range that crosses several chunk boundaries.
"""

from __future__ import annotations

from typing import TypeVar

import torch

IntOrTensor = TypeVar("IntOrTensor", int, torch.Tensor)


def ceil_div(a: IntOrTensor, b: int) -> IntOrTensor:
    """``ceil(a / b)`` for non-negative integers (works on ints and integer tensors).

    >>> ceil_div(161, 160), ceil_div(160, 160), ceil_div(0, 160)
    (2, 1, 0)
    """
    return -((-a) // b)


def resampled_length(num_samples: int, orig_sr: int, target_sr: int) -> int:
    """Samples that soxr returns when resampling ``num_samples`` from ``orig_sr`` to ``target_sr``.

    soxr rounds half up: ``round(num_samples * target_sr / orig_sr)``.

    >>> resampled_length(44100, 44100, 16000), resampled_length(3, 22050, 16000)
    (16000, 2)
    """
    return (num_samples * target_sr + orig_sr // 2) // orig_sr


def mel_frames(num_samples: IntOrTensor, hop_length: int) -> IntOrTensor:
    """Valid log-mel frames for a clip of ``num_samples``: ``ceil(N / hop)``.

    This is the number of ones in the attention mask of Qwen's processor
    (``max_length`` padding), independent of the rest of the batch.

    >>> mel_frames(16000, 160), mel_frames(16001, 160), mel_frames(1, 160)
    (100, 101, 1)
    """
    return ceil_div(num_samples, hop_length)


def conv_out(length: IntOrTensor, stride: int = 2) -> IntOrTensor:
    """Output length of a ``kernel=3, padding=1`` convolution with ``stride``: ``(L - 1) // s + 1``.

    Only valid for ``L >= 1``.

    >>> conv_out(200), conv_out(7), conv_out(1)
    (100, 4, 1)
    """
    return (length - 1) // stride + 1


def qwen2_5_omni_rows(mel_len: IntOrTensor) -> IntOrTensor:
    """Rows the Qwen2.5-Omni audio tower returns for ``mel_len`` mel frames.

    conv2 (stride 2) gives ``T = (M - 1) // 2 + 1`` rows (per 200-frame chunk,
    which sums to the same over the clip); the stride-2 average pool over the
    whole clip then keeps ``(T - 2) // 2 + 1`` rows, i.e. ``T // 2``. Clips
    with ``M <= 2`` give 0 rows.

    >>> [qwen2_5_omni_rows(m) for m in (1, 2, 3, 4, 5, 100, 3000, 30000)]
    [0, 0, 1, 1, 1, 25, 750, 7500]
    """
    after_conv = conv_out(mel_len)
    if isinstance(after_conv, torch.Tensor):
        return torch.where(mel_len >= 1, after_conv // 2, torch.zeros_like(after_conv))
    return after_conv // 2 if mel_len >= 1 else 0
