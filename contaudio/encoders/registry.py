"""One registry: encoder family name -> everything needed to load and run it.

A family is keyed by the checkpoint's ``model_type``, never by a hub tag, so any
checkpoint of a supported family (official sizes, fine-tunes, a standalone
encoder export) loads the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedConfig, PreTrainedModel

from contaudio.features import FeatureConfig

# mel frames (int or LongTensor) -> encoder rows, same type out
LengthRule = Callable[[Any], Any]
# (encoder, mel [B, M_max, n_mels] in the encoder's dtype/device, lengths [B] LongTensor) -> [sum rows, D]
ForwardFn = Callable[[PreTrainedModel, torch.Tensor, torch.Tensor], torch.Tensor]
# (encoder config, mel frames per clip) -> matmul FLOPs of one forward (contaudio.benchmark)
FlopsFn = Callable[[Any, Any], float]


@dataclass(frozen=True)
class EncoderFamily:
    """How to find, build and run one family's audio encoder.

    name: registry key, e.g. ``"qwen2_5_omni"``.
    config_paths: checkpoint ``model_type`` -> key path from its ``config.json`` to
        the encoder config (``()`` when the checkpoint *is* the encoder).
    weight_prefixes: key prefixes of the encoder tensors, tried in order.
    encoder_class / config_class: the HF modules used to build the encoder.
    rows: the exact length rule, mel frames -> encoder rows.
    forward: the fast batched forward; ``reference_forward`` is HF's own.
    default_features: feature config used when a checkpoint ships none.
    window_frames: mel frames the encoder takes at once (3000 = 30 s for Whisper and
        Qwen2-Audio: every clip is padded to the window); ``None`` for encoders that take
        any length. Clips longer than the window follow ``ContinuousAudioIO(long_clip=...)``.
    flops: matmul FLOPs of one forward, for the bench's MFU figure (``None``: not reported).
    """

    name: str
    config_paths: dict[str, tuple[str, ...]]
    weight_prefixes: tuple[str, ...]
    encoder_class: type[PreTrainedModel]
    config_class: type[PreTrainedConfig]
    rows: LengthRule
    forward: ForwardFn
    reference_forward: ForwardFn
    default_features: FeatureConfig
    output_dim_key: str = "output_dim"
    window_frames: int | None = None
    flops: FlopsFn | None = None
    extra: dict[str, Any] = field(default_factory=dict)

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


FAMILIES: dict[str, EncoderFamily] = {}


def register(family: EncoderFamily) -> EncoderFamily:
    """Add ``family`` to the registry (its model types must be new)."""
    if family.name in FAMILIES:
        raise ValueError(f"encoder family {family.name!r} is already registered")
    taken = {mt for f in FAMILIES.values() for mt in f.config_paths}
    if clash := taken & set(family.config_paths):
        raise ValueError(f"model types {sorted(clash)} already belong to another family")
    FAMILIES[family.name] = family
    return family


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
