"""One registry: encoder family name -> the family, and the base class every family module fills in.

A family is one module under ``contaudio/encoders/`` holding everything that is that family's:
its length rule (formula in the docstring), its fast forward, its FLOP rule, its weight prefixes
and its HF oracle (HF's own public path on the same weights). It registers itself with
:func:`register`, the way lhotse's ``register_extractor`` works::

    @register
    class Whisper(EncoderFamily):
        name = "whisper"
        ...

A family is keyed by the checkpoint's ``model_type``, never by a hub tag, so any checkpoint of a
supported family (official sizes, fine-tunes, a standalone encoder export) loads the same way.
Its shipped config cards are JSON files in ``contaudio/cards`` naming the family.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from transformers import PreTrainedConfig, PreTrainedModel
from transformers.feature_extraction_utils import FeatureExtractionMixin

from contaudio.encoders.oracle import OracleRows, ask_hf
from contaudio.features import Featurizer
from contaudio.lengths import IntOrTensor

__all__ = [
    "FAMILIES",
    "EncoderFamily",
    "IntOrTensor",
    "WeightLayout",
    "family_for_model_type",
    "get_family",
    "register",
]

WeightLayout = str | Mapping[str, str]  # a key prefix, or {checkpoint prefix: encoder prefix}


class EncoderFamily(ABC):
    """How to find, build, run, count and check one family's audio encoder.

    Class attributes (set by each family):
        name: registry key, e.g. ``"qwen2_5_omni"``.
        config_paths: checkpoint ``model_type`` -> key path from its ``config.json`` to the
            encoder config (``()`` when the checkpoint *is* the encoder).
        weight_prefixes: where the encoder's tensors sit in a checkpoint, layouts tried in order: a key
            prefix (the whole encoder under it), or ``{checkpoint prefix: encoder prefix}`` for an
            encoder assembled from several parts of the model (Granite Speech: encoder and projector).
        encoder_class / config_class: the HF modules the encoder is built from.
        default_features: the featurizer used when a checkpoint ships no ``preprocessor_config.json``.
        output_dim_key: the config key of the output width.
        window_frames: mel frames the encoder takes at once (3000 = 30 s for Whisper-style
            encoders, every clip padded to the window); ``None`` for encoders that take any length.
        max_frames: the most mel frames the model's own processor passes on (Audio Flamingo 3:
            600 s); a longer clip raises, never cut. ``None``: no limit.
        returns: one line: which HF output contaudio returns for a clip.
        oracle_path: one line: the HF code path the oracle runs.
    """

    name: ClassVar[str]
    config_paths: ClassVar[dict[str, tuple[str, ...]]]
    weight_prefixes: ClassVar[tuple[WeightLayout, ...]]
    encoder_class: ClassVar[type[PreTrainedModel]]
    config_class: ClassVar[type[PreTrainedConfig]]
    default_features: ClassVar[Featurizer]
    output_dim_key: ClassVar[str] = "output_dim"
    window_frames: ClassVar[int | None] = None
    max_frames: ClassVar[int | None] = None
    returns: ClassVar[str]
    oracle_path: ClassVar[str]

    # ------------------------------------------------------------------ the family's own rules
    @staticmethod
    @abstractmethod
    def rows(mel_len: IntOrTensor) -> IntOrTensor:
        """The exact length rule: encoder rows for ``mel_len`` mel frames (int or LongTensor, same type out)."""

    @abstractmethod
    def forward(self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The fast batched forward: ``mel [B, M_max, n_mels]``, ``lengths [B]`` -> ``[sum rows, D]``.

        ``mel`` is in the encoder's dtype and on its device; ``lengths`` may be anywhere.
        """

    @abstractmethod
    def flops(self, config: Mapping[str, Any] | Any, lengths: Sequence[int] | torch.Tensor) -> float:
        """Matmul FLOPs of one forward over clips of ``lengths`` mel frames (for the bench's utilisation)."""

    # --------------------------------------------------------------------------- HF's own path
    @abstractmethod
    def hf_inputs(self, extractor: FeatureExtractionMixin, wav: np.ndarray) -> tuple[torch.Tensor, int]:
        """HF's feature extractor on one 16 kHz clip as the model's processor calls it.

        ``extractor`` is the featurizer's ``hf_extractor()``. Returns ``(input_features, frames)``: the
        extractor's features in HF's layout (``[1, n_mels, F]`` for Whisper's log-mel) and the clip's
        valid frames (the sum of its attention mask).
        """

    @abstractmethod
    def hf_encode(self, encoder: PreTrainedModel, input_features: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        """HF's model path on HF-layout features: ``[B, n_mels, F]``, valid frames ``[B]`` -> ``[sum rows, D]``.

        The rows of each clip are the ones HF's own code selects (its length helper or its
        output split), never contaudio's rule.
        """

    def oracle(self, encoder: PreTrainedModel, extractor: FeatureExtractionMixin, wav: np.ndarray) -> OracleRows:
        """HF's answer for one clip from its waveform: HF's extractor, then HF's model path on these weights."""

        def ask() -> torch.Tensor:
            features, frames = self.hf_inputs(extractor, wav)
            return self.hf_encode(encoder, features.to(encoder.device, encoder.dtype), torch.tensor([frames]))

        return ask_hf(ask)

    def oracle_from_mel(self, encoder: PreTrainedModel, mel: torch.Tensor) -> OracleRows:
        """HF's model path on a clip given as mel frames ``[M, n_mels]`` (no extractor)."""
        features, frames = self.hf_layout(mel[None].to(encoder.device, encoder.dtype), torch.tensor([mel.shape[0]]))
        return ask_hf(lambda: self.hf_encode(encoder, features, frames))

    def reference_forward(self, encoder: PreTrainedModel, mel: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """HF's model path on a padded batch as a user would run it (bench's HF column): ``[sum rows, D]``."""
        return self.hf_encode(encoder, *self.hf_layout(mel, lengths))

    def hf_layout(self, mel: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """contaudio's ``[B, M_max, n_mels]`` batch -> HF's layout (``[B, n_mels, F]``, F whole windows).

        A family whose HF model takes another layout (time-major, a mask) overrides this.
        """
        features = mel.transpose(1, 2)
        if self.window_frames is not None:
            width = -(-features.shape[2] // self.window_frames) * self.window_frames
            features = torch.nn.functional.pad(features, (0, width - features.shape[2]))
        return features, lengths

    def adapt_features(self, features: Featurizer) -> Featurizer:
        """The checkpoint's featurizer as this family's processor runs it (default: as configured)."""
        return features

    # --------------------------------------------------------------------------- config reading
    def encoder_config(self, raw: dict[str, Any]) -> dict[str, Any]:
        """The encoder's config dict inside a checkpoint's ``config.json`` dict."""
        path = self.config_paths[raw["model_type"]]
        node = raw
        for key in path:
            if key not in node:
                raise ValueError(f"{self.name}: config.json has no {'.'.join(path)}; is this a {self.name} checkpoint?")
            node = node[key]
        return dict(node)

    def output_dim(self, encoder_config: dict[str, Any]) -> int:
        """Width of the encoder's output rows, read through the HF config class.

        The class applies its ``attribute_map`` (Voxtral names ``d_model`` ``hidden_size``).
        """
        config = self.config_class(**{k: v for k, v in encoder_config.items() if k != "model_type"})
        return int(getattr(config, self.output_dim_key))

    def __repr__(self) -> str:
        return f"<encoder family {self.name}>"


FAMILIES: dict[str, EncoderFamily] = {}
FamilyClass = TypeVar("FamilyClass", bound=type[EncoderFamily])


def register(cls: FamilyClass) -> FamilyClass:
    """Class decorator: add one instance of the family ``cls`` to the registry (its model types must be new)."""
    if cls.name in FAMILIES:
        raise ValueError(f"encoder family {cls.name!r} is already registered")
    taken = {mt for f in FAMILIES.values() for mt in f.config_paths}
    if clash := taken & set(cls.config_paths):
        raise ValueError(f"model types {sorted(clash)} already belong to another family")
    FAMILIES[cls.name] = cls()
    return cls


def get_family(name: str) -> EncoderFamily:
    """Look a family up by name; a wrong name lists the ones that exist."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"unknown encoder family {name!r}; known: {', '.join(sorted(FAMILIES))}") from None


def family_for_model_type(model_type: str) -> EncoderFamily:
    """The family whose checkpoints carry ``model_type`` in their config.json."""
    for family in FAMILIES.values():
        if model_type in family.config_paths:
            return family
    known = sorted(mt for f in FAMILIES.values() for mt in f.config_paths)
    raise ValueError(f"no encoder family handles model_type {model_type!r}; supported model types: {', '.join(known)}")
