"""Padded batches and the silence a 30 s extractor pads with."""

from __future__ import annotations

import numpy as np
import torch

from contaudio.encoders.windows import WINDOW_FRAMES
from helpers.audio import noise


def padded_batch(mels: list[np.ndarray], extra: int = 0, fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``[M_i, n_mels]`` clips -> ``[B, max M_i + extra, n_mels]`` filled with ``fill`` past each clip, and ``[B]``."""
    lengths = torch.tensor([m.shape[0] for m in mels])
    batch = torch.full((len(mels), int(lengths.max()) + extra, mels[0].shape[1]), fill)
    for i, m in enumerate(mels):
        batch[i, : m.shape[0]] = torch.as_tensor(m)
    return batch, lengths


def noise_padded_batch(
    mels: list[np.ndarray], extra: int, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`padded_batch` with standard-normal noise (drawn from ``rng``) past every clip's end: padding that
    shows if it leaks into a clip's rows."""
    mel, lengths = padded_batch(mels, extra=extra)
    past_end = torch.arange(mel.shape[1]) >= lengths[:, None]
    mel[past_end] = torch.from_numpy(rng.standard_normal((int(past_end.sum()), mel.shape[2])).astype(np.float32))
    return mel, lengths


NOISE_LIKE_FILL = 0.5  # clips_and_batch's padding: a value a padding leak moves rows by


def clips_and_batch(io, samples: list[int]) -> tuple[list[np.ndarray], list, torch.Tensor, torch.Tensor]:
    """Noise clips of ``samples`` (seeded), ``io.preprocess`` of each and their mel batch padded with noise-like 0.5."""
    rng = np.random.default_rng(0)
    wavs = [noise(rng, n) for n in samples]
    pre = [io.preprocess((wav, io.sample_rate)) for wav in wavs]
    mel, lengths = padded_batch([p[1][1] for p in pre], extra=9, fill=NOISE_LIKE_FILL)
    return wavs, pre, mel, lengths


def silence_window(mel: torch.Tensor, level: float) -> torch.Tensor:
    """``mel`` followed by ``level`` up to 3000 frames (the extractor's silence after the clip)."""
    window = torch.full((WINDOW_FRAMES, mel.shape[1]), level)
    window[: mel.shape[0]] = mel
    return window


def expected_silence(mel: torch.Tensor) -> float:
    """The extractor floor, log10 max - 8 clamped at log10(1e-10), in its (x + 4) / 4 units."""
    return max(float(mel.max()) - 2.0, -1.5)


PADDING_GARBAGE = 1e3  # written past each clip's end by random_padded_batch: a leak of it shows at once


def random_padded_batch(lengths: list[int], extra: int = 7, n_mels: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Random mel ``[B, max + extra, n_mels]`` (seeded) with loud garbage past every clip's end, and ``[B]``."""
    generator = torch.Generator().manual_seed(0)
    lengths_t = torch.tensor(lengths)
    mel = torch.randn(len(lengths), max(lengths) + extra, n_mels, generator=generator)
    past_end = torch.arange(mel.shape[1]) >= lengths_t[:, None]
    return mel.masked_fill(past_end[:, :, None], PADDING_GARBAGE), lengths_t
