"""Frame arithmetic: samples -> mel frames -> encoder rows.

Every function here is pure integer arithmetic with no STFT and no model, so
``find_length`` can run over millions of clips before training. Each rule is
proven against the real encoder in ``tests/test_lengths.py`` for every mel
length in a range that crosses several chunk boundaries.
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


QWEN3_OMNI_CHUNK_FRAMES = 100  # 2 * n_window (50): Qwen3-Omni's conv stack runs on 1 s chunks
WINDOW_FRAMES = 3000  # Whisper-style encoders: max_source_positions (1500) * conv2 stride (2) = 30 s of 10 ms frames


def qwen3_omni_rows(mel_len: IntOrTensor) -> IntOrTensor:
    """Rows the Qwen3-Omni audio tower returns for ``mel_len`` mel frames.

    The mel is cut into chunks of 100 frames (the last one shorter); three
    ``k3 s2 p1`` convolutions turn a chunk of ``r`` frames into
    ``f(r) = conv_out(conv_out(conv_out(r)))`` rows, 13 for a full chunk. So
    ``rows = f(M % 100) + 13 * (M // 100)`` with
    ``f(r) = ((((r - 1) // 2 + 1) - 1) // 2 + 1 - 1) // 2 + 1``; ``f(0) = 0``
    (a multiple of 100 frames has no tail chunk).

    >>> [qwen3_omni_rows(m) for m in (0, 1, 2, 8, 9, 99, 100, 101, 199, 200, 450)]
    [0, 1, 1, 1, 2, 13, 13, 14, 26, 26, 59]
    """
    tail = conv_out(conv_out(conv_out(mel_len % QWEN3_OMNI_CHUNK_FRAMES)))
    full_chunk = conv_out(conv_out(conv_out(QWEN3_OMNI_CHUNK_FRAMES)))  # 13
    return tail + full_chunk * (mel_len // QWEN3_OMNI_CHUNK_FRAMES)


def windowed_rows(
    mel_len: IntOrTensor, rows_in_window: Callable[[IntOrTensor], IntOrTensor], window_frames: int = WINDOW_FRAMES
) -> IntOrTensor:
    """Rows of a clip encoded as consecutive windows of ``window_frames`` frames.

    Every window but the last is full: ``rows = (M // W) * g(W) + g(M % W)``
    for the per-window rule ``g`` (which must give ``g(0) = 0``). For a clip that
    fits one window (``M <= W``) this is just ``g(M)``.

    >>> windowed_rows(6001, conv_out), windowed_rows(3000, conv_out), windowed_rows(0, conv_out)
    (3001, 1500, 0)
    """
    return (mel_len // window_frames) * rows_in_window(window_frames) + rows_in_window(mel_len % window_frames)


def qwen2_audio_window_rows(mel_len: IntOrTensor) -> IntOrTensor:
    """Valid rows of one Qwen2-Audio window holding ``mel_len <= 3000`` real frames.

    conv2 (stride 2) leaves ``T = (M - 1) // 2 + 1`` valid rows, the stride-2
    average pool ``(T - 2) // 2 + 1 = T // 2`` (HF's ``_get_feat_extract_output_lengths``):
    750 for a full window, 0 for ``M <= 2``.

    >>> [qwen2_audio_window_rows(m) for m in (0, 1, 2, 3, 4, 5, 100, 2999, 3000)]
    [0, 0, 0, 1, 1, 1, 25, 750, 750]
    """
    return conv_out(mel_len) // 2


def whisper_rows(mel_len: IntOrTensor) -> IntOrTensor:
    """Valid rows the Whisper encoder returns for ``mel_len`` mel frames.

    Each clip is padded to one 3000-frame window; conv2 (stride 2) gives 1500
    rows, of which ``(M - 1) // 2 + 1`` hold the clip. Clips longer than a
    window (``long_clip="windows"``) are consecutive windows:
    ``1500 * (M // 3000) + conv_out(M % 3000)``.

    >>> [whisper_rows(m) for m in (0, 1, 2, 3, 2999, 3000, 3001, 6000, 7501)]
    [0, 1, 1, 2, 1500, 1500, 1501, 3000, 3751]
    """
    return windowed_rows(mel_len, conv_out)


def qwen2_audio_rows(mel_len: IntOrTensor) -> IntOrTensor:
    """Valid rows the Qwen2-Audio tower returns for ``mel_len`` mel frames (after its average pool).

    ``qwen2_audio_window_rows(M)`` (750 for a full 30 s window) for a clip that
    fits one window; longer clips (``long_clip="windows"``) are consecutive
    windows: ``750 * (M // 3000) + qwen2_audio_window_rows(M % 3000)``.

    >>> [qwen2_audio_rows(m) for m in (2, 3, 3000, 3001, 3003, 6000)]
    [0, 1, 750, 750, 751, 1500]
    """
    return windowed_rows(mel_len, qwen2_audio_window_rows)
