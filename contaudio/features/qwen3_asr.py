"""Qwen3-ASR's log-mel (``Qwen3ASRFeatureExtractor``): Whisper's log-mel on the clip as its processor takes it.

The extractor is Whisper's maths (Hann STFT, Slaney mel, log10, 80 dB clamp, ``(x + 4) / 4``)
with the processor's ``padding=True``: a clip is padded to the longest clip *of its call*, never
to 30 s, and clips shorter than ``min_length`` (8000 samples, 0.5 s) are zero-padded to it first.
The clip alone, as the model receives a single audio, is the reference: its ``L = max(N, 8000)``
samples are STFT'd with torch's centred (reflect) padding, the last frame is dropped, so it gets
``L // 160`` frames, all valid, clamped to its own maximum. (Next to a longer clip in one call
the same clip would get ``ceil(N / 160)`` frames with zeros instead of a reflected end: the result
of a batch depends on the batch, so contaudio takes the clip alone.)
The extractor then pads the frame axis to a multiple of ``2 * n_window`` with zeros; that is
the model's input layout (:meth:`contaudio.encoders.qwen3_asr.Qwen3ASR.hf_layout`), not a feature.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from transformers.models.qwen3_asr.feature_extraction_qwen3_asr import Qwen3ASRFeatureExtractor

from contaudio.features.base import register_featurizer
from contaudio.features.whisper import (
    LOG_FLOOR,
    LOG_MEL_BLOCK_FRAMES,
    LOG_OFFSET,
    LOG_SCALE,
    FeatureConfig,
    hann_window,
    mel_filters,
    power_spectrum,
)
from contaudio.lengths import IntOrTensor

QWEN3_ASR_MIN_SAMPLES = 8000  # the extractor's min_length: shorter clips are zero-padded to 0.5 s


def padded_samples(num_samples: IntOrTensor, min_length: int) -> IntOrTensor:
    """Samples the extractor computes on for a clip alone: ``max(N, min_length)``."""
    if isinstance(num_samples, torch.Tensor):
        return num_samples.clamp(min=min_length)
    return max(num_samples, min_length)


@register_featurizer
@dataclass(frozen=True)
class Qwen3ASRFeatures(FeatureConfig):
    """Qwen3-ASR's extractor settings; ``frames(N) = max(N, min_length) // hop``."""

    extractor_type: ClassVar[str] = "Qwen3ASRFeatureExtractor"
    n_window: int = 50
    min_length: int = QWEN3_ASR_MIN_SAMPLES

    def frames(self, num_samples: IntOrTensor) -> IntOrTensor:
        """Valid frames of a clip alone: ``max(N, min_length) // hop`` (the STFT's last frame is dropped).

        >>> cfg = Qwen3ASRFeatures()
        >>> [cfg.frames(n) for n in (1, 8000, 16000, 16159, 16160)]
        [50, 50, 100, 100, 101]
        """
        return padded_samples(num_samples, self.min_length) // self.hop_length

    def compute(self, wav: torch.Tensor) -> torch.Tensor:
        return qwen3_asr_log_mel(wav, self)

    def compute_batch(self, wavs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each clip on its own (its frames depend on its own end only)."""
        return [self.compute(wav) for wav in wavs]

    def hf_extractor(self) -> Qwen3ASRFeatureExtractor:
        return Qwen3ASRFeatureExtractor(**self.hf_settings())


def qwen3_asr_log_mel(wav: np.ndarray | torch.Tensor, cfg: Qwen3ASRFeatures) -> torch.Tensor:
    """A clip alone through Qwen3-ASR's extractor: ``[N]`` -> ``[max(N, min_length) // hop, n_mels]`` float32.

    Zero-pad to ``min_length``, reflect-pad ``n_fft // 2`` on both sides (``torch.stft(center=True)``),
    keep all frames but the last, clamp to 80 dB below the clip's maximum, rescale. The STFT runs
    in blocks of ``LOG_MEL_BLOCK_FRAMES`` frames so memory stays bounded for long audio.
    """
    wav = torch.as_tensor(wav, dtype=torch.float32)
    samples = padded_samples(wav.shape[-1], cfg.min_length)
    half = cfg.n_fft // 2
    if samples <= half:
        raise ValueError(f"{samples} samples cannot be reflect-padded by {half}; min_length must be > n_fft // 2")
    padded = torch.nn.functional.pad(wav, (0, samples - wav.shape[-1]))
    padded = torch.nn.functional.pad(padded[None], (half, half), mode="reflect")[0]
    frames = cfg.frames(wav.shape[-1])
    log_spec = torch.empty(frames, cfg.n_mels)
    for start in range(0, frames, LOG_MEL_BLOCK_FRAMES):
        stop = min(start + LOG_MEL_BLOCK_FRAMES, frames)
        segment = padded[start * cfg.hop_length : (stop - 1) * cfg.hop_length + cfg.n_fft]
        spec = torch.stft(
            segment, cfg.n_fft, cfg.hop_length, window=hann_window(cfg.n_fft), center=False, return_complex=True
        )
        torch.matmul(power_spectrum(spec).T, mel_filters(cfg), out=log_spec[start:stop])
    log_spec = log_spec.clamp_(min=LOG_FLOOR).log10_()
    log_spec = log_spec.clamp_(min=float(log_spec.max()) - cfg.dynamic_range)
    return log_spec.add_(LOG_OFFSET).div_(LOG_SCALE)
