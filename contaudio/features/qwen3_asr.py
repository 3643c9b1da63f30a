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
from contaudio.features.whisper import FeatureConfig, reflected_log_mel
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

    Zero-pad to ``min_length``, then Whisper's log-mel with a reflected end (:func:`reflected_log_mel`).
    """
    wav = torch.as_tensor(wav, dtype=torch.float32)
    return reflected_log_mel(
        torch.nn.functional.pad(wav, (0, padded_samples(wav.shape[-1], cfg.min_length) - wav.shape[-1])), cfg
    )
