"""The HF oracle's generic parts: what HF answered for a clip, and running HF's methods on our tower.

Each family's oracle runs HF transformers' own public path (its feature extractor, its model's
``get_audio_features`` or forward, its length helper) on the *same weights* contaudio loaded, so
contaudio is judged against HF's code, never against its own rule or forward. HF may also fail
(e.g. Qwen2.5-Omni's tower raises on clips of <= 2 mel frames): that is recorded, not hidden.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType, SimpleNamespace
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
    placeholders: int | None = None  # audio placeholder tokens HF's processor puts in a prompt for the clip (lm)

    @property
    def count(self) -> int | None:
        """Rows HF returned (None when HF raised); a ``[L, T, D]`` answer (hidden states) has ``T`` rows."""
        return None if self.rows is None else int(self.rows.shape[-2])

    def describe(self) -> str:
        if self.error:
            return f"HF raised {self.error}"
        counted = "" if self.placeholders is None else f", its processor {self.placeholders} placeholders"
        return f"HF gave {self.count} rows{counted}"


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


class ZeroEmbedding(nn.Module):
    """Token embeddings that are all zeros: ``[B, L]`` ids -> ``[B, L, width]`` in ``dtype``."""

    def __init__(self, width: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.width, self.dtype = width, dtype

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*input_ids.shape, self.width, dtype=self.dtype, device=input_ids.device)


class EchoLanguageModel(nn.Module):
    """A language model that returns the input embeddings it was given as its ``last_hidden_state``."""

    def forward(self, inputs_embeds: torch.Tensor, **_: object) -> SimpleNamespace:
        return SimpleNamespace(last_hidden_state=inputs_embeds, cache=None, past_key_values=None, hidden_states=None,
                               attentions=None)  # fmt: skip


@dataclass(frozen=True)
class SpliceHostConfig:
    """What a multimodal forward reads from ``self.config`` on the way to its language model."""

    audio_token_id: int
    return_dict: bool = True


class LanguageModelHost(ProjectorFreeHost):
    """Stands in for an HF multimodal model whose *forward* splices the audio tower's rows into the LM's input
    embeddings at the prompt's audio placeholders (``Qwen2AudioModel.forward``, which has no ``get_audio_features``):
    HF's forward then runs its own tower call, attention mask, row selection and count check on our tower.

    Around the tower: an identity projector, all-zero token embeddings of the tower's width (``width``) and a
    language model that echoes its input embeddings, so the forward's ``last_hidden_state`` holds, at the audio
    placeholders, exactly the rows HF spliced in. ``padding_side`` / ``pad_token_id`` are what HF's legacy merge
    (a prompt without two adjacent placeholders) reads.
    """

    padding_side = "left"  # HF's default for these models
    pad_token_id = 0

    def __init__(self, audio_tower: nn.Module, audio_token_id: int, width: int, dtype: torch.dtype) -> None:
        super().__init__(audio_tower, SpliceHostConfig(audio_token_id))
        self.language_model = EchoLanguageModel()
        self.embed_tokens = ZeroEmbedding(width, dtype)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens


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


def thinker_hidden_states(
    get_audio_features: Callable[..., Any],
    encoder: nn.Module,
    input_features: torch.Tensor,
    frames: torch.Tensor,
    layers: tuple[int, ...],
) -> torch.Tensor:
    """:func:`thinker_audio_rows` with ``output_hidden_states=True``: the tower's ``hidden_states[i]`` for ``i`` in
    ``layers``, as HF records them (``[rows, d]`` each, the clips' rows packed): ``[len(layers), rows, d]``."""
    mask = frame_mask(frames.to(input_features.device), input_features.shape[2])
    out = get_audio_features(AudioTowerHost(encoder), input_features, mask, output_hidden_states=True)
    return pick_hidden_states(out.hidden_states, layers, len(encoder.layers))


def pick_hidden_states(
    hidden_states: tuple[torch.Tensor, ...], layers: tuple[int, ...], num_layers: int
) -> torch.Tensor:
    """HF's ``hidden_states`` tuple of a ``num_layers``-layer stack -> its ``layers`` entries, stacked: ``[L, ...]``.

    HF's tuple holds ``num_layers + 1`` entries (0: the first layer's input); any other count raises, since the
    indices would then name other layers.

    >>> pick_hidden_states((torch.zeros(2, 1), torch.ones(2, 1)), (1,), 1).shape
    torch.Size([1, 2, 1])
    """
    if len(hidden_states) != num_layers + 1:
        raise ValueError(
            f"HF returned {len(hidden_states)} hidden states for {num_layers} layers (expected {num_layers + 1})"
        )
    return torch.stack([hidden_states[i] for i in layers])


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
