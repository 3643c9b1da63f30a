"""Collate preprocess outputs (or mel arrays) into ``encode_batch`` inputs.

``ContinuousAudioIO.preprocess`` returns ``(tokens [T, 1], (T, mel [M, n_mels]), loss_mask [T, 1])``
per clip; ``encode_batch`` wants one zero-padded ``mel [B, M_max, n_mels]``
float32 tensor and the valid frames ``lengths [B]``. :func:`collate_mels`
turns the former into the latter, in a data-loader ``collate_fn`` or by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from contaudio.lengths import ceil_div

PREPROCESS_ITEMS = 3  # (tokens, (rows, mel), loss_mask)
MelLike = np.ndarray | torch.Tensor


def mel_of(item: Any) -> MelLike:
    """The ``[M, n_mels]`` mel of a preprocess output, or ``item`` itself when it is already a mel."""
    if isinstance(item, tuple) and len(item) == PREPROCESS_ITEMS and isinstance(item[1], tuple):
        return item[1][1]
    if isinstance(item, (np.ndarray, torch.Tensor)):
        return item
    raise TypeError(
        f"expected a preprocess output (tokens, (rows, mel), loss_mask) or a mel array [M, n_mels], "
        f"got {type(item).__name__}"
    )


def collate_mels(items: Sequence[Any], pad_to_multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Preprocess outputs or mels ``[M_i, n_mels]`` -> ``(mel [B, M_max, n_mels] float32, lengths [B] int64)``.

    Frames past each clip's end are zero. ``M_max`` is the longest clip rounded
    up to ``pad_to_multiple`` (e.g. the encoder's chunk size, for fixed shapes).

    >>> mel, lengths = collate_mels([np.ones((3, 2)), np.ones((1, 2))], pad_to_multiple=2)
    >>> tuple(mel.shape), lengths.tolist(), mel[1].sum().item()
    ((2, 4, 2), [3, 1], 2.0)
    """
    if not items:
        raise ValueError("collate_mels needs at least one clip")
    if pad_to_multiple < 1:
        raise ValueError(f"pad_to_multiple must be >= 1, got {pad_to_multiple}")
    mels = [torch.as_tensor(mel_of(item), dtype=torch.float32) for item in items]
    n_mels = mels[0].shape[-1]
    for index, mel in enumerate(mels):
        if mel.ndim != 2 or mel.shape[1] != n_mels:  # M = 0: a clip too short for one frame (Gemma 3n: <= 512 samples)
            raise ValueError(f"clip {index}: mel must have shape [M, {n_mels}] like clip 0, got {tuple(mel.shape)}")
    lengths = torch.tensor([mel.shape[0] for mel in mels], dtype=torch.long)
    max_frames = ceil_div(int(lengths.max()), pad_to_multiple) * pad_to_multiple
    batch = torch.zeros(len(mels), max_frames, n_mels)
    for row, mel in enumerate(mels):
        batch[row, : mel.shape[0]] = mel
    return batch, lengths
