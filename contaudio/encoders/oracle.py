"""The HF oracle's generic parts: what HF answered for a clip, and running HF's methods on our tower.

Each family's oracle runs HF transformers' own public path (its feature extractor, its model's
``get_audio_features`` or forward, its length helper) on the *same weights* contaudio loaded, so
contaudio is judged against HF's code, never against its own rule or forward. HF may also fail
(e.g. Qwen2.5-Omni's tower raises on clips of <= 2 mel frames): that is recorded, not hidden.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import BatchFeature, WhisperFeatureExtractor


@dataclass(frozen=True)
class OracleRows:
    """HF's answer for one clip: its rows ``[T, D]``, or the error HF raised instead."""

    rows: torch.Tensor | None
    error: str | None = None

    @property
    def count(self) -> int | None:
        """Rows HF returned (None when HF raised)."""
        return None if self.rows is None else int(self.rows.shape[0])

    def describe(self) -> str:
        return f"HF raised {self.error}" if self.error else f"HF gave {self.count} rows"


def ask_hf(compute: Callable[[], torch.Tensor]) -> OracleRows:
    """Run ``compute`` (an HF code path) and keep its rows, or the exception HF raised.

    >>> ask_hf(lambda: torch.zeros(2, 3)).count, ask_hf(lambda: torch.zeros(0)[1]).error.split(":")[0]
    (2, 'IndexError')
    """
    try:
        return OracleRows(compute().detach())
    except Exception as err:  # HF's own failure is a finding, recorded per clip
        return OracleRows(None, f"{type(err).__name__}: {err}")


class AudioTowerHost(nn.Module):
    """Stands in for an HF multimodal model where an HF method only reads ``self.audio_tower``.

    A thinker's ``get_audio_features(AudioTowerHost(tower), ...)`` runs HF's own
    method on our tower's weights without building the 7B thinker around it.
    """

    def __init__(self, audio_tower: nn.Module) -> None:
        super().__init__()
        self.audio_tower = audio_tower


class ProjectorFreeHost(AudioTowerHost):
    """An :class:`AudioTowerHost` for HF methods that also run ``self.multi_modal_projector`` on the tower's
    output (into ``pooler_output``): an identity projector leaves the tower's rows, read from
    ``last_hidden_state``, as they are. ``config``: the attributes the method reads from ``self.config``."""

    def __init__(self, audio_tower: nn.Module, config: object | None = None) -> None:
        super().__init__(audio_tower)
        self.multi_modal_projector = nn.Identity()
        if config is not None:
            self.config = config


def extract(extractor: WhisperFeatureExtractor, wav: np.ndarray, **kwargs: object) -> tuple[torch.Tensor, int]:
    """HF's extractor on one clip with the processor's ``kwargs``: ``(input_features [1, n_mels, F], frames)``."""
    out: BatchFeature = extractor(
        wav, sampling_rate=extractor.sampling_rate, return_attention_mask=True, return_tensors="pt", **kwargs
    )
    return out["input_features"], int(out["attention_mask"].sum())


def extract_max_length(extractor: WhisperFeatureExtractor, wav: np.ndarray) -> tuple[torch.Tensor, int]:
    """HF's extractor with ``padding="max_length"``, as the Qwen-Omni processors call it: the clip zero-padded
    to ``n_samples`` (300 s); a longer clip is padded just past its end instead of truncated at 300 s."""
    max_length = max(extractor.n_samples, padding_past_the_end(len(wav), extractor.n_fft, extractor.hop_length))
    return extract(extractor, wav, padding="max_length", max_length=max_length, truncation=False)


def frame_mask(frames: torch.Tensor, width: int) -> torch.Tensor:
    """The feature mask a processor gives clips of ``frames`` ``[B]`` valid frames in ``width`` columns: ``[B, width]``.

    >>> frame_mask(torch.tensor([2, 0]), 3).tolist()
    [[1, 1, 0], [0, 0, 0]]
    """
    return (torch.arange(width, device=frames.device) < frames[:, None]).long()


def thinker_audio_rows(
    get_audio_features: Callable[..., Any], encoder: nn.Module, input_features: torch.Tensor, frames: torch.Tensor
) -> torch.Tensor:
    """A thinker's own ``get_audio_features`` on our tower: ``[B, n_mels, F]``, valid frames ``[B]`` -> ``[rows, D]``.

    ``get_audio_features`` is the HF method (:func:`thinker_get_audio_features`), given the
    feature attention mask the processor would give and run on :class:`AudioTowerHost`.
    """
    mask = frame_mask(frames.to(input_features.device), input_features.shape[2])
    return get_audio_features(AudioTowerHost(encoder), input_features, mask).last_hidden_state


def thinker_get_audio_features(modeling: ModuleType, prefix: str) -> Callable[..., Any]:
    """HF's own ``get_audio_features`` of an omni thinker: the one that runs ``self.audio_tower``.

    transformers >= 5.21 has it on ``<prefix>ThinkerModel`` (``<prefix>ThinkerForConditionalGeneration``
    delegates to its ``self.model``); earlier 5.x (ESPnet's 5.14.1) on ``<prefix>ThinkerForConditionalGeneration``.

    >>> from transformers.models.qwen2_5_omni import modeling_qwen2_5_omni
    >>> thinker_get_audio_features(modeling_qwen2_5_omni, "Qwen2_5Omni").__name__
    'get_audio_features'
    """
    owner = getattr(modeling, f"{prefix}ThinkerModel", None)
    owner = owner or getattr(modeling, f"{prefix}ThinkerForConditionalGeneration")
    return owner.get_audio_features


def padding_past_the_end(num_samples: int, n_fft: int, hop_length: int) -> int:
    """Samples to zero-pad a clip to (a whole number of hops) so that every frame whose window overlaps it
    sees zeros past its end: the extractor's ``max_length`` for a clip longer than its ``n_samples``.

    >>> padding_past_the_end(16000, 400, 160)
    16320
    """
    return -(-(num_samples + n_fft // 2 + 1) // hop_length) * hop_length


def select_rows(hidden: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """The first ``rows[i]`` rows of each ``hidden[i]``: ``[K, L, D]``, ``[K]`` -> ``[sum rows, D]``.

    >>> select_rows(torch.arange(6.0).reshape(2, 3, 1), torch.tensor([1, 2])).flatten().tolist()
    [0.0, 3.0, 4.0]
    """
    keep = torch.arange(hidden.shape[1], device=hidden.device) < rows.to(hidden.device)[:, None]
    return hidden[keep]
