"""Generic frame arithmetic: samples -> mel frames, conv output lengths, windows.

Every function here is pure integer arithmetic with no STFT and no model, so
``find_length`` can run over millions of clips before training. The length rule of
each encoder family lives in that family's module (``contaudio/encoders/<family>.py``)
and is proven there against HF's own model for every mel length in a range.
"""

from __future__ import annotations

from collections.abc import Callable
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


def windowed_rows(
    mel_len: IntOrTensor, rows_in_window: Callable[[IntOrTensor], IntOrTensor], window_frames: int
) -> IntOrTensor:
    """Rows of a clip encoded as consecutive windows of ``window_frames`` frames.

    Every window but the last is full: ``rows = (M // W) * g(W) + g(M % W)``
    for the per-window rule ``g`` (which must give ``g(0) = 0``). For a clip that
    fits one window (``M <= W``) this is just ``g(M)``.

    >>> windowed_rows(6001, conv_out, 3000), windowed_rows(3000, conv_out, 3000), windowed_rows(0, conv_out, 3000)
    (3001, 1500, 0)
    """
    return (mel_len // window_frames) * rows_in_window(window_frames) + rows_in_window(mel_len % window_frames)
