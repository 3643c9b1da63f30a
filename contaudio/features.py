"""Whisper-compatible log-mel features computed on the clip's own length.

HF's ``WhisperFeatureExtractor`` (which Qwen's processors use) zero-pads every
clip to ``n_samples`` (300 s for Qwen2.5-Omni) before its STFT. The valid frames
only see the clip plus zeros, so computing the STFT on the clip padded *just
past its end* gives the same values, provided the dynamic-range clamp
``max(log_spec, log_spec.max() - 8)`` takes its maximum over the frames the
extractor sees that are not pure silence: every frame whose window overlaps the
clip (frames of pure padding sit at the floor and never hold the maximum).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from transformers.audio_utils import mel_filter_bank

from contaudio.lengths import mel_frames

LOG_FLOOR = 1e-10  # power floor before log10, as in Whisper
DYNAMIC_RANGE = 8.0  # log10 units kept below the clip's maximum (80 dB)
LOG_OFFSET = 4.0  # Whisper's affine rescale: (log_spec + 4) / 4
LOG_SCALE = 4.0
WHISPER_MEL_FMAX = 8000.0  # the extractor's fixed upper mel edge (Hz)


@dataclass(frozen=True)
class FeatureConfig:
    """The parts of a ``preprocessor_config.json`` that define the features."""

    sampling_rate: int = 16000
    feature_size: int = 128  # n_mels
    n_fft: int = 400
    hop_length: int = 160
    chunk_length: int = 30  # seconds the HF extractor pads every clip to
    padding_value: float = 0.0
    dither: float = 0.0

    @property
    def n_mels(self) -> int:
        return self.feature_size

    @property
    def n_samples(self) -> int:
        """Samples the HF extractor pads to: ``chunk_length * sampling_rate``."""
        return self.chunk_length * self.sampling_rate

    @property
    def max_frames(self) -> int:
        """Frames the HF extractor returns: ``n_samples // hop_length`` (30000 for 300 s)."""
        return self.n_samples // self.hop_length

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FeatureConfig:
        """Build from a ``preprocessor_config.json`` dict, ignoring unrelated keys."""
        kind = raw.get("feature_extractor_type", "WhisperFeatureExtractor")
        if kind != "WhisperFeatureExtractor":
            raise ValueError(f"unsupported feature extractor {kind!r}; only WhisperFeatureExtractor is implemented")
        known = {k: raw[k] for k in asdict(cls()) if k in raw}
        cfg = cls(**known)
        if cfg.dither != 0.0:
            raise ValueError(f"dither={cfg.dither} makes features random; contaudio supports dither=0.0 only")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return {"feature_extractor_type": "WhisperFeatureExtractor", **asdict(self)}


@lru_cache(maxsize=8)
def mel_filters(cfg: FeatureConfig) -> torch.Tensor:
    """``[n_fft // 2 + 1, n_mels]`` float32 Slaney mel matrix, identical to the extractor's."""
    filters = mel_filter_bank(
        num_frequency_bins=1 + cfg.n_fft // 2,
        num_mel_filters=cfg.n_mels,
        min_frequency=0.0,
        max_frequency=WHISPER_MEL_FMAX,
        sampling_rate=cfg.sampling_rate,
        norm="slaney",
        mel_scale="slaney",
    )
    return torch.from_numpy(filters).float()


@lru_cache(maxsize=8)
def hann_window(n_fft: int) -> torch.Tensor:
    return torch.hann_window(n_fft)


