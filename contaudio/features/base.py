"""What a family's feature extractor is to contaudio, and the one registry of them.

Each family's model is fed by one HF feature extractor (Whisper's log-mel for the Qwen and
Whisper towers; Gemma 3n, Phi-4-multimodal and Granite Speech each have their own). A
:class:`Featurizer` reproduces one of them on the clip's *own* length (never padded to 30 s or
300 s), says exactly how many frames HF's extractor marks valid for N samples, and builds HF's
own extractor, configured identically, as the reference it is tested against.

Featurizers register by HF's ``feature_extractor_type`` (the key of ``preprocessor_config.json``),
so a checkpoint's own preprocessor config picks its featurizer.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, TypeVar

import torch
from transformers.feature_extraction_utils import FeatureExtractionMixin

from contaudio.lengths import IntOrTensor

__all__ = ["FEATURIZERS", "Featurizer", "featurizer_from_dict", "register_featurizer", "samples_for_frames"]

EXTRACTOR_TYPE_KEY = "feature_extractor_type"


class Featurizer(ABC):
    """A family's HF feature extractor, reproduced on each clip's own length.

    Subclasses are frozen dataclasses (hashable: per-config constants such as filter banks are
    cached on them) with a ``sampling_rate`` field.
    """

    extractor_type: ClassVar[str]  # HF's "feature_extractor_type" this reproduces
    sampling_rate: int

    @property
    @abstractmethod
    def n_mels(self) -> int:
        """Values per feature frame (the last dimension of ``preprocess``'s mel)."""

    @property
    @abstractmethod
    def hop_length(self) -> int:
        """Input samples per feature frame (frame rate = ``sampling_rate / hop_length``)."""

    @abstractmethod
    def frames(self, num_samples: IntOrTensor) -> IntOrTensor:
        """The exact number of valid frames HF's extractor gives a clip of ``num_samples`` (int or LongTensor)."""

    @abstractmethod
    def compute(self, wav: torch.Tensor) -> torch.Tensor:
        """One mono clip ``[N]`` float32 at ``sampling_rate`` -> ``[frames(N), n_mels]`` float32."""

    def compute_batch(self, wavs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Several clips; equal to ``[compute(w) for w in wavs]`` (a subclass may batch its kernels)."""
        return [self.compute(wav) for wav in wavs]

    @abstractmethod
    def hf_extractor(self) -> FeatureExtractionMixin:
        """HF's own extractor, configured like this featurizer (the reference it is tested against)."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """A ``preprocessor_config.json`` dict (with ``feature_extractor_type``)."""

    @classmethod
    @abstractmethod
    def from_dict(cls, raw: dict[str, Any]) -> Featurizer:
        """Build from a ``preprocessor_config.json`` dict; refuse settings it cannot reproduce."""

    @abstractmethod
    def with_known_bug(self) -> Featurizer:
        """A copy with one realistic bug, for ``mutation=feature_bug`` (the checks against HF must catch it)."""

    @property
    def min_samples(self) -> int:
        """The shortest clip (samples at ``sampling_rate``) HF's extractor takes; shorter ones are refused alike by
        :meth:`compute` and by ``ContinuousAudioIO.find_length`` (:meth:`check_samples`). 0: any count, even an
        empty one (a clip too short for a frame gives 0 rows)."""
        return 0

    def too_short(self, num_samples: int) -> str:
        """Why a clip of ``num_samples`` (< :attr:`min_samples`) is refused, and what to do."""
        return (
            f"{type(self).__name__}: a clip of {num_samples} samples is shorter than the {self.min_samples} "
            "HF's feature extractor takes; drop the clip or pad it"
        )

    def check_samples(self, num_samples: IntOrTensor) -> None:
        """Raise ValueError(:meth:`too_short`) when a clip (or any clip of a tensor of counts) is too short."""
        shortest = int(num_samples.min()) if isinstance(num_samples, torch.Tensor) else num_samples
        if isinstance(num_samples, torch.Tensor) and not num_samples.numel():
            return
        if shortest < self.min_samples:
            raise ValueError(self.too_short(shortest))

    @property
    def frame_rate(self) -> float:
        """Feature frames per second."""
        return self.sampling_rate / self.hop_length


def samples_for_frames(featurizer: Featurizer, frames: int) -> tuple[int, int] | None:
    """The fewest and the most samples that give exactly ``frames`` frames (None: no clip gives that many).

    Binary search over ``featurizer.frames``, which never decreases with N. Whisper's log-mel gives
    ``M`` frames for ``(M - 1) * hop + 1 .. M * hop`` samples; Qwen3-ASR's gives none below 50.
    """

    def first_reaching(target: int) -> int:
        low, high = 1, max(1, target) * featurizer.hop_length
        while featurizer.frames(high) < target:  # an upper bound: double until it gives enough frames
            high *= 2
        while low < high:
            middle = (low + high) // 2
            low, high = (middle + 1, high) if featurizer.frames(middle) < target else (low, middle)
        return low

    fewest = first_reaching(frames)
    if featurizer.frames(fewest) != frames:
        return None
    return fewest, first_reaching(frames + 1) - 1


FEATURIZERS: dict[str, type[Featurizer]] = {}
FeaturizerClass = TypeVar("FeaturizerClass", bound=type[Featurizer])


def register_featurizer(cls: FeaturizerClass) -> FeaturizerClass:
    """Class decorator: ``cls`` reproduces HF's ``cls.extractor_type`` (one class per extractor type)."""
    if cls.extractor_type in FEATURIZERS:
        raise ValueError(f"feature extractor {cls.extractor_type!r} already has a featurizer")
    FEATURIZERS[cls.extractor_type] = cls
    return cls


def featurizer_from_dict(raw: dict[str, Any]) -> Featurizer:
    """The featurizer of a ``preprocessor_config.json`` dict, picked by its ``feature_extractor_type``.

    A config without the key is Whisper's (older Qwen and Whisper checkpoints omit it).
    """
    kind = raw.get(EXTRACTOR_TYPE_KEY, "WhisperFeatureExtractor")
    if kind not in FEATURIZERS:
        raise ValueError(
            f"unsupported feature extractor {kind!r}; contaudio reproduces: {', '.join(sorted(FEATURIZERS))}"
        )
    return FEATURIZERS[kind].from_dict(raw)
