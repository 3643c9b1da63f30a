"""Encoder registry: importing this package registers every supported family.

A family whose module needs a transformers class the installed transformers lacks is recorded in
``UNAVAILABLE`` instead (its cards stay listed; using it raises ``FamilyUnavailableError``).
"""

from contaudio.encoders.cards import Card, all_cards, find_card
from contaudio.encoders.loading import EncoderSource, WeightsNotFoundError, build_encoder, resolve
from contaudio.encoders.oracle import OracleRows
from contaudio.encoders.registry import (
    FAMILIES,
    UNAVAILABLE,
    EncoderFamily,
    FamilyUnavailableError,
    UnavailableFamily,
    family_for_model_type,
    get_family,
    import_families,
    register,
)

# one module per family, named as the family: importing it registers it
FAMILY_MODULES = (
    "audioflamingo3",
    "gemma3n",
    "glmasr",
    "granite_speech",
    "phi4_multimodal",
    "qwen2_5_omni",
    "qwen2_audio",
    "qwen3_asr",
    "qwen3_omni",
    "voxtral",
    "whisper",
)
import_families(FAMILY_MODULES)

__all__ = [
    "FAMILIES",
    "FAMILY_MODULES",
    "UNAVAILABLE",
    "Card",
    "EncoderFamily",
    "EncoderSource",
    "FamilyUnavailableError",
    "OracleRows",
    "UnavailableFamily",
    "WeightsNotFoundError",
    "all_cards",
    "build_encoder",
    "family_for_model_type",
    "find_card",
    "get_family",
    "import_families",
    "register",
    "resolve",
]