def frames_seen(num_samples: int, cfg: FeatureConfig) -> int:
    """Frames whose analysis window overlaps the clip: ``f * hop - n_fft // 2 < N``.

    Capped at ``max_frames`` for clips the extractor would hold whole (it drops
    the STFT's last frame). The clamp maximum is taken over these frames.

    >>> frames_seen(16000, FeatureConfig())
    102
    """
    seen = (num_samples + cfg.n_fft // 2 - 1) // cfg.hop_length + 1
    return min(seen, cfg.max_frames) if num_samples <= cfg.n_samples else seen


def stft_length(num_samples: int, cfg: FeatureConfig) -> int:
    """Samples to zero-pad the clip to so every frame we keep sees what the extractor sees.

    The STFT's reflect padding mirrors the last ``n_fft // 2`` samples before the
    end; padding at least ``n_fft // 2 + 1`` zeros makes that mirror pure
    silence. A clip the extractor holds whole is padded to ``n_samples`` exactly,
    so the mirror near 300 s is the extractor's too.
    """
    needed = num_samples + cfg.n_fft // 2 + 1
    return min(needed, cfg.n_samples) if num_samples <= cfg.n_samples else needed


def log_mel(wav: np.ndarray | torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """Log-mel of one mono clip: ``[N]`` float -> ``[ceil(N / hop), n_mels]`` float32.

    Equal to ``WhisperFeatureExtractor(...)(wav, padding="max_length")`` on its
    ``ceil(N / hop)`` valid frames, at a cost proportional to N rather than 300 s.
    """
    wav = torch.as_tensor(wav, dtype=torch.float32)
    num_samples = wav.shape[-1]
    padded = torch.nn.functional.pad(wav, (0, stft_length(num_samples, cfg) - num_samples))
    seen = frames_seen(num_samples, cfg)
    spec = torch.stft(padded, cfg.n_fft, cfg.hop_length, window=hann_window(cfg.n_fft), return_complex=True)
    power = spec[:, :seen].abs().square()  # [n_freq, seen]
    log_spec = (power.T @ mel_filters(cfg)).clamp_(min=LOG_FLOOR).log10_()  # [seen, n_mels]
    log_spec = torch.maximum(log_spec, log_spec.max() - DYNAMIC_RANGE)
    valid = log_spec[: mel_frames(num_samples, cfg.hop_length)]
    return ((valid + LOG_OFFSET) / LOG_SCALE).contiguous()


def fits_batched_stft(num_samples: int, cfg: FeatureConfig) -> bool:
    """Whether a clip's frames are unchanged by zero-padding it further than :func:`stft_length`.

    True unless the extractor's ``n_samples`` cap applies (``n_samples - n_fft // 2 - 1 < N <= n_samples``):
    those clips are padded to exactly ``n_samples`` so their end mirror holds clip samples, as the extractor's.
    """
    return stft_length(num_samples, cfg) == num_samples + cfg.n_fft // 2 + 1


def log_mel_batch(wavs: list[np.ndarray | torch.Tensor], cfg: FeatureConfig) -> list[torch.Tensor]:
    """Log-mel of several mono clips with ONE batched STFT: ``[N_i]`` each -> ``[ceil(N_i / hop), n_mels]`` each.

    Equal to ``[log_mel(w, cfg) for w in wavs]``: every clip is zero-padded to
    the longest clip's :func:`stft_length` (more zeros past a clip never change
    its frames, see :func:`fits_batched_stft`), and each clip's clamp maximum is
    taken over its own :func:`frames_seen` frames. Clips within ``n_fft // 2``
    samples below ``n_samples`` go through :func:`log_mel` one by one.
    """
    clips = [torch.as_tensor(wav, dtype=torch.float32) for wav in wavs]
    out: list[torch.Tensor | None] = [None] * len(clips)
    batched = []
    for index, clip in enumerate(clips):
        if clip.ndim != 1:
            raise ValueError(f"clip {index} must be mono [N], got shape {tuple(clip.shape)}")
        if fits_batched_stft(clip.shape[0], cfg):
            batched.append(index)
        else:
            out[index] = log_mel(clip, cfg)
    if batched:
        lengths = [clips[index].shape[0] for index in batched]
        padded = torch.zeros(len(batched), max(stft_length(n, cfg) for n in lengths))
        for row, index in enumerate(batched):
            padded[row, : lengths[row]] = clips[index]
        seen = torch.tensor([frames_seen(n, cfg) for n in lengths])
        spec = torch.stft(padded, cfg.n_fft, cfg.hop_length, window=hann_window(cfg.n_fft), return_complex=True)
        power = spec[:, :, : int(seen.max())].abs().square()  # [B, n_freq, max_seen]
        log_spec = (power.transpose(1, 2) @ mel_filters(cfg)).clamp_(min=LOG_FLOOR).log10_()  # [B, max_seen, n_mels]
        past_seen = torch.arange(log_spec.shape[1]) >= seen[:, None]  # [B, max_seen]
        peak = log_spec.masked_fill(past_seen[:, :, None], -torch.inf).amax(dim=(1, 2))  # [B]
        log_spec = torch.maximum(log_spec, (peak - DYNAMIC_RANGE)[:, None, None])
        log_spec = (log_spec + LOG_OFFSET) / LOG_SCALE
        for row, index in enumerate(batched):
            out[index] = log_spec[row, : mel_frames(lengths[row], cfg.hop_length)].clone()
    return out
