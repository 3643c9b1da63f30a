"""Encoder registry: importing this package registers every supported family."""

from contaudio.encoders import (  # noqa: F401  (importing a family module registers it)
    audioflamingo3,
    gemma3n,
    glmasr,
    granite_speech,
    phi4_multimodal,
    qwen2_5_omni,
    qwen2_audio,
    qwen3_asr,
    qwen3_omni,
    voxtral,
    whisper,
)
from contaudio.encoders.cards import Card, all_cards, find_card
from contaudio.encoders.loading import EncoderSource, WeightsNotFoundError, build_encoder, resolve
from contaudio.encoders.oracle import OracleRows
from contaudio.encoders.registry import FAMILIES, EncoderFamily, family_for_model_type, get_family, register

__all__ = [
    "FAMILIES",
    "Card",
    "EncoderFamily",
    "EncoderSource",
    "OracleRows",
    "WeightsNotFoundError",
    "all_cards",
    "build_encoder",
    "family_for_model_type",
    "find_card",
    "get_family",
    "register",
    "resolve",
]
