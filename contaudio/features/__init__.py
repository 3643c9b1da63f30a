"""Features on each clip's own length: one featurizer per HF feature extractor a family uses.

``featurizer_from_dict(preprocessor_config)`` picks the featurizer of a checkpoint's extractor;
Whisper's log-mel (:mod:`contaudio.features.whisper`) is the Qwen and Whisper towers' one.
"""

from contaudio.features import (  # noqa: F401  (importing a featurizer module registers it)
    gemma3n,
    granite_speech,
    phi4_multimodal,
    qwen3_asr,
)
from contaudio.features.base import (
    FEATURIZERS,
    Featurizer,
    featurizer_from_dict,
    register_featurizer,
    samples_for_frames,
)
from contaudio.features.whisper import (
    BATCHED_ATOL,
    DYNAMIC_RANGE,
    LOG_FLOOR,
    LOG_OFFSET,
    LOG_SCALE,
    FeatureConfig,
    fits_batched_stft,
    frames_seen,
    log_mel,
    log_mel_batch,
    log_mel_block,
    mel_filters,
    stft_blocks,
    stft_length,
)

__all__ = [
    "BATCHED_ATOL",
    "DYNAMIC_RANGE",
    "FEATURIZERS",
    "LOG_FLOOR",
    "LOG_OFFSET",
    "LOG_SCALE",
    "FeatureConfig",
    "Featurizer",
    "featurizer_from_dict",
    "fits_batched_stft",
    "frames_seen",
    "log_mel",
    "log_mel_batch",
    "log_mel_block",
    "mel_filters",
    "register_featurizer",
    "samples_for_frames",
    "stft_blocks",
    "stft_length",
]
